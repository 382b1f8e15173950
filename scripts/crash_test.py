#!/usr/bin/env python3
"""Crash-injection test (STYLE 12, in the spirit of Bitcoin Core's feature_dbcrash).

Runs `pegx serve` on the devnet, drives it with K client processes (stock xmlrpc.client) doing
random deposits, trades, pool moves and withdraws, kills the daemon with SIGKILL at random
moments (and deliberately right after mining across a cycle boundary or into the liquid withdraw
window), restarts it with the same command line and checks after every restart:

* every call that returned True is reflected, and no call that was refused or never sent left
  an effect: every account's total (liquid + reserve, which a recompute never changes) must equal
  a model built from the clients' call logs;
* a call that got no answer (the daemon died under it) happened entirely or not at all: exactly
  one subset of the in-flight calls makes every account match (at most one call per client is
  in flight, so there are at most 2^K candidates);
* ``pegx.audit`` (the ledger's one audit: conservation and every invariant) reports ``ok``;
* the daemon came back by itself within 30 s, with no traceback in its log, and caught up with
  the chain's cycle.

The model is the "run that never crashed": it is what the ledger must hold if every
acknowledged call, and nothing else, took effect.

    python scripts/crash_test.py --kills 30 --clients 3 --seed 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from xml.parsers.expat import ExpatError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
if str(HERE) not in sys.path:  # spawned clients import this module by name when it is imported
    sys.path.append(str(HERE))
from daemon import Daemon, wait_until  # the shared daemon fixture (tests/daemon.py)

from pegx.crypto import generate_deposit_key, wif_to_address

CYCLE = 200
WINDOW = (11, 74)  # liquid withdraw window by block position (DESIGN §6: 10-74)
TASK_SPACING = 25  # the cycle thread runs a window task at most every 25 blocks
POOL, WITHDRAWS, HOUSE = "pool", "withdraws", "exchange"
REFUNDED = ("Failed/Declined", "Expired")
INT32 = 2**31
FUNDING = 2 * 10**12  # 20,000 BAY per user: far above 2^31, so every balance is an <i8>
START_LIMIT = 30.0  # seconds a restart may take before the run fails
BATCH_LINE = re.compile(r"(liquid|reserve) batch [0-9a-f]+: tx ")  # pegx.exchange.withdraws' log line


# ------------------------------------------------------------------------ XML-RPC transport
class OneShotTransport(xmlrpc.client.Transport):
    """The stock transport, minus its silent retry, on a fresh connection per call.

    Stock ``Transport.request`` resends a request once when the connection is reset. After a
    crash that resend meets a closed port and raises ConnectionRefusedError, which would make a
    call that may well have been applied look as if it was never sent. One attempt per call, and
    a fresh connection (no stale keep-alive socket from the previous daemon), keeps the outcome
    honest: refused at connect = not sent; anything after that = unknown.
    """

    timeout = 60.0

    def make_connection(self, host):
        """A new HTTPConnection with a timeout (a hung daemon must not hang the client)."""
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn

    def request(self, host, handler, request_body, verbose=False):
        """One attempt; the connection is closed afterwards."""
        try:
            return self.single_request(host, handler, request_body, verbose)
        finally:
            self.close()


def proxy(url: str) -> xmlrpc.client.ServerProxy:
    """A stock ServerProxy on the one-shot transport."""
    return xmlrpc.client.ServerProxy(url, transport=OneShotTransport(), allow_none=True)


def classify(method: str, result) -> str:
    """acked / refused for a call that got an answer (errors are values in this API)."""
    if method.startswith("devnet."):
        return "acked"
    if result is True:
        return "acked"
    if isinstance(result, list) and len(result) == 2 and True in result:
        return "acked"  # Withdraw -> (True, id), GenerateDepositAddress -> (key, True)
    return "refused"


# ------------------------------------------------------------------------ client processes
def wire(amount: int, rng: random.Random):
    """Amounts beyond ±2^31 go as decimal strings (a stock client cannot send them as ints)."""
    if abs(amount) >= INT32 or rng.random() < 0.3:
        return str(amount)
    return amount


def draw_amount(rng: random.Random) -> int:
    """Mostly small amounts, 30 % above 2^31 (exercises <i8> on the way back)."""
    if rng.random() < 0.3:
        return rng.randrange(INT32, 4 * INT32)
    return int(10 ** rng.uniform(4, 9.3))


class Client:
    """One client process: random calls, each logged (intent, then outcome) to a JSONL file."""

    def __init__(self, k: int, url: str, users: list[str], everyone: list[str], seed: int,
                 log_path: str):
        self.k = k
        self.rng = random.Random(seed * 1009 + k)
        self.x = proxy(url)
        self.users, self.everyone = users, everyone
        self.log = open(log_path, "a")  # noqa: SIM115 (closed when the process ends)
        self.n = 0
        self.address: str | None = None  # generated, nothing sent yet
        self.pending: list[dict] = []  # sent to an exchange address, not yet claimed
        self.last_deposit_step = 0.0

    def _write(self, rec: dict) -> None:
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    def call(self, method: str, args: list, fx: dict) -> tuple[str, object]:
        """Log the intent, make the call, log the outcome; returns (outcome, result)."""
        self.n += 1
        self._write({"n": self.n, "k": self.k, "m": method, "args": args, "fx": fx})
        result = None
        try:
            result = getattr(self.x, method)(*args)
            outcome = classify(method, result)
        except ConnectionRefusedError:
            outcome = "not_sent"
        except xmlrpc.client.Fault as exc:
            outcome, result = "fault", exc.faultString
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError,
                ExpatError) as exc:
            outcome, result = "unknown", f"{type(exc).__name__}: {exc}"
        rec = {"n": self.n, "k": self.k, "o": outcome, "r": repr(result)[:200]}
        if method == "Withdraw" and outcome == "acked":
            rec["id"] = result[1]
        self._write(rec)
        if outcome == "not_sent":
            time.sleep(0.05)  # the daemon is down; the coordinator is about to pause us
        return outcome, result

    def step(self) -> None:
        """One random call: trade, pool debit/credit, withdraw, an oversized trade or a
        deposit step."""
        rng = self.rng
        u = rng.choice(self.users)
        r = rng.random()
        if r < 0.12 and time.monotonic() - self.last_deposit_step > 0.3:
            self.last_deposit_step = time.monotonic()
            return self.deposit_step(u)
        a = draw_amount(rng)
        if r < 0.55:
            v = rng.choice([w for w in self.everyone if w != u])
            style = "reserve" if rng.random() < 0.1 else "liquid"
            self.call("Trade", [u, wire(a, rng), v, style],
                      {"kind": "move", "src": u, "dst": v, "amount": a})
        elif r < 0.70:
            self.call("Trade", [u, wire(-a, rng), ""],
                      {"kind": "move", "src": u, "dst": POOL, "amount": a})
        elif r < 0.85:
            self.call("Trade", [u, wire(a, rng), ""],
                      {"kind": "move", "src": POOL, "dst": u, "amount": a})
        elif r < 0.88:
            a = rng.randrange(2 * 10**8, 3 * 10**9)
            address = wif_to_address(generate_deposit_key())
            style = "reserve" if rng.random() < 0.2 else "liquid"
            self.call("Withdraw", [u, wire(a, rng), address, style],
                      {"kind": "withdraw", "user": u, "amount": a, "address": address})
        else:  # more than anyone has: must be refused and change nothing
            v = rng.choice([w for w in self.everyone if w != u])
            a = rng.randrange(10**15, 10**16)
            self.call("Trade", [u, str(a), v], {"kind": "move", "src": u, "dst": v, "amount": a})

    def deposit_step(self, user: str) -> None:
        """GenerateDepositAddress -> devnet.send -> Deposit (retried until acknowledged)."""
        if self.pending:
            p = self.pending[0]
            outcome, _ = self.call("Deposit", [p["user"], [p["outpoint"]]],
                                   {"kind": "claim", **p})
            if outcome == "acked":
                self.pending.pop(0)
        elif self.address is not None:
            value = self.rng.randrange(10**9, 5 * 10**11)
            outcome, result = self.call("devnet.send", [self.address, str(value)],
                                        {"kind": "none"})
            if outcome == "acked":
                self.pending.append({"outpoint": result, "user": user, "value": value})
            self.address = None  # unknown: the payment may exist, unclaimed; harmless
        else:
            outcome, result = self.call("GenerateDepositAddress", [], {"kind": "none"})
            if outcome == "acked":
                self.address = wif_to_address(result[0])


def client_main(k: int, url: str, users: list[str], everyone: list[str], seed: int,
                log_path: str, phase, acks) -> None:
    """Process body: run while ``phase`` is odd, acknowledge even (paused) phases, stop at -1."""
    client = Client(k, url, users, everyone, seed, log_path)
    while True:
        ph = phase.value
        if ph < 0:
            return
        if ph % 2 == 0:
            acks[k] = ph
            time.sleep(0.01)
            continue
        client.step()


# ------------------------------------------------------------------------ the model
def effect(fx: dict) -> Counter:
    """The balance effect of a call that took effect, per account."""
    c: Counter = Counter()
    if fx["kind"] == "move":
        c[fx["src"]] -= fx["amount"]
        c[fx["dst"]] += fx["amount"]
    elif fx["kind"] == "withdraw":
        c[fx["user"]] -= fx["amount"]
        c[WITHDRAWS] += fx["amount"]
    return c


@dataclass
class Summary:
    """What a run did and found."""

    kills_intended: int
    kills: int = 0
    labels: Counter = field(default_factory=Counter)
    kills_in_flight: int = 0
    outcomes: Counter = field(default_factory=Counter)
    unknown_applied: int = 0
    unknown_not_applied: int = 0
    claims_applied: int = 0
    claims_not_applied: int = 0
    restarts: list[float] = field(default_factory=list)
    conservation: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Passed: every intended kill happened and no check failed."""
        return self.kills >= self.kills_intended and not self.failures

    def lines(self) -> list[str]:
        """The printed summary."""
        r = sorted(self.restarts) or [0.0]
        return [
            (f"kills: {self.kills} of {self.kills_intended} intended "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.labels.items()))}); "
            f"{self.kills_in_flight} with calls in flight"),
            "calls: " + ", ".join(f"{k} {v:,d}" for k, v in sorted(self.outcomes.items())),
            (f"unknown calls resolved: {self.unknown_applied} applied, "
            f"{self.unknown_not_applied} not applied; unknown claims: {self.claims_applied} "
            f"applied, {self.claims_not_applied} not"),
            f"restart: min {r[0]:.2f} s, median {statistics.median(r):.2f} s, max {r[-1]:.2f} s",
            "conservation checks: " + (", ".join(f"{k} {v}" for k, v in
                                                 sorted(self.conservation.items())) or "none"),
            f"result: {'PASS' if self.ok else 'FAIL'}"
            + "".join(f"\n  failure: {f}" for f in self.failures),
        ]


