"""The core of the ledger's façade: the state, its lock, opening, commits and checkpoints.

:class:`Ledger` holds a :class:`pegx.ledger.state.State` (account rows, published balances,
tables of records, fraction vectors) under one lock. Every change is a group of operations
(:mod:`pegx.ledger.ops`) checked against the state (:mod:`pegx.ledger.checks`), applied
(:mod:`pegx.ledger.state`) and logged through :class:`pegx.ledger.journal.Journal` before the
call returns, so replaying the log after the last checkpoint (:mod:`pegx.ledger.checkpoint`)
reproduces the exact state (DESIGN §3). Opening a ledger of an older layout upgrades it
(:mod:`pegx.ledger.migrate`). The operations callers use are added by
:class:`pegx.ledger.accounts.Accounts` and :class:`pegx.ledger.withdrawals.Withdrawals`; the
whole façade is :class:`pegx.ledger.engine.Exchange`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from pegx import peg
from pegx.ledger import audit as audit_
from pegx.ledger import checks, figures, lifecycle, matrix, migrate, ops, schema
from pegx.ledger import settings as settings_
from pegx.ledger.checkpoint import Checkpoints
from pegx.ledger.journal import Journal, read_log
from pegx.ledger.rules import INTERNAL, EngineError
from pegx.ledger.savepoint import Savepoint
from pegx.ledger.state import State
from pegx.ledger.store import Store

log = logging.getLogger(__name__)

# tables whose records only mean something on the chain they came from
CHAIN_TABLES = ("inputs", "claims", "addresses", "withdraws", "batches", "batch_of", "expired",
                "history")


class _Held:
    """``with ledger.locked():`` (reusable, re-entrant, per thread; see Ledger.locked)."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def __enter__(self) -> None:
        led, local = self.ledger, self.ledger._local
        if not getattr(local, "depth", 0):
            local.depth, local.pending = 0, 0
        led._lock.acquire()
        local.depth += 1

    def __exit__(self, *exc) -> None:
        led, local = self.ledger, self.ledger._local
        local.depth -= 1
        led._lock.release()
        if not local.depth and local.pending:
            seq, local.pending = local.pending, 0
            led._durable(seq)


