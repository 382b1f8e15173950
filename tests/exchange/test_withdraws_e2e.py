"""Withdraw safety end to end (Hardening items 3, 4 and 14): a real `pegx serve` on the devnet
(blocks on demand), driven with stock xmlrpc.client and the devnet's levers.

After every scenario: `pegx.audit` is clean while the daemon runs; once it has stopped, the
ledger and the devnet are reopened from disk to check the conservation law exactly and that
the ledger's registered inputs are exactly the chain's unspent exchange outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness import COMM, SUPPLY, assert_returns, new_address, wait_until
from harness.daemon import (
    Daemon,
    advance_to,
    audit_ok,
    check_ledger_and_chain,
    mine_one,
    status_of,
    total,
)
from pegx import crypto, peg
from pegx.exchange.withdraws import CANCEL_FEE

BAY = 10**8























def start(tmp_path: Path, commission: dict = COMM) -> tuple[Daemon, object, str, str]:
    d = Daemon(tmp_path / "d", extra=["--initial-supply", str(SUPPLY)]).start()
    x = d.proxy()
    acct0, fee = x.devnet.new_address(), new_address()
    assert x.ExchangeSettings([acct0], fee, commission) is True
    return d, x, acct0, fee


def drop_until_cancelled(x, wid: str) -> str:
    """Drop ``wid``'s batch transaction from the mempool; returns its txid."""
    advance_to(x, wid, "unconfirmed")
    txid = x.CheckWithdraw(wid)["txid"]
    assert x.devnet.drop(txid) is True
    return txid


# ------------------------------------------------------------------------ item 3
def test_malleated_cancel_is_found_by_its_spender_and_settled(tmp_path):
    """A dropped batch is cancelled after three refused rebroadcasts; the cancel is mined
    under another txid. The desk finds it by the input it spends, registers its output and
    un-marks only the batch inputs that are still unspent."""
    d, x, _, _ = start(tmp_path)
    try:
        d.fund("alice", 10**11)
        ok, w0 = x.Withdraw("alice", str(10**10), new_address())
        assert ok is True
        advance_to(x, w0, "Complete")  # the house earns what the cancel will cost
        before = x.GetBalance("alice")
        ok, w1 = x.Withdraw("alice", str(10**9), new_address())
        assert ok is True
        txid = drop_until_cancelled(x, w1)
        # the mempool is empty now: the next transaction mined is the cancel
        assert x.devnet.info()["mempool"] == 0
        assert x.devnet.malleate_next() is True
        advance_to(x, w1, "Failed/Declined", 20)
        assert x.devnet.info()["malleate_next"] is False  # the lever was used (on the cancel)
        assert x.GetBalance("alice") == before
        assert x.CheckWithdraw(w1)["txid"] == txid
        audit_ok(x)
        # the exchange goes on paying withdraws from what it holds
        payee = new_address()
        ok, w2 = x.Withdraw("alice", str(10**10), payee)
        assert ok is True
        advance_to(x, w2, "Complete")
        assert x.devnet.balance(payee)["liquid"] == 10**10 - COMM["min"]
        audit_ok(x)
    finally:
        d.stop()
    check_ledger_and_chain(tmp_path / "d")


# ------------------------------------------------------------------------ item 4
def test_raised_minimum_commission_keeps_the_accepted_one(tmp_path):
    """A 2 BAY withdraw accepted at a 1 BAY minimum is paid 1 BAY after the minimum rose to
    5 BAY; a withdraw accepted after the change pays the new minimum; both in one batch."""
    d, x, _, fee = start(tmp_path)
    try:
        d.fund("alice", 10**11)
        before = x.GetBalance("alice")
        payee1, payee2 = new_address(), new_address()
        ok, w1 = x.Withdraw("alice", str(2 * BAY), payee1)
        assert ok is True
        assert x.ExchangeSettings("", "", {"min": 5 * BAY, "max": 10 * BAY,
                                           "percent": "0.001"}) is True
        assert_returns(lambda: x.Withdraw("alice", str(2 * BAY), payee2),
                       ["Withdraw amount is too low", ""])
        ok, w2 = x.Withdraw("alice", str(10 * BAY), payee2)
        assert ok is True
        advance_to(x, w1, "Complete")
        assert status_of(x, w2) == "Complete"
        assert x.CheckWithdraw(w1)["ID"] == x.CheckWithdraw(w2)["ID"]  # one batch
        assert x.devnet.balance(payee1)["liquid"] == 2 * BAY - BAY
        assert x.devnet.balance(payee2)["liquid"] == 10 * BAY - 5 * BAY
        assert x.devnet.balance(fee)["amount"] == 6 * BAY - (2 * 10000 + 500000)
        assert total(x.GetBalance("alice")) == total(before) - 12 * BAY
        audit_ok(x)
    finally:
        d.stop()
    check_ledger_and_chain(tmp_path / "d")


