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
* Bounded records (issue #15: one 10,000-input credit was a 128 MB record, and LevelDB took
  seconds to reopen a log file that size). A group whose JSON is longer than RECORD_BYTES is
  logged as several consecutive records, each a JSON list of some of its ops in order; all but
  the last are marked with a leading PART byte (``+[...]``), so the last record of a group is
  always a plain JSON list. :meth:`Journal.append` takes the first seq and returns the last;
  the engine's seq (and a checkpoint's) is always the last record of a group, so a checkpoint
  covers whole groups. The group commit writes at most about BATCH_BYTES per synced batch, so
  a crash can leave the first parts of the last group on disk without its end: nothing of it
  was acknowledged, :func:`read_log` (and :func:`groups`, for anyone who reads raw records,
  e.g. a standby) joins parts and leaves such a torn tail out, and the engine deletes it on
  open. Records are still ``(seq, bytes)``; ``wait(seq)`` of a group's last seq returns once
  every part is on disk. If one of a batch's writes fails (a full disk), the groups that
  ended in the writes before it are on disk and replayed at restart, so their callers are
  acknowledged; the others get JournalFailed and the journal stops.
* Replication (pegx.replication) hooks in at one point: a :class:`Sink` set on the journal.
  The group-commit leader hands it the seq of every batch it has fsynced (``committed``);
  a synchronous sink returns only once the standby has that record on disk, and only then
  does ``wait`` return, so one round trip to the standby is shared by the whole batch. The
  sink also sets how far checkpoints may delete the log (``floor``): records a standby has
  not acknowledged stay, so a standby that is behind can catch up from the log. A group's
  records are queued together (:meth:`Journal.append_raw`), so the seq handed to the sink is
  always a group's end; a floor inside a long group is moved back to the end of the group
  before it, so the log always starts at a group (pegx.ledger.replicated applies whole groups).
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