class Ledger:
    """The ledger state machine with durable operations (see the module docstring)."""

    def __init__(self, store: Store, *, capacity: int = 1024, checkpoint_ops: int = 5000,
                 checkpoint_rows: int = 4000, checkpoint_seconds: float = 30.0,
                 file_rows: int = matrix.FILE_ROWS, write_upgrade: bool = True):
        """Open the ledger in ``store``: load its checkpoint, replay its op log, and upgrade
        an older layout (written at once unless ``write_upgrade`` is false or the store is
        read-only: then only in memory). ``file_rows``: a checkpoint that changes more rows
        (balances) than this writes checkpoint files rather than LevelDB keys
        (:mod:`pegx.ledger.matrix`)."""
        self.store = store
        self._lock = threading.RLock()
        self._held = _Held(self)
        self._local = threading.local()  # per thread: locked() depth, seq awaiting its fsync
        self._state = State(8)
        self._state.store = store
        self._checkpoints = Checkpoints(self, ops=checkpoint_ops, rows=checkpoint_rows,
                                        seconds=checkpoint_seconds, file_rows=file_rows)
        self.replayed = 0
        self._load(write_upgrade and not store.read_only, capacity)

    # ---------------------------------------------------------------- opening
    def _load(self, write_upgrade: bool, capacity: int) -> None:
        t0 = time.perf_counter()
        state = self.store.state()
        self.ckpt_seq = state["seq"] if state else 0
        fmt = state.get("format") if state else None
        st = self._state
        self._checkpoints.disk.load(self.store, state, st, capacity)
        st.load_records(self.store)
        if migrate.tables_needed(fmt, st):  # before the replay, which adds to them
            migrate.input_tables(st, fmt)
        seq, torn = self.ckpt_seq, []
        for seq, group in read_log(self.store, self.ckpt_seq, torn):
            st.apply_group(group)
            self.replayed += 1
        self.seq = seq
        self._tidy(torn, write_upgrade)
        self.journal = Journal(self.store, seq, self.ckpt_seq)
        self.journal.durable_seq = seq
        for name in INTERNAL:
            if name not in st.index:
                st.add_account(name, dirty=True)
        if migrate.needed(fmt, st):
            moved = migrate.upgrade(st)
            if write_upgrade:
                # one synced batch: new records, state record last. No sink is set yet to
                # say which log records a standby still needs, so it deletes none of them
                self._checkpoints.take(keep_log=True)
            log.warning("ledger upgraded from format %s to %s%s: %s batch records, %s withdraw "
                        "ids mapped to their batch, %s expired withdraws; %s history records "
                        "removed", fmt, migrate.FORMAT,
                        "" if write_upgrade else " (in memory only: nothing written)",
                        *(f"{moved[k]:,d}" for k in ("batches", "batch_of", "expired",
                                                     "history")))
        log.info(
            "ledger open: %s accounts, %s inputs, %s pending withdraws, checkpoint seq %s, "
            "%s ops replayed (%.2f s)", f"{len(st.names):,d}", f"{len(st.tables['inputs']):,d}",
            f"{len(st.tables['withdraws']):,d}", f"{self.ckpt_seq:,d}", f"{self.replayed:,d}",
            time.perf_counter() - t0)

    def _tidy(self, torn: list[int], writable: bool) -> None:
        """Delete what a crash left: the first records of a group whose end never reached
        the disk (never acknowledged) and checkpoint files the state record does not name."""
        if torn:
            log.warning("op log: %s records of a group cut short by a crash (never "
                        "acknowledged) %s", f"{len(torn):,d}",
                        "deleted" if writable else "left out")
        if not writable:
            return
        if torn:
            with self.store.batch() as wb:
                for s in torn:
                    wb.delete(schema.pack_seq(s))
        stray = self.store.stray_files()
        if stray:
            log.warning("deleting %s checkpoint files no checkpoint names (a checkpoint cut "
                        "short, or its cleanup): %s", len(stray), ", ".join(stray))
            self.store.remove_files(stray)

    # ---------------------------------------------------------------- commits and the lock
    def _submit(self, group: list[dict]) -> int:
        """Apply checked ops in memory and log them as one record; returns its seq.

        Call with the lock held; then call :meth:`_durable` without the lock. All or nothing:
        an op that raises halfway leaves memory as it was.
        """
        with self._all_or_nothing():
            self._state.apply_group(group)
        return self._log(group)

    def _log(self, group: list[dict]) -> int:
        self.seq = self.journal.append(self.seq + 1, group)
        return self.seq

    def _durable(self, seq: int) -> None:
        local = self._local
        if getattr(local, "depth", 0):  # inside locked(): wait once the lock is released
            local.pending = max(local.pending, seq)
            return
        self.journal.wait(seq)
        self._checkpoints.maybe()

    def locked(self) -> _Held:
        """Hold the ledger lock for checks and the commits they guard, without its fsync.

        ``with ledger.locked(): check, then commit`` keeps the check and the commit atomic; a
        commit inside returns once it is logged in memory, and the wait for the disk happens
        when the outermost block exits, after the lock is released. The block still returns
        only once everything it committed is durable. (Waiting for the fsync under the lock
        would make every other call, reads included, wait for this call's disk write, and
        would defeat the group commit.) The object returned can be entered again, by any
        thread (operator commands hold it while they run).
        """
        return self._held

    def commit(self, group: list[dict], *, supply: int | None = None, now: int = 0) -> None:
        """Apply and durably log a group of ops as one atomic record, or refuse all of it.

        The ops come from the builders of :mod:`pegx.ledger.ops`. With ``supply``, a
        recompute at that supply is part of the same record. Each op is checked against the
        state the ops before it leave, then applied; if one is refused (EngineError),
        everything the group did in memory is undone and nothing is logged. The ops are
        applied as JSON reads them back, exactly what a replay applies.
        """
        try:
            group = json.loads(json.dumps(group, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise EngineError(f"an operation cannot be logged as JSON: {exc}") from None
        if not isinstance(group, list):
            raise EngineError("commit takes a list of operations")
        if supply is not None:
            supply = checks.checked(peg.check_supply, supply)
        st = self._state
        with self._lock:
            with self._all_or_nothing():
                for op in group:
                    checks.check_op(st, op)
                    st.apply(op)
                if supply is not None:
                    group = [*group, self._recompute(supply, now, None)]
            seq = self._log(group)
        self._durable(seq)

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Whatever the body applies to the state is undone if it raises (a refused op, or a
        LevelDB read failing halfway, e.g. a vector a recompute reads): memory stays what the
        log rebuilds. Call with the lock held, then log what it applied."""
        st = self._state
        st.undo = savepoint = Savepoint(st)
        try:
            yield
        except BaseException:
            savepoint.restore()
            raise
        finally:
            st.undo = None

    # ---------------------------------------------------------------- checkpoints, closing
    def checkpoint(self) -> int:
        """Write the state changed since the last checkpoint; returns the seq it covers.

        Waits for a checkpoint in progress (automatic or another caller's) to finish first,
        unless the caller holds the ledger lock (``locked()``, an API() command): then one in
        progress refuses the call (EngineError) instead of deadlocking with it. Refused once
        close() has started: the shutdown writes the last one.
        """
        return self._checkpoints.take()

    def close(self) -> None:
        """Checkpoint everything (a clean stop needs no replay) and close the store.

        From the first call on, new checkpoints are refused; one already writing finishes
        before the last one is taken.
        """
        self._checkpoints.close(self.store)

    @property
    def failed(self) -> BaseException | None:
        """Why the journal stopped (memory is ahead of disk: nothing may be acknowledged)."""
        return self.journal.failed

    # ---------------------------------------------------------------- reads
    @property
    def cycle(self) -> int:
        """The cycle of the published balances (set by the recompute of a new cycle)."""
        return int(self._state.meta.get("cycle", 0) or 0)

    @property
    def supply(self) -> int:
        """The supply index the ledger's balances and trades are at (set by recompute)."""
        return self._state.supply

    def balance(self, name: str) -> dict | None:
        """{liquid, reserve} of an account, or None if unknown."""
        with self._lock:
            i = self._state.index.get(name)
            if i is None:
                return None
            view = self._state.view
            return {"liquid": int(view[i, 0]), "reserve": int(view[i, 1])}

    def exchange_balance(self) -> dict:
        """The exchange totals {liquid, reserve, subpremium, frozen} of the last recompute."""
        with self._lock:
            return dict(self._state.meta["totals"])

    def row(self, name: str) -> np.ndarray | None:
        """A copy of an account's per-step ledger row."""
        with self._lock:
            i = self._state.index.get(name)
            return None if i is None else self._state.matrix[i].copy()

    def record(self, table: str, key: str):
        """A deep copy of one record, or None: of a table kept for others (settings,
        addresses, exec, meta), or any, for operators' inspection and tests."""
        with self._lock:
            return copy.deepcopy(self._state.tables.get(table, {}).get(key))

    def records(self, table: str) -> dict:
        """A deep copy of a whole table (operators' inspection and tests)."""
        with self._lock:
            return copy.deepcopy(self._state.tables.get(table, {}))

    def vector(self, table: str, key: str) -> np.ndarray | None:
        """A copy of the fraction vector record ``key`` of ``table`` owns, or None."""
        with self._lock:
            if table == "inputs":
                if key not in self._state.tables["inputs"]:
                    return None
                return self._state.input_vector(key).copy()
            v = self._state.vectors.get((table, key))
            return None if v is None else v.copy()

    def digest(self) -> str:
        """A SHA-256 over the whole state (rows, balances, tables, vectors), order-independent.

        Two ledgers with equal digests hold exactly the same money and records; the crash and
        durability tests compare runs with it.
        """
        h = hashlib.sha256()
        st = self._state
        with self._lock:
            for name in sorted(st.names):
                i = st.index[name]
                if not st.matrix[i].any() and not st.view[i].any():
                    continue  # an empty account is the same as no account
                h.update(name.encode() + b"\0")
                h.update(st.view[i].astype("<i8").tobytes())
                h.update(st.matrix[i].astype("<i8").tobytes())
            h.update(json.dumps(st.tables, sort_keys=True).encode())
            keys = {k for k in st.vectors if k[0] != "inputs"}
            keys.update(("inputs", k) for k in st.tables["inputs"])
            for key in sorted(keys):
                vec = st.input_vector(key[1]) if key[0] == "inputs" else st.vectors[key]
                h.update(repr(key).encode() + vec.astype("<i8").tobytes())
        return h.hexdigest()

    def drift(self) -> np.ndarray:
        """The per-step drift vector (registered inputs − ledger accounts); zeros if none."""
        with self._lock:
            v = self._state.vectors.get(("meta", "drift"))
            return np.zeros(peg.PEG_SIZE, dtype=np.int64) if v is None else v.copy()

    def holdings(self) -> np.ndarray:
        """What the exchange holds per peg step: the sum of every registered input's
        fractions (a copy; for the status page)."""
        with self._lock:
            total = self._state.vectors.get(figures.SUM)
            return np.zeros(peg.PEG_SIZE, dtype=np.int64) if total is None else total.copy()

    def observe(self, *, fsync: Callable[[float], None] | None = None,
                checkpoint: Callable[[float], None] | None = None) -> None:
        """Report the seconds each synced log write (``fsync``) and each checkpoint write take
        (metrics). Called by the writing thread while other callers wait: it must be quick."""
        self.journal.on_fsync = fsync
        self.journal.on_checkpoint = checkpoint

    @property
    def recomputed(self) -> bool:
        """Were balances ever published (a recompute logged)?"""
        return "engine" in self._state.tables["meta"]

    def is_fresh(self) -> bool:
        """No record that only makes sense on a particular chain (deposit keys, claims,
        inputs, withdraws, their batches)."""
        with self._lock:
            return not any(self._state.tables.get(t) for t in CHAIN_TABLES)

    def is_empty(self) -> bool:
        """No input, no claim and no satoshi in any account (what recover rebuilds into)."""
        with self._lock:
            st = self._state
            return not (st.tables["inputs"] or st.tables["claims"] or st.matrix.any())

    def info(self) -> dict:
        """What an operator reads about a ledger: on-disk format, seqs, counts, supply, cycle."""
        state = self.store.state() or {}
        with self._lock:
            st = self._state
            return {"format": state.get("format", "none (never checkpointed)"),
                    "checkpoint_seq": self.ckpt_seq, "op_seq": self.seq,
                    "replayed": self.replayed,
                    "accounts": len([n for n in st.names if n not in INTERNAL]),
                    "inputs": len(st.tables["inputs"]),
                    "withdraws_pending": len(st.tables["withdraws"]), "supply": st.supply,
                    "cycle": int(st.meta.get("cycle", 0) or 0)}

    def setting(self, name: str):
        """Settings record ``name`` as stored, or None: read without the lock and not copied,
        for a check every call makes (the password); never change what it returns (records
        are only ever replaced whole)."""
        return self._state.tables["settings"].get(name)

    def users(self) -> list[str]:
        """Every account name, the internal ones included."""
        with self._lock:
            return list(self._state.names)

    def is_registered(self, key: str) -> bool:
        """Is ``key`` ("txid:vout") a registered input of the exchange?"""
        with self._lock:
            return key in self._state.tables["inputs"]

    def in_flight_inputs(self) -> set[str]:
        """Registered inputs that a batch not settled yet spends (they may be spent on chain)."""
        with self._lock:
            return lifecycle.in_flight_inputs(self._state.tables["batches"])

    def audit(self, chain_check: audit_.ChainCheck | None = None) -> dict:
        """The audit report (:mod:`pegx.ledger.audit`) of one consistent view; the lock is
        held while the rows are summed, ``chain_check`` runs after, without it."""
        with self._lock:
            snap = audit_.snapshot(self._state, self.seq, self.store)
        try:
            return audit_.report(snap, chain_check)
        finally:
            snap.release()

    def exchange_settings(self) -> dict:
        """ExchangeSettings values with the original's defaults filled in."""
        return settings_.with_defaults(self.record("settings", "exchange"))

    def _recompute(self, supply: int, now: int, cycle: int | None) -> dict:
        """Apply a recompute at ``supply`` over the registered inputs; returns its op."""
        st = self._state
        op = ops.recompute(supply, st.exchange_totals(supply, now), cycle)
        st.apply(op)
        return op

    # ---------------------------------------------------------------- records kept for others
    def put(self, table: str, key: str, value) -> None:
        """Durably set (or, with None, delete) a record of a table the ledger keeps for others
        (checks.OPEN_TABLES: settings, addresses, exec, meta). The ledger's own records
        (inputs, claims, withdraws, batches ...) change by their operations only."""
        self.put_many([(table, key, value)])

    def put_many(self, items: list[tuple[str, str, object]]) -> None:
        """Durably set several records as one atomic step (see :meth:`put`)."""
        self.commit([ops.put(table, key, value) for table, key, value in items])
