"""Withdraw desk in-process: a real Devnet, a real LevelDB ledger and the real cycle, stepped
block by block (no threads), so every assertion is deterministic. Conservation is checked after
every single pass."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from harness import COMM, SUPPLY, new_address
from harness.fakenode import FakeNode
from harness.rig import Rig
from pegx import crypto, peg
from pegx.chain.base import CYCLE_BLOCKS, ChainRejected, Tip, split_outpoint
from pegx.chain.bitbayd import Bitbayd
from pegx.chain.devnet.peg import apply_peg_rules
from pegx.chain.txbuild import op_return_script, parse_tx, serialize_tx
from pegx.exchange.planner import NO_FEES, Plan, commission, plan_batch, split_cost
from pegx.exchange.withdraws import DeskPass, WithdrawDesk, task_spacing, window_task
from pegx.ledger import ops, rules
from pegx.ledger.rules import EngineError


# ------------------------------------------------------------------------ pure parts
def test_commission_floor_and_clamp():
    assert commission(10**12, COMM) == 10**9  # 0.1 % = 1e9, at the max
    assert commission(10**13, COMM) == 10**9  # clamped to max
    assert commission(2 * 10**8, COMM) == 10**8  # 2e5 -> clamped to min
    assert commission(333_333_333_333, {"min": 1, "max": 10**12, "percent": "0.003"}) == \
        999_999_999  # floor, exact (a float product would give 1e9)


def test_window_positions():
    assert [window_task(h) for h in (9, 10, 74, 75, 119, 120, 144, 145, 174, 175, 210)] == \
        [None, "liquid", "liquid", "reserve", "reserve", "maintenance", "maintenance", "status",
         "status", None, "liquid"]
    # testnet's 20-block cycles, mapped onto the same windows in proportion
    assert [window_task(h, 20) for h in range(20, 40)] == (
        [None] + ["liquid"] * 7 + ["reserve"] * 4 + ["maintenance"] * 3 + ["status"] * 3
        + [None] * 2)
    assert (task_spacing(200), task_spacing(20)) == (25, 2)


@pytest.mark.parametrize("seed", range(12))
def test_plans_satisfy_the_peg_rules_with_the_planned_fee(seed):
    """Random inputs and withdraws: the devnet's rules accept every plan and leave exactly
    the planned miner fee; payees get amount − commission of the right style."""
    rng = random.Random(seed)
    supply = rng.choice([0, 50, 300, 700])
    style = rng.choice(peg.STYLES) if supply else peg.LIQUID
    acct0, fee = new_address(), new_address()
    addrs = [new_address() for _ in range(4)] + [acct0]
    cands = []
    for i in range(rng.randint(1, 8)):
        value = rng.randint(10**9, 10**12)
        vec = peg.std_spread(value) if rng.random() < 0.7 else np.roll(peg.std_spread(value),
                                                                       rng.randint(0, 900))
        cands.append((f"{i:064x}:0", rng.choice(addrs), vec))
    payees = [new_address() for _ in range(3)]
    wds = [(f"w{i}", {"address": rng.choice(payees), "amount": rng.randint(2 * 10**8, 5 * 10**9)})
           for i in range(rng.randint(1, 6))]
    plan = plan_batch(style, wds, cands, supply, acct0, fee, COMM, "ab" * 16)
    if not isinstance(plan, Plan):
        assert plan.reason.startswith(("Not enough funds", NO_FEES))
        assert set(plan.waiting) == {w for w, _ in wds}  # each withdraw says why it waits
        return
    by_key = {k: (a, v) for k, a, v in cands}
    res = apply_peg_rules([by_key[k] for k in plan.inputs], plan.outputs, supply)
    assert res.fee == plan.fee
    want: dict[str, int] = {}
    for wid, rec in wds:
        if wid in plan.ids:
            want[rec["address"]] = want.get(rec["address"], 0) + rec["amount"] - commission(
                rec["amount"], COMM)
    for pos, out in enumerate(plan.outputs):
        if out.address in want:
            assert out.value == want.pop(out.address)
            got = res.fractions[pos]
            part = peg.reserve_of(got, supply) if style == peg.RESERVE else peg.liquid_of(
                got, supply)
            assert part == out.value  # all reserve (frozen) or all liquid
    assert want == {}
    assert plan.outputs[-1].data == b"ab" * 16
    # the shape (planner docstring): liquid = exchange outputs, payees, id; reserve = payees
    # with one **F** notary among them, exchange outputs, id; exchange outputs to the input
    # addresses first, each group and the payees by address
    payees = [plan.outputs[i].address for i in plan.payees]
    assert payees == sorted(payees)
    house = [plan.outputs[i].address for i in plan.house_vouts]
    at_inputs = {by_key[k][0] for k in plan.inputs}
    assert house == sorted(house, key=lambda a: (a not in at_inputs, a))
    notaries = [i for i, o in enumerate(plan.outputs[:-1]) if o.data is not None]
    if style == peg.LIQUID:
        assert notaries == [] and plan.house_vouts == list(range(len(house)))
        assert plan.payees == list(range(len(house), len(house) + len(payees)))
    else:
        assert len(notaries) == 1 and notaries[0] == min(len(payees), len(plan.inputs) - 1)
        assert sorted(plan.payees + notaries) == list(range(len(payees) + 1))
        assert plan.house_vouts == list(range(len(payees) + 1, len(plan.outputs) - 1))


# ------------------------------------------------------------------------ lifecycle
def test_liquid_and_reserve_withdraws_complete_with_exact_amounts(rig):
    rig.setup()
    rig.fund("alice", 10**11)
    rig.fund("bobby", 5 * 10**10)
    payee = new_address()
    alice0 = rig.ledger.balance("alice")
    rig.ledger.request_withdraw("w1", "alice", 10**10, "liquid", payee, rig.cycle.cycle())
    rig.ledger.request_withdraw("w2", "bobby", 2 * 10**10, "reserve", payee, rig.cycle.cycle())
    assert rig.ledger.balance("alice")["liquid"] == alice0["liquid"] - 10**10
    rec = rig.until_status("w1", "Complete")
    assert set(rec) == {"status", "txid", "ID", "block", "in0", "confirmations"}
    c = commission(10**10, COMM)
    assert rig.chain.balance(payee)["liquid"] == 10**10 - c
    assert rig.chain.balance(rig.fee)["amount"] == c - (10000 + 500000)
    rig.until_status("w2", "Complete")
    bal = rig.chain.balance(payee)
    assert bal["reserve"] == bal["frozen"] == 2 * 10**10 - c  # reserve goes out frozen (**F**)
    assert rig.chain.balance(rig.fee)["amount"] == 2 * (c - 510000)
    assert rig.ledger.row(rules.WITHDRAWS).sum() == 0
    # the house holds exactly the fee income: commissions − (miner fee + dust), and the dust
    # and miner fee of each batch add up to the estimated 510,000 sat
    fees = sum(b["fee"] for b in rig.ledger.records("batches").values())
    assert int(rig.ledger.row(rules.HOUSE).sum()) == 2 * c - fees - 2 * 5575 - 5590
    assert int(rig.ledger.row(rules.HOUSE).sum()) == 2 * (c - 510000)
    assert rig.ledger.balance("bobby") == {"liquid": rig.ledger.balance("bobby")["liquid"],
                                           "reserve": 5 * 10**10 - 2 * 10**10
                                           - rig.ledger.balance("bobby")["liquid"]}


def test_a_batch_the_node_would_refuse_is_logged_and_not_sent(rig, caplog):
    """Before every broadcast the desk checks its transaction with the node's rule (pegstd) on
    the chain's own fractions at the chain's supply now. A reserve task run with a tip whose
    supply the chain has left (as a pass that read the tip just before a new cycle would)
    plans a batch the node refuses: the desk logs why and sends nothing (nothing signed or
    recorded); the withdraw stays pending with the reason in its ``Pending`` record
    (CheckWithdraw) and in ``not_batchable`` (pegx status); the next window sends it.
    (Before the check, the desk recorded and broadcast it, the node refused it, and after
    three refusals it was cancelled and refunded.)"""
    rig.setup()
    rig.fund("alice", 10**11)
    rig.fund("bobby", 10**11)
    payee = new_address()
    rig.ledger.request_withdraw("w1", "alice", 2 * 10**10, "reserve", payee, rig.cycle.cycle())
    last = rig.ledger.record("meta", "desk")["last_task_height"]
    tip = rig.chain.tip()
    target = tip.height + 1
    while window_task(target) != peg.RESERVE or target - last < 25:
        target += 1
    rig.chain.mine(target - tip.height)  # the cycle has not seen these blocks yet
    tip = rig.chain.tip()
    assert tip.cycle == target // CYCLE_BLOCKS and tip.supply == SUPPLY
    stale = Tip(tip.height, tip.cycle, SUPPLY - 40, tip.time)
    # what the check keeps from the node: that very plan, signed and broadcast, is refused
    plan = plan_batch(peg.RESERVE, [("w1", rig.ledger.record("withdraws", "w1"))],
                      rig.desk._candidates(rig.cycle.desk_pass()), stale.supply, rig.acct0, rig.fee, COMM,
                      "ab" * 16)
    assert isinstance(plan, Plan)
    signed = rig.chain.create_transaction(plan.inputs, plan.outputs)
    with pytest.raises(ChainRejected, match="no liquidity left"):
        rig.chain.broadcast(signed.raw)
    caplog.set_level("INFO", logger="pegx.exchange.withdraws")
    rig.desk.run(stale, tip.time, rig.cycle.desk_pass())
    why = rig.ledger.record("meta", "desk")["result"]
    assert why.startswith("reserve transaction not sent: the node's rule would refuse it: "
                          "output "), why
    assert "no liquidity left" in why and "[node: P-G-3: Total mismatch on fee" in why, why
    assert any(r.levelname == "ERROR" and "not sent" in r.getMessage() for r in caplog.records)
    assert rig.chain.info()["mempool"] == 0 and rig.ledger.records("batches") == {}
    assert "batch" not in rig.ledger.record("withdraws", "w1")
    assert rig.status("w1") == {"status": "Pending", "txid": "", "ID": "w1",
                                "block": tip.height, "in0": "", "reason": why}
    assert rig.desk.not_batchable() == why
    rig.step()
    rec = rig.until_status("w1", "Complete")
    assert rec["ID"] != "w1"
    bal = rig.chain.balance(payee)
    assert bal["reserve"] == bal["frozen"] == bal["amount"] == 2 * 10**10 - commission(
        2 * 10**10, COMM)
    assert rig.desk.not_batchable() == ""


def test_a_waiting_withdraws_reason_is_the_ledgers_until_a_batch_takes_it(rig):
    """note_waiting keeps why a pending withdraw waits (op "wait", table "waiting"): CheckWithdraw
    shows it Pending, it survives a restart (replayed from the log), only pending unbatched
    withdraws can wait, and the batch that takes the withdraw removes it."""
    rig.fund("alice", 10**11)
    rig.ledger.request_withdraw("w1", "alice", 10**10, "liquid", new_address(),
                                rig.cycle.cycle())
    assert rig.status("w1") is None  # pending, no reason yet: "ID not found"
    assert rig.ledger.note_waiting({"w1": "no exchange account yet", "w9": "unknown"},
                                   height=7) == {"w1": "no exchange account yet"}
    assert rig.ledger.note_waiting({"w1": "no exchange account yet"}, height=8) == {}
    want = {"status": "Pending", "txid": "", "ID": "w1", "block": 7, "in0": "",
            "reason": "no exchange account yet"}
    assert rig.status("w1") == want
    with pytest.raises(EngineError, match="no pending withdraw w9"):
        rig.ledger.commit([ops.wait({"w9": "x"}, 7)])
    rig.close()
    rig.open()
    assert rig.status("w1") == want
    rig.setup()
    rec = rig.until_status("w1", "Complete")
    assert rec["ID"] != "w1" and rig.ledger.records("waiting") == {}
    with pytest.raises(EngineError, match="no pending withdraw w1"):
        rig.ledger.commit([ops.wait({"w1": "x"}, 9)])


def test_on_bitbayd_the_desk_checks_with_the_nodes_supply_and_fractions(ledger):
    """The same check on a bitbayd chain (a fake node answering in the real node's shapes):
    the desk asks the node for the supply (getpeginfo) and every input's fractions
    (getfractions). A plan the node's rule refuses is neither signed nor sent and its withdraw
    stays pending with the reason; the plan it accepts is signed and sent as planned."""
    supply, height, btime = 100, 1080, 1_700_000_000
    node = FakeNode()
    st = node.state
    st["blockcount"] = height
    st["peginfo"].update(cycle=height // CYCLE_BLOCKS, peg=supply, pegnext=supply,
                         pegnextnext=supply)
    st["blockhashes"] = {height: "b" * 64}
    st["blocks"] = {"b" * 64: {"hash": "b" * 64, "height": height, "time": btime}}
    cands = []
    for i, vec in enumerate([peg.std_spread(5 * 10**10), np.roll(peg.std_spread(4 * 10**10), 30)]):
        key = f"{hashlib.sha256(bytes([i])).hexdigest()}:{i}"
        st["fractions"][key] = {"total": int(vec.sum()), "reserve": 0, "liquidity": 0,
                                "peg": supply, "lock": 0, "flags": "", "values": vec.tolist()}
        cands.append((key, new_address(), vec))
    ledger.commit([ops.credit(k, int(v.sum()), v, owner="alice", address=a,
                              height=height - 20) for k, a, v in cands],
                  supply=supply, now=btime)
    c = commission(2 * 10**10, COMM)
    ledger.request_withdraw("w1", "alice", 2 * 10**10, "reserve", new_address(),
                            height // CYCLE_BLOCKS, commission=c)
    acct0, fee = new_address(), new_address()
    chain = Bitbayd(node.url, timeout=2.0, deadline=5.0)
    try:
        desk = WithdrawDesk(ledger, chain)
        ctx = DeskPass()  # no passphrase (a wallet without one)
        tip = chain.tip()
        assert tip.supply == supply
        wds = [("w1", ledger.record("withdraws", "w1"))]
        stale = plan_batch(peg.RESERVE, wds, cands, supply - 40, acct0, fee, COMM, "ab" * 16)
        assert isinstance(stale, Plan)
        node.calls.clear()
        why = desk._send(peg.RESERVE, stale, "ab" * 16, tip, ctx)
        assert why.startswith("reserve transaction not sent: the node's rule would refuse it: ")
        assert "no liquidity left" in why, why
        called = [m for m, _ in node.calls]
        assert "getpeginfo" in called and "signrawtransaction" not in called
        assert [p for m, p in node.calls if m == "getfractions"] == [[k] for k in stale.inputs]
        assert st["sent"] == [] and ledger.records("batches") == {}
        assert ledger.withdraw_status("w1")["reason"] == why
        plan = plan_batch(peg.RESERVE, wds, cands, supply, acct0, fee, COMM, "cd" * 16)
        assert isinstance(plan, Plan)
        scripts = [(o.value, op_return_script(o.data) if o.data is not None
                    else crypto.address_to_script(o.address)) for o in plan.outputs]
        unsigned = serialize_tx([split_outpoint(k) for k in plan.inputs], scripts, btime).hex()
        st["signatures"][unsigned] = unsigned  # the fake "signs" by echoing the bytes
        assert desk._send(peg.RESERVE, plan, "cd" * 16, tip, ctx) == "Success"
        assert st["sent"] == [unsigned]
        assert [v for v, _ in parse_tx(bytes.fromhex(st["sent"][0])).outputs] == [
            o.value for o in plan.outputs]
        assert ledger.withdraw_status("w1")["status"] == "unconfirmed"  # batched
    finally:
        chain.close()
        node.close()


def test_malleated_withdraw_completes_and_records_txid2(rig):
    rig.setup()
    rig.fund("alice", 10**11)
    rig.ledger.request_withdraw("w1", "alice", 10**10, "liquid", new_address(), rig.cycle.cycle())
    rig.until(lambda: rig.status("w1") is not None)
    rig.chain.malleate_next()
    rec = rig.until_status("w1", "Complete")
    assert rec["txid2"] != rec["txid"]
    assert rig.chain.get_transaction(rec["txid"]) is None
    assert rig.chain.get_transaction(rec["txid2"]).confirmations >= 1


def test_dropped_withdraw_is_refunded_only_once_it_cannot_confirm(rig):
    rig.setup()
    rig.fund("alice", 10**11)
    rig.ledger.request_withdraw("w0", "alice", 10**10, "liquid", new_address(), rig.cycle.cycle())
    rig.until_status("w0", "Complete")  # the house earns what the cancel will cost
    before = rig.ledger.row("alice")
    rig.ledger.request_withdraw("w1", "alice", 10**10, "liquid", new_address(), rig.cycle.cycle())
    rig.until(lambda: rig.status("w1") is not None)
    master = rig.ledger.record("batch_of", "w1")
    batch = rig.ledger.record("batches", master)
    assert rig.chain.drop(batch["txid"]) is True
    seen = []
    for _ in range(40):
        rig.mine(1)
        b = rig.ledger.record("batches", master)
        st = rig.status("w1")["status"]
        seen.append((b["state"], st))
        if st == "Failed/Declined":
            break
        # while the batch's inputs are unspent it could still confirm: no refund yet
        assert rig.ledger.record("withdraws", "w1") is not None
    assert ("cancelling", "unconfirmed") in seen
    assert seen[-1] == ("failed", "Failed/Declined")
    cancel = rig.ledger.record("batches", master)["cancel"]
    assert rig.chain.get_transaction(cancel["txid"]).confirmations >= 1
    assert rig.ledger.record("withdraws", "w1") is None
    assert (rig.ledger.row("alice") == before).all()  # the exact steps came back


def test_unbatched_withdraw_expires_with_a_readable_status(rig):
    rig.fund("alice", 10**11)  # no exchange accounts: nothing can be batched
    before = rig.ledger.row("alice")
    cyc = rig.cycle.cycle()
    rig.ledger.request_withdraw("w1", "alice", 10**10, "liquid", new_address(), cyc)
    rig.chain.mine(199)
    rig.step()
    assert rig.status("w1") is None  # one cycle later: still pending
    rig.until(lambda: rig.status("w1") is not None, 250)
    rec = rig.status("w1")
    assert rec["status"] == "Expired" and rec["ID"] == "w1" and rec["txid"] == ""
    assert rig.cycle.cycle() == cyc + 2
    assert (rig.ledger.row("alice") == before).all()
    assert rig.ledger.record("meta", "desk")["result"] in (
        "No return address for exchange", "nothing to do at this block position",
        "0 withdraws pending or in flight, 0 batches in flight", "Success")


def test_crash_after_recording_resumes_from_the_ledger(rig):
    """A batch recorded but never broadcast (a crash in between) is sent after a restart."""
    rig.setup()
    rig.fund("alice", 10**11)
    rig.chain.reject_next_broadcast("node restarting")
    rig.ledger.request_withdraw("w1", "alice", 10**10, "liquid", new_address(), rig.cycle.cycle())
    rig.until(lambda: rig.status("w1") is not None)
    master = rig.ledger.record("batch_of", "w1")
    assert rig.chain.get_transaction(rig.ledger.record("batches", master)["txid"]) is None
    rig.close()
    rig.open()
    rig.until_status("w1", "Complete")


def test_account_maintenance_merges_inputs_paid_by_the_house(rig):
    rig.setup(commission={"min": 10**9, "max": 10**10, "percent": "0.001"})
    rig.fund("alice", 10**11)
    rig.ledger.request_withdraw("w1", "alice", 2 * 10**10, "liquid", new_address(),
                                rig.cycle.cycle())
    rig.until_status("w1", "Complete")
    # a deposit with a different liquidity shape (its liquid sits far above the supply)
    rig.fund("bobby", 3 * 10**10)
    key = crypto.generate_deposit_key()
    address = crypto.wif_to_address(key)
    rig.ledger.put("addresses", address, {"wif": key, "imported": 0})
    rig.step()
    vec = np.roll(peg.std_spread(4 * 10**10), 400)
    op = rig.chain.send(address, 4 * 10**10, vec.tolist())
    rig.chain.mine(13)
    rig.step()
    rig.ledger.claim_deposits("carol", [op])
    house = int(rig.ledger.row(rules.HOUSE).sum())
    rig.until(lambda: any(b["kind"] == "maintenance" and b["state"] == "done"
                          for b in rig.ledger.records("batches").values()), 450)
    m = next(b for b in rig.ledger.records("batches").values() if b["kind"] == "maintenance")
    assert int(rig.ledger.row(rules.HOUSE).sum()) == house - m["fee"] - 5575
    assert rig.chain.balance(rig.acct0)["amount"] > 0


def test_long_run_random_exchange_keeps_the_law_at_every_block(tmp_path):
    """Several cycles of random deposits, trades (users and pool), withdraws of both styles and
    supply moves, stepped block by block: the law holds after every pass, and at the end every
    satoshi that left the exchange went to a payee, or was miner fee or OP_RETURN dust."""
    rng = random.Random(20240611)
    rig = Rig(tmp_path, supply=60)
    try:
        rig.setup(commission={"min": 2 * 10**6, "max": 10**8, "percent": "0.002"})
        users = ["alice", "bobby", "carol", "dave", "erin"]
        deposits: dict[str, str] = {}  # outpoint -> user, until claimed
        addresses = {}
        for u in users:
            key = crypto.generate_deposit_key()
            addresses[u] = crypto.wif_to_address(key)
            rig.ledger.put("addresses", addresses[u], {"wif": key, "imported": 0})
        rig.step()
        payees = [new_address() for _ in range(4)]
        deposited = 0
        wid = drops = 0
        styles: dict[str, str] = {}
        done_withdrawing = 560
        for height in range(1, 700):
            r = rng.random()
            if height < done_withdrawing and (height < 20 or r < 0.06):
                u = rng.choice(users)
                amount = rng.randint(10**9, 10**11)
                deposits[rig.chain.send(addresses[u], amount)] = u
                deposited += amount
            if height in (150, 420):
                rig.chain.vote("deflate", 2)
            if height == 300:
                rig.chain.vote("inflate", 3)
            spendable = rig.session.spendable()
            for op in [k for k in deposits if k in spendable]:
                rig.ledger.claim_deposits(deposits.pop(op), [op])
            for _ in range(3):
                a, b = rng.sample(users, 2)
                style = rng.choice(peg.STYLES)
                bal = rig.ledger.balance(a)
                if bal and bal[style] > 10:
                    amt = rng.randint(1, bal[style] // 3 + 1)
                    if rng.random() < 0.2:
                        rig.ledger.trade(a, -amt, "", style)  # into the pool ...
                        rig.ledger.trade(b, amt, "", style)  # ... and out to someone else
                    else:
                        rig.ledger.trade(a, amt, b, style)
            if height < done_withdrawing and rng.random() < 0.08:
                u = rng.choice(users)
                style = rng.choice(peg.STYLES)
                bal = rig.ledger.balance(u)
                if bal and bal[style] > 3 * 10**7:
                    wid += 1
                    amt = rng.randint(2 * 10**7, bal[style] // 2)
                    rig.ledger.request_withdraw(f"w{wid}", u, amt, style, rng.choice(payees),
                                                rig.cycle.cycle())
                    styles[f"w{wid}"] = style
            queued = [b for b in rig.desk.active().values()
                      if getattr(rig.chain.get_transaction(b["txid"]), "height", None) == 0]
            if height % 3 == 0 and queued:  # the batch is first in the mempool: malleate it
                rig.chain.malleate_next()
            rig.mine(1)
            for b in rig.desk.active().values():  # a batch just broadcast: drop two of them
                if height > 200 and drops < 2 and b["kind"] != "maintenance":
                    drops += rig.chain.drop(b["txid"])  # False once mined
        rig.until(lambda: not rig.ledger.records("withdraws") and not rig.desk.active(), 450)
        statuses = [rig.status(f"w{i}") for i in range(1, wid + 1)]
        assert wid >= 10
        assert sum(s["status"] == "Complete" for s in statuses) >= wid // 2
        reserve = [s for i, s in enumerate(statuses, 1) if styles[f"w{i}"] == peg.RESERVE]
        assert sum(s["status"] == "Complete" for s in reserve) >= len(reserve) // 2
        assert rig.chain.tip().cycle >= 3
        assert {s["status"] for s in statuses} == {"Complete", "Failed/Declined"}
        assert any("txid2" in s for s in statuses)
        # where did the coins go? registered + payees + (miner fees and dust) == deposited
        law = rig.step()
        paid = sum(rig.chain.balance(p)["amount"] for p in payees)
        costs = 0
        for b in rig.ledger.records("batches").values():
            txs = []
            if b["state"] == "done":
                txs.append(rig.chain.get_transaction(b["final_txid"]))
            if "cancel" in b and b["state"] == "failed":
                txs.append(rig.chain.get_transaction(b["cancel"]["txid"]))
            for tx in txs:
                if tx is None or not tx.height:
                    continue
                value_in = sum(int(rig.chain.get_fractions(k).sum()) for k in tx.inputs)
                costs += value_in - sum(o.value for o in tx.outputs if o.address is not None)
        unclaimed = sum(int(rig.chain.get_fractions(k).sum()) for k in deposits)
        t = law["totals"]
        assert t["inputs"] + paid + costs + unclaimed == deposited
        assert t["users"] + t["pool"] + t["withdraws"] + t["exchange"] == t["inputs"]
    finally:
        rig.close()
        rig.chain.close()


# ------------------------------------------------------------------------ Hardening item 4
@pytest.mark.parametrize("seed", range(8))
def test_no_withdraw_ever_builds_a_negative_output(seed):
    """Withdraws with and without a kept commission, under settings raised far above some of
    their amounts: the planner never raises, never builds an output below 0, pays each
    included withdraw amount − its kept commission, and leaves out only the unpayable."""
    rng = random.Random(seed)
    acct0, fee = new_address(), new_address()
    cands = [(f"{i:064x}:0", acct0, peg.std_spread(rng.randint(10**10, 10**12)))
             for i in range(4)]
    cfg = {"min": rng.choice([10**8, 5 * 10**8, 3 * 10**9]), "max": 5 * 10**9,
           "percent": "0.001"}
    wds = []
    for i in range(rng.randint(2, 8)):
        amount = rng.randint(2 * 10**8, 4 * 10**9)
        rec = {"address": new_address(), "amount": amount}
        if rng.random() < 0.5:  # accepted at a 1 BAY minimum, kept
            rec["commission"] = commission(amount, COMM)
        wds.append((f"w{i}", rec))
    plan = plan_batch(peg.LIQUID, wds, cands, SUPPLY, acct0, fee, cfg, "ab" * 16)
    payable = {w for w, r in wds if r["amount"] - r.get("commission", commission(r["amount"],
                                                                               cfg)) > 10000}
    if not isinstance(plan, Plan):
        assert plan.reason.startswith(("a commission of", NO_FEES, "Not enough funds"))
        assert not plan.reason.startswith("a commission of") or not payable
        assert set(plan.waiting) == {w for w, _ in wds}
        return
    assert set(plan.ids) == payable
    assert set(plan.waiting) == {w for w, _ in wds} - payable
    assert all(o.value >= 0 for o in plan.outputs)
    paid = {o.address: o.value for o in plan.outputs if o.address}
    for wid, rec in wds:
        if wid in plan.ids:
            kept = rec.get("commission", commission(rec["amount"], cfg))
            assert paid[rec["address"]] == rec["amount"] - kept


def test_unpayable_old_withdraw_does_not_hold_back_the_batch(rig):
    """A withdraw logged before commissions were kept is charged today's commission; when
    that leaves its payee nothing it waits and expires (refunded) while the others are paid."""
    rig.setup()
    rig.fund("alice", 10**11)
    before = rig.ledger.row("alice")
    old, new = new_address(), new_address()
    # no commission kept
    rig.ledger.request_withdraw("w1", "alice", 2 * 10**8, "liquid", old, rig.cycle.cycle())
    s = rig.ledger.exchange_settings()
    s["commission"] = {"min": 5 * 10**8, "max": 10**9, "percent": "0.001"}
    rig.ledger.put("settings", "exchange", s)
    rig.ledger.request_withdraw("w2", "alice", 10**9, "liquid", new, rig.cycle.cycle(),
                                commission=10**8)  # kept at acceptance, as Withdraw does
    rig.until_status("w2", "Complete")
    assert rig.chain.balance(new)["liquid"] == 10**9 - 10**8
    assert rig.ledger.record("withdraws", "w1") is not None  # left out, still pending
    assert rig.until_status("w1", "Expired")["ID"] == "w1"
    assert rig.chain.balance(old)["amount"] == 0
    assert int(rig.ledger.row("alice").sum()) == int(before.sum()) - 10**9


# ------------------------------------------------------------------------ Hardening item 14
@pytest.mark.parametrize("seed", range(20))
def test_split_cost_is_exact_and_never_takes_more_than_a_weight(seed):
    rng = random.Random(seed)
    weights = {f"w{i}": rng.choice([0, 1, 7, 10**4, 10**8, rng.randint(1, 10**9)])
               for i in range(rng.randint(1, 12))}
    total = sum(weights.values())
    cost = rng.choice([c for c in (0, 1, min(total, 10000), total, rng.randint(0, total))
                       if c <= total])
    shares = split_cost(cost, weights)
    assert sum(shares.values()) == cost
    assert all(0 < v <= weights[k] for k, v in shares.items())
    assert split_cost(cost, weights) == shares  # deterministic
    with pytest.raises(ValueError):
        split_cost(total + 1, weights)
