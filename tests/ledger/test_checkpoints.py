"""Checkpoints are serialised and only move forward (issue 10 item 1), at the ledger level.

Real LevelDB, real Exchange, real threads; a HoldingStore (tests/holdstore.py) holds one
checkpoint's batch before its write so the interleaving that lost trades is forced every time:

* a manual checkpoint (pegx.checkpoint) is mid-write while trades make an automatic
  checkpoint due: before the fix the automatic one ran, landed first, deleted the log records
  after the manual one's seq, and the manual one then wrote stale rows and an older seq;
* close() is mid-checkpoint while a manual checkpoint is asked for: the same, with close's
  checkpoint the stale one.

Each test then "crashes" (closes the store without a checkpoint), reopens the ledger and
compares it with what memory held, digest for digest.
"""

from __future__ import annotations

import threading

import pytest

from harness.holdstore import HoldingStore
from pegx import peg
from pegx.ledger import schema
from pegx.ledger.engine import Exchange
from pegx.ledger.journal import JournalFailed
from pegx.ledger.rules import EngineError
from pegx.ledger.store import Store

SUPPLY = 500
BANK = "bankroll"


def funded(path, **kwargs) -> Exchange:
    ex = Exchange(HoldingStore(path), **kwargs)
    vec = peg.std_spread(10**11)
    ex.credit_inputs([{"key": "f" * 64 + ":0", "value": int(vec.sum()), "vector": vec,
                       "owner": BANK}], supply=SUPPLY, now=0)
    return ex


def crash_and_reopen(ex: Exchange, path) -> Exchange:
    """Close the store the way a SIGKILL would leave it (no closing checkpoint); reopen."""
    ex.store.close()
    return Exchange(Store(path))


def run(target) -> tuple[threading.Thread, list]:
    out: list = []

    def body():
        try:
            out.append(target())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    th = threading.Thread(target=body, daemon=True)  # (a hung one must not hang pytest)
    th.start()
    return th, out


def test_an_automatic_checkpoint_never_overtakes_a_manual_one(tmp_path):
    path = tmp_path / "ledger"
    ex = funded(path, checkpoint_ops=5)
    ex.trade(BANK, 1, "user0001")
    ex.trade(BANK, 1, "user0002")
    assert ex.store.state() is None  # no automatic checkpoint yet: user0001 is dirty
    ex.store.hold_next(HoldingStore.state_write)
    manual, result = run(ex.checkpoint)  # pegx.checkpoint
    ex.store.wait_held()
    manual_seq = ex.seq
    # user0001 is in the held checkpoint's snapshot and changes again after it; these trades
    # make an automatic checkpoint due
    for _ in range(7):
        ex.trade(BANK, 1, "user0001")
    ex.store.release()
    manual.join(60)
    assert not manual.is_alive()
    assert result == [manual_seq]
    want, seq = ex.digest(), ex.seq
    assert ex.store.state()["seq"] >= manual_seq
    again = crash_and_reopen(ex, path)
    try:
        assert again.seq == seq
        assert again.balance("user0001")["liquid"] == 8
        assert again.digest() == want
    finally:
        again.close()


def test_a_checkpoint_asked_for_while_close_checkpoints_cannot_overtake_it(tmp_path):
    path = tmp_path / "ledger"
    ex = funded(path)
    for n in range(3):
        ex.trade(BANK, 1, f"user000{n}")
    ex.store.hold_next(HoldingStore.state_write)
    closer, result = run(ex.close)
    ex.store.wait_held()
    # calls still in flight while the daemon shuts down: acknowledged, so they must survive
    ex.trade(BANK, 1, "user0000")
    ex.trade(BANK, 1, "user0009")
    try:
        ex.checkpoint()
    except EngineError as exc:
        assert "closing" in str(exc)
    want, seq = ex.digest(), ex.seq
    ex.store.release()
    closer.join(60)
    assert not closer.is_alive()
    assert result == [None]
    again = Exchange(Store(path))
    try:
        assert again.seq == seq
        assert again.balance("user0000")["liquid"] == 2
        assert again.digest() == want
    finally:
        again.close()


def test_no_checkpoint_after_close(tmp_path):
    path = tmp_path / "ledger"
    ex = funded(path)
    ex.close()
    with pytest.raises(EngineError, match="closed"):
        ex.checkpoint()


def test_the_journal_refuses_a_checkpoint_older_than_the_one_on_disk(tmp_path):
    path = tmp_path / "ledger"
    ex = funded(path)
    for n in range(4):
        ex.trade(BANK, 1, f"user000{n}")
    newest = ex.checkpoint()
    ex.trade(BANK, 1, "user0000")
    ex.journal.flush()
    logged = [k for k, _ in ex.store.scan(schema.OPLOG)]
    with pytest.raises(JournalFailed, match="older"):
        ex.journal.write_checkpoint(newest - 2, [], [])
    assert ex.store.state()["seq"] == newest
    assert [k for k, _ in ex.store.scan(schema.OPLOG)] == logged
    assert ex.journal.failed is not None  # memory may be ahead of disk: nothing acks now
    ex.store.close()


def test_a_checkpoint_asked_for_under_the_ledger_lock_never_deadlocks(tmp_path):
    """A signed API() script runs under ``ledger.locked()``; one that calls
    ``engine.checkpoint()`` while the automatic checkpoint is being written must get an
    answer. Before the fix it waited for the checkpoint lock holding the ledger lock, which
    the automatic checkpoint needs to finish: the daemon hung for good."""
    ex = funded(tmp_path / "ledger", checkpoint_ops=3)
    ex.checkpoint()
    in_write, go_on = threading.Event(), threading.Event()
    armed = [True]

    def hold(_seconds: float) -> None:  # the automatic checkpoint, committed, not finished
        if armed[0]:
            armed[0] = False
            in_write.set()
            assert go_on.wait(120)

    ex.observe(checkpoint=hold)
    auto, auto_out = run(lambda: [ex.trade(BANK, 1, f"user{k:04d}") for k in range(3)])
    assert in_write.wait(120), "the automatic checkpoint never started"

    def script():  # what an API() command does
        with ex.locked():
            ex.trade(BANK, 1, "user0009")
            return ex.checkpoint()

    second, out = run(script)
    second.join(60)
    try:
        assert not second.is_alive(), "checkpoint() under the ledger lock hung"
    finally:
        go_on.set()
    auto.join(60)
    assert not auto.is_alive() and auto_out == [[True] * 3]
    # the automatic checkpoint held the checkpoint lock: the call is refused, clearly
    assert len(out) == 1 and isinstance(out[0], EngineError)
    assert "a checkpoint is being written" in str(out[0])
    assert ex.checkpoint() == ex.seq  # and checkpoints go on
    assert ex.balance("user0009")["liquid"] > 0
