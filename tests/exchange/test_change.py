"""What counts as the exchange's change (issue #10 items 2 and 15).

Only the outputs the exchange's own transactions send back to it (a batch's house outputs, a
cancel's output) are change; a payee output that pays one of the exchange's deposit addresses
is a deposit like any other, claimed with Deposit. The cycle keeps no per-transaction state
beyond the wallet's current outputs.
"""

from __future__ import annotations

from harness import COMM, new_address, wait_until
from harness.daemon import Daemon, advance, check_law, status_of
from harness.rig import Rig
from pegx import crypto, peg
from pegx.chain.devnet.ledger import BLOCK_TIME
from pegx.chain.devnet.peg import FREEZE_SECONDS
from pegx.exchange.planner import commission, estimated_fees
from pegx.ledger import rules

BAY = 10**8


def _deposit_address(x, d: Daemon) -> str:
    key, ok = x.GenerateDepositAddress()
    assert ok is True, key
    address = crypto.wif_to_address(key)
    wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 10,
               what="the deposit key import")
    return address


def test_withdraw_to_a_deposit_address_is_a_deposit_not_house_change(tmp_path):
    """alice withdraws 100 BAY to bobby's deposit address and 50 BAY back to her own: both
    withdraws complete, bobby and alice claim the outputs with Deposit, and the house account
    gains the commissions net of fees, nothing more. (Before the fix the payee outputs were
    flagged change, Deposit refused them and the cycle gave 148 BAY to `exchange`.)"""
    data = tmp_path / "d"
    with Daemon(data, extra=["--initial-supply", "100"]) as d:
        x = d.proxy()
        acct0, fee = x.devnet.new_address(), x.devnet.new_address()  # both the wallet's
        assert x.ExchangeSettings([acct0], fee, COMM) is True
        alice_op = d.fund("alice", 10**11)
        # at another address: the batch does not spend a payee's input
        other_op = d.fund("alice", 10**11)
        alice_addr = x.GetSpendable()[alice_op]["address"]
        other_addr = x.GetSpendable()[other_op]["address"]
        bobby_addr = _deposit_address(x, d)
        ok, w1 = x.Withdraw("alice", str(100 * BAY), bobby_addr)
        assert ok is True, w1
        ok, w2 = x.Withdraw("alice", str(50 * BAY), alice_addr)
        assert ok is True, w2
        advance(x, lambda: status_of(x, w1) == status_of(x, w2) == "Complete")
        txid = x.CheckWithdraw(w1)["txid"]
        assert x.CheckWithdraw(w2)["txid"] == txid  # one batch

        def batch_outputs() -> dict | None:
            """The batch's wallet outputs once confirmed: 2 payees, change, fee, and the
            reserve of the input back to its address."""
            outs = {k: e for k, e in x.GetSpendable().items() if k.split(":")[0] == txid}
            return outs if len(outs) == 5 else None

        mine = advance(x, batch_outputs, 20)
        c = commission(100 * BAY, COMM)
        to_bobby = [k for k, e in mine.items() if e["address"] == bobby_addr]
        to_alice = [k for k, e in mine.items() if e["address"] == alice_addr]
        assert len(to_bobby) == len(to_alice) == 1
        # the payee outputs are deposits; the change and the fee output are the house's
        assert "change" not in mine[to_bobby[0]] and "change" not in mine[to_alice[0]]
        assert {mine[k]["address"] for k in mine if mine[k].get("change")} == {
            acct0, fee, other_addr}
        assert x.GetDeposits(to_bobby[0]) is False  # unclaimed, not auto-registered
        bobby_before = x.GetBalance("bobby")
        assert x.Deposit("bobby", to_bobby) is True
        assert x.Deposit("alice", to_alice) is True
        d.wait_registered(to_bobby[0])
        d.wait_registered(to_alice[0])
        assert x.GetDeposits(to_bobby[0]) == {"name": "bobby", "registered": 1}
        assert bobby_before is False  # bobby had no account before his deposit
        bal = x.GetBalance("bobby")
        assert bal["liquid"] + bal["reserve"] == 100 * BAY - c
        for key, entry in x.GetSpendable().items():  # change <=> registered to the exchange
            house = (x.GetDeposits(key) or {}).get("name") == "exchange"
            assert bool(entry.get("change")) == house, key
        report = x.pegx.audit()
        assert report["ok"], report["problems"]
        # the house holds the two commissions less the batch's miner fee and dust, exactly
        assert report["totals"]["exchange"] == 2 * c - estimated_fees(2)
    check_law(data)


