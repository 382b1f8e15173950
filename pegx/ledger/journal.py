"""Acknowledged means durable: the operation log, group commit and checkpoints (DESIGN §3).

* Every state change is one log record ``seq -> [op, ...]`` (JSON). The engine applies it in
  memory under its lock, hands it to :meth:`Journal.append` in seq order, releases the lock and
  calls :meth:`Journal.wait`; ``wait`` returns only once the record is fsynced. Concurrent
  waiters share one fsync: the first becomes the leader and writes everything pending in one
  synced batch (group commit). Durability is prefix-closed: a record is never on disk without
  every record before it.
* A checkpoint writes the materialised state that changed since the previous one (account rows,
  table records, vectors), deletes the log records it covers and writes the state record last,
  all in one synced batch: after a crash, either the old or the new checkpoint is the truth and
  replaying the log after it reproduces the exact state.
* Checkpoints are written one at a time and in the order their snapshots were taken (the
  engine's checkpoint lock covers snapshot and write). The journal keeps the seq of the state
  record on disk, refuses a checkpoint older than it (writing it would put stale rows over newer
  ones and move the seq back) and deletes exactly the log records between that seq and the new
  one: every record after the state on disk stays until a state covering it has landed.
* Replication (pegx.replication) hooks in at one point: a :class:`Sink` set on the journal.
  The group-commit leader hands it the seq of every batch it has fsynced (``committed``);
  a synchronous sink returns only once the standby has that record on disk, and only then
  does ``wait`` return, so one round trip to the standby is shared by the whole batch. The
  sink also sets how far checkpoints may delete the log (``floor``): records a standby has
  not acknowledged stay, so a standby that is behind can catch up from the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from pegx.ledger import schema
from pegx.ledger.store import Store

log = logging.getLogger(__name__)


class JournalFailed(RuntimeError):
    """A log or checkpoint write failed: memory is ahead of disk and the daemon must stop."""


class NotAcknowledged(JournalFailed):
    """The record is on this disk but the sink (a synchronous standby) did not confirm it: the
    call must not answer success. The journal itself is fine and goes on."""


class Sink(Protocol):
    """Where the journal's durable records go next (pegx.replication.primary.Replicator)."""

    def committed(self, seq: int) -> None:
        """Records up to ``seq`` are fsynced here. Returns once they may be acknowledged (a
        synchronous standby holds them); raises NotAcknowledged if they may not."""

    def floor(self, seq: int) -> int:
        """The highest seq <= ``seq`` whose log records a checkpoint may delete."""


