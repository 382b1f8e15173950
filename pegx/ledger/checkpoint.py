"""Checkpoints: the state that changed since the last one, written durably in one commit.

A checkpoint snapshots (under the ledger lock) every dirty row, balance, record and vector as
it is at ``seq``, and writes it outside the ledger lock, so calls go on meanwhile, but inside
its own lock, so no later snapshot can reach the disk before an earlier one (automatic ones,
``pegx.checkpoint`` and the one ``close`` writes alike). The journal moves the state record
(DESIGN §3); ``ckpt_seq`` moves only once the checkpoint is on disk. Its steps, in order:

1. the vectors of newly registered inputs, in synced LevelDB batches of at most BATCH_BYTES:
   they never change under their key and nothing on disk names them yet (their input
   records are in step 3), so a crash after this step leaves harmless strays that the
   replay writes again; once on disk they are dropped from memory;
2. checkpoint files of rows and balances, if :class:`pegx.ledger.matrix.Disk` chose files:
   each written to a temporary name, fsynced, renamed, its directory fsynced. A rows file is
   copied from the live matrix a chunk at a time while calls go on; a row changed meanwhile
   is saved first (``State.cow``), so the file holds the rows as they were at ``seq``;
3. one synced batch: records, the other vectors, row and balance keys (or the deletion of
   the keys the new files took in), the deletion of the log records it covers, and the state
   record last, naming the files (their generation): the commit point;
4. the deletion of files the new state record no longer names (a crash before it leaves them
   to the next open, which deletes every checkpoint file the state record does not name).

A crash at any point leaves the old state record with the files and rows it names, or the
new one with its own (tests/test_matrix_files.py kills a writer after every step).
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pegx import peg
from pegx.ledger import arrays, matrix, schema
from pegx.ledger.journal import BATCH_BYTES
from pegx.ledger.rules import EngineError
from pegx.ledger.state import State

log = logging.getLogger(__name__)

# Called with the name of each step of a checkpoint write right after it ("vectors" after
# each batch of input vectors, the file steps of pegx.ledger.arrays, "state" after the commit
# batch, "obsolete" after the old files are deleted): the crash tests stop a writer there.
FAULT: Callable[[str], None] | None = None


TRIM_BYTES = 16 << 20  # a checkpoint that wrote more than this gives free heap pages back


def _libc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl and others have none
    except (OSError, AttributeError):
        return None


_TRIM = _libc_trim()


def trim() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim).

    A large group (10,000 credits: ~350 MB of JSON, bytes and dicts for a moment) leaves its
    memory free but resident in the heap, where glibc keeps it for reuse: measured at 10,000
    users, 0.50 GB resident after the build and 0.15 GB after a trim. A checkpoint that wrote
    much follows such a group, so it trims (a few ms)."""
    if _TRIM is not None:
        _TRIM(0)


def _point(name: str) -> None:
    if FAULT is not None:
        FAULT(name)


@dataclass
class Snapshot:
    """What one checkpoint writes, taken under the ledger lock."""

    seq: int
    puts: list[tuple[bytes, bytes]]
    deletes: list[bytes]
    vectors: list[tuple[bytes, bytes]]  # input vectors written before the commit (step 1)
    held: list[tuple[str, np.ndarray]]  # the same, to drop from memory once written
    layout: matrix.Layout


def snapshot(state: State, disk: matrix.Disk, seq: int) -> Snapshot:
    """Everything dirty as it is now (the state at ``seq``), and clear the dirty sets; call
    under the lock.

    If the write that follows fails the journal stops (every later write and checkpoint is
    refused), so the dirty sets cleared here are not needed again.
    """
    puts: list[tuple[bytes, bytes]] = []
    deletes: list[bytes] = []
    vectors: list[tuple[bytes, bytes]] = []
    held: list[tuple[str, np.ndarray]] = []
    for table, key in state.dirty_recs:
        rec = state.tables.get(table, {}).get(key)
        k = schema.pack_record(table, key)
        if rec is None:
            deletes.append(k)
        else:
            puts.append((k, json.dumps(rec, separators=(",", ":")).encode()))
    inputs = state.tables["inputs"]
    for table, key in state.dirty_vecs:
        vec = state.vectors.get((table, key))
        k = schema.pack_vector(table, key)
        if table == "inputs" and key in inputs:
            if vec is not None:  # else it is on disk already (a refused group touched it)
                vectors.append((k, vec.astype("<i8").tobytes()))
                held.append((key, vec))
        elif vec is None:
            deletes.append(k)
        else:
            puts.append((k, vec.astype("<i8").tobytes()))
    gen = int(disk.files.get("gen", 0)) + 1
    layout = disk.layout(state, state.dirty_rows, state.dirty_views | state.dirty_rows, gen)
    matrix.set_seq(layout, seq)
    if any(job.kind == "rows" for job in layout.jobs):
        state.cow = {}  # rows changed from now on keep their value at seq for the file
    state.dirty_rows.clear()
    state.dirty_views.clear()
    state.dirty_recs.clear()
    state.dirty_vecs.clear()
    return Snapshot(seq, puts, deletes, vectors, held, layout)


