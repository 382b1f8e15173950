"""The crash run's coordinator: the daemon, the clients' phases, the kill loop and the checks
after every restart (see :mod:`harness.crash`)."""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import random
import re
import shutil
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

from harness import wait_until
from harness.crash.clients import POOL, WITHDRAWS, client_main, proxy
from harness.crash.model import CheckFailed, Model, Summary
from harness.daemon import Daemon

CYCLE = 200
WINDOW = (11, 74)  # liquid withdraw window by block position (DESIGN §6: 10-74)
TASK_SPACING = 25  # the cycle thread runs a window task at most every 25 blocks
FUNDING = 2 * 10**12  # 20,000 BAY per user: far above 2^31, so every balance is an <i8>
START_LIMIT = 30.0  # seconds a restart may take before the run fails
BATCH_LINE = re.compile(r"(liquid|reserve) batch [0-9a-f]+: tx ")  # pegx.exchange.withdraws' log line



def multicall(x: xmlrpc.client.ServerProxy, calls: list[tuple[str, list]]) -> list:
    """system.multicall; a failed call comes back as its fault dict."""
    res = x.system.multicall([{"methodName": m, "params": p} for m, p in calls])
    return [r[0] if isinstance(r, list) else r for r in res]


def total(balance) -> int:
    """liquid + reserve of a GetBalance answer (False: an unknown account holds nothing)."""
    if balance is False:
        return 0
    if not isinstance(balance, dict):
        raise TypeError(f"GetBalance returned {balance!r}")
    return int(balance["liquid"]) + int(balance["reserve"])


def snapshot(x, accounts: list[str], wids: list[str], timeout: float = 30.0) -> dict:
    """A consistent read of totals, claims and withdraw statuses.

    Consistent: the ledger's op seq (pegx.status) is the same before and after the reads, so
    the cycle thread changed nothing in between; while a recompute makes GetBalance answer
    'Balance is updating', read again.
    """
    calls = [("pegx.status", [])] + [("GetBalance", [a]) for a in accounts]
    calls += [("GetDeposits", [])]
    calls += [("CheckWithdraw", [w]) for w in wids] + [("pegx.status", [])]
    deadline = time.monotonic() + timeout
    while True:
        res = multicall(x, calls)
        first, final = res[0], res[-1]
        try:
            totals = {a: total(b) for a, b in zip(accounts, res[1:], strict=False)}
            snap = {"totals": totals, "claims": res[1 + len(accounts)],
                    "status": {w: (r.get("status") if isinstance(r, dict) else r)
                               for w, r in zip(wids, res[2 + len(accounts):-1], strict=True)},
                    "seq": final["op_seq"]}
            if first["op_seq"] == final["op_seq"]:
                return snap
        except (TypeError, KeyError, AttributeError) as exc:
            if time.monotonic() > deadline:
                raise CheckFailed(f"no consistent snapshot in {timeout:.0f} s: {exc}") from exc
        if time.monotonic() > deadline:
            raise CheckFailed(f"no consistent snapshot in {timeout:.0f} s (the ledger kept "
                              "changing)")
        time.sleep(0.1)


def traceback_in(text: str) -> str | None:
    """The first traceback in a log segment, with a little context, or None."""
    i = text.find("Traceback")
    return None if i < 0 else text[max(0, i - 300):i + 1500]


