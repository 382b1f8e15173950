"""The exchange cycle and the withdraw desk end to end: a real `pegx serve` on the devnet
(blocks on demand), driven with stock xmlrpc.client; the ledger is reopened after the daemon
stops to check the conservation law exactly."""

from __future__ import annotations

from harness import COMM, SUPPLY, assert_returns, new_address, wait_until
from harness.daemon import Daemon, advance, check_law, mine_one, status_of
from pegx import crypto, peg

EST_FEES = 10000 + 500000  # one withdraw


def expected_balance(vec, supply: int) -> dict:
    """One user holding every coin: liquid is the exchange's liquid minus its nfreeze buffer."""
    liquid = int(vec[supply:].sum()) - int(vec[supply:supply + 3].sum())
    return {"liquid": liquid, "reserve": int(vec.sum()) - liquid}


def test_deposit_rule_and_balances_across_cycles(tmp_path):
    data = tmp_path / "d"
    with Daemon(data, extra=["--initial-supply", str(SUPPLY)]) as d:
        x = d.proxy()
        key, ok = x.GenerateDepositAddress()
        assert ok is True
        address = crypto.wif_to_address(key)
        wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 10)
        op = x.devnet.send(address, str(10**11))
        height = mine_one(x)
        need = 7 + (5 if height % 200 < 7 or height % 200 > 193 else 0)
        for _ in range(need - 2):
            mine_one(x)
        assert_returns(lambda: x.Deposit("alice", [op]), f"{op} not in Spendable list yet.")
        assert x.GetDeposits(op) is False
        mine_one(x)  # `need` confirmations now
        assert op in x.GetSpendable(address)
        assert x.Deposit("alice", [op]) is True
        d.wait_registered(op)
        assert x.GetDeposits(op) == {"name": "alice", "registered": 1}
        std = peg.std_spread(10**11)
        assert x.GetBalance("alice") == expected_balance(std, SUPPLY)
        for direction, steps, supply, cycle in (("deflate", 2, SUPPLY + 2, 1),
                                                ("inflate", 3, SUPPLY - 1, 2)):
            x.devnet.vote(direction, steps)
            x.devnet.mine(x.devnet.info()["blocks_to_next_cycle"])
            wait_until(lambda c=cycle: x.GetCycle() == c, 10)
            assert x.devnet.info()["supply"] == supply
            assert x.GetBalance("alice") == expected_balance(std, supply)
        assert x.Trade("alice", 10**9, "bobby") is True
        assert x.Trade("bobby", -4 * 10**8, "") is True
        assert x.Trade("carol", 4 * 10**8, "") is True
        assert x.GetBalance("bobby") == {"liquid": 6 * 10**8, "reserve": 0}
        assert x.GetBalance("carol") == {"liquid": 4 * 10**8, "reserve": 0}
    law = check_law(data)
    assert law["totals"]["inputs"] == 10**11 and not law["summary"]["drift"]


