#!/usr/bin/env python3
"""Where the microseconds of one XML-RPC Trade go (issue #15), next to a no-op.

Runs a real pegx daemon in this process (App: devnet, blocks on demand, its own temp datadir,
the real selector transport on a free port), funds users through the API, then times stock
``xmlrpc.client`` calls (1 and 8 clients, HTTP/1.1 keep-alive) twice: plain, for calls/s and
the Trade / no-op ratio; then with timers wrapped around the stages of the server's path (this
script only: nothing in pegx is changed), for the breakdown:

  http parse    RPCServer._serve minus _handle: request line, headers, framing, response head
  xml unmarshal xmlrpc.client.loads of the body
  checks        the call outside the ledger: dispatch, arity, password, busy / loaded /
                stopped, names, amount (RPCServer._call minus Exchange.trade)
  ledger checks Exchange.trade before and around its lock: names, amount, style, funds
  vector work   State.apply_group: peg.deduction of the 1200-step row, both rows moved
  op encoding   Journal.append: the op as JSON (its size is printed)
  lock hold     the ledger lock from acquired to released (funds check + the two above)
  fsync wait    Journal.wait: this call's group commit (shared by concurrent calls)
  checkpoints   the automatic checkpoint a call may run after its fsync (amortised)
  marshal       RPCServer._response: the methodResponse
  socket+client what the client's wall time per call has beyond the server's _serve (the
                selector, socket reads/writes, the stock client's own marshal and parse)

With 8 clients the per-call figures are each thread's own time (they overlap: a call's wall
time is not their sum), and calls/s is what counts. The timers cost ~1 us per stage.

    .venv/bin/python scripts/tradepath.py [--calls 2000] [--clients 1 --clients 8]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

from rpcload import calls_per_second

from pegx import config
from pegx.app import App
from pegx.crypto import wif_to_address
from pegx.ledger import journal as journal_mod
from pegx.ledger import ops
from pegx.ledger.state import State
from pegx.rpc import server as server_mod

STAGES = ("http parse", "xml unmarshal", "checks", "ledger checks", "vector work",
          "op encoding", "lock hold", "fsync wait", "checkpoints", "marshal")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Timers:
    """Per-thread nesting-free stage timers (µs summed per stage, calls counted)."""

    def __init__(self):
        self.total: dict[str, float] = collections.defaultdict(float)
        self.mu = threading.Lock()
        self.on = False

    def add(self, name: str, seconds: float) -> None:
        if self.on:
            with self.mu:
                self.total[name] += seconds

    def wrap(self, owner, attr: str, name: str, *, instance=None):
        """Replace ``owner.attr`` by a timed call of it (on ``instance`` if given)."""
        target = instance if instance is not None else owner
        inner = getattr(target, attr)
        add = self.add

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                add(name, time.perf_counter() - t)
        setattr(target, attr, timed)


def start_app(root: Path) -> tuple[App, str]:
    port = free_port()
    cfg = config.load({"datadir": str(root / "d"), "port": port, "block_seconds": 0.0,
                       "autostart": True, "log_level": "WARNING"}, environ={})
    app = App(cfg)
    app.chain.start()
    app.server.serve_in_thread()
    app.session.start()  # StartExchange(1): started, and the cycle thread runs
    url = f"http://127.0.0.1:{port}"
    x = xmlrpc.client.ServerProxy(url)
    wait_until(lambda: x.StartExchange("", 1, 1) is True, 60, "the exchange to load")
    return app, url


def fund(url: str, net, user: str, amount: int) -> None:
    x = xmlrpc.client.ServerProxy(url)
    wif, ok = x.GenerateDepositAddress()
    assert ok is True, wif
    address = wif_to_address(wif, net)
    wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 30, "the key import")
    out = x.devnet.send(address, str(amount))
    x.devnet.mine(13)
    wait_until(lambda: out in x.GetSpendable(address), 30, "Spendable")
    assert x.Deposit(user, [out]) is True
    wait_until(lambda: (x.GetDeposits(out) or {}).get("registered") == 1, 30, "registration")


def client_rate(url: str, clients: int, per: int, kind: str, users: list[str]) -> float:
    """Calls/s of ``clients`` threads making ``per`` calls each, in a process of their own
    (so that this process's CPU time is the server's alone)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--client", url, "--clients",
           str(clients), "--calls", str(per), "--kind", kind, "--users", ",".join(users)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_clients(url: str, clients: int, per: int, kind: str, users: list[str]) -> float:
    """The client side (``--client``): stock ServerProxy per thread, keep-alive."""
    def call(p, k: int, j: int) -> None:
        if kind == "noop":
            p.pegx.noop()
        else:
            got = p.Trade(users[2 * k % len(users)], 1 + j % 7, users[(2 * k + 1) % len(users)])
            assert got is True, got
    return calls_per_second(url, clients, per, call)


def measured(url: str, clients: int, per: int, kind: str, users: list[str]) -> tuple:
    """(calls/s, server CPU us per call) of one run."""
    c0 = os.times()
    r = client_rate(url, clients, per, kind, users)
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return r, cpu / (per * clients) * 1e6


