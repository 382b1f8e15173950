"""The exchange ledger's façade: :class:`Exchange`, its lock and its durable operations.

One :class:`Exchange` holds a :class:`pegx.ledger.state.State` (account rows, published
balances, tables of records, fraction vectors) under one lock. Every change is a group of
operations (:mod:`pegx.ledger.ops`) checked against the state (:mod:`pegx.ledger.checks`),
applied (:mod:`pegx.ledger.state`) and logged through :class:`pegx.ledger.journal.Journal`
before the call returns, so replaying the log after the last checkpoint
(:mod:`pegx.ledger.checkpoint`) reproduces the exact state (DESIGN §3).

Callers outside the ledger package use the methods here (deposits, trades, withdraws and the
withdraw lifecycle, settings, narrow reads); none of them touches the state or the lock.

Invariants (checked by tests/test_engine_properties.py and :mod:`pegx.ledger.audit`):
* per step, Σ accounts + drift == Σ registered inputs (nothing is created or lost; the drift
  vector, 0 in value, records where the chain's spends put fractions the ledger did not);
* no negative step or balance; every account's liquid + reserve == its step total;
* Σ account liquid <= the exchange's liquid after every recompute.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading

import numpy as np

from pegx import peg
from pegx.ledger import audit as audit_
from pegx.ledger import checks, lifecycle, ops
from pegx.ledger import settings as settings_
from pegx.ledger.checkpoint import Checkpoints
from pegx.ledger.journal import Journal, read_log
from pegx.ledger.rules import (
    HOUSE,
    INTERNAL,
    LIMIT_MSGS,
    LIMITS,
    POOL,
    AmountError,
    EngineError,
    LimitReached,
    check_amount,
    check_name,
    check_style,
    check_trade_names,
)
from pegx.ledger.savepoint import Savepoint
from pegx.ledger.state import TABLES, State, input_totals
from pegx.ledger.store import Store

log = logging.getLogger(__name__)


class _Held:
    """``with ledger.locked():`` (reusable, re-entrant, per thread; see Exchange.locked)."""

    def __init__(self, ledger: Exchange):
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


class Exchange:
    """The ledger state machine with durable operations (see module docstring)."""

    TABLES = TABLES

    def __init__(self, store: Store, *, capacity: int = 1024, checkpoint_ops: int = 5000,
                 checkpoint_rows: int = 4000, checkpoint_seconds: float = 30.0):
        self.store = store
        self._lock = threading.RLock()
        self._held = _Held(self)
        self._local = threading.local()  # per thread: locked() depth, seq awaiting its fsync
        self._state = State(capacity)
        self._checkpoints = Checkpoints(self, ops=checkpoint_ops, rows=checkpoint_rows,
                                        seconds=checkpoint_seconds)
        self.replayed = 0
        self._load()

    # ---------------------------------------------------------------- temporary (step 1)
    @property
    def lock(self):
        return self._lock

    @property
    def tables(self) -> dict:
        return self._state.tables

    @property
    def vectors(self) -> dict:
        return self._state.vectors

    @property
    def matrix(self) -> np.ndarray:
        return self._state.matrix

    @property
    def view(self) -> np.ndarray:
        return self._state.view

    @property
    def names(self) -> list[str]:
        return self._state.names

    @property
    def index(self) -> dict:
        return self._state.index

    credit_op = staticmethod(ops.credit)
    adjust_op = staticmethod(ops.adjust)
    drift_op = staticmethod(ops.drift)
    put_op = staticmethod(ops.put)

    # ---------------------------------------------------------------- opening
    def _load(self) -> None:
        state = self.store.state()
        self.ckpt_seq = state["seq"] if state else 0
        st = self._state
        st.load_checkpoint(self.store)
        seq = self.ckpt_seq
        for seq, group in read_log(self.store, self.ckpt_seq):
            for op in group:
                st.apply(op)
            self.replayed += 1
        self.seq = seq
        self.journal = Journal(self.store, seq, self.ckpt_seq)
        self.journal.durable_seq = seq
        for name in INTERNAL:
            if name not in st.index:
                st.add_account(name, dirty=True)
        log.info(
            "ledger open: %s accounts, %s inputs, %s pending withdraws, checkpoint seq %s, "
            "%s ops replayed", f"{len(st.names):,d}", f"{len(st.tables['inputs']):,d}",
            f"{len(st.tables['withdraws']):,d}", f"{self.ckpt_seq:,d}", f"{self.replayed:,d}")

    # ---------------------------------------------------------------- commits and the lock
    def _submit(self, group: list[dict]) -> int:
        """Apply checked ops in memory and log them as one record; returns its seq.

        Call with the lock held; then call :meth:`_durable` without the lock.
        """
        for op in group:
            self._state.apply(op)
        return self._log(group)

    def _log(self, group: list[dict]) -> int:
        seq = self.seq + 1
        self.journal.append(seq, group)
        self.seq = seq
        return seq

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
            st.undo = savepoint = Savepoint(st)
            try:
                for op in group:
                    checks.check_op(st, op)
                    st.apply(op)
                if supply is not None:
                    group = [*group, self._recompute(supply, now, None)]
            except BaseException:
                savepoint.restore()
                raise
            finally:
                st.undo = None
            seq = self._log(group)
        self._durable(seq)

    # ---------------------------------------------------------------- checkpoints, closing
    def checkpoint(self) -> int:
        """Write the state changed since the last checkpoint; returns the seq it covers.

        Waits for a checkpoint in progress (automatic or another caller's) to finish first.
        Refused once close() has started: the shutdown writes the last one.
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
    def meta(self) -> dict:
        return self._state.meta

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
        """A deep copy of one table record, or None (operators' inspection and tests)."""
        with self._lock:
            return copy.deepcopy(self._state.tables.get(table, {}).get(key))

    def records(self, table: str) -> dict:
        """A deep copy of a whole table (operators' inspection and tests)."""
        with self._lock:
            return copy.deepcopy(self._state.tables.get(table, {}))

    def vector(self, table: str, key: str) -> np.ndarray | None:
        """A copy of the fraction vector record ``key`` of ``table`` owns, or None."""
        with self._lock:
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
            for key in sorted(st.vectors):
                h.update(repr(key).encode() + st.vectors[key].astype("<i8").tobytes())
        return h.hexdigest()

    def drift(self) -> np.ndarray:
        """The per-step drift vector (registered inputs − ledger accounts); zeros if none."""
        with self._lock:
            v = self._state.vectors.get(("meta", "drift"))
            return np.zeros(peg.PEG_SIZE, dtype=np.int64) if v is None else v.copy()

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
            snap = audit_.snapshot(self._state, self.seq)
        return audit_.report(snap, chain_check)

    def exchange_settings(self) -> dict:
        """ExchangeSettings values with the original's defaults filled in."""
        return settings_.with_defaults(self.record("settings", "exchange"))

    # ---------------------------------------------------------------- trades
    def trade(self, user1, amount, user2, style: str = peg.LIQUID) -> bool:
        """Move ``amount`` of ``style`` from user1 to user2 (ORIGINAL §1.3 Trade checks 5-11).

        ``user2 == ''`` is the pool: a negative amount debits user1 into ``pool``, a positive
        amount credits user1 out of it (the pool must hold enough: debit before credit).
        """
        check_trade_names(user1, user2)
        amount = check_amount(amount, allow_negative=True)
        if user2 == "":
            if amount < 0:
                amount, user2 = -amount, POOL
            else:
                user1, user2 = POOL, user1
        elif amount < 0:
            raise AmountError("Amount can not be negative if both users are known")
        check_style(style)
        with self._lock:
            checks.check_funds(self._state, user1, amount, style)
            if user1 == user2:
                return True
            seq = self._submit([ops.trade(user1, user2, amount, style)])
        self._durable(seq)
        return True

    # ---------------------------------------------------------------- inputs and recomputes
    def credit_inputs(self, inputs: list[dict], *, supply: int, now: int,
                      cycle: int | None = None) -> None:
        """Register exchange inputs and recompute balances, as one durable step.

        Each item: {key, value, address, vector (np array), owner (a user, HOUSE, or None for
        change that replaces spent inputs), change, frozen_until, height}. An owner is credited
        with the input's fractions.
        """
        group = []
        with self._lock:
            for item in inputs:
                key, vec = item["key"], np.asarray(item["vector"], dtype=np.int64)
                if key in self._state.tables["inputs"]:
                    raise EngineError(f"input {key} is already registered")
                if vec.shape != (peg.PEG_SIZE,) or (vec < 0).any():
                    raise EngineError(f"input {key}: a fraction vector has 1200 steps >= 0")
                if int(vec.sum()) != int(item["value"]):
                    raise EngineError(f"input {key}: fractions sum to {int(vec.sum()):,d}, "
                                      f"not its value {int(item['value']):,d}")
                owner = item.get("owner")
                if owner is not None and owner != HOUSE:
                    check_name(owner)
                group.append(ops.credit(key, item["value"], vec, owner=owner,
                                        address=item.get("address", ""),
                                        change=bool(item.get("change")),
                                        frozen_until=item.get("frozen_until", 0),
                                        height=item.get("height", 0)))
            seq = self._recompute_locked(group, supply=supply, now=now, cycle=cycle)
        self._durable(seq)

    def spend_inputs(self, keys_: list[str], *, supply: int, now: int) -> None:
        """Registered inputs spent by an exchange transaction leave the input set."""
        with self._lock:
            missing = [k for k in keys_ if k not in self._state.tables["inputs"]]
            if missing:
                raise EngineError(f"not registered inputs: {', '.join(missing)}")
            seq = self._recompute_locked([ops.spend(keys_)], supply=supply, now=now)
        self._durable(seq)

    def recompute(self, supply: int, *, now: int, cycle: int | None = None) -> dict:
        """Recompute exchange totals and every account's balance at ``supply``; returns totals."""
        with self._lock:
            seq = self._recompute_locked([], supply=supply, now=now, cycle=cycle)
            totals = dict(self._state.meta["totals"])
        self._durable(seq)
        return totals

    def _recompute_locked(self, group: list[dict], *, supply: int, now: int,
                          cycle: int | None = None) -> int:
        """Apply ``group``, then a recompute whose totals include what it registers or spends;
        log all of it as one record (call with the lock held)."""
        supply = peg.check_supply(supply)
        for op in group:
            self._state.apply(op)
        return self._log(group + [self._recompute(supply, now, cycle)])

    def _recompute(self, supply: int, now: int, cycle: int | None) -> dict:
        """Apply a recompute at ``supply`` over the registered inputs; returns its op."""
        st = self._state
        totals = input_totals(st.tables["inputs"], st.vectors, supply, now, st.figures)
        op = ops.recompute(supply, totals, cycle)
        st.apply(op)
        return op

    # ---------------------------------------------------------------- deposits
    def claim_deposits(self, name, keys: list[str]) -> None:
        """Claim outputs ("txid:vout") for user ``name``, all or none: the cycle credits each
        to ``name`` when it registers it. The first claim wins, even between two concurrent
        calls: an output claimed by someone else refuses the call (EngineError, the API's
        message); one already claimed by ``name`` is left as it is."""
        check_name(name)
        with self._lock:
            claims = self._state.tables["claims"]
            for key in keys:
                checks.check_claim(self._state, key, name)
            new = list(dict.fromkeys(k for k in keys if k not in claims))
            if not new:
                return
            seq = self._submit([ops.claim(k, name) for k in new])
        self._durable(seq)

    def claim(self, key: str) -> dict | None:
        """The claim on output ``key``: {name[, registered: 1]}, or None."""
        with self._lock:
            rec = self._state.tables["claims"].get(key)
            return None if rec is None else dict(rec)

    def claims(self) -> dict:
        """Every claim {key: {name[, registered: 1]}} (GetDeposits)."""
        with self._lock:
            return {k: dict(v) for k, v in self._state.tables["claims"].items()}

    # ---------------------------------------------------------------- withdraws
    def withdraw_limit(self, style: str) -> str | None:
        """The limit message if ``style`` already has its maximum of pending withdraws."""
        with self._lock:
            pending = sum(1 for w in self._state.tables["withdraws"].values()
                          if w["style"] == style)
        return LIMIT_MSGS[style] if pending >= LIMITS[style] else None

    def withdraw_count(self) -> int:
        """Withdraws pending or in flight (their amounts are in the withdraws account)."""
        with self._lock:
            return len(self._state.tables["withdraws"])

    def request_withdraw(self, wid: str, user, amount, style: str, address: str, cycle: int,
                         *, commission: int | None = None, limit: bool = False) -> None:
        """Move ``amount`` from ``user`` to the ``withdraws`` account under withdraw id ``wid``.

        ``commission`` (satoshi, 0 <= commission < amount) is the commission in force when the
        withdraw was accepted; it is kept with the withdraw and is what its batch charges,
        whatever the settings say by then. Without it the batch uses the settings of its time.
        With ``limit``, a style that has its maximum of pending withdraws refuses it
        (LimitReached), counted and taken atomically.
        """
        check_name(user)
        amount = check_amount(amount)
        check_style(style)
        op = ops.withdraw(wid, user, amount, style, address, cycle)
        if commission is not None:
            if (isinstance(commission, bool) or not isinstance(commission, (int, np.integer))
                    or not 0 <= commission < amount):
                raise AmountError(f"commission must be a whole number of satoshi from 0 to "
                                  f"below the amount, got {commission!r}")
            op["commission"] = int(commission)
        with self._lock:
            full = self.withdraw_limit(style) if limit else None
            if full:
                raise LimitReached(full)
            if wid in self._state.tables["withdraws"]:
                raise EngineError(f"withdraw id {wid} already exists")
            checks.check_funds(self._state, user, amount, style)
            seq = self._submit([op])
        self._durable(seq)

    def refund(self, wids: list[str], extra: list[dict] = ()) -> None:
        """Give pending withdraws back to their users, exactly the steps they gave."""
        self._finish([ops.refund(w) for w in wids], wids, extra)

    def burn(self, wids: list[str], extra: list[dict] = ()) -> None:
        """Withdraws whose transaction confirmed leave the ledger."""
        self._finish([ops.burn(wids)], wids, extra)

    def _finish(self, group: list[dict], wids: list[str], extra) -> None:
        with self._lock:
            for wid in wids:
                if wid not in self._state.tables["withdraws"]:
                    raise EngineError(f"no pending withdraw {wid}")
            seq = self._submit(group + list(extra))
        self._durable(seq)

    # ---------------------------------------------------------------- records kept for others
    def put(self, table: str, key: str, value) -> None:
        """Durably set (or, with None, delete) a table record."""
        self.put_many([(table, key, value)])

    def put_many(self, items: list[tuple[str, str, object]]) -> None:
        """Durably set several records as one atomic step."""
        group = []
        for table, key, value in items:
            if table not in checks.OPEN_TABLES:
                raise EngineError(f"unknown table {table!r}")
            group.append(ops.put(table, key, value))
        self.commit(group)