def test_reserve_withdraw_to_a_watched_address_is_claimable_once_unfrozen(tmp_path):
    """A reserve withdraw's payee output is frozen; paying the exchange's own account it is
    still a deposit: nobody gets it while frozen, and once unfrozen it is claimed."""
    rig = Rig(tmp_path)
    try:
        rig.setup()
        rig.fund("alice", 10**11)
        rig.fund("bobby", 10**11)
        house0 = int(rig.ledger.row(rules.HOUSE).sum())
        rig.ledger.request_withdraw("w1", "alice", 2 * 10**10, peg.RESERVE, rig.acct0,
                                    rig.cycle.cycle())
        rig.until_status("w1", "Complete")
        batch = rig.ledger.record("batches", rig.ledger.record("batch_of", "w1"))
        rig.mine(10)
        payee = [u for u in rig.chain.list_unspent()
                 if u.txid == batch["final_txid"] and u.vout not in batch["house_vouts"]]
        assert len(payee) == 1 and payee[0].address == rig.acct0 and payee[0].frozen_until
        key = payee[0].key
        assert key not in rig.session.spendable() and rig.ledger.record("claims", key) is None
        c = commission(2 * 10**10, COMM)
        assert int(rig.ledger.row(rules.HOUSE).sum()) == house0 + c - estimated_fees(1)
        # 30 days of freeze and the 12 h grace, in 64 s blocks
        blocks = (FREEZE_SECONDS + rules.FROZEN_GRACE) // BLOCK_TIME + 10
        while blocks > 0:
            rig.chain.mine(min(blocks, 10_000))
            blocks -= 10_000
        rig.step()
        entry = rig.session.spendable()[key]
        assert "change" not in entry and rig.ledger.record("claims", key) is None
        assert int(entry["amount"]) == 2 * 10**10 - c
        rig.ledger.claim_deposits("carol", [key])  # what Deposit("carol", [key]) does
        rig.step()
        assert rig.ledger.record("claims", key) == {"name": "carol", "registered": 1}
        bal = rig.ledger.balance("carol")
        assert bal["liquid"] + bal["reserve"] == 2 * 10**10 - c
    finally:
        rig.close()
        rig.chain.close()


def test_cycle_state_stays_within_the_wallets_outputs(tmp_path):
    """Item 15: after many withdraw batches (each spends an output and makes change) the cycle
    holds nothing for transactions whose outputs are gone: every container it keeps is at most
    as large as the wallet's unspent set. (Before the fix a txid -> inputs cache grew by one
    entry per transaction seen, for the daemon's lifetime.)"""
    rig = Rig(tmp_path)
    try:
        rig.setup()
        for i in range(3):
            rig.fund(f"user{i}", 10**11)
        for n in range(10):
            wid = f"w{n}"
            rig.ledger.request_withdraw(wid, f"user{n % 3}", 10**9, peg.LIQUID, new_address(),
                                        rig.cycle.cycle())
            rig.until_status(wid, "Complete")
            rig.mine(8)  # the batch's change is confirmed and back in Spendable
            unspent = len(rig.chain.list_unspent())
            for name, value in vars(rig.cycle).items():
                if isinstance(value, (dict, set, list, tuple)):
                    assert len(value) <= unspent, (n, name, len(value), unspent)
        done = [b for b in rig.ledger.records("batches").values() if b["state"] == "done"]
        assert len(done) >= 10
        assert len(rig.chain.list_unspent()) < len(done)  # the history outgrew the wallet
    finally:
        rig.close()
        rig.chain.close()