def instrument(app: App, timers: Timers) -> None:
    """Timers around the stages (see the module docstring); lock hold from the ledger's
    RLock (acquired -> released, outermost only)."""
    srv = app.server
    timers.wrap(None, "_serve", "_serve", instance=srv._transport)  # what the workers call
    timers.wrap(server_mod.RPCServer, "_handle", "_handle", instance=srv)
    timers.wrap(server_mod, "loads", "xml unmarshal")
    timers.wrap(server_mod.RPCServer, "_call", "_call", instance=srv)
    timers.wrap(server_mod.RPCServer, "_response", "marshal", instance=srv)
    led = app.ledger
    timers.wrap(type(led), "trade", "_trade", instance=led)
    timers.wrap(State, "apply_group", "vector work", instance=led._state)
    timers.wrap(journal_mod.Journal, "append", "op encoding", instance=led.journal)
    timers.wrap(journal_mod.Journal, "wait", "fsync wait", instance=led.journal)
    timers.wrap(type(led._checkpoints), "maybe", "checkpoints", instance=led._checkpoints)
    lock = led._lock
    held = threading.local()

    class TimedLock:
        """The ledger's RLock, timed from the outermost acquire to its release."""

        def __enter__(self):
            lock.acquire()
            depth = getattr(held, "depth", 0)
            if depth == 0:
                held.t = time.perf_counter()
            held.depth = depth + 1
            return self

        def __exit__(self, *exc):
            held.depth -= 1
            if held.depth == 0:
                timers.add("lock hold", time.perf_counter() - held.t)
            lock.release()

        def acquire(self, *a, **k):
            return lock.acquire(*a, **k)

        def release(self):
            return lock.release()

        def __getattr__(self, name):
            return getattr(lock, name)

    led._lock = TimedLock()


def breakdown(url: str, app: App, timers: Timers, clients: int, per: int, users) -> dict:
    """us per call of each stage for Trade and for a no-op, and the client's wall time."""
    out = {}
    for what in ("noop", "trade"):
        timers.total.clear()
        commits = app.ledger.journal.commits
        timers.on = True
        r, cpu = measured(url, clients, per, what, users)
        timers.on = False
        n = per * clients
        t = {k: v / n * 1e6 for k, v in timers.total.items()}
        row = {
            "calls/s": r,
            "wall": clients / r * 1e6,
            "server cpu": cpu,
            "http parse": t.get("_serve", 0) - t.get("_handle", 0),
            "xml unmarshal": t.get("xml unmarshal", 0),
            "checks": t.get("_call", 0) - t.get("_trade", 0),
            "ledger checks": t.get("_trade", 0) - t.get("vector work", 0)
            - t.get("op encoding", 0) - t.get("fsync wait", 0) - t.get("checkpoints", 0),
            "vector work": t.get("vector work", 0),
            "op encoding": t.get("op encoding", 0),
            "lock hold": t.get("lock hold", 0),
            "fsync wait": t.get("fsync wait", 0),
            "checkpoints": t.get("checkpoints", 0),
            "marshal": t.get("marshal", 0),
            "server": t.get("_serve", 0),
            "fsyncs": app.ledger.journal.commits - commits,
            "n": n,
        }
        row["socket+client"] = row["wall"] - row["server"] if clients == 1 else None
        out[what] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per figure")
    ap.add_argument("--clients", type=int, action="append", help="1 and 8 unless given")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--users", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        print(run_clients(args.client, args.clients[0], args.calls, args.kind,
                          args.users.split(",")))
        return 0
    root = Path(tempfile.mkdtemp(prefix="pegx-tradepath-"))
    app = None
    try:
        app, url = start_app(root)
        users = [f"tp{i:03d}" for i in range(16)]
        fund(url, app.cfg.net, users[0], 10**14)
        x = xmlrpc.client.ServerProxy(url)
        for u in users[1:]:
            assert x.Trade(users[0], str(10**12), u) is True
        size = len(journal_mod.encode([ops.trade(users[0], users[1], 5, "liquid")])[0])
        plain, parts = {}, {}
        for clients in args.clients or [1, 8]:
            per = max(50, args.calls // clients)
            measured(url, clients, per // 4, "noop", users)  # warm-up
            plain[clients] = (measured(url, clients, per, "noop", users),
                              measured(url, clients, per, "trade", users))
        timers = Timers()
        instrument(app, timers)
        for clients in args.clients or [1, 8]:
            per = max(50, args.calls // clients)
            parts[clients] = breakdown(url, app, timers, clients, per, users)
        report(plain, parts, size)
    finally:
        if app is not None:
            with contextlib.suppress(Exception):
                app.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(plain: dict, parts: dict, size: int) -> None:
    print("\nXML-RPC Trade path (plain runs, no timers; clients in another process)")
    print(f"{'clients':>8} {'no-op/s':>9} {'Trade/s':>9} {'ratio':>6} {'target':>8}  "
          f"server CPU us/call: no-op, Trade")
    for c, ((noop, ncpu), (tr, tcpu)) in plain.items():
        target = 0.6 if c == 1 else 0.8
        print(f"{c:>8} {noop:>9,.0f} {tr:>9,.0f} {tr / noop:>6.2f} {'>= ' + str(target):>8} "
              f"{'ok' if tr / noop >= target else 'MISS':<4}  {ncpu:,.0f}, {tcpu:,.0f}")
    for c, row in parts.items():
        print(f"\nper call, {c} client(s), with timers (us; each thread's own time)")
        print(f"{'stage':<16} {'no-op':>8} {'Trade':>8} {'Trade - no-op':>14}")
        keys = ("wall", "server cpu") + STAGES + ("server", "socket+client")
        for k in keys:
            a, b = row["noop"].get(k), row["trade"].get(k)
            if a is None or b is None:
                continue
            print(f"{k:<16} {a:>8.1f} {b:>8.1f} {b - a:>14.1f}")
        fs, n = row["trade"]["fsyncs"], row["trade"]["n"]
        print(f"calls/s with timers: no-op {row['noop']['calls/s']:,.0f}, Trade "
              f"{row['trade']['calls/s']:,.0f}; {n / max(fs, 1):.1f} Trades per fsync")
    print(f"\none Trade op in the log: {size} bytes of JSON")


if __name__ == "__main__":
    sys.exit(main())