class CheckFailed(AssertionError):
    """A crash check failed; the message says which and how."""


class Model:
    """What the ledger must hold: every acknowledged call, and nothing else."""

    def __init__(self, users: list[str]):
        self.users = users
        self.base: Counter = Counter()  # applied moves, withdraws, refunds, burns
        self.withdraws: dict[str, dict] = {}  # known id -> fx, not yet final
        self.orphans: list[dict] = []  # applied withdraws whose id never reached a client
        self.claims: dict[str, dict] = {}  # outpoint -> {user, value, acked, maybe}
        self.unknown: list[dict] = []  # calls of this life without an answer

    def take(self, call: dict, summary: Summary) -> None:
        """Fold one logged call (intent + outcome) into the model."""
        outcome, fx = call.get("o", "unknown"), call["fx"]
        summary.outcomes[outcome] += 1
        if fx["kind"] == "claim":
            c = self.claims.setdefault(fx["outpoint"], {"user": fx["user"], "value": fx["value"],
                                                         "acked": False, "maybe": False})
            c["acked"] |= outcome == "acked"
            c["maybe"] |= outcome in ("unknown", "fault")
        elif outcome == "acked":
            self.base.update(effect(fx))
            if fx["kind"] == "withdraw":
                self.withdraws[call["id"]] = fx
        elif outcome in ("unknown", "fault") and fx["kind"] != "none":
            self.unknown.append(call)

    def expected(self, snap: dict) -> Counter:
        """Account totals implied by the model and the daemon's claim/withdraw statuses."""
        exp = Counter(self.base)
        for outpoint, claim in snap["claims"].items():
            if claim.get("registered") == 1 and claim.get("name") != HOUSE:
                exp[claim["name"]] += self.claims[outpoint]["value"]
        for wid, fx in self.withdraws.items():
            status = snap["status"].get(wid)
            if status in REFUNDED:
                exp[fx["user"]] += fx["amount"]
                exp[WITHDRAWS] -= fx["amount"]
            elif status == "Complete":
                exp[WITHDRAWS] -= fx["amount"]
        return exp

    def check_claims(self, snap: dict, summary: Summary) -> None:
        """Acked claims exist; claims exist only where a Deposit was acked or got no answer."""
        for outpoint, claim in snap["claims"].items():
            if claim.get("name") == HOUSE:
                continue  # the exchange's own change, registered by the cycle or the desk
            mine = self.claims.get(outpoint)
            if mine is None or not (mine["acked"] or mine["maybe"]):
                raise CheckFailed(f"claim {outpoint} -> {claim} exists but no Deposit for it "
                                  "was acknowledged or in flight")
            if claim.get("name") != mine["user"]:
                raise CheckFailed(f"claim {outpoint} names {claim.get('name')!r}, "
                                  f"Deposit was for {mine['user']!r}")
        for outpoint, mine in self.claims.items():
            present = outpoint in snap["claims"]
            if mine["acked"] and not present:
                raise CheckFailed(f"acknowledged Deposit {outpoint} for {mine['user']} is gone")
            if mine["maybe"] and not mine["acked"]:
                summary.claims_applied += present
                summary.claims_not_applied += not present
                mine["acked"], mine["maybe"] = present, False

    def resolve(self, snap: dict, accounts: list[str], summary: Summary) -> str:
        """Find the one combination of unanswered calls (applied or not) and orphan withdraw
        fates (pending, refunded, completed) that fits the daemon's totals; apply it."""
        exp = self.expected(snap)
        choices = [[Counter(), effect(c["fx"])] for c in self.unknown]
        choices += [[Counter(), Counter({o["user"]: o["amount"], WITHDRAWS: -o["amount"]}),
                     Counter({WITHDRAWS: -o["amount"]})] for o in self.orphans]
        fits, best = [], None
        for combo in product(*(range(len(c)) for c in choices)):
            want = Counter(exp)
            for c, pick in zip(choices, combo, strict=True):
                want.update(c[pick])
            bad = {a: (want[a], snap["totals"][a]) for a in accounts
                   if want[a] != snap["totals"][a]}
            if not bad:
                fits.append(combo)
            elif best is None or len(bad) < len(best):
                best = bad
        if len(fits) != 1:
            calls = [f"{c['m']}{c['args']} -> {c.get('o', 'no outcome')}" for c in self.unknown]
            detail = ("no combination fits; closest differs on (model, daemon): "
                      + "; ".join(f"{a}: {w:,d} vs {g:,d} (diff {g - w:+,d})"
                                  for a, (w, g) in sorted(best.items()))
                      if not fits else f"{len(fits)} combinations fit")
            raise CheckFailed(f"ledger does not match the calls: {detail}; unanswered calls: "
                              f"{calls or 'none'}; orphan withdraws: {len(self.orphans)}")
        combo = fits[0]
        for c, pick in zip(choices, combo, strict=True):
            self.base.update(c[pick])
        n = len(self.unknown)
        orphans = [o for o, pick in zip(self.orphans, combo[n:], strict=True) if pick == 0]
        for call, pick in zip(self.unknown, combo[:n], strict=True):
            if pick and call["fx"]["kind"] == "withdraw":
                orphans.append(call["fx"])  # applied, but its id never reached us
            summary.unknown_applied += pick
            summary.unknown_not_applied += not pick
        self.orphans = orphans
        applied = sum(combo[:n])
        settled = sum(1 for pick in combo[n:] if pick)
        for wid, fx in list(self.withdraws.items()):  # final statuses become history
            status = snap["status"].get(wid)
            if status in REFUNDED or status == "Complete":
                if status != "Complete":
                    self.base[fx["user"]] += fx["amount"]
                self.base[WITHDRAWS] -= fx["amount"]
                del self.withdraws[wid]
        self.unknown = []
        return (f"{applied} of {n} unanswered applied"
                + (f", {settled} orphan withdraws settled" if settled else ""))