RECORD_BYTES = 1 << 20  # a group longer than this is logged as several records ...
BATCH_BYTES = 4 << 20  # ... and a synced write of the group commit holds about this much
PART = b"+"  # the first byte of every record of a group but its last


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

    def append(self, seq: int, ops: list[dict]) -> int:
        """Queue the group ``ops`` as record ``seq`` (or records seq.. if it is long: see the
        module docstring); returns the seq of its last record. Call in seq order, under the
        engine lock."""
        records = encode(ops)
        return self.append_raw([(seq + k, data) for k, data in enumerate(records)])

    def append_raw(self, records: list[tuple[int, bytes]]) -> int:
        """Queue ``(seq, bytes)`` records as encoded (a standby logs the primary's bytes as
        sent), all at once: a group's records go to the group commit together, so the
        journal's durable seq is always the end of a group. Returns the last seq."""
        with self._mu:
            for seq, _ in records:
                if seq != self.appended_seq + 1:
                    raise JournalFailed(f"op log out of order: {seq} after {self.appended_seq}")
                self.appended_seq = seq
            self._pending += records
            return self.appended_seq

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
        """As the group's leader: write everything pending in synced batches and hand the top
        seq written to the sink. Called, and returning, with ``_mu`` held; released meanwhile,
        so that others append (and queue behind this batch) while it is written. If a write
        fails, the groups of the writes before it are on disk (a restart replays them) and
        are acknowledged; the journal fails, so every later seq is refused (see wait)."""
        batch, self._pending = self._pending, []
        before = self.local_seq
        sink = self.sink
        self._writing = True
        self._mu.release()
        try:
            upto, error = self._write(batch, before)
            with self._mu:
                self.local_seq = upto
                if upto > before:
                    self.commits += 1
            if sink is not None and (error is None or upto > before):
                sink.committed(upto)  # a sync standby: returns once it holds them
        except BaseException:
            self._mu.acquire()
            self._writing = False
            self._cond.notify_all()
            raise
        self._mu.acquire()
        self._writing = False
        self.durable_seq = max(self.durable_seq, upto)
        self._cond.notify_all()

    def _write(self, batch: list[tuple[int, bytes]],
               upto: int) -> tuple[int, BaseException | None]:
        """The op-log records in synced batches of about BATCH_BYTES (one, unless a long group
        is among them), without ``_mu``; returns the end of the last group on disk (``upto``
        if none) and the failure, if a write failed. A failure is kept, so that nothing after
        that group is acknowledged from now on: memory is ahead of disk."""
        if not batch:
            return upto, None
        t0 = time.perf_counter()
        try:
            for part in _batches(batch):  # a long group: several synced writes (see above)
                with self.store.batch() as wb:
                    for s, data in part:
                        wb.put(schema.pack_seq(s), data)
                upto = _last_end(part, upto)
        except BaseException as exc:  # noqa: BLE001 - kept: every waiter past upto gets it
            with self._mu:
                self._failed = exc
            log.critical("op log write failed: %s (records up to seq %s are on disk)", exc,
                         f"{upto:,d}")
            return upto, exc
        if self.on_fsync is not None:
            self.on_fsync(time.perf_counter() - t0)
        return upto, None

    def flush(self) -> None:
        """Make everything appended so far durable."""
        self.wait(self.appended_seq)

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    def write_checkpoint(self, seq: int, puts: list[tuple[bytes, bytes]],
                         deletes: list[bytes], *, files: dict | None = None,
                         before: Callable[[], None] | None = None,
                         keep_log: bool = False) -> None:
        """Write a checkpoint of the state at ``seq`` (every op up to it, durable first).

        ``puts``/``deletes`` are the rows and records that changed since the state on disk, as
        they were at ``seq``. One synced batch writes them, deletes the log records after the
        state on disk up to ``seq`` and writes the state record last: the batch is the commit
        point. ``before()`` runs first (it writes what the state record will name: checkpoint
        files, ``files``, and vectors nothing names yet); if it fails, so does the checkpoint.
        A checkpoint older than the one on disk is refused and stops the journal: its rows are
        stale, and not writing them leaves memory ahead of what disk can rebuild. With
        ``keep_log`` it deletes no log record (one taken while the ledger opens, before a sink
        can say what a standby still needs: keeping records is always safe, and the next
        checkpoint deletes them by the rules above).
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
                if before is not None:
                    before()
                with self.store.batch() as wb:
                    for k in deletes:
                        wb.delete(k)
                    for k, v in puts:
                        wb.put(k, v)
                    upto = self._delete_upto(seq, keep_log)
                    for s in range(self.deleted_seq + 1, upto + 1):
                        wb.delete(schema.pack_seq(s))
                    wb.put(schema.STATE, Store.state_value(seq, files))
            except BaseException as exc:
                self._fail(exc, "checkpoint write failed")
                raise JournalFailed(f"checkpoint write failed: {exc}") from exc
            self.checkpoint_seq = seq
            self.deleted_seq = max(self.deleted_seq, upto)
            if self.on_checkpoint is not None:
                self.on_checkpoint(time.perf_counter() - t0)

    def _delete_upto(self, seq: int, keep_log: bool) -> int:
        """The last log record a checkpoint at ``seq`` deletes (none past deleted_seq)."""
        if keep_log:
            return self.deleted_seq
        if self.sink is None:
            return seq
        return self._group_end(min(seq, self.sink.floor(seq)))

    def _group_end(self, upto: int) -> int:
        """``upto``, or the end of the group before it if it is inside a long group (a
        retention floor may be, ``retain`` records back): the log keeps whole groups, which
        is all a standby can be sent (it holds a group's end, pegx.ledger.replicated)."""
        while upto > self.deleted_seq:
            data = self.store.get(schema.pack_seq(upto))
            if data is None or not is_part(data):
                return upto
            upto -= 1
        return upto

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


def encode(ops: list[dict]) -> list[bytes]:
    """The records of one group: one JSON list, or (longer than RECORD_BYTES) several, cut
    between ops, all but the last marked PART."""
    texts = [json.dumps(op, separators=(",", ":")).encode() for op in ops]
    records, part, size = [], [], 0
    for text in texts:
        if part and size + len(text) > RECORD_BYTES:
            records.append(PART + b"[" + b",".join(part) + b"]")
            part, size = [], 0
        part.append(text)
        size += len(text) + 1
    records.append(b"[" + b",".join(part) + b"]")
    return records


def is_part(data: bytes) -> bool:
    """Whether a raw record is one of the first records of a group (not its last)."""
    return data[:1] == PART


def _last_end(records: list[tuple[int, bytes]], upto: int) -> int:
    """The seq of the last record of ``records`` that ends a group, or ``upto`` if none."""
    for seq, data in reversed(records):
        if not is_part(data):
            return seq
    return upto


def _batches(records: list[tuple[int, bytes]]):
    """``records`` cut into synced writes of about BATCH_BYTES each."""
    part, size = [], 0
    for rec in records:
        if part and size + len(rec[1]) > BATCH_BYTES:
            yield part
            part, size = [], 0
        part.append(rec)
        size += len(rec[1])
    if part:
        yield part


def groups(records, torn: list[int] | None = None):
    """Join raw log records ``(seq, bytes)`` (in seq order) into groups: yield (seq of the
    group's last record, [op, ...]). The seqs of a trailing run of parts without its last
    record (a group a crash cut short) are appended to ``torn``."""
    parts: list[int] = []
    ops: list = []
    for seq, raw in records:
        if is_part(raw):
            parts.append(seq)
            ops.extend(json.loads(raw[1:]))
            continue
        group = json.loads(raw)
        if parts:
            group = ops + group
            parts, ops = [], []
        yield seq, group
    if parts and torn is not None:
        torn.extend(parts)


def read_log(store: Store, after: int, torn: list[int] | None = None):
    """Yield (seq, ops) for every logged group whose last record has seq > ``after``, in
    order (``after`` is the end of a group; see :func:`groups` for ``torn``)."""
    yield from groups(read_raw(store, after), torn)


def read_raw(store: Store, after: int, snapshot=None):
    """Yield (seq, bytes) for every logged record with seq > ``after``, in order (records
    kept for a standby below ``after`` are skipped by seeking, not read)."""
    for k, v in store.scan(schema.OPLOG, start=schema.pack_seq(after + 1), snapshot=snapshot):
        yield schema.unpack_seq(k), v
