"""pegx benchmarks on synthetic data; prints one table of results against the targets.

    python scripts/bench.py            # full run (100,000 users; a few minutes)
    python scripts/bench.py --quick    # 1,000 / 10,000 users, fewer trades (< 60 s)
    python scripts/bench.py --only trades

Every benchmark case runs in a fresh child process (this script with ``--worker``), so resident
memory and page cache effects of one case do not leak into the next. A benchmark is a function
``(param, quick) -> list[Row]`` registered in ``BENCHES`` with the params it runs for; add new
ones (XML-RPC, ...) the same way.

Targets are reported, never asserted: 100,000 users recomputed in <= 1 s; >= 2,000 durable
engine trades/s single-threaded; <= 1.5 GB RSS for 100,000 users.

Setup uses the engine's public API only: users are created by ``credit_inputs`` calls of up to
CHUNK inputs, each a full 1200-step STD spread with a distinct owner. The recompute breakdown is
white-box: it reads the ledger's state (``Exchange._state``, under ``Exchange._lock``) and times
the exchange totals (from the per-supply tables) and ``peg.assign_balances`` on it directly,
switches the automatic checkpoints off (``Exchange._checkpoints``) to time a recompute without
one, and marks every row dirty to time a checkpoint that writes the whole matrix to a file.

``--only users --users N`` runs the users benchmark at N users only (the scaling rows of the
README: 1,000 / 10,000 / 100,000 / 1,000,000).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rpcload import calls_per_second

from pegx import peg
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

SUPPLY = 500
GB = 1 << 30
# Users are registered CHUNK inputs per credit_inputs call. One call is one op-log record
# holding every vector as base64 JSON (~12.8 kB per input): 10,000 inputs in one call already
# peak at ~1.4 GB RSS, so a single 100,000-input call would need ~14 GB.
CHUNK = 10_000


@dataclass
class Row:
    """One measured figure; ``target`` with ``better`` ('lower'/'higher') makes it a check."""

    name: str
    value: float
    unit: str
    target: float | None = None
    better: str = "lower"
    note: str = ""

    def verdict(self) -> str:
        if self.target is None:
            return ""
        ratio = self.value / self.target if self.target else float("inf")
        ok = ratio <= 1 if self.better == "lower" else ratio >= 1
        return f"{ratio:.2f}x {'ok' if ok else 'MISS'}"


@dataclass
class Bench:
    """A named benchmark: ``fn(param, quick)`` run once per param of the mode."""

    fn: Callable[[int, bool], list[Row]]
    full: tuple[int, ...]
    quick: tuple[int, ...]


# ------------------------------------------------------------------ helpers
def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def full_profiles(n: int) -> list[dict]:
    """N inputs, each a full 1200-step STD spread (~1,000 BAY) with a distinct owner.

    64 distinct spreads are shared between the inputs: the engine copies every vector it
    registers, and std_spread is a 1200-step Python loop, too slow to run 100,000 times.
    """
    bases = [peg.std_spread(10**11 + 7919 * k) for k in range(64)]
    assert all(b.all() for b in bases)  # every step non-zero: a full profile
    return [{"key": f"{i:064x}:0", "value": int(bases[i % 64].sum()), "address": "Bbench",
             "vector": bases[i % 64], "owner": f"user{i:07d}"} for i in range(n)]


def tmp_ledger() -> Path:
    return Path(tempfile.mkdtemp(prefix="pegx-bench-")) / "ledger"


def label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


# ------------------------------------------------------------------ benchmarks
def bench_users(n: int, quick: bool) -> list[Row]:
    """Build N users with full profiles, then recompute, memory and restart figures."""
    path = tmp_ledger()
    tag = f"users {label(n)}"
    rows: list[Row] = []
    try:
        items = full_profiles(n)
        ex = Exchange(Store(path), capacity=n + 16)
        t = time.perf_counter()
        for k in range(0, n, CHUNK):
            ex.credit_inputs(items[k:k + CHUNK], supply=SUPPLY, now=0)
        build = time.perf_counter() - t
        del items
        calls = -(-n // CHUNK)
        rows.append(Row(f"{tag}: build ({calls} credit_inputs)", build, "s",
                        note=f"<= {CHUNK:,d} inputs per durable call"))
        mem = proc_status()
        rows.append(Row(f"{tag}: RSS after build", mem["VmRSS"] / GB, "GB",
                        1.5 if n == 100_000 else 0.3 if n == 10_000 else None))
        rows.append(Row(f"{tag}: peak RSS (VmHWM)", mem["VmHWM"] / GB, "GB"))

        # As the daemon runs it: default checkpoint thresholds, so a recompute (which changes
        # every account's published balance) also writes its checkpoint if one is due.
        runs = [timed(lambda s=s: ex.recompute(s, now=0)) for s in (SUPPLY + 1, SUPPLY + 2,
                                                                     SUPPLY + 3)]
        rows.append(Row(f"{tag}: recompute (median of 3)", statistics.median(runs),
                        "s", 0.5 if n == 100_000 else None,
                        note="new supply; incl. a checkpoint if due"))
        t = timed(lambda: (ex.recompute(SUPPLY + 4, now=0), ex.checkpoint()))
        rows.append(Row(f"{tag}: recompute + its checkpoint", t, "s",
                        note="every balance: a balances file"))

        # The same without the checkpoint, and its two parts.
        ex._checkpoints.ops = ex._checkpoints.rows = 1 << 62  # white-box (module docstring)
        ex._checkpoints.seconds = float("inf")
        runs = [timed(lambda s=s: ex.recompute(s, now=0)) for s in (SUPPLY, SUPPLY + 1,
                                                                     SUPPLY + 2)]
        rows.append(Row(f"{tag}: recompute, no checkpoint", statistics.median(runs), "s"))
        # a deposit's recompute: same supply
        runs = [timed(lambda: ex.recompute(SUPPLY + 2, now=0)) for _ in range(3)]
        rows.append(Row(f"{tag}: recompute, same supply", statistics.median(runs),
                        "s", 0.5 if n == 100_000 else None, note="deposits"))
        with ex._lock:  # white-box (module docstring)
            st = ex._state
            t_in = timed(lambda: st.exchange_totals(SUPPLY + 7, 0))
            m = st.matrix[:len(st.names)]
            t_assign = timed(lambda: peg.assign_balances(m, SUPPLY, 10**15))
            st.dirty_rows.update(st.names)  # the next checkpoint writes every row
        rows.append(Row(f"{tag}:  . exchange totals ({n:,d} inputs)", t_in, "s",
                        note="per-supply tables, no vector read"))
        rows.append(Row(f"{tag}:  . assign_balances", t_assign, "s"))
        size = len(st.names) * peg.PEG_SIZE * 8
        t_ck = timed(ex.checkpoint)
        rows.append(Row(f"{tag}:  . checkpoint of all rows", t_ck, "s",
                        note=f"a {size / GB:.2f} GB rows file, {size / GB / t_ck:.2f} GB/s"))

        if quick and n > 1_000:
            ex.close()
            return rows  # restarts only in the full run
        ex.recompute(SUPPLY, now=0)  # one logged op after the checkpoint to replay
        check = fingerprint(ex, n)
        ex.store.close()  # no checkpoint: like a crash
        # the restart in a process of its own, as the daemon restarts: its time and memory
        got = reopen_child(path, n)
        assert got["check"] == check and got["replayed"] == 1, got
        rows.append(Row(f"{tag}: restart (open + replay 1)", got["seconds"], "s",
                        5.0 if n == 100_000 else None, note="a new process"))
        rows.append(Row(f"{tag}: RSS after restart", got["rss"] / GB, "GB",
                        1.5 if n == 100_000 else 0.3 if n == 10_000 else None,
                        note="steady state of a reopened ledger"))
        rows.append(Row(f"{tag}: ledger on disk", got["size"] / GB, "GB"))
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return rows


def fingerprint(ex: Exchange, n: int) -> str:
    """The digest (up to 100,000 users; above, the digest's reading back of every input
    vector and hashing of every row take minutes: seq, holdings and balance totals)."""
    if n <= 100_000:
        return ex.digest()
    with ex._lock:  # white-box (module docstring)
        view = ex._state.view[:len(ex._state.names)]
        return f"{ex.seq}:{ex.holdings().tolist()}:{view.sum(axis=0).tolist()}"


def reopen(path: str, n: int) -> None:
    """Child of reopen_child: open the ledger, print what the parent checks."""
    t = time.perf_counter()
    ex = Exchange(Store(path))
    seconds = time.perf_counter() - t
    rss = proc_status()["VmRSS"]
    out = {"seconds": seconds, "rss": rss, "replayed": ex.replayed,
           "size": ex.store.approximate_size(), "check": fingerprint(ex, n)}
    ex.store.close()  # leave it as it was
    print(json.dumps(out))


def reopen_child(path: Path, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--reopen", str(path), "--param", str(n)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def funded_ledger(path: Path, n_users: int) -> tuple[Exchange, list[str]]:
    """A ledger whose ``n_users`` users each hold a registered 10,000 BAY STD deposit."""
    ex = Exchange(Store(path))
    items = [{**it, "vector": peg.std_spread(10**12), "value": 10**12}
             for it in full_profiles(n_users)]
    ex.credit_inputs(items, supply=SUPPLY, now=0)
    return ex, [it["owner"] for it in items]


def bench_trades(threads: int, quick: bool) -> list[Row]:
    """Durable user->user trades through the engine (fsync on), 1 or N threads, and restart."""
    n_users = 300
    total = (1_500 if quick else 6_000) * (1 if threads == 1 else 2)
    path = tmp_ledger()
    rows: list[Row] = []
    try:
        ex, names = funded_ledger(path, n_users)
        rng = np.random.default_rng(threads)
        plan = [(names[a], int(x), names[b]) for a, b, x in zip(
            rng.integers(0, n_users, total), rng.integers(0, n_users, total),
            rng.integers(1_000, 10**6, total), strict=True) if a != b]
        seq0, commits0 = ex.seq, ex.journal.commits

        def run(part: list) -> None:
            for u1, amount, u2 in part:
                ex.trade(u1, amount, u2)

        t = time.perf_counter()
        if threads == 1:
            run(plan)
        else:
            workers = [threading.Thread(target=run, args=(plan[k::threads],))
                       for k in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        wall = time.perf_counter() - t
        records = ex.seq - seq0
        group = records / max(1, ex.journal.commits - commits0)
        rows.append(Row(f"trades, {threads} thread{'s' if threads > 1 else ''} (durable)",
                        len(plan) / wall, "ops/s", 2000 if threads == 1 else None, "higher",
                        note=f"{len(plan):,d} trades; {group:.1f} records per fsync"))
        if threads == 1:
            ex.checkpoint()
            run(plan[:500])  # a log tail after the checkpoint, to replay on restart
            digest = ex.digest()
            ex.store.close()
            t = time.perf_counter()
            ex = Exchange(Store(path))
            rows.append(Row(f"restart after trades ({n_users} users, replay {ex.replayed})",
                            time.perf_counter() - t, "s"))
            assert ex.digest() == digest
        ex.close()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return rows


def bench_fsync(_: int, quick: bool) -> list[Row]:
    """The floor under durable trades: one synced ~100-byte put per batch via Store.batch()."""
    path = tmp_ledger()
    n = 1_000 if quick else 3_000
    try:
        store = Store(path)
        value = b"x" * 100

        def puts() -> None:
            for i in range(n):
                with store.batch() as wb:
                    wb.put(b"Tbench\x00" + i.to_bytes(8, "big"), value)

        rate = n / timed(puts)
        store.close()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return [Row("fsync floor: synced 100 B put", rate, "ops/s", better="higher",
                note="plyvel via Store.batch(), 1 put per batch")]


def bench_oplog(n_ops: int, quick: bool) -> list[Row]:
    """Restart after ``n_ops`` logged trades (checkpoints as the daemon makes them), no clean
    close: how long the log of a busy day takes to come back."""
    n_users = 1_000
    path = tmp_ledger()
    try:
        ex, names = funded_ledger(path, n_users)
        rng = np.random.default_rng(5)
        a, b = rng.integers(0, n_users, n_ops), rng.integers(0, n_users, n_ops)
        t = time.perf_counter()

        def run(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                if a[i] != b[i]:
                    ex.trade(names[a[i]], 1_000 + i % 977, names[b[i]])
        step = -(-n_ops // 8)
        ts = [threading.Thread(target=run, args=(k, min(k + step, n_ops)))
              for k in range(0, n_ops, step)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        build = time.perf_counter() - t
        seq, pending = ex.seq, ex.seq - ex.ckpt_seq
        digest = ex.digest()
        ex.store.close()  # a crash: whatever the last checkpoint did not cover is replayed
        t = time.perf_counter()
        ex = Exchange(Store(path))
        restart = time.perf_counter() - t
        assert ex.digest() == digest and ex.seq == seq
        rows = [Row(f"oplog: {seq:,d} logged ops (8 threads)", seq / build, "ops/s",
                    better="higher", note=f"{n_users:,d} users, checkpoints every 5,000 ops"),
                Row(f"oplog: restart after {seq:,d} ops", restart, "s", 10.0,
                    note=f"{pending:,d} ops replayed after the last checkpoint")]
        ex.close()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return rows


def bench_rpc(clients: int, quick: bool) -> list[Row]:
    """Durable Trade calls/s over XML-RPC next to a no-op on the same daemon, and multicall.

    A real `pegx serve` (devnet, blocks on demand) on a free port; each client thread has its
    own stock ServerProxy (HTTP/1.1 keep-alive, as a stock client gets).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import xmlrpc.client

    from harness.daemon import Daemon

    per = 300 if quick else 1_500
    root = tmp_ledger().parent
    rows: list[Row] = []
    d = Daemon(root / "d").start()
    try:
        users = [f"bench{i:03d}" for i in range(max(clients * 2, 4))]
        d.fund(users[0], 10**14)
        x = d.proxy()
        for u in users[1:]:
            x.Trade(users[0], str(10**12), u)

        def rate(call: Callable[[object, int, int], object]) -> float:
            return calls_per_second(d.url, clients, per, call)

        def trade(p, k: int, j: int) -> None:
            got = p.Trade(users[2 * k % len(users)], 1 + j % 7, users[(2 * k + 1) % len(users)])
            assert got is True, got

        rate(lambda p, k, j: p.pegx.noop())  # warm-up: connections, caches
        noop = rate(lambda p, k, j: p.pegx.noop())
        trades = rate(trade)
        target = 0.6 if clients == 1 else 0.8
        rows.append(Row(f"XML-RPC no-op, {clients} client(s)", noop, "calls/s", better="higher"))
        rows.append(Row(f"XML-RPC durable Trade, {clients} client(s)", trades, "calls/s",
                        better="higher"))
        rows.append(Row(f"XML-RPC Trade / no-op, {clients} client(s)", trades / noop, "ratio",
                        target, better="higher", note="same daemon, same run"))
        if clients == 1:
            mc = xmlrpc.client.MultiCall(x)
            for j in range(100):
                mc.Trade(users[0], 1 + j, users[1])
            t = time.perf_counter()
            assert all(r is True for r in mc())
            rows.append(Row("system.multicall of 100 Trades", 100 / (time.perf_counter() - t),
                            "trades/s", better="higher", note="one call, 100 durable trades"))
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def bench_standby(clients: int, quick: bool) -> list[Row]:
    """Durable Trade calls/s with a synchronous standby on loopback, next to the same primary
    without one, in one run (issue #17).

    Two real `pegx serve` primaries (devnet, blocks on demand) on free ports: one without
    replication, one with ``--sync-standby`` (strict) and its standby, both on this machine.
    The same clients, calls and users run against each, alternately, twice, and each figure is
    the better of its two (the machine is shared: a burst of other work hits one pass only).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

    from harness.daemon import Daemon
    from harness.replica import make_key, primary, standby, wait_caught_up, wait_loaded

    per = 200 if quick else 1_000
    root = tmp_ledger().parent
    key = make_key(root)
    plain = Daemon(root / "plain").start()
    sync = primary(root / "p", key, sync=True).start(wait_loaded=False)
    stand = standby(root / "s", key, sync)
    daemons = [plain, sync, stand]
    try:
        stand.start()
        wait_loaded(sync)
        users = [f"bench{i:03d}" for i in range(clients * 2)]
        for d in (plain, sync):
            d.fund("bankroll", 10**14)
            for u in users:
                assert d.proxy().Trade("bankroll", str(10**12), u) is True

        def trade(x, k: int, j: int) -> None:
            got = x.Trade(users[2 * k], 1 + j % 7, users[2 * k + 1])
            assert got is True, got

        def rate(d: Daemon) -> float:
            return calls_per_second(d.url, clients, per, trade)

        alone, with_standby = [], []
        for _ in range(2):
            alone.append(rate(plain))
            with_standby.append(rate(sync))
        wait_caught_up(sync, stand)
        digests = [d.proxy().pegx.digest("") for d in (sync, stand)]
        assert digests[0] == digests[1], digests  # the standby holds the same ledger
        a, w = max(alone), max(with_standby)
        return [
            Row(f"XML-RPC Trade, no standby, {clients} client(s)", a, "calls/s",
                better="higher"),
            Row(f"XML-RPC Trade, sync standby, {clients} client(s)", w, "calls/s",
                better="higher", note="strict: acked once the standby fsynced"),
            Row(f"sync standby / none, {clients} client(s)", w / a, "ratio", better="higher",
                note="same run, same machine (loopback)"),
        ]
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(root, ignore_errors=True)


BENCHES: dict[str, Bench] = {
    "fsync": Bench(bench_fsync, (0,), (0,)),
    "standby": Bench(bench_standby, (1, 8), (1, 8)),
    "rpc": Bench(bench_rpc, (1, 8), (1, 8)),
    "oplog": Bench(bench_oplog, (1_000_000,), (20_000,)),
    "trades": Bench(bench_trades, (1, 8), (1, 8)),
    "users": Bench(bench_users, (10_000, 100_000), (1_000, 10_000)),
}


# ------------------------------------------------------------------ driver
def run_worker(name: str, param: int, quick: bool) -> None:
    rows = BENCHES[name].fn(param, quick)
    print(json.dumps([asdict(r) for r in rows]))


def run_child(name: str, param: int, quick: bool) -> list[Row]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--param", str(param)]
    if quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return [Row(f"{name} {param}: FAILED", float("nan"), "", note=tail[:80])]
    return [Row(**r) for r in json.loads(out.stdout.strip().splitlines()[-1])]


def print_table(rows: list[Row]) -> None:
    def fmt(v: float) -> str:
        if np.isnan(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}"

    head = ("benchmark", "value", "unit", "target", "ratio/ok", "note")
    body = [(r.name, fmt(r.value), r.unit,
             "" if r.target is None else f"{'<=' if r.better == 'lower' else '>='} "
                                        f"{fmt(r.target)}",
             r.verdict(), r.note) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    for i, line in enumerate([head, *body]):
        print("  ".join(c.ljust(w) if k in (0, 2, 5) else c.rjust(w)
                        for k, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks (each case in a child process) and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(BENCHES), action="append",
                    help="run only this benchmark (repeatable)")
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--users", type=int, action="append",
                    help="users benchmark at this many users (repeatable; with --only users)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--reopen", help=argparse.SUPPRESS)
    ap.add_argument("--param", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.param, args.quick)
        return 0
    if args.reopen:
        reopen(args.reopen, args.param)
        return 0
    rows: list[Row] = []
    t0 = time.perf_counter()
    for name in args.only or list(BENCHES):
        bench = BENCHES[name]
        params = bench.quick if args.quick else bench.full
        if name == "users" and args.users:
            params = tuple(args.users)
        for param in params:
            print(f"running {name} {param or ''}...", file=sys.stderr, flush=True)
            rows += run_child(name, param, args.quick)
    print()
    print_table(rows)
    print(f"\n{'quick' if args.quick else 'full'} run, {time.perf_counter() - t0:.0f} s; "
          f"{os.cpu_count()} CPUs; targets are reported, not asserted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
