"""Reorganisations against the exchange, in-process (real Devnet, real LevelDB ledger, the real
cycle and desk, stepped block by block): a matrix of depths 1..final depth + 2 at random moments
of the withdraw lifecycle and of a deposit. After each one the lifecycle is driven to its end
and checked: the conservation law (every pass), every payee paid at most once on the final
chain, every user paid or refunded exactly once, `pegx audit` clean."""

from __future__ import annotations

import logging
import random

import pytest

from harness import COMM, new_address
from harness.rig import Rig
from pegx import crypto
from pegx.admin.audit import audit
from pegx.chain.base import CYCLE_BLOCKS
from pegx.exchange.cycle import ExchangeCycle
from pegx.exchange.planner import commission
from pegx.exchange.session import Session
from pegx.exchange.withdraws import WithdrawDesk
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

F = 3  # exchangeconfirmations; final_depth 0 follows it
DEPTHS = range(1, F + 3)
AMOUNT = 10**10


class ReorgRig(Rig):
    """The withdraw rig with exchangeconfirmations = F and the final depth following it."""

    def open(self) -> None:
        self.ledger = Exchange(Store(self.path / "ledger"))
        self.desk = WithdrawDesk(self.ledger, self.chain)
        self.session = Session(self.ledger, self.chain)
        self.cycle = ExchangeCycle(self.ledger, self.chain, self.session, desk=self.desk,
                                   final_depth=0)
        s = self.ledger.exchange_settings()
        s["exchangeconfirmations"] = F
        self.ledger.put("settings", "exchange", s)
        self.step()

    def batch(self, wid: str) -> tuple[str, dict] | None:
        master = self.ledger.record("batch_of", wid)
        if not isinstance(master, str):
            return None
        return master, self.ledger.record("batches", master)

    def total(self, user: str) -> int:
        bal = self.ledger.balance(user)
        return bal["liquid"] + bal["reserve"]

    def conf(self, txid: str) -> int:
        tx = self.chain.get_transaction(txid)
        return tx.confirmations if tx is not None else -1

    def audit_ok(self) -> dict:
        report = audit(self.ledger, self.chain)
        assert report["ok"], report["problems"]
        return report


@pytest.fixture
def rig(tmp_path):
    r = ReorgRig(tmp_path, supply=100)
    r.setup()
    r.fund("alice", 10**12)
    r.fund("bobby", 10**12)
    yield r
    r.close()
    r.chain.close()


def request(rig: ReorgRig, wid: str, user: str = "alice") -> tuple[str, int]:
    payee = new_address()
    before = rig.total(user)
    rig.ledger.request_withdraw(wid, user, AMOUNT, "liquid", payee, rig.cycle.cycle())
    rig.step()
    return payee, before


def finish(rig: ReorgRig, wid: str, payee: str, before: int, user: str = "alice") -> str:
    """Drive the withdraw to its end, F + 2 blocks past it, and check the invariants."""
    rig.until(lambda: (rig.status(wid) or {}).get("status") in ("Complete", "Failed/Declined"))
    rig.mine(F + 2)
    status = rig.status(wid)["status"]
    paid = rig.chain.balance(payee)["amount"]
    _, b = rig.batch(wid)
    if status == "Complete":
        assert paid == AMOUNT - commission(AMOUNT, COMM)  # paid exactly once on this chain
        assert rig.total(user) == before - AMOUNT  # and not refunded
        assert rig.chain.get_transaction(b["final_txid"]).confirmations >= F
    else:
        assert paid == 0  # not paid
        withheld = b.get("withheld", {}).get(wid, 0)
        assert rig.total(user) == before - withheld  # refunded exactly once
    rig.audit_ok()
    return status


def moment_batched(rig, wid, rng):
    """The batch is signed, recorded and in the mempool."""
    rig.until(lambda: rig.batch(wid) is not None)
    return 0


def moment_mined(rig, wid, rng):
    """Its transaction is mined, 1..F-1 deep: Processing, not Complete."""
    c = rng.randint(1, F - 1)
    rig.until(lambda: rig.batch(wid) is not None)
    rig.until(lambda: rig.conf(rig.batch(wid)[1]["txid"]) >= c)
    assert rig.status(wid)["status"] == "Processing"
    assert rig.status(wid)["confirmations"] == c
    return c


