"""Latency against the real BitBay node: per-RPC round trips and exchange-cycle passes.

    python scripts/bench_bitbayd.py                  # 1,000 deposit addresses and outputs
    python scripts/bench_bitbayd.py --addresses 200  # smaller

It makes a private regtest chain with the kit (../shared/bitbayd, see tests/harness/realnode.py; the
binary from PEGX_BITBAYD or build.sh), encrypts its wallet, imports ``--addresses`` deposit
keys through pegx's bitbayd client, pays each one output (100 outputs per transaction), and
measures with the client pegx uses (one keep-alive connection):

* each node call pegx makes, repeated (median and p95 in ms);
* exchange-cycle passes (ExchangeCycle.step on a real ledger that watches every address): the
  first pass (every output's getfractions and transaction fetched), steady passes (cached), and
  the pass that registers a deposit claim for every output.

Prints one table; nothing is asserted. The node and the temporary ledger are removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import free_port, realnode
from pegx import crypto
from pegx.chain.bitbayd import Bitbayd
from pegx.exchange.cycle import ExchangeCycle
from pegx.exchange.session import Session
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

COIN = 100_000_000
WPASS = "bench wallet pass"
NET = crypto.REGTEST


def timed(fn, repeat: int) -> list[float]:
    """Wall times in ms of ``repeat`` calls of ``fn``."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def row(name: str, samples: list[float], note: str = "") -> tuple[str, str, str, str, str]:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return (name, f"{statistics.median(samples):,.2f}", f"{p95:,.2f}", f"{len(samples):,d}", note)


def main() -> int:  # noqa: PLR0915 (a script's straight-line story)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addresses", type=int, default=1000, help="deposit addresses = outputs")
    ap.add_argument("--repeat", type=int, default=50, help="calls per RPC measured")
    args = ap.parse_args()
    binary, why = realnode.binary()
    if binary is None:
        print(f"no bitbayd: {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pegx-bench-bitbayd-"))
    node = realnode.RegtestNode(binary, work / "node", free_port(), {})
    rows: list[tuple[str, str, str, str, str]] = []
    t_start = time.monotonic()
    try:
        node.create()
        node.encrypt(WPASS)
        node.make_payer(10_000_000 * COIN, WPASS)
        chain = Bitbayd(node.url, network=NET, timeout=60, deadline=600)
        keys = [crypto.generate_deposit_key(NET) for _ in range(args.addresses)]
        t0 = time.perf_counter()
        addresses = [chain.import_key(k, WPASS) for k in keys]
        import_ms = (time.perf_counter() - t0) * 1000 / len(keys)
        for i in range(0, len(addresses), 100):
            node.pay_many({a: 10 * COIN for a in addresses[i:i + 100]}, WPASS)
        node.generate(10)
        wallet_rows = len(node.call("listunspent", 0))

        key0 = f"{node.call('listunspent', 1, 9_999_999, [addresses[0]])[0]['txid']}:0"
        txid0 = key0.split(":")[0]
        height = chain.getblockcount()
        blockhash = chain.getblockhash(height)
        fresh = crypto.generate_deposit_key(NET)
        chain.import_key(fresh, WPASS)
        unsigned = node.call("createrawtransaction", [{"txid": txid0, "vout": 0}],
                             {node.payer: 9.9999})
        n = args.repeat
        rows += [
            row("getblockcount", timed(chain.getblockcount, n)),
            row("getpeginfo", timed(chain.getpeginfo, n)),
            row("getblockhash + getblock", timed(lambda: chain.getblock(
                chain.getblockhash(height)), n)),
            row("getblock", timed(lambda: chain.getblock(blockhash), n)),
            row(f"listunspent ({wallet_rows:,d} rows)", timed(chain.listunspent, max(5, n // 5))),
            row("listfrozen", timed(chain.listfrozen, n)),
            row("getfractions (1 output)", timed(lambda: chain.getfractions(key0), n)),
            row("getrawtransaction verbose", timed(lambda: chain.getrawtransaction(txid0), n),
                "a 100-output payment"),
            row("gettxout", timed(lambda: chain.gettxout(txid0, 0), n)),
            row("importprivkey (key already there)", timed(
                lambda: chain.importprivkey(fresh, "", False), n)),
            row("importprivkey (new key, unlocked)", [import_ms] * 1,
                f"mean of {len(keys):,d} via import_key, one unlock per 40 s"),
            row("walletpassphrase", timed(lambda: chain.walletpassphrase(WPASS, 60),
                                          max(5, n // 5)), "key stretching on the node"),
            row("signrawtransaction (1 input)", timed(
                lambda: chain.signrawtransaction(unsigned), max(5, n // 5))),
        ]

        store_dir = work / "ledger"
        ledger = Exchange(Store(store_dir))
        try:
            ledger.put_many([("addresses", a, {"imported": 1}) for a in addresses])
            view = chain.with_retry(600)
            session = Session(ledger, view)
            cycle = ExchangeCycle(ledger, view, session, poll_seconds=0.5)
            cold = timed(cycle.step, 1)
            warm = timed(cycle.step, 5)
            spendable = list(session.spendable())
            ledger.put_many([("claims", k, {"name": f"user{i:05d}"})
                             for i, k in enumerate(spendable)])
            register = timed(cycle.step, 1)
            after = timed(cycle.step, 5)
            nout = len(spendable)
            rows += [
                row(f"pass, first ({nout:,d} outputs, {len(addresses):,d} addresses)", cold,
                    "getfractions + getrawtransaction per output"),
                row("pass, steady (no change)", warm, "fractions and transactions cached"),
                row(f"pass registering {nout:,d} deposits", register,
                    "one credit_inputs + recompute"),
                row(f"pass, steady ({nout:,d} registered inputs)", after),
            ]
        finally:
            ledger.close()
        chain.close()
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'bitbayd call / pass':<{width}}  {'median ms':>10}  {'p95 ms':>9}  {'n':>5}  note")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 9}  {'-' * 5}  {'-' * 30}")
    for name, med, p95, cnt, note in rows:
        print(f"{name:<{width}}  {med:>10}  {p95:>9}  {cnt:>5}  {note}")
    print(f"total {time.monotonic() - t_start:,.0f} s (chain setup included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
