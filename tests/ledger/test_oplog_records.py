"""One op-log record stays small, however large the group (issue #15).

A single credit_inputs of 10,000 inputs used to be one 128 MB log record in one 128 MB
LevelDB write: LevelDB then replays a log file of that size each time it opens (seconds). Now
a long group is cut into records of about RECORD_BYTES, written in synced batches of about
BATCH_BYTES, and read back joined; a crash between two of those batches leaves the first
parts of a group that was never acknowledged, which the next open leaves out and deletes.
Real LevelDB, real Exchange; a Store whose n-th log write fails as a full disk would stands
for the crash (LevelDB writes nothing of a failing batch).
"""

from __future__ import annotations

import contextlib

import pytest

from harness import oplog_records, std_inputs
from pegx.ledger import journal, schema
from pegx.ledger.engine import Exchange
from pegx.ledger.journal import JournalFailed
from pegx.ledger.store import Store

SUPPLY = 500



def log_records(path) -> list[tuple[int, bytes]]:
    with Store(path, create=False, read_only=True) as store:
        return oplog_records(store)


class FailingLogWrite(Store):
    """A real Store whose ``fail_at``-th synced batch of op-log records fails (ENOSPC)."""

    fail_at = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_writes = 0

    @contextlib.contextmanager
    def batch(self):
        with super().batch() as wb:
            yield _Watch(wb, self)


class _Watch:
    def __init__(self, wb, store: FailingLogWrite):
        self._wb, self._store, self._counted = wb, store, False

    def put(self, key: bytes, value: bytes) -> None:
        if key.startswith(schema.OPLOG) and not self._counted:
            self._counted = True
            self._store.log_writes += 1
            if self._store.log_writes == self._store.fail_at:
                raise OSError(28, "No space left on device")
        self._wb.put(key, value)

    def delete(self, key: bytes) -> None:
        self._wb.delete(key)


def test_a_long_group_is_logged_in_bounded_records_and_replayed_whole(tmp_path):
    path = tmp_path / "ledger"
    ex = Exchange(Store(path))
    ex.credit_inputs(std_inputs(10), supply=SUPPLY, now=0)
    ex.checkpoint()
    ex.credit_inputs(std_inputs(1_500, first=10), supply=SUPPLY, now=0)  # ~10 MB of JSON
    digest, seq = ex.digest(), ex.seq
    ex.store.close()  # a crash: the group is only in the log
    records = log_records(path)
    assert len(records) > 5  # before: one record
    biggest_op = 7_000  # one credit op of a STD spread (6.4 kB of vector)
    assert all(len(v) <= journal.RECORD_BYTES + biggest_op for _, v in records)
    assert [v[:1] for _, v in records[:-1]] == [journal.PART] * (len(records) - 1)
    assert records[-1][0] == seq and records[-1][1][:1] == b"["
    # LevelDB's own log files stay near its 4 MB write buffer (before: one of ~20 MB)
    logs = [f.stat().st_size for f in path.glob("*.log")]
    assert max(logs) <= 2 * journal.BATCH_BYTES + (1 << 20), logs
    again = Exchange(Store(path))
    assert again.replayed == 1 and again.seq == seq and again.digest() == digest
    assert again.input_count() == 1_510
    again.close()


def test_a_group_cut_short_by_a_crash_is_left_out_and_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "RECORD_BYTES", 20_000)  # a few ops per record ...
    monkeypatch.setattr(journal, "BATCH_BYTES", 60_000)  # ... a few records per write
    path = tmp_path / "ledger"
    ex = Exchange(FailingLogWrite(path))
    ex.credit_inputs(std_inputs(3), supply=SUPPLY, now=0)
    assert ex.trade("user00000", 1_000, "user00001")
    before, seq = ex.digest(), ex.seq
    ex.store.fail_at = ex.store.log_writes + 3  # the group's third write fails
    with pytest.raises(JournalFailed):
        ex.credit_inputs(std_inputs(60, first=3), supply=SUPPLY, now=0)
    ex.store.close()  # what is on disk is what a crash there leaves
    on_disk = log_records(path)
    assert on_disk[-1][0] > seq and on_disk[-1][1][:1] == journal.PART  # a torn tail

    again = Exchange(Store(path))
    assert again.seq == seq and again.digest() == before  # nothing of the group
    assert [s for s, _ in oplog_records(again.store)] == [s for s, _ in on_disk if s <= seq]
    # the seqs of the torn parts are used again, and a restart reads what they hold now
    assert again.trade("user00001", 500, "user00002")
    again.credit_inputs(std_inputs(40, first=3), supply=SUPPLY, now=0)
    digest, seq = again.digest(), again.seq
    again.store.close()
    third = Exchange(Store(path))
    assert third.digest() == digest and third.seq == seq and third.input_count() == 43
    third.close()