def moment_complete(rig, wid, rng):
    """Complete (F deep) and possibly a little more."""
    rig.until_status(wid, "Complete")
    extra = rng.randint(0, 1)
    rig.mine(extra)
    return F + extra


def moment_cancel(rig, wid, rng):
    """Every broadcast of the batch refused, its cancel sent and mined 0..F-1 deep."""
    def refused_until_cancelling() -> bool:
        found = rig.batch(wid)
        if found is not None and found[1]["state"] == "cancelling":
            return True
        if not rig.chain.info()["reject_next_broadcast"]:
            rig.chain.reject_next_broadcast("refused by the test")
        return False

    rig.until(refused_until_cancelling)
    cancel = rig.batch(wid)[1]["cancel"]["txid"]
    c = rng.randint(0, F - 1)
    rig.until(lambda: rig.conf(cancel) >= c)
    assert rig.status(wid)["status"] == "unconfirmed"
    return c


MOMENTS = {"batched": moment_batched, "mined": moment_mined, "complete": moment_complete,
           "cancel": moment_cancel}


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_reorg_matrix_over_the_withdraw_lifecycle(rig, moment, caplog):
    """Depths 1..F+2, each at a random point of ``moment``, with a random kind of new branch:
    the same transactions, none of them, or (where the batch's block is replaced) a conflicting
    spend: a spend of a batch input back to its own address (the batch's cancel, as the desk
    would sign it) or, during a cancel, the batch instead of its cancel."""
    rng = random.Random(f"reorg-{moment}")
    outcomes = []
    for depth in DEPTHS:
        wid = f"{moment}-{depth}"
        payee, before = request(rig, wid)
        c = MOMENTS[moment](rig, wid, rng)
        _, b = rig.batch(wid)
        replaced = depth >= c > 0  # the block holding the batch's (or cancel's) tx goes
        kinds = ["keep", "drop"]
        if replaced and moment in ("mined", "cancel"):
            kinds.append("conflict")
        kind = rng.choice(kinds)
        spend = []
        if kind == "conflict":
            spend = [b["txid"]] if moment == "cancel" else [rng.choice(b["ins"])]
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            rig.chain.reorg(depth, "keep" if kind == "keep" else "drop", spend=spend)
            rig.step()
        deep = depth >= F
        alarms = [r for r in caplog.records if r.levelno >= logging.ERROR
                  and "chain reorganisation" in r.getMessage()]
        assert bool(alarms) == deep, (depth, [r.getMessage() for r in caplog.records])
        status = finish(rig, wid, payee, before)
        outcomes.append((depth, c, kind, status))
        if kind == "conflict":  # the new chain proves what happened
            assert status == ("Complete" if moment == "cancel" else "Failed/Declined"), outcomes
    st = rig.cycle.follower.state()
    assert st["reorgs"] == len(DEPTHS)
    assert len(st["alarms"]) == sum(1 for d in DEPTHS if d >= F)


def test_no_refund_while_the_batch_could_still_confirm(rig):
    """The original declined a batch as soon as an input was spent elsewhere: a branch that
    spends it, then loses to one that mines the batch, paid the user twice. Now the refund waits
    for the conflicting spend to be final, and the batch completes instead."""
    payee, before = request(rig, "w")
    rig.until(lambda: rig.batch("w") is not None)
    _, b = rig.batch("w")
    rig.chain.mine(1)  # the batch, 1 deep
    rig.chain.reorg(1, "drop", spend=[b["ins"][0]])  # a branch with its cancel instead
    rig.step()
    for _ in range(F - 2):
        rig.mine(1)
    cancel = rig.chain.spender(b["ins"][0])
    assert rig.conf(cancel) == F - 1  # not final: nothing refunded yet
    assert rig.status("w")["status"] == "unconfirmed"
    assert rig.ledger.record("withdraws", "w") is not None
    assert rig.batch("w")[1]["state"] == "cancelling"  # adopted as its cancel, not settled
    rig.chain.reorg(F - 1, "drop", spend=[b["txid"]])  # and back: the batch wins after all
    rig.step()
    assert finish(rig, "w", payee, before) == "Complete"