# ------------------------------------------------------------------------ the coordinator
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
        outpoints = []
        for user in self.everyone:  # one funding deposit per user, all in the same blocks
            key, ok = x.GenerateDepositAddress()
            assert ok is True, key
            outpoint = x.devnet.send(wif_to_address(key), str(FUNDING))
            outpoints.append((user, outpoint))
            self.model.claims[outpoint] = {"user": user, "value": FUNDING, "acked": True,
                                           "maybe": False}
        x.devnet.mine(13)
        for user, outpoint in outpoints:
            wait_until(lambda o=outpoint: o in x.GetSpendable(), 20, what=f"{outpoint} spendable")
            assert x.Deposit(user, [outpoint]) is True
        for _, outpoint in outpoints:
            d.wait_registered(outpoint, 20)
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


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 0 only if every check passed and all kills happened."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=30, help="SIGKILLs to inject (default 30)")
    ap.add_argument("--clients", type=int, default=3, help="client processes (default 3)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the datadir and client logs")
    ap.add_argument("--quiet", action="store_true", help="only print the summary")
    ap.add_argument("--workdir", help="where to run (default: a new temp dir)")
    args = ap.parse_args(argv)
    summary = run(args.workdir, kills=args.kills, clients=args.clients, seed=args.seed,
                  keep=args.keep, quiet=args.quiet)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