class Journal:
    """Group-committed op log on top of a Store."""

    def __init__(self, store: Store, last_seq: int, checkpoint_seq: int = 0):
        self.store = store
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)
        self._pending: list[tuple[int, bytes]] = []
        self._writing = False
        self._failed: BaseException | None = None
        self.durable_seq = last_seq  # acknowledgeable: fsynced here (and by a sync standby)
        self.local_seq = last_seq  # fsynced here
        self.appended_seq = last_seq
        self.commits = 0  # fsynced batches written (for metrics: records / commits = group size)
        self.checkpoint_seq = checkpoint_seq  # the seq of the state record on disk
        self._ckpt_mu = threading.Lock()  # one checkpoint write at a time
        # seconds each synced write took, for metrics (set by the app). Called by the writing
        # thread while other waiters wait for it, so it must be quick: a histogram observe
        self.on_fsync: Callable[[float], None] | None = None
        self.on_checkpoint: Callable[[float], None] | None = None
        self.sink: Sink | None = None
        # every log record up to here is deleted; the ones above stay until a checkpoint covers
        # them and the sink's floor lets them go (a checkpoint before replication kept them)
        first = next(store.scan(schema.OPLOG), None)
        first_seq = schema.unpack_seq(first[0]) if first is not None else checkpoint_seq + 1
        self.deleted_seq = min(checkpoint_seq, first_seq - 1)

    def append(self, seq: int, ops: list[dict]) -> None:
        """Queue record ``seq`` (call in seq order, under the engine lock)."""
        self.append_raw(seq, json.dumps(ops, separators=(",", ":")).encode())

    def append_raw(self, seq: int, data: bytes) -> None:
        """Queue record ``seq`` as encoded bytes (a standby logs the primary's bytes as sent)."""
        with self._mu:
            if seq != self.appended_seq + 1:
                raise JournalFailed(f"op log out of order: {seq} after {self.appended_seq}")
            self._pending.append((seq, data))
            self.appended_seq = seq

    def wait(self, seq: int) -> None:
        """Block until record ``seq`` (and every earlier one) may be acknowledged: fsynced,
        and with a synchronous sink, confirmed by it (NotAcknowledged if it will not)."""
        with self._mu:
            while self.durable_seq < seq:
                if self._failed is not None:
                    raise JournalFailed(f"ledger write failed: {self._failed}") from self._failed
                if self._writing:
                    self._cond.wait()
                    continue
                self._lead()

    def _lead(self) -> None:
        """As the group's leader: write everything pending in one synced batch and hand its
        top seq to the sink. Called, and returning, with ``_mu`` held; released meanwhile, so
        that others append (and queue behind this batch) while it is written."""
        batch, self._pending = self._pending, []
        top = batch[-1][0] if batch else self.local_seq
        sink = self.sink
        self._writing = True
        self._mu.release()
        try:
            self._write(batch)
            with self._mu:
                self.local_seq = top
                if batch:
                    self.commits += 1
            if sink is not None:
                sink.committed(top)  # a sync standby: returns once it holds them
        except BaseException:
            self._mu.acquire()
            self._writing = False
            self._cond.notify_all()
            raise
        self._mu.acquire()
        self._writing = False
        self.durable_seq = max(self.durable_seq, top)
        self._cond.notify_all()

    def _write(self, batch: list[tuple[int, bytes]]) -> None:
        """One synced batch of op-log records (without ``_mu``); a failure is kept, so that
        nothing is acknowledged from now on: memory is ahead of disk."""
        if not batch:
            return
        t0 = time.perf_counter()
        try:
            with self.store.batch() as wb:
                for s, data in batch:
                    wb.put(schema.pack_seq(s), data)
        except BaseException as exc:
            with self._mu:
                self._failed = exc
            log.critical("op log write failed: %s", exc)
            raise JournalFailed(f"ledger write failed: {exc}") from exc
        if self.on_fsync is not None:
            self.on_fsync(time.perf_counter() - t0)

    def flush(self) -> None:
        """Make everything appended so far durable."""
        self.wait(self.appended_seq)

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    def write_checkpoint(self, seq: int, puts: list[tuple[bytes, bytes]],
                         deletes: list[bytes]) -> None:
        """Write a checkpoint of the state at ``seq`` (every op up to it, durable first).

        ``puts``/``deletes`` are the rows and records that changed since the state on disk, as
        they were at ``seq``. One synced batch writes them, deletes the log records after the
        state on disk up to ``seq`` and writes the state record last: the batch is the commit
        point. A checkpoint older than the one on disk is refused and stops the journal: its
        rows are stale, and not writing them leaves memory ahead of what disk can rebuild.
        """
        self.wait(seq)
        with self._ckpt_mu:
            if self._failed is not None:
                raise JournalFailed(f"ledger write failed: {self._failed}") from self._failed
            prev = self.checkpoint_seq
            if seq < prev:
                exc = JournalFailed(f"checkpoint at seq {seq:,d} is older than the one on disk "
                                    f"({prev:,d}): refused")
                self._fail(exc, "checkpoint refused")
                raise exc
            t0 = time.perf_counter()
            try:
                with self.store.batch() as wb:
                    for k in deletes:
                        wb.delete(k)
                    for k, v in puts:
                        wb.put(k, v)
                    upto = seq if self.sink is None else min(seq, self.sink.floor(seq))
                    for s in range(self.deleted_seq + 1, upto + 1):
                        wb.delete(schema.pack_seq(s))
                    wb.put(schema.STATE, Store.state_value(seq))
            except BaseException as exc:
                self._fail(exc, "checkpoint write failed")
                raise JournalFailed(f"checkpoint write failed: {exc}") from exc
            self.checkpoint_seq = seq
            self.deleted_seq = max(self.deleted_seq, upto)
            if self.on_checkpoint is not None:
                self.on_checkpoint(time.perf_counter() - t0)

    def fail(self, exc: BaseException, what: str) -> None:
        """Stop the journal: memory can no longer be trusted to match the log (every later
        wait and checkpoint is refused, so no close writes that memory over the disk)."""
        self._fail(exc, what)

    def _fail(self, exc: BaseException, what: str) -> None:
        with self._mu:
            if self._failed is None:
                self._failed = exc
            self._cond.notify_all()
        log.critical("%s: %s", what, exc)


def read_log(store: Store, after: int):
    """Yield (seq, ops) for every logged record with seq > ``after``, in order."""
    for seq, data in read_raw(store, after):
        yield seq, json.loads(data)


def read_raw(store: Store, after: int, snapshot=None):
    """Yield (seq, bytes) for every logged record with seq > ``after``, in order (records
    kept for a standby below ``after`` are skipped by seeking, not read)."""
    for k, v in store.scan(schema.OPLOG, start=schema.pack_seq(after + 1), snapshot=snapshot):
        yield schema.unpack_seq(k), v