def test_a_deep_reorg_that_drops_a_complete_batch_broadcasts_it_again(rig, caplog):
    payee, before = request(rig, "w")
    rig.until_status("w", "Complete")
    _, b = rig.batch("w")
    with caplog.at_level(logging.ERROR):
        rig.chain.reorg(F + 1, "drop")
        rig.step()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "a block taken as final was replaced" in text and "broadcast again" in text
    assert rig.chain.get_transaction(b["final_txid"]).height == 0  # back in the mempool
    alarm = rig.cycle.follower.last_alarm()
    assert alarm["depth"] == F + 1 and any(b["final_txid"] in line for line in alarm["changed"])
    assert finish(rig, "w", payee, before) == "Complete"
    report = rig.audit_ok()
    assert report["reorganisations"][-1]["changed"] == alarm["changed"]


def test_a_deep_reorg_that_cancels_a_complete_batch_is_an_alarm_not_a_refund(rig, caplog):
    """Beyond the final depth pegx does not undo a Complete withdraw by itself: the alarm
    names the batch, the audit names the inputs that are not on the chain."""
    _, before = request(rig, "w")
    rig.until_status("w", "Complete")
    _, b = rig.batch("w")
    with caplog.at_level(logging.ERROR):
        rig.chain.reorg(F, "drop", spend=[b["ins"][0]])
        rig.step()
    alarm = rig.cycle.follower.last_alarm()
    assert any("an operator must account" in line for line in alarm["changed"]), alarm
    assert rig.total("alice") == before - AMOUNT  # nothing moved
    report = audit(rig.ledger, rig.chain)
    assert not report["ok"] and any("not in flight" in p for p in report["problems"])


@pytest.mark.parametrize("kind", ["keep", "drop"])
def test_deposit_whose_block_is_replaced_before_final_is_credited_once_or_not_at_all(rig, kind):
    rng = random.Random(f"deposit-{kind}")
    for depth in DEPTHS:
        user = f"dep{kind}{depth}"
        key = crypto.generate_deposit_key()
        address = crypto.wif_to_address(key)
        rig.ledger.put("addresses", address, {"wif": key, "imported": 0})
        rig.step()
        op = rig.chain.send(address, AMOUNT)
        rig.ledger.claim_deposits(user, [op])
        c = rng.randint(1, F - 1)  # not final yet: not credited
        rig.mine(c)
        assert rig.ledger.balance(user) is None or rig.total(user) == 0
        rig.chain.reorg(max(depth, c), kind)
        rig.mine(F + 6)  # past the rule even next to a cycle boundary
        credited = rig.ledger.balance(user)
        if kind == "keep":
            assert credited is not None and rig.total(user) == AMOUNT  # once
            assert rig.ledger.record("claims", op) == {"name": user, "registered": 1}
        else:  # the deposit is on no chain: never credited, the claim waits
            assert credited is None or rig.total(user) == 0
            assert rig.ledger.record("claims", op) == {"name": user}
        rig.audit_ok()


def test_a_reorg_across_a_boundary_that_moves_the_supply_republishes(rig, caplog):
    payee, before = request(rig, "w")  # pending through the boundary
    rig.until(lambda: rig.chain.tip().height % CYCLE_BLOCKS == 1)
    cycle, published, supply = rig.cycle.cycle(), rig.session.published(), rig.ledger.supply
    liquid = rig.ledger.balance("bobby")["liquid"]
    with caplog.at_level(logging.WARNING):
        rig.chain.reorg(2, "drop", votes="deflate:3")
        rig.step()
    assert rig.ledger.supply == supply + 3 == rig.chain.tip().supply
    assert rig.cycle.cycle() == cycle and rig.session.published() == published + 1
    assert rig.ledger.balance("bobby")["liquid"] < liquid  # recomputed at the new supply
    assert any("balances republished" in r.getMessage() for r in caplog.records)
    rig.chain.reorg(1, "keep")  # no supply change: nothing republished
    rig.step()
    assert rig.session.published() == published + 1
    rig.mine(CYCLE_BLOCKS)  # a new cycle moves GetCycle on as usual
    assert rig.session.published() == published + 2 and rig.cycle.cycle() == cycle + 1
    assert finish(rig, "w", payee, before) in ("Complete", "Failed/Declined")
