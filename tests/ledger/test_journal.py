"""Group commit itself (pegx.ledger.journal.Journal), on a real LevelDB: while one waiter's
batch is being written, later records queue; the next leader writes all of them in one synced
batch; records land in seq order; and no waiter returns before its record is on disk.

The store holds the first op-log batch until the test releases it (tests/harness/holdstore),
so every interleaving asserted here is forced, not timed.
"""

from __future__ import annotations

import threading

import pytest

from harness.holdstore import HoldingStore
from pegx.ledger import journal as jn
from pegx.ledger import schema

WAITERS = 5


def test_waiters_share_one_fsync_keep_order_and_return_only_when_durable(tmp_path):
    store = HoldingStore(tmp_path / "ledger")
    j = jn.Journal(store, last_seq=0)
    fsyncs = []
    j.on_fsync = fsyncs.append
    seen: dict[int, tuple[bool, int]] = {}  # seq -> (its record on disk when wait returned,
    errors: list[BaseException] = []        #        the journal's local seq then)

    def waiter(seq: int) -> None:
        try:
            j.wait(seq)
            seen[seq] = (store.get(schema.pack_seq(seq)) is not None, j.local_seq)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    store.hold_next(HoldingStore.log_write)
    j.append(1, [{"op": "n", "i": 1}])
    first = threading.Thread(target=waiter, args=(1,))
    first.start()
    store.wait_held()  # the leader is inside its batch: record 1 is not written yet
    later = []
    for seq in range(2, 2 + WAITERS):
        j.append(seq, [{"op": "n", "i": seq}])
        t = threading.Thread(target=waiter, args=(seq,))
        t.start()
        later.append(t)
    # nobody is released while the only batch in flight is unwritten
    assert seen == {} and j.durable_seq == 0 and store.get(schema.pack_seq(1)) is None
    store.release()
    for t in [first, *later]:
        t.join(120)
        assert not t.is_alive(), "a waiter never returned"
    assert errors == []
    # each waiter returned with its own record (and every earlier one) on disk
    assert set(seen) == set(range(1, 2 + WAITERS))
    assert all(on_disk and local >= seq for seq, (on_disk, local) in seen.items()), seen
    # two synced batches: record 1 alone, then everything queued behind it together
    assert j.commits == 2 and len(fsyncs) == 2
    assert [s for s, _ in jn.read_log(store, 0)] == list(range(1, 2 + WAITERS))
    assert [ops[0]["i"] for _, ops in jn.read_log(store, 0)] == list(range(1, 2 + WAITERS))
    store.close()


def test_records_must_be_appended_in_seq_order(tmp_path):
    store = HoldingStore(tmp_path / "ledger")
    j = jn.Journal(store, last_seq=0)
    j.append(1, [])
    with pytest.raises(jn.JournalFailed):
        j.append(3, [])
    j.append(2, [])
    j.flush()
    assert [s for s, _ in jn.read_log(store, 0)] == [1, 2]
    store.close()


def test_a_failed_write_fails_every_waiter_and_acknowledges_nothing(tmp_path):
    """A write error: the waiter gets JournalFailed, later waiters too, nothing is durable."""
    store = HoldingStore(tmp_path / "ledger")
    j = jn.Journal(store, last_seq=0)
    j.append(1, [])
    store.close()  # the next write fails (the database is closed)
    with pytest.raises(jn.JournalFailed):
        j.wait(1)
    j.append(2, [])
    with pytest.raises(jn.JournalFailed):
        j.wait(2)
    assert j.durable_seq == 0 and j.failed is not None


class FailingNthBatch(HoldingStore):
    """A real Store whose ``fail_at``-th write batch from now fails, as a full disk would
    (LevelDB then writes nothing of that batch)."""

    fail_at: int | None = None

    def batch(self):
        if self.fail_at is not None:
            self.fail_at -= 1
            if self.fail_at == 0:
                raise OSError(28, "No space left on device")
        return super().batch()


def test_groups_written_before_a_failed_write_of_the_same_batch_are_acknowledged(tmp_path):
    """One group commit of two groups too big for one synced write (BATCH_BYTES) is written
    in two; the second write fails. The first group is on disk (a restart replays it), so
    its caller gets success; only the second's gets JournalFailed, and the journal stops.
    Before the fix both callers got JournalFailed: "error" for an applied group."""
    store = FailingNthBatch(tmp_path / "ledger")
    j = jn.Journal(store, last_seq=0)
    big = b'["' + b"x" * (jn.BATCH_BYTES * 3 // 4) + b'"]'  # two do not fit one write
    j.append_raw([(1, big)])
    j.append_raw([(2, big)])
    store.fail_at = 2
    j.wait(1)  # its leader writes both groups: the first write lands, the second fails
    assert j.durable_seq == 1 and j.failed is not None
    with pytest.raises(jn.JournalFailed, match="No space left"):
        j.wait(2)
    with pytest.raises(jn.JournalFailed):
        j.append(3, [])
        j.wait(3)
    assert [schema.unpack_seq(k) for k, _ in store.scan(schema.OPLOG)] == [1]