def test_a_withdraw_the_inputs_cannot_fund_does_not_hold_back_the_others(tmp_path):
    """Alice's liquid sits in 120 small deposits; a liquid batch spends at most 100 inputs, so
    her withdraw of nearly all of it cannot be funded. Bobby's withdraw in the same window is
    paid anyway; alice's waits, CheckWithdraw and `pegx status` say why, then it expires and is
    refunded exactly. (Before the builder of issue #12, CheckWithdraw said "ID not found".)"""
    d, x, _, _ = start(tmp_path)
    try:
        key, ok = x.GenerateDepositAddress()
        assert ok is True
        address = crypto.wif_to_address(key)
        wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 30)
        small = [x.devnet.send(address, str(10**9)) for _ in range(120)]
        x.devnet.mine(13)
        wait_until(lambda: all(k in x.GetSpendable(address) for k in small), 30)
        assert x.Deposit("alice", small) is True
        wait_until(lambda: all(x.GetDeposits(k).get("registered") for k in small), 30)
        d.fund("bobby", 10**10)
        spendable = x.GetSpendable()
        top = sorted((int(e["ltotal"]) for e in spendable.values()), reverse=True)[:100]
        alice = x.GetBalance("alice")
        amount = alice["liquid"]
        assert amount + 10**9 > sum(top)  # the premise: no 100 inputs fund both
        payee_a, payee_b = new_address(), new_address()
        ok, wa = x.Withdraw("alice", str(amount), payee_a)
        assert ok is True
        ok, wb = x.Withdraw("bobby", str(10**9), payee_b)
        assert ok is True
        advance_to(x, wb, "Complete")
        assert x.devnet.balance(payee_b)["liquid"] == 10**9 - COMM["min"]
        rec = x.CheckWithdraw(wa)  # still pending, with the reason
        assert rec["status"] == "Pending" and rec["ID"] == wa and rec["txid"] == ""
        assert rec["reason"].startswith("waits for a later batch: Not enough funds: the batch "
                                        "needs "), rec
        assert "the exchange's 100 best spendable inputs hold" in rec["reason"], rec
        assert x.CheckWithdraw(wa, 1) == rec  # clear=1 leaves a pending withdraw alone
        st = x.pegx.status()
        assert st["withdraws_not_batchable"].startswith(
            "1 liquid withdraw left out of the last batch, e.g.: waits for a later batch: "
            "Not enough funds"), st["withdraws_not_batchable"]
        assert st["withdraws"]["pending"] == 1 and "Pending" not in st["withdraws"]
        advance_to(x, wa, "Expired")
        assert x.devnet.balance(payee_a)["amount"] == 0
        assert total(x.GetBalance("alice")) == total(alice)
        audit_ok(x)
    finally:
        d.stop()
    check_ledger_and_chain(tmp_path / "d")


# ------------------------------------------------------------------------ item 14
def test_cancel_with_an_empty_house_is_withheld_from_the_commission(tmp_path):
    """The exchange's first batch is cancelled: the house account holds nothing, so the
    cancel's 10,000 sat miner fee comes out of the withdraw's refund (its commission would
    have paid it), and the ledger still holds exactly what the chain does."""
    d, x, _, _ = start(tmp_path)
    try:
        d.fund("alice", 10**11)
        before = x.GetBalance("alice")
        ok, w1 = x.Withdraw("alice", str(10**9), new_address())
        assert ok is True
        drop_until_cancelled(x, w1)
        advance_to(x, w1, "Failed/Declined", 20)
        assert total(x.GetBalance("alice")) == total(before) - CANCEL_FEE
        report = audit_ok(x)
        assert report["totals"]["exchange"] == 0
    finally:
        d.stop()
    check_ledger_and_chain(tmp_path / "d")


def test_maintenance_in_flight_keeps_its_cost_from_a_cancel(tmp_path):
    """Maintenance is sent while a cancel is in flight, and both are mined in one block. The
    house holds 525,000 sat and the maintenance costs 520,000 (+0..3) sat: the cancel may take
    only what the maintenance does not need, the rest comes from the cancelled withdraw's
    commission, and the house ends at exactly 0."""
    comm = {"min": 1_035_000, "max": 1_035_000, "percent": "0.001"}  # house: 1,035,000 − 510,000
    d, x, _, _ = start(tmp_path, comm)
    try:
        d.fund("alice", 10**11)
        ok, w0 = x.Withdraw("alice", str(2 * 10**10), new_address())
        assert ok is True
        advance_to(x, w0, "Complete")
        assert audit_ok(x)["totals"]["exchange"] == 525_000
        # an input of another liquidity shape, so maintenance has something to merge, and a
        # small one for the batch to be cancelled (liquid batches take the smallest that covers)
        d.fund("carol", 4 * 10**10,
               fractions=np.roll(peg.std_spread(4 * 10**10), 400).tolist())
        d.fund("bobby", 5 * 10**9)
        before = x.GetBalance("bobby")
        ok, w1 = x.Withdraw("bobby", str(10**9), new_address())
        assert ok is True
        drop_until_cancelled(x, w1)
        sent = x.CheckWithdraw(w1)["block"]
        mine_one(x)
        mine_one(x)  # two refused rebroadcasts
        assert status_of(x, w1) == "unconfirmed"
        # the exchange is down for a while; when it is back, the third refusal starts the cancel
        # and the maintenance window's task runs in the same pass
        assert x.StartExchange("", 0) is True
        h = sent + 25
        while h % 200 < 120 or h % 200 >= 145:
            h += 1
        x.devnet.mine(h - x.devnet.info()["height"])
        assert x.StartExchange("", 1) is True
        wait_until(lambda: x.pegx.status()["height"] == h, 30, what=f"the pass at {h}")
        assert x.devnet.info()["mempool"] == 2  # the cancel and the maintenance transaction
        mine_one(x)  # both mined; the cancel settles at the final depth
        advance_to(x, w1, "Failed/Declined", limit=40)
        withheld = total(before) - total(x.GetBalance("bobby"))
        assert 5000 <= withheld <= 5003  # 10,000 − (525,000 − 520,000 − r), r = 0..3
        assert audit_ok(x)["totals"]["exchange"] == 0
    finally:
        d.stop()
    check_ledger_and_chain(tmp_path / "d")