class Checkpoints:
    """When and how an :class:`pegx.ledger.engine.Exchange` writes its checkpoints."""

    def __init__(self, ledger, *, ops: int, rows: int, seconds: float,
                 file_rows: int = matrix.FILE_ROWS):
        self.ledger = ledger
        self.ops, self.rows, self.seconds = ops, rows, seconds
        self.disk = matrix.Disk(file_rows)
        self.mu = threading.Lock()  # from a snapshot to the end of its write
        self.closing = False  # close() started: no new checkpoint but its own
        self.closed = False
        self.last_time = time.monotonic()

    def due(self) -> bool:
        led = self.ledger
        return (led.seq - led.ckpt_seq >= self.ops
                or len(led._state.dirty_rows) >= self.rows
                or (led.seq > led.ckpt_seq
                    and time.monotonic() - self.last_time >= self.seconds))

    def maybe(self) -> None:
        """Write a checkpoint if one is due and none is being written (it covers this need
        soon); close() writes the last."""
        if self.due() and not self.closing and self.mu.acquire(blocking=False):
            try:
                if not self.closed:
                    self.write()
            finally:
                self.mu.release()

    def take(self, *, keep_log: bool = False) -> int:
        """Write one now (waiting for one in progress); returns the seq it covers.
        ``keep_log``: delete no op-log record (the checkpoint of an upgrade at open).

        A caller holding the ledger lock (a signed API() command runs under
        ``ledger.locked()``) must not wait: the checkpoint in progress needs that lock to
        finish, so it is refused (EngineError) rather than hanging both for good.
        """
        if self.closing:
            raise EngineError("the ledger is closed or closing: the shutdown writes the last "
                              "checkpoint")
        # RLock._is_owned: the check threading.Condition itself relies on
        if not self.mu.acquire(blocking=not self.ledger._lock._is_owned()):
            raise EngineError("a checkpoint is being written; call it again outside the "
                              "ledger lock (e.g. not from an API() command) or once it is done")
        try:
            if self.closed:
                raise EngineError("the ledger is closed")
            return self.write(keep_log=keep_log)
        finally:
            self.mu.release()

    def write(self, *, keep_log: bool = False) -> int:
        """Snapshot what changed and write it; call with ``mu`` held."""
        led = self.ledger
        t0 = time.perf_counter()
        with led._lock:
            seq = led.seq
            snap = snapshot(led._state, self.disk, seq)
        layout = snap.layout
        try:
            led.journal.write_checkpoint(seq, snap.puts + layout.puts,
                                         snap.deletes + layout.deletes,
                                         files=layout.files or None,
                                         before=lambda s=snap: self._before(s),
                                         keep_log=keep_log)
        finally:
            with led._lock:
                led._state.cow = None
        _point("state")
        with led._lock:
            led._state.evict_inputs(snap.held)
        self.disk.done(layout)
        led.ckpt_seq = seq
        self.last_time = time.monotonic()
        if layout.obsolete:
            led.store.remove_files(layout.obsolete)
            _point("obsolete")
        written = sum(len(v) for _, v in snap.vectors) + sum(len(v) for _, v in snap.puts)
        log.debug("checkpoint at seq %s: %s records, %s input vectors", f"{seq:,d}",
                  f"{len(snap.puts) + len(layout.puts):,d}", f"{len(snap.vectors):,d}")
        del snap  # (its bytes are free from here)
        if layout.jobs or written > TRIM_BYTES:
            trim()
        if layout.jobs:
            log.info("checkpoint at seq %s: %s (%.2f s)", f"{seq:,d}", ", ".join(
                f"{job.name} ({len(job.names):,d} {'rows' if job.kind == 'rows' else 'balances'}"
                f"{'' if job.base else ', delta'})" for job in layout.jobs),
                time.perf_counter() - t0)
        return seq

    def _before(self, snap: Snapshot) -> None:
        """Steps 1 and 2 of the module docstring."""
        store = self.ledger.store
        part, size = [], 0
        for k, v in snap.vectors:
            part.append((k, v))
            size += len(v)
            if size >= BATCH_BYTES:
                _put_all(store, part)
                part, size = [], 0
        if part:
            _put_all(store, part)
        gen = int(snap.layout.files.get("gen", 0))
        for job in snap.layout.jobs:
            width = peg.PEG_SIZE if job.kind == "rows" else 2
            data = matrix.chunks(job, self.ledger) if job.kind == "rows" else [job.data]
            arrays.write(store.file_path(job.name), job.kind, gen=gen, seq=snap.seq,
                         names=job.names, width=width, chunks=data, fault=FAULT)

    def close(self, store) -> None:
        """The last checkpoint (unless the journal failed), then close ``store``."""
        self.closing = True
        with self.mu:
            if self.closed:
                return
            try:
                if self.ledger.journal.failed is None:
                    self.ledger.journal.flush()
                    self.write()
            finally:
                self.closed = True
                store.close()


def _put_all(store, items: list[tuple[bytes, bytes]]) -> None:
    with store.batch() as wb:
        for k, v in items:
            wb.put(k, v)
    _point("vectors")