def test_withdraws_complete_malleate_and_drop(tmp_path):
    data = tmp_path / "d"
    with Daemon(data, extra=["--initial-supply", str(SUPPLY)]) as d:
        x = d.proxy()
        acct0, fee = x.devnet.new_address(), new_address()
        assert x.ExchangeSettings([acct0], fee, COMM) is True
        d.fund("alice", 10**11)
        d.fund("bobby", 10**11)
        payee1, payee2 = new_address(), new_address()
        ok, w1 = x.Withdraw("alice", str(10**10), payee1)
        assert ok is True
        bobby = x.GetBalance("bobby")
        ok, w2 = x.Withdraw("bobby", str(2 * 10**10), payee2, "reserve")
        assert ok is True
        assert x.CheckWithdraw(w1) == "ID not found"  # pending, not batched yet
        advance(x, lambda: status_of(x, w1) == "unconfirmed")
        rec = x.CheckWithdraw(w1)
        assert set(rec) == {"status", "txid", "ID", "block", "in0", "confirmations"} and rec["ID"] != w1
        advance(x, lambda: status_of(x, w1) == "Complete")
        c = 10**8  # 0.1 % of 1e10 is below the minimum commission
        assert x.devnet.balance(payee1)["liquid"] == 10**10 - c
        assert x.devnet.balance(fee)["amount"] == c - EST_FEES
        advance(x, lambda: status_of(x, w2) == "Complete")
        bal = x.devnet.balance(payee2)
        assert bal["reserve"] == bal["frozen"] == bal["amount"] == 2 * 10**10 - c
        assert x.devnet.balance(fee)["amount"] == 2 * (c - EST_FEES)
        after = x.GetBalance("bobby")
        assert after["liquid"] + after["reserve"] == bobby["liquid"] + bobby["reserve"] - 2 * 10**10

        # malleated: the next mined transaction (our batch) gets another txid
        x.devnet.malleate_next()
        ok, w3 = x.Withdraw("alice", str(10**9), payee1)
        assert ok is True
        advance(x, lambda: status_of(x, w3) == "Complete")
        rec = x.CheckWithdraw(w3)
        assert rec["txid2"] != rec["txid"]
        assert x.devnet.balance(payee1)["liquid"] == 10**10 - c + 10**9 - c

        # dropped: refunded only once it can no longer confirm (after a cancel confirms)
        before = x.GetBalance("alice")
        ok, w4 = x.Withdraw("alice", str(10**9), payee1)
        assert ok is True
        advance(x, lambda: status_of(x, w4) == "unconfirmed")
        assert x.devnet.drop(x.CheckWithdraw(w4)["txid"]) is True
        for _ in range(3):
            mine_one(x)
            assert status_of(x, w4) == "unconfirmed"  # its inputs are unspent: no refund
        advance(x, lambda: status_of(x, w4) == "Failed/Declined", 20)
        assert x.GetBalance("alice") == before
        assert x.devnet.balance(payee1)["liquid"] == 10**10 - c + 10**9 - c
        master = x.CheckWithdraw(w4)["ID"]
        assert x.CheckWithdraw(w4, 1)["status"] == "Failed/Declined"
        assert x.CheckWithdraw(w4) == "ID not found"  # cleared ...
        assert x.CheckWithdraw(master)["status"] == "Failed/Declined"  # ... the batch is not
    check_law(data)


def test_unbatched_withdraws_expire_and_limits(tmp_path):
    data = tmp_path / "d"
    with Daemon(data, extra=["--initial-supply", str(SUPPLY)]) as d:
        x = d.proxy()  # no exchange accounts: nothing can be batched
        d.fund("alice", 10**12)
        before = x.GetBalance("alice")
        payee = new_address()
        ids = []
        for _ in range(300):
            ok, wid = x.Withdraw("alice", str(2 * 10**8), payee)
            assert ok is True
            ids.append(wid)
        assert_returns(lambda: x.Withdraw("alice", str(2 * 10**8), payee),
                       ["Withdraw limit reached, please wait until transactions clear.", ""])
        for _ in range(45):
            ok, wid = x.Withdraw("alice", str(2 * 10**8), payee, "reserve")
            assert ok is True
            ids.append(wid)
        assert_returns(lambda: x.Withdraw("alice", str(2 * 10**8), payee, "reserve"),
                       ["Reserve withdraw limit reached, please wait until transactions clear.",
                        ""])
        cycle = x.GetCycle()
        x.devnet.mine(x.devnet.info()["blocks_to_next_cycle"] + 199)
        wait_until(lambda: x.GetCycle() == cycle + 1, 10)
        assert x.CheckWithdraw(ids[0]) == "ID not found"  # one cycle on: still pending
        x.devnet.mine(1)
        wait_until(lambda: x.GetCycle() == cycle + 2, 10)
        wait_until(lambda: status_of(x, ids[-1]) == "Expired", 10)
        rec = x.CheckWithdraw(ids[0])
        assert rec["status"] == "Expired" and rec["ID"] == ids[0] and rec["txid"] == ""
        assert all(status_of(x, w) == "Expired" for w in ids)
        assert x.GetBalance("alice")["liquid"] + x.GetBalance("alice")["reserve"] == \
            before["liquid"] + before["reserve"]
        assert x.CheckWithdraw(ids[0], 1)["status"] == "Expired"
        assert x.CheckWithdraw(ids[0]) == "ID not found"  # cleared
    check_law(data)
