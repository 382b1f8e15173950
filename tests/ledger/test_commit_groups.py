"""Exchange.commit is all or nothing (issue 10 item 12).

``commit`` takes a group of ops built by other modules (cycle, withdraw desk, recover) and logs
them as one record. A group with a valid op followed by an invalid one used to leave the valid
one applied in memory but not logged (or the journal out of order for good), so memory ran
ahead of disk until the next restart. Now a bad group is refused with a clear EngineError, memory
is exactly as before, and what a restart reads back equals memory. No public call hands
arbitrary op groups to the engine, so this is tested at the engine's own API.
"""

from __future__ import annotations

import numpy as np
import pytest

from pegx import peg
from pegx.ledger import ops as ledger_ops
from pegx.ledger import schema
from pegx.ledger.engine import Exchange
from pegx.ledger.lifecycle import new_record
from pegx.ledger.rules import EngineError
from pegx.ledger.store import Store

SUPPLY = 500
BANK = "bankroll"
PLAN = {"kind": "liquid", "ids": ["w" * 32], "ins": ["f" * 64 + ":0"], "txid": "ab" * 32,
        "raw": "00", "house_vouts": [1], "fee": 10000, "total": 10**8, "commission": 10**6,
        "height": 70}
VALID = {"op": "trade", "u1": BANK, "u2": "user0001", "amount": 5, "style": peg.LIQUID}


def funded(path) -> Exchange:
    ex = Exchange(Store(path))
    vec = peg.std_spread(10**11)
    ex.credit_inputs([{"key": "f" * 64 + ":0", "value": int(vec.sum()), "vector": vec,
                       "owner": BANK}], supply=SUPPLY, now=0)
    ex.request_withdraw("w" * 32, BANK, 10**8, peg.LIQUID, "Baddress", 0)
    return ex


def neg_adjust() -> dict:
    vec = np.zeros(peg.PEG_SIZE, dtype=np.int64)
    vec[SUPPLY + 10] = -(10**15)
    return ledger_ops.adjust("user0001", vec)


BAD = {
    "unknown sender": {"op": "trade", "u1": "nobody00", "u2": BANK, "amount": 1,
                       "style": peg.LIQUID},
    "more than the balance (after the valid op)": {
        "op": "trade", "u1": "user0001", "u2": BANK, "amount": 6, "style": peg.LIQUID},
    "negative amount": {"op": "trade", "u1": BANK, "u2": "user0002", "amount": -3,
                        "style": peg.LIQUID},
    "bad style": {"op": "trade", "u1": BANK, "u2": "user0002", "amount": 1, "style": "gold"},
    "refund of an unknown withdraw": {"op": "refund", "id": "nope"},
    "burn of a withdraw twice": {"op": "burn", "ids": ["w" * 32, "w" * 32]},
    "unknown table": {"op": "put", "table": "nosuch", "key": "k", "value": 1},
    "a value JSON cannot hold": {"op": "put", "table": "settings", "key": "k",
                                 "value": {1, 2}},
    "unknown op": {"op": "teleport", "to": "mars"},
    "spend of an unregistered input": {"op": "spend", "keys": ["e" * 64 + ":1"]},
    "credit of a registered input": ledger_ops.credit(
        "f" * 64 + ":0", 10, np.full(peg.PEG_SIZE, 0, dtype=np.int64), owner="user0003"),
    "credit whose fractions miss its value": ledger_ops.credit(
        "d" * 64 + ":0", 11, np.ones(peg.PEG_SIZE, dtype=np.int64), owner="user0003"),
    "adjust below zero": neg_adjust(),
    "drift of the wrong length": {"op": "drift", "vec": "AAAA"},
    # records the ledger owns are written by their operations only, never by a put
    "a put into the inputs": {"op": "put", "table": "inputs", "key": "f" * 64 + ":0",
                              "value": {"value": 1, "batch": "m" * 32}},
    "a put into the withdraws": {"op": "put", "table": "withdraws", "key": "w" * 32,
                                 "value": {"batch": "m" * 32}},
    "a put into the batches": {"op": "put", "table": "batches", "key": "m" * 32, "value": {}},
    "a put into the old history table": {"op": "put", "table": "history", "key": "u1",
                                         "value": "m" * 32},
    "a put into the claims": {"op": "put", "table": "claims", "key": "f" * 64 + ":0",
                              "value": {"name": "user0003"}},
    "a put of the recompute's record": {"op": "put", "table": "meta", "key": "engine",
                                        "value": {"supply": 0}},
    "a claim for a reserved name": ledger_ops.claim("e" * 64 + ":2", "pool"),
    "a batch spending an unregistered input": ledger_ops.batch("m" * 32, new_record(
        {**PLAN, "ins": ["e" * 64 + ":1"]})),
    "a batch of an unknown withdraw": ledger_ops.batch("m" * 32, new_record(
        {**PLAN, "ids": ["nope"]})),
    "a batch that is not new": ledger_ops.batch("m" * 32, {**new_record(PLAN),
                                                           "state": "done"}),
    "an update of an unknown batch": ledger_ops.batch_update("nope", {"last_try": 1}),
    "an ending of an unknown batch": ledger_ops.batch_end("nope", "Complete", {}),
    "an expiry of an unknown withdraw": ledger_ops.expire("nope", 1),
    "forgetting a record that does not exist": ledger_ops.forget("w" * 32),
}


