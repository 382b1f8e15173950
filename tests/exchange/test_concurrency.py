"""Concurrent trading while blocks and cycle changes happen (issue 7, bullet 3).

Sixteen client threads trade among eight shared users (user to user in both styles, pool debits
and credits, some over-balance attempts that must be refused) while a miner thread mines across
two cycle boundaries with a deflation and then an inflation vote, so balances are recomputed at
a new supply in the middle of the trading. Afterwards:

* serial replay: every account's total (liquid + reserve) equals its deposit plus the sum of the
  acknowledged trades' deltas, exactly: the order threads ran in does not matter for totals;
* conservation: Σ over users, pool and withdraws == the exchange's registered inputs ==
  the deposits, and no balance is negative;
* the supply really moved (the trades straddled two recomputes);
* after a restart every balance and the cycle are identical;
* ``pegx.audit`` (per-step conservation and every engine invariant) reports no problem, when
  the daemon publishes it.
"""

from __future__ import annotations

import random
import threading
import xmlrpc.client
from collections import Counter

import pytest

from harness import wait_until
from harness.daemon import Daemon
from pegx import crypto

BAY = 100_000_000
SUPPLY = 40
USERS = [f"trader{i:02d}" for i in range(8)]
DEPOSIT = 1000 * BAY
THREADS = 16
TRADES_PER_THREAD = 40
RESERVE_LIMIT = "Reserve withdraw limit reached, please wait until transactions clear."
BUSY = "Exchange is busy. Please try again in a few minutes."
REFUSALS = ("Insufficient liquid balance", "Insufficient reserve balance",
            "Insufficient funds in liquid pool. Please make the debit before the credit.",
            "Insufficient funds in reserve pool. Please make the debit before the credit.",
            BUSY)


def settled(x) -> dict:
    """Wait until the exchange follows the chain tip and has published its cycle."""
    def caught_up():
        info, st = x.devnet.info(), x.pegx.status()
        return (st["height"] == info["height"] and st["cycle"] == info["cycle"]) and st

    return wait_until(caught_up, 20, what="the exchange to catch up with the chain")


def balances(x, names: list[str]) -> dict:
    got = x.system.multicall([{"methodName": "GetBalance", "params": [n]} for n in names])
    out = {}
    for name, (bal,) in zip(names, got, strict=True):
        assert isinstance(bal, dict), (name, bal)
        out[name] = bal
    return out


class Trader(threading.Thread):
    """Random trades with its own connection; records every acknowledged trade's deltas."""

    def __init__(self, url: str, seed: int, acked: Counter, lock: threading.Lock):
        super().__init__(name=f"trader-{seed}", daemon=True)
        self.url = url
        self.rng = random.Random(seed)  # fixed seeds: the same attempts every run
        self.acked = acked
        self.lock = lock
        self.deltas: Counter = Counter()
        self.answers: Counter = Counter()
        self.error: BaseException | None = None

    def attempt(self) -> tuple[tuple, dict]:
        """(Trade arguments, deltas if acknowledged)."""
        r = self.rng
        u1, u2 = r.choice(USERS), r.choice(USERS)
        style = r.choice(("liquid", "reserve"))
        amount = r.choice((r.randint(1, 10**6), r.randint(1, 5 * BAY), r.randint(1, 20 * BAY)))
        kind = r.random()
        if kind < 0.1:  # pool debit: user1 into the pool
            return (u1, -amount, "", style), {u1: -amount, "pool": amount}
        if kind < 0.2:  # pool credit: out of the pool to user1
            return (u1, amount, "", style), {"pool": -amount, u1: amount}
        if kind < 0.25:  # far more than anyone holds: must be refused
            amount = 10**6 * BAY
        if u1 == u2:  # accepted, and changes nothing
            return (u1, str(amount), u2, style), {}
        return (u1, str(amount), u2, style), {u1: -amount, u2: amount}

    def run(self) -> None:
        x = xmlrpc.client.ServerProxy(self.url, allow_none=True)
        try:
            for _ in range(TRADES_PER_THREAD):
                args, deltas = self.attempt()
                got = x.Trade(*args)
                self.answers[got if isinstance(got, str) else repr(got)] += 1
                if got is True:
                    self.deltas.update(deltas)
                    with self.lock:
                        self.acked["n"] += 1
                else:
                    assert got in REFUSALS, (args, got)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc


def mine_across_boundary(x, vote: str, steps: int) -> None:
    """Vote, then mine in small chunks past the next cycle boundary, waiting for each block to
    be followed, so trades keep interleaving with blocks and the recompute."""
    assert x.devnet.vote(vote, steps) is True
    info = x.devnet.info()
    target = info["height"] + info["blocks_to_next_cycle"] + 1
    while x.devnet.info()["height"] < target:
        x.devnet.mine(min(7, target - x.devnet.info()["height"]))
        settled(x)


OPTIONS = {"extra": ["--initial-supply", str(SUPPLY)], "env": {"PEGX_POLL_SECONDS": "0.1"}}


@pytest.fixture(scope="module")
def funded_datadir(tmp_path_factory):
    """A stopped exchange: every user holds DEPOSIT."""
    d = Daemon(tmp_path_factory.mktemp("concurrency") / "d", **OPTIONS)
    with d:
        d.fund_many(dict.fromkeys(USERS, DEPOSIT))
    return d.datadir


@pytest.fixture
def exchange(funded_datadir, tmp_path):
    """That exchange running on a copy of its own (each test starts from the same state)."""
    with Daemon.clone(funded_datadir, tmp_path / "d", **OPTIONS) as d:
        yield d


def test_concurrent_trades_across_cycle_changes_replay_exactly(exchange):
    x = exchange.proxy()
    names = [*USERS, "pool", "withdraws"]
    start = settled(x)
    initial = balances(x, names)
    assert all(initial[u]["liquid"] + initial[u]["reserve"] == DEPOSIT for u in USERS)
    supply0, cycle0 = start["supply"], start["cycle"]

    acked, lock = Counter(), threading.Lock()
    traders = [Trader(exchange.url, seed, acked, lock) for seed in range(THREADS)]
    for t in traders:
        t.start()
    # the miner: a deflation boundary once trading is under way, an inflation one later
    wait_until(lambda: acked["n"] >= 60 or not any(t.is_alive() for t in traders), 60,
               what="the first trades")
    mine_across_boundary(x, "deflate", 3)
    mid = x.pegx.status()
    wait_until(lambda: acked["n"] >= 180 or not any(t.is_alive() for t in traders), 60,
               what="more trades")
    mine_across_boundary(x, "inflate", 2)
    for t in traders:
        t.join(120)
        assert not t.is_alive(), f"{t.name} is stuck"
        assert t.error is None, f"{t.name}: {t.error!r}"
    end = settled(x)

    # the trades really straddled two recomputes at new supplies
    assert mid["supply"] == supply0 + 3 and end["supply"] == supply0 + 1, (mid, end)
    assert end["cycle"] == cycle0 + 2
    answers = sum((t.answers for t in traders), Counter())
    assert answers["True"] >= 300, answers  # most trades went through ...
    assert sum(answers[r] for r in REFUSALS[:4]) >= 20, answers  # ... and some were refused

    # serial replay: totals are order-independent, so they must match exactly
    deltas: Counter = Counter()
    for t in traders:
        deltas.update(t.deltas)  # update(), not +: Counter addition drops negative counts
    final = balances(x, names)
    for name in names:
        expected = (DEPOSIT if name in USERS else 0) + deltas[name]
        got = final[name]["liquid"] + final[name]["reserve"]
        assert got == expected, f"{name}: {got:,d} != {expected:,d} (deltas {deltas[name]:,d})"
        assert final[name]["liquid"] >= 0 and final[name]["reserve"] >= 0, (name, final[name])

    # conservation: the accounts hold exactly the exchange's registered inputs
    ex = x.GetBalance("exchange")
    held = sum(b["liquid"] + b["reserve"] for b in final.values())
    assert held == len(USERS) * DEPOSIT == ex["liquid"] + ex["reserve"] + ex["frozen"], (held, ex)
    assert sum(final[n]["liquid"] for n in names) <= ex["liquid"]

    if "pegx.audit" in x.system.listMethods():
        report = x.pegx.audit("")
        assert report["ok"] is True, report["problems"]

    # a restart changes nothing
    cycle = x.GetCycle()
    exchange.stop()
    exchange.start()
    x = exchange.proxy()
    assert balances(x, names) == final
    assert x.GetBalance("exchange") == ex
    assert x.GetCycle() == cycle