class Run:
    """One crash-test run: a daemon, K clients, the model and the kill loop."""

    def __init__(self, workdir: Path, *, kills: int, clients: int, seed: int, quiet: bool,
                 load: tuple[float, float]):
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.seed, self.quiet, self.load = seed, quiet, load
        self.summary = Summary(kills)
        # checkpoints often, so kills also land inside checkpoint writes; the supply walks
        # every cycle, so a recompute really reshuffles liquid and reserve
        self.daemon = Daemon(workdir / "node", block_seconds=0,
                             extra=["--devnet-walk", str(seed), "--initial-supply", "30"],
                             env={"PEGX_CHECKPOINT_OPS": "400", "PEGX_CHECKPOINT_SECONDS": "1"})
        self.users = [[f"c{k}user{j}" for j in range(3)] for k in range(clients)]
        self.everyone = [u for group in self.users for u in group]
        self.accounts = self.everyone + [POOL, WITHDRAWS]
        self.model = Model(self.everyone)
        self.ctx = mp.get_context("spawn")
        self.phase = self.ctx.Value("i", 0)
        self.acks = self.ctx.Array("i", [-1] * clients)
        self.procs: list = []
        self.offsets = [0] * clients

    def say(self, text: str) -> None:
        """Print a progress line unless --quiet."""
        if not self.quiet:
            print(text, flush=True)

    # -------------------------------------------------------------- setup
    def setup(self) -> None:
        """Start the daemon, set the exchange addresses, fund every user, start the clients."""
        d = self.daemon
        t0 = time.monotonic()
        d.start()
        self.summary.restarts.append(time.monotonic() - t0)
        self.life_start = 0
        x = d.proxy()
        # change and fee addresses in the devnet wallet, so the withdraw desk can build batches
        ok = x.ExchangeSettings([x.devnet.new_address()], x.devnet.new_address())
        assert ok is True, ok
        # one funding deposit per user, all in the same blocks
        funded = d.fund_many(dict.fromkeys(self.everyone, FUNDING))
        for user, outpoint in funded.items():
            self.model.claims[outpoint] = {"user": user, "value": FUNDING, "acked": True,
                                           "maybe": False}
        self.verify("setup")
        for k, group in enumerate(self.users):
            p = self.ctx.Process(target=client_main, name=f"crash-client-{k}", daemon=True,
                                 args=(k, d.url, group, self.everyone, self.seed,
                                       str(self.log_path(k)), self.phase, self.acks))
            p.start()
            self.procs.append(p)
        wait_until(lambda: all(a == 0 for a in self.acks) or self._dead_client(), 60,
                   what="the clients to start")
        self.say(f"setup: {len(self.everyone)} users funded with {FUNDING:,d} sat each, "
                 f"{len(self.procs)} clients")

    def log_path(self, k: int) -> Path:
        """Client k's JSONL call log."""
        return self.workdir / f"client{k}.jsonl"

    # -------------------------------------------------------------- clients
    def set_phase(self, running: bool) -> None:
        """Odd phases run, even phases pause; pausing waits until every client has stopped."""
        ph = self.phase.value + 1
        assert (ph % 2 == 1) == running
        self.phase.value = ph
        if not running:
            wait_until(lambda: all(a == ph for a in self.acks) or self._dead_client(), 60,
                       what="the clients to pause")

    def _dead_client(self) -> bool:
        dead = [p.name for p in self.procs if not p.is_alive()]
        if dead:
            raise CheckFailed(f"client process died: {dead}")
        return False

    def collect(self) -> int:
        """Read the calls made since the last collect into the model; returns how many got no
        answer (were in flight when the daemon died)."""
        before = len(self.model.unknown)
        claims_before = sum(c["maybe"] for c in self.model.claims.values())
        for k in range(len(self.procs)):
            with open(self.log_path(k)) as f:
                f.seek(self.offsets[k])
                text = f.read()
                self.offsets[k] += len(text.encode())
            calls: dict[int, dict] = {}
            for line in text.splitlines():
                rec = json.loads(line)
                calls.setdefault(rec["n"], {}).update(rec)
            for n in sorted(calls):
                self.model.take(calls[n], self.summary)
        return (len(self.model.unknown) - before
                + sum(c["maybe"] for c in self.model.claims.values()) - claims_before)

    # -------------------------------------------------------------- checks
    def verify(self, when: str) -> str:
        """Every check after a (re)start; returns a short note for the kill line."""
        d, x = self.daemon, self.daemon.proxy()
        seg = d.log()[self.life_start:]
        tb = traceback_in(seg)
        if tb:
            raise CheckFailed(f"{when}: traceback in the daemon log:\n{tb}")
        tip = x.devnet.info()
        wait_until(lambda: x.GetCycle() == tip["cycle"], START_LIMIT,
                   what=f"GetCycle to reach chain cycle {tip['cycle']}")
        wids = sorted(self.model.withdraws)
        snap = snapshot(x, self.accounts, wids)
        self.model.check_claims(snap, self.summary)
        note = self.model.resolve(snap, self.accounts, self.summary)
        self.conservation(x, when)
        return note

    def conservation(self, x, when: str) -> None:
        """The ledger's audit, over the API: it must report no problem."""
        result = x.pegx.audit()
        if not result["ok"]:
            raise CheckFailed(f"{when}: pegx.audit reports problems: {result['problems']!r}")
        self.summary.conservation["pegx.audit"] += 1

    # -------------------------------------------------------------- the kill loop
    def miner(self, stop: threading.Event) -> None:
        """Background blocks during load, so deposits confirm and windows pass by."""
        x = proxy(self.daemon.url)
        while not stop.wait(0.25):
            try:
                x.devnet.mine(1)
            except (OSError, http.client.HTTPException, xmlrpc.client.Error):
                pass

    def mine_to(self, height: int) -> int:
        """Mine up to ``height`` (if below it); returns the new height."""
        x = proxy(self.daemon.url)
        now = x.devnet.info()["height"]
        return x.devnet.mine(height - now) if height > now else now

    def deliberate(self, label: str) -> str:
        """Mine across a cycle boundary or into the liquid withdraw window, then pick the
        moment: a short random delay lands inside the cycle thread's pass; for half of the
        batch kills, wait until the batch is logged (recorded and broadcast) instead."""
        d = self.daemon
        h = proxy(d.url).devnet.info()["height"]
        if label == "cycle":
            target = (h // CYCLE + 1) * CYCLE + self.rng.randrange(0, 3)
        else:  # >= 25 blocks after any task the desk may have run, inside 11..74
            target = h + TASK_SPACING + self.rng.randrange(0, 10)
            pos = target % CYCLE
            if pos < WINDOW[0]:
                target += WINDOW[0] - pos + self.rng.randrange(0, 20)
            elif pos > WINDOW[1]:
                target += CYCLE - pos + WINDOW[0] + self.rng.randrange(0, 20)
        mark = len(d.log())
        got = self.mine_to(target)
        what = f"mined {h} -> {got} (pos {got % CYCLE})"
        if label == "batch" and self.rng.random() < 0.5:
            try:
                wait_until(lambda: BATCH_LINE.search(d.log(), mark), 3, interval=0.002)
                what += ", waited for the batch line"
            except AssertionError:
                what += ", no batch within 3 s"
        else:
            time.sleep(self.rng.uniform(0, 0.03 if label == "cycle" else 0.15))
        return what

    def round(self, i: int, label: str) -> None:
        """Load, (deliberate mining), SIGKILL, pause the clients, restart, verify."""
        d = self.daemon
        self.set_phase(True)
        stop = threading.Event()
        miner = threading.Thread(target=self.miner, args=(stop,), daemon=True)
        miner.start()
        load = self.rng.uniform(*self.load)
        time.sleep(load)
        log_mark = len(d.log())
        stop.set()
        miner.join()
        what = f"after {load:.2f} s of load"
        if label != "random":
            what += ", " + self.deliberate(label)
        pending = len(self.model.withdraws) + len(self.model.orphans)
        d.kill()
        self.summary.kills += 1
        self.summary.labels[label] += 1
        self.set_phase(False)
        in_flight = self.collect()
        self.summary.kills_in_flight += in_flight > 0
        tail = d.log()[log_mark:]
        if label == "cycle":
            what += (", recompute logged before the kill" if "balances recomputed" in tail
                     else ", killed before the recompute was logged")
        if label == "batch":
            what += (", a batch was logged before the kill" if BATCH_LINE.search(tail)
                     else ", no batch logged before the kill")
        t0 = time.monotonic()
        self.life_start = len(d.log())
        try:
            d.start()
        except AssertionError as exc:
            raise CheckFailed(f"kill {i}: the daemon did not come back: {exc}") from exc
        took = time.monotonic() - t0
        self.summary.restarts.append(took)
        if took > START_LIMIT:
            raise CheckFailed(f"kill {i}: restart took {took:.1f} s")
        note = self.verify(f"after kill {i}")
        self.say(f"kill {i:2d} [{label:6s}] {what}; {in_flight} in flight, {pending} withdraws "
                 f"pending; restart {took:.2f} s; {note}")

    def labels(self, n: int) -> list[str]:
        """Deterministic mix: every 5 kills one after a cycle boundary, one in a batch window."""
        return ["cycle" if i % 5 == 1 else "batch" if i % 5 == 3 else "random"
                for i in range(n)]

    def run(self) -> Summary:
        """Setup, every kill round, then a clean stop/start; failures end the run early."""
        try:
            self.setup()
            for i, label in enumerate(self.labels(self.summary.kills_intended), 1):
                self.round(i, label)
            # a clean stop and start must also lose nothing
            self.set_phase(True)
            time.sleep(self.rng.uniform(*self.load))
            self.daemon.stop()
            self.set_phase(False)
            self.collect()
            self.life_start = len(self.daemon.log())
            self.daemon.start()
            note = self.verify("after a clean restart")
            self.say(f"clean restart: {note}")
        except (CheckFailed, AssertionError, xmlrpc.client.Error, OSError) as exc:
            self.summary.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.close()
        return self.summary

    def close(self) -> None:
        """Stop the clients (the processes this run started) and the daemon."""
        self.phase.value = -1
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        if self.daemon.proc is not None:
            self.daemon.stop()


def run(workdir: str | Path | None = None, *, kills: int = 30, clients: int = 3, seed: int = 1,
        keep: bool = False, quiet: bool = False,
        load: tuple[float, float] = (0.2, 2.0)) -> Summary:
    """One crash-test run; returns its Summary (``.ok`` tells whether it passed)."""
    tmp = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pegx-crash-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    summary = Run(tmp, kills=kills, clients=clients, seed=seed, quiet=quiet, load=load).run()
    print(f"crash test: {time.monotonic() - t0:.0f} s, datadir {tmp}"
          f"{' (kept)' if keep or not summary.ok else ''}")
    for line in summary.lines():
        print(line)
    if not keep and summary.ok and workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