def crash_and_reopen(ex: Exchange, path) -> Exchange:
    ex.store.close()  # as a SIGKILL leaves it: no closing checkpoint
    return Exchange(Store(path))


@pytest.mark.parametrize("supply", [None, SUPPLY], ids=["plain", "with-recompute"])
@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_a_group_with_an_invalid_op_changes_nothing(tmp_path, bad, supply):
    path = tmp_path / "ledger"
    ex = funded(path)
    before, seq = ex.digest(), ex.seq
    with pytest.raises(EngineError):
        ex.commit([dict(VALID), BAD[bad]], supply=supply, now=0)
    assert ex.digest() == before, "the valid op of a refused group was applied"
    assert ex.seq == seq
    assert ex.balance("user0001") in (None, {"liquid": 0, "reserve": 0})
    ex.commit([dict(VALID)], supply=supply, now=0)  # the journal still takes the next group
    assert ex.balance("user0001")["liquid"] == 5
    want = ex.digest()
    again = crash_and_reopen(ex, path)
    try:
        assert again.digest() == want
        assert again.seq == seq + 1
    finally:
        again.close()


def test_a_valid_group_depending_on_its_own_earlier_ops_still_commits(tmp_path):
    """Credits, then a recompute, then trades paid from the recomputed balances (recover's
    shape): each op is checked against the state the ops before it leave."""
    path = tmp_path / "ledger"
    ex = Exchange(Store(path))
    vec = peg.std_spread(10**10)
    ops = [ledger_ops.credit("c" * 64 + ":0", int(vec.sum()), vec, owner="carol000"),
           {"op": "recompute", "supply": 0, "totals": {"liquid": 10**10, "reserve": 0,
                                                            "subpremium": 0, "frozen": 0},
            "cycle": None},
           {"op": "trade", "u1": "carol000", "u2": "davey000", "amount": 10**9,
            "style": peg.LIQUID},
           {"op": "trade", "u1": "davey000", "u2": "pool", "amount": 10**8,
            "style": peg.LIQUID}]
    ex.commit(ops)
    assert ex.balance("davey000")["liquid"] == 9 * 10**8
    want = ex.digest()
    again = crash_and_reopen(ex, path)
    try:
        assert again.digest() == want
    finally:
        again.close()