def test_sixteen_concurrent_claims_of_one_deposit_credit_exactly_one_user(exchange):
    """First claim wins, even when all sixteen arrive at once (ORIGINAL §5 item 44)."""
    x = exchange.proxy()
    key, ok = x.GenerateDepositAddress()
    assert ok is True
    address = crypto.wif_to_address(key)
    wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 10, what="key import")
    outpoint = x.devnet.send(address, str(77 * BAY))
    x.devnet.mine(13)
    wait_until(lambda: outpoint in x.GetSpendable(address), 10, what="Spendable")
    claimants = [f"claimant{i:02d}" for i in range(THREADS)]
    answers: dict[str, object] = {}
    barrier = threading.Barrier(THREADS)

    def claim(user: str) -> None:
        proxy = exchange.proxy()
        barrier.wait()
        answers[user] = proxy.Deposit(user, [outpoint])

    threads = [threading.Thread(target=claim, args=(u,)) for u in claimants]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{t.name} is stuck"
    winners = [u for u, a in answers.items() if a is True]
    assert len(winners) == 1, answers
    losers = {a for u, a in answers.items() if u not in winners}
    assert losers == {f"{outpoint} was already deposited for another user."}, losers
    exchange.wait_registered(outpoint)
    assert x.GetDeposits(outpoint) == {"name": winners[0], "registered": 1}
    got = {u: x.GetBalance(u) for u in claimants}
    assert got[winners[0]]["liquid"] + got[winners[0]]["reserve"] == 77 * BAY
    assert all(b is False for u, b in got.items() if u != winners[0]), got  # never created


def test_trades_and_withdraws_while_the_withdraw_windows_run(exchange):
    """Withdraws batched, broadcast and confirmed while trades go on: every user ends at
    start + acknowledged trades - completed withdraws, exactly, and the audit is clean."""
    x = exchange.proxy()
    # without a change address and a fee address the desk cannot batch (withdraws expire)
    assert x.ExchangeSettings([x.devnet.new_address()], x.devnet.new_address()) is True
    names = [*USERS, "pool", "withdraws"]
    initial = balances(x, names)
    acked, lock = Counter(), threading.Lock()
    traders = [Trader(exchange.url, 100 + seed, acked, lock) for seed in range(8)]
    withdrawn: list[tuple[str, int, str]] = []
    refused: Counter = Counter()

    def withdrawer(seed: int) -> None:
        r, proxy = random.Random(seed), exchange.proxy()
        for _ in range(6):
            user, amount = r.choice(USERS), r.randint(2 * BAY, 20 * BAY)
            to = crypto.wif_to_address(crypto.generate_deposit_key())
            got = proxy.Withdraw(user, str(amount), to, r.choice(("liquid", "reserve")))
            if got[0] is True:
                with lock:
                    withdrawn.append((user, amount, got[1]))
            else:
                refused[got[0]] += 1

    workers = traders + [threading.Thread(target=withdrawer, args=(s,)) for s in range(4)]
    for t in workers:
        t.start()
    for _ in range(200):  # through the liquid (10-74) and reserve (75-119) windows
        x.devnet.mine(7)
        settled(x)
        done = not any(t.is_alive() for t in workers)
        if done and x.pegx.status()["withdraws"].get("pending", 0) == 0 and all(
                isinstance(s := x.CheckWithdraw(w), dict) and s["status"] == "Complete"
                for _, _, w in withdrawn):
            break
    for t in workers:
        t.join(60)
        assert not t.is_alive(), f"{t.name} is stuck"
        assert getattr(t, "error", None) is None, t.error
    assert len(withdrawn) >= 10, (withdrawn, refused)
    assert set(refused) <= {"Insufficient liquid balance", "Insufficient reserve balance",
                            RESERVE_LIMIT}, refused
    statuses = Counter(x.CheckWithdraw(w)["status"] for _, _, w in withdrawn)
    assert statuses == {"Complete": len(withdrawn)}, statuses
    deltas: Counter = Counter()
    for t in traders:
        deltas.update(t.deltas)
    for user, amount, _ in withdrawn:
        deltas[user] -= amount
    final = balances(x, names)
    for name in names:
        expected = initial[name]["liquid"] + initial[name]["reserve"] + deltas[name]
        assert final[name]["liquid"] + final[name]["reserve"] == expected, name
    assert final["withdraws"] == {"liquid": 0, "reserve": 0}
    if "pegx.audit" in x.system.listMethods():
        report = x.pegx.audit("")
        assert report["ok"] is True, report["problems"]
