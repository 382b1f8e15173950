"""Checkpoints: the state that changed since the last one, written in one synced batch.

A checkpoint snapshots (under the ledger lock) every dirty row, balance, record and vector as
it is at ``seq``, and writes it outside the ledger lock, so calls go on meanwhile, but inside
its own lock, so no later snapshot can reach the disk before an earlier one (automatic ones,
``pegx.checkpoint`` and the one ``close`` writes alike). The journal writes the batch and
moves the state record (DESIGN §3); ``ckpt_seq`` moves only once the batch is on disk.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from pegx.ledger import schema
from pegx.ledger.rules import EngineError
from pegx.ledger.state import State

log = logging.getLogger(__name__)


def snapshot(state: State) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """(puts, deletes) of everything dirty, and clear the dirty sets; call under the lock.

    If the write that follows fails the journal stops (every later write and checkpoint is
    refused), so the dirty sets cleared here are not needed again.
    """
    puts: list[tuple[bytes, bytes]] = []
    deletes: list[bytes] = []
    for name in state.dirty_rows:
        puts.append((schema.pack_account(name),
                     state.matrix[state.index[name]].astype("<i8").tobytes()))
    for name in state.dirty_views | state.dirty_rows:
        puts.append((schema.pack_balance(name),
                     state.view[state.index[name]].astype("<i8").tobytes()))
    for table, key in state.dirty_recs:
        rec = state.tables.get(table, {}).get(key)
        k = schema.pack_record(table, key)
        if rec is None:
            deletes.append(k)
        else:
            puts.append((k, json.dumps(rec, separators=(",", ":")).encode()))
    for table, key in state.dirty_vecs:
        vec = state.vectors.get((table, key))
        k = schema.pack_vector(table, key)
        if vec is None:
            deletes.append(k)
        else:
            puts.append((k, vec.astype("<i8").tobytes()))
    state.dirty_rows.clear()
    state.dirty_views.clear()
    state.dirty_recs.clear()
    state.dirty_vecs.clear()
    return puts, deletes


class Checkpoints:
    """When and how an :class:`pegx.ledger.engine.Exchange` writes its checkpoints."""

    def __init__(self, ledger, *, ops: int, rows: int, seconds: float):
        self.ledger = ledger
        self.ops, self.rows, self.seconds = ops, rows, seconds
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

    def take(self) -> int:
        """Write one now (waiting for one in progress); returns the seq it covers."""
        if self.closing:
            raise EngineError("the ledger is closed or closing: the shutdown writes the last "
                              "checkpoint")
        with self.mu:
            if self.closed:
                raise EngineError("the ledger is closed")
            return self.write()

    def write(self) -> int:
        """Snapshot what changed and write it; call with ``mu`` held."""
        led = self.ledger
        with led._lock:
            seq = led.seq
            puts, deletes = snapshot(led._state)
        led.journal.write_checkpoint(seq, puts, deletes)
        led.ckpt_seq = seq
        self.last_time = time.monotonic()
        log.debug("checkpoint at seq %s: %s records", f"{seq:,d}", f"{len(puts):,d}")
        return seq

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