def test_a_batch_record_changes_only_as_its_lifecycle_allows(tmp_path):
    """One lifecycle record per batch: marked before the broadcast, tracked, ended; its
    withdraws and inputs are marked as in it by the ledger alone, and freed at its end."""
    ex = funded(tmp_path / "ledger")
    master, wid, key = "m" * 32, "w" * 32, "f" * 64 + ":0"
    ex.mark_batched(master, PLAN)
    assert ex.record("withdraws", wid)["batch"] == master == ex.input(key)["batch"]
    unconfirmed = {"status": "unconfirmed", "txid": "ab" * 32, "ID": master, "block": 70,
                   "in0": key, "confirmations": 0}
    assert ex.withdraw_status(wid) == unconfirmed == ex.withdraw_status(master)
    refused = [ledger_ops.batch_update(master, {"status": "Complete"}),
               ledger_ops.batch_update(master, {"ids": []}),
               ledger_ops.batch_update(master, {"cancel": {"txid": "cd" * 32, "in": "x:0"}}),
               ledger_ops.batch("n" * 32, new_record(PLAN)),  # its withdraw and input are taken
               ledger_ops.expire(wid, 80),  # a batched withdraw ends with its batch
               ledger_ops.forget(wid)]  # still in flight
    for op in refused:
        before = ex.digest()
        with pytest.raises(EngineError):
            ex.commit([op])
        assert ex.digest() == before, op
    assert ex.update_batch(master, txid2="cd" * 32, status="Processing")["refusals"] == 0
    assert ex.withdraw_status(wid) == {**unconfirmed, "status": "Processing", "txid2": "cd" * 32}
    assert list(ex.withdraw_status(wid)) == ["status", "txid", "ID", "block", "in0",
                                             "confirmations", "txid2"]  # the original's order
    ex.update_batch(master, gone_since=75)
    with pytest.raises(EngineError):
        ex.update_batch(master, unset=["ids"])
    assert "gone_since" not in ex.update_batch(master, unset=["gone_since"])
    assert ex.decline_batch(master, "a test", now=0) == [wid]
    assert ex.record("withdraws", wid) is None and "batch" not in ex.input(key)
    assert ex.batch(master)["state"] == "failed" and "raw" not in ex.batch(master)
    assert ex.withdraw_status(wid, clear=True)["status"] == "Failed/Declined"
    assert ex.withdraw_status(wid) is None and ex.withdraw_status(master) is not None
    with pytest.raises(EngineError):
        ex.update_batch(master, last_try=99)  # it ended
    ex.close()


class FailingRead(Store):
    """A real Store whose reads of one key fail while ``failing`` is set, as a LevelDB read
    error (a damaged block, an I/O error) would."""

    failing: bytes | None = None

    def get(self, key: bytes) -> bytes | None:
        if key == self.failing:
            raise OSError(5, "Input/output error")
        return super().get(key)


def test_a_read_that_fails_after_a_credit_was_applied_changes_nothing(tmp_path):
    """credit_inputs applies its credits, then the recompute's totals read the vector of a
    frozen input from LevelDB. Before the fix a failing read there left the credit applied in
    memory with no log record and the journal going on: the next checkpoint wrote coins
    nothing records. Now the group is undone: memory is as before and a restart agrees."""
    path = tmp_path / "ledger"
    ex = Exchange(FailingRead(path))
    frozen = "a" * 64 + ":0"
    vec = peg.std_spread(10**10)
    ex.credit_inputs([{"key": frozen, "value": int(vec.sum()), "vector": vec, "owner": BANK,
                       "frozen_until": 10**12}], supply=SUPPLY, now=0)
    ex.checkpoint()  # its vector is on disk now, no longer held in memory
    before, seq = ex.digest(), ex.seq
    new = {"key": "b" * 64 + ":0", "value": int(vec.sum()), "vector": vec, "owner": "user0001"}
    ex.store.failing = schema.pack_vector("inputs", frozen)
    with pytest.raises(OSError, match="Input/output error"):
        ex.credit_inputs([dict(new)], supply=SUPPLY + 1, now=0)  # a new supply: read again
    ex.store.failing = None
    assert ex.digest() == before, "the credit of a failed group stayed in memory"
    assert ex.seq == seq and not ex.is_registered(new["key"])
    assert ex.failed is None
    ex.checkpoint()
    again = crash_and_reopen(ex, path)
    try:
        assert again.digest() == before
    finally:
        again.close()


@pytest.mark.parametrize("call", ["refund", "burn"])
def test_a_withdraw_listed_twice_changes_nothing(tmp_path, call):
    """refund/burn checked that each id is pending, not that it is listed once: the second
    refund of the same id raised KeyError after the first was applied, leaving it in memory
    with no log record. Now the call is refused (EngineError) and nothing changed."""
    path = tmp_path / "ledger"
    ex = funded(path)
    before, seq = ex.digest(), ex.seq
    with pytest.raises(EngineError, match="listed twice"):
        getattr(ex, call)(["w" * 32, "w" * 32])
    assert ex.digest() == before and ex.seq == seq and ex.failed is None
    again = crash_and_reopen(ex, path)
    try:
        assert again.digest() == before
    finally:
        again.close()
