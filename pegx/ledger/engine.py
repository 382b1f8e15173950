"""The exchange ledger: per-step accounts, balances, deposits, trades, withdraw moves, recompute.

One :class:`Exchange` holds, in memory and under one lock:

* the **per-step ledger**: one int64 row of PEG_SIZE steps per account (users and the
  pseudo-accounts ``pool``, ``withdraws`` and ``exchange``, the house account that owns the
  exchange's fee income), held in one numpy matrix;
* the **published balances** ({liquid, reserve} per account), derived by :meth:`recompute` from
  the ledger and the exchange's real liquid, and moved incrementally by trades in between;
* small **tables** of records (deposit claims, registered inputs, withdraws, history, settings,
  addresses, exec hashes, meta) and the fraction **vectors** some records own.

Every change is an *operation* (a JSON dict) applied by a deterministic ``_apply_*`` function
and logged through :class:`pegx.ledger.journal.Journal` before the call returns, so replaying the log
after the last checkpoint reproduces the exact state (DESIGN §3). Validation happens before an
operation is logged; apply functions never fail on a validated operation.

Invariants (checked by tests/test_engine_properties.py):
* per step, Σ accounts + drift == Σ registered inputs (nothing is created or lost; the drift
  vector, 0 in value, records where the chain's spends put fractions the ledger did not);
* no negative step or balance; every account's liquid + reserve == its step total;
* Σ account liquid <= the exchange's liquid after every recompute.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import json
import logging
import re
import threading
import time

import numpy as np

from pegx import peg
from pegx.ledger import schema
from pegx.ledger.journal import Journal, read_log
from pegx.ledger.savepoint import Savepoint
from pegx.ledger.store import Store

log = logging.getLogger(__name__)

POOL = "pool"
WITHDRAWS = "withdraws"
HOUSE = "exchange"  # the exchange's own account: fee income, change surplus
RESERVED = frozenset({"total", "pool", "frozen", "x", "exchange", "withdraws"})
INTERNAL = (POOL, WITHDRAWS, HOUSE)
MIN_NAME = 4
MAX_NAME = 256
MAX_AMOUNT = 10**17 * 2  # twice the total BAY supply in satoshi: anything larger is a mistake
FROZEN_GRACE = 43200  # an input unfrozen less than 12 h ago still counts as frozen (ORIGINAL §3.2)
ROW_BYTES = peg.PEG_SIZE * 8

DEFAULT_COMMISSION = {"min": 100000000, "max": 1000000000, "percent": "0.001"}
DEFAULT_CONFIRMATIONS = 7
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RESERVED_MSG = "Name reserved for exchange operations. Please use different name."
SHORT_MSG = "Name is too short in length."


class EngineError(ValueError):
    """A request the ledger refuses; ``str(exc)`` is the message for the client."""


class NameError_(EngineError):
    """A reserved, too short or malformed account name."""


class AmountError(EngineError):
    """An amount that is not a positive integer in range."""


class FundsError(EngineError):
    """Not enough balance (or pool) for the request."""


class UnknownAccount(EngineError):
    """The account does not exist."""


def encode_vec(vec: np.ndarray) -> str:
    """A fraction vector as base64 of little-endian int64 (for op-log JSON)."""
    return base64.b64encode(np.ascontiguousarray(vec, dtype="<i8").tobytes()).decode()


def decode_vec(text: str) -> np.ndarray:
    """Inverse of encode_vec."""
    return np.frombuffer(base64.b64decode(text), dtype="<i8").astype(np.int64)


def check_name(name, *, allow_internal: bool = False) -> str:
    """Validate an account name as the original does (reserved first, then length)."""
    if not isinstance(name, str):
        raise NameError_(f"Name must be a string, got {type(name).__name__}.")
    if name.lower() in RESERVED and not (allow_internal and name in INTERNAL):
        raise NameError_(RESERVED_MSG)
    if len(name) < MIN_NAME and not (allow_internal and name in INTERNAL):
        raise NameError_(SHORT_MSG)
    if len(name) > MAX_NAME:
        raise NameError_(f"Name is too long (at most {MAX_NAME} characters).")
    if _CONTROL.search(name):
        raise NameError_("Name contains control characters.")
    return name


def check_amount(amount, *, allow_negative: bool = False) -> int:
    """An int amount in satoshi, non-zero, within MAX_AMOUNT."""
    if isinstance(amount, bool) or not isinstance(amount, (int, np.integer)):
        raise AmountError(f"Amount must be an integer number of satoshi, got {type(amount).__name__}.")
    amount = int(amount)
    if amount == 0:
        raise AmountError("Amount must not be zero.")
    if amount < 0 and not allow_negative:
        raise AmountError("Amount must be greater than zero.")
    if abs(amount) > MAX_AMOUNT:
        raise AmountError(f"Amount is too large (at most {MAX_AMOUNT:,d} satoshi).")
    return amount


FIGURE_CHUNK = 2048  # input vectors stacked per vectorised figures() call


def input_totals(inputs: dict, vectors: dict, supply: int, now: int,
                 cache: dict | None = None) -> dict:
    """Exchange totals {liquid, reserve, subpremium, frozen} over registered inputs (ORIGINAL §3.2).

    Frozen inputs (or unfrozen less than 12 h ago) count as frozen. Otherwise the liquid part
    minus nfreeze (the ~3-step buffer) is liquid and the rest reserve; an input whose liquidity
    rating is below 200 adds its liquid to subpremium. ``cache`` (key -> (supply, liquid,
    reserve, nfreeze, subpremium)) keeps each input's figures until the supply moves, so a
    recompute after a deposit only computes the new input.
    """
    cache = {} if cache is None else cache
    missing = [k for k in inputs if cache.get(k, (None,))[0] != supply]
    for at in range(0, len(missing), FIGURE_CHUNK):
        chunk = missing[at:at + FIGURE_CHUNK]
        stack = np.stack([vectors[("inputs", k)] for k in chunk])
        liquid, reserve, nf, sub = peg.figures(stack, supply)
        for j, k in enumerate(chunk):
            cache[k] = (supply, int(liquid[j]), int(reserve[j]), int(nf[j]), bool(sub[j]))
    t = {"liquid": 0, "reserve": 0, "subpremium": 0, "frozen": 0}
    for key, rec in inputs.items():
        _, liquid, reserve, nf, sub = cache[key]
        frozen_until = rec.get("frozen_until", 0)
        if frozen_until and frozen_until > now - FROZEN_GRACE:
            t["frozen"] += liquid + reserve
            continue
        t["liquid"] += liquid - nf
        t["reserve"] += reserve + nf
        if sub:
            t["subpremium"] += liquid
    return t


class Exchange:
    """The ledger state machine with durable operations (see module docstring)."""

    TABLES = ("claims", "inputs", "withdraws", "history", "settings", "addresses", "exec", "meta",
              "batches")
    OPS = ("trade", "withdraw", "refund", "burn", "credit", "spend", "recompute", "adjust", "drift",
           "put")  # each has _check_<op> (commit groups) and _apply_<op>

    def __init__(self, store: Store, *, capacity: int = 1024, checkpoint_ops: int = 5000,
                 checkpoint_rows: int = 4000, checkpoint_seconds: float = 30.0):
        self.store = store
        self.lock = threading.RLock()
        self.checkpoint_ops = checkpoint_ops
        self.checkpoint_rows = checkpoint_rows
        self.checkpoint_seconds = checkpoint_seconds
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.matrix = np.zeros((max(capacity, 8), peg.PEG_SIZE), dtype=np.int64)
        self.view = np.zeros((self.matrix.shape[0], 2), dtype=np.int64)  # liquid, reserve
        self.tables: dict[str, dict] = {t: {} for t in self.TABLES}
        self.vectors: dict[tuple[str, str], np.ndarray] = {}
        self._dirty_rows: set[str] = set()
        self._dirty_views: set[str] = set()
        self._figures: dict[str, tuple] = {}  # input key -> figures at a supply (input_totals)
        self._dirty_recs: set[tuple[str, str]] = set()
        self._dirty_vecs: set[tuple[str, str]] = set()
        # held from a checkpoint's snapshot to the end of its write, so checkpoints land on disk
        # in the order they were taken (automatic, pegx.checkpoint and close alike)
        self._ckpt_mu = threading.Lock()
        self._closing = False  # close() started: no new checkpoint but its own
        self._closed = False
        self._last_ckpt_time = time.monotonic()
        self._undo: Savepoint | None = None  # set while commit applies a group
        self._local = threading.local()  # per thread: locked() depth, seq awaiting its fsync
        self.replayed = 0
        self._load()

    # ---------------------------------------------------------------- loading and persistence
    def _load(self) -> None:
        state = self.store.state()
        self.ckpt_seq = state["seq"] if state else 0
        for k, v in self.store.scan(schema.ACCOUNT):
            i = self._add_account(schema.unpack_account(k), dirty=False)
            self.matrix[i] = np.frombuffer(v, dtype="<i8")
        for k, v in self.store.scan(schema.BALANCE):
            i = self._row(schema.unpack_balance(k))
            self.view[i] = np.frombuffer(v, dtype="<i8")
        for k, v in self.store.scan(schema.TABLE):
            table, key = schema.unpack_record(k)
            self.tables.setdefault(table, {})[key] = json.loads(v)
        for k, v in self.store.scan(schema.VECTOR):
            table, key = schema.unpack_vector(k)
            self.vectors[(table, key)] = np.frombuffer(v, dtype="<i8").astype(np.int64)
        seq = self.ckpt_seq
        for seq, ops in read_log(self.store, self.ckpt_seq):
            for op in ops:
                self._apply(op)
            self.replayed += 1
        self.seq = seq
        self.journal = Journal(self.store, seq, self.ckpt_seq)
        self.journal.durable_seq = seq
        for name in INTERNAL:
            if name not in self.index:
                self._add_account(name, dirty=True)
        log.info(
            "ledger open: %s accounts, %s inputs, %s pending withdraws, checkpoint seq %s, "
            "%s ops replayed", f"{len(self.names):,d}", f"{len(self.tables['inputs']):,d}",
            f"{len(self.tables['withdraws']):,d}", f"{self.ckpt_seq:,d}", f"{self.replayed:,d}")

    def _add_account(self, name: str, *, dirty: bool = True) -> int:
        # a savepoint drops accounts added after it by length (Savepoint.restore)
        i = len(self.names)
        if i >= self.matrix.shape[0]:
            cap = max(8, int(self.matrix.shape[0] * 1.5))
            m = np.zeros((cap, peg.PEG_SIZE), dtype=np.int64)
            m[:i] = self.matrix[:i]
            v = np.zeros((cap, 2), dtype=np.int64)
            v[:i] = self.view[:i]
            self.matrix, self.view = m, v
        self.names.append(name)
        self.index[name] = i
        if dirty:
            self._dirty_rows.add(name)
        return i

    def _row(self, name: str) -> int:
        i = self.index.get(name)
        return self._add_account(name) if i is None else i

    def _submit(self, ops: list[dict]) -> int:
        """Apply validated ops in memory and log them as one record; returns its seq.

        Call with the lock held; then call :meth:`_durable` without the lock.
        """
        for op in ops:
            self._apply(op)
        return self._log(ops)

    def _log(self, ops: list[dict]) -> int:
        seq = self.seq + 1
        self.journal.append(seq, ops)
        self.seq = seq
        return seq

    def _durable(self, seq: int) -> None:
        local = self._local
        if getattr(local, "depth", 0):  # inside locked(): wait once the lock is released
            local.pending = max(local.pending, seq)
            return
        self.journal.wait(seq)
        self._maybe_checkpoint()

    @contextlib.contextmanager
    def locked(self):
        """Hold the ledger lock for checks and the commits they guard, without its fsync.

        ``with ledger.locked(): check, then commit`` keeps the check and the commit atomic, as
        ``with ledger.lock`` does; but a commit inside returns once it is logged in memory, and
        the wait for the disk happens when the block exits, after the lock is released. The
        block still returns only once everything it committed is durable. (Waiting for the
        fsync under the lock would make every other call, reads included, wait for this call's
        disk write, and would defeat the group commit.)
        """
        local = self._local
        outer = not getattr(local, "depth", 0)
        if outer:
            local.depth, local.pending = 0, 0
        try:
            with self.lock:
                local.depth += 1
                try:
                    yield
                finally:
                    local.depth -= 1
        finally:
            if outer and local.pending:
                seq, local.pending = local.pending, 0
                self._durable(seq)

    def commit(self, ops: list[dict], *, supply: int | None = None, now: int = 0) -> None:
        """Apply and durably log a group of ops as one atomic record, or refuse all of it.

        For modules that build their own ops (cycle, withdraws, recover) from the op builders
        below. With ``supply``, a recompute at that supply is part of the same record. Each op
        is checked against the state the ops before it leave, then applied; if one is refused
        (EngineError), everything the group did in memory is undone and nothing is logged.
        The ops are applied as JSON reads them back, exactly what a replay applies.
        """
        try:
            ops = json.loads(json.dumps(ops, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise EngineError(f"an operation cannot be logged as JSON: {exc}") from None
        if not isinstance(ops, list):
            raise EngineError("commit takes a list of operations")
        if supply is not None:
            supply = self._checked(peg.check_supply, supply)
        with self.lock:
            self._undo = savepoint = Savepoint(self)
            try:
                for op in ops:
                    self._check_op(op)
                    self._apply(op)
                if supply is not None:
                    ops = [*ops, self._recompute(supply, now, None)]
            except BaseException:
                savepoint.restore()
                raise
            finally:
                self._undo = None
            seq = self._log(ops)
        self._durable(seq)

    def apply_replicated(self, records: list[tuple[int, bytes]]) -> int:
        """A standby's path (pegx.replication): apply records received from the primary and
        log them as they were sent; returns the last seq, durable when this returns.

        Each record is applied exactly as a replay at start-up applies it (no checks: the
        primary checked it before logging it) and logged under the same seq, so this ledger
        stays equal to the primary's. A record out of order or one that fails to apply stops
        the journal: memory may then hold a partial record, which no checkpoint may write.
        """
        with self.lock:
            try:
                for seq, data in records:
                    if seq != self.seq + 1:
                        raise EngineError(f"replicated record {seq:,d} does not follow "
                                          f"{self.seq:,d}")
                    for op in json.loads(data):
                        self._apply(op)
                    self.journal.append_raw(seq, data)
                    self.seq = seq
            except Exception as exc:
                self.journal.fail(exc, "a replicated record could not be applied")
                raise
            last = self.seq
        self.journal.wait(last)
        self._maybe_checkpoint()
        return last

    def _maybe_checkpoint(self) -> None:
        due = (self.seq - self.ckpt_seq >= self.checkpoint_ops
               or len(self._dirty_rows) >= self.checkpoint_rows
               or (self.seq > self.ckpt_seq
                   and time.monotonic() - self._last_ckpt_time >= self.checkpoint_seconds))
        # a checkpoint already writing covers this one's need soon; close() writes the last
        if due and not self._closing and self._ckpt_mu.acquire(blocking=False):
            try:
                if not self._closed:
                    self._checkpoint_locked()
            finally:
                self._ckpt_mu.release()

    def checkpoint(self) -> int:
        """Write the state changed since the last checkpoint; returns the seq it covers.

        Waits for a checkpoint in progress (automatic or another caller's) to finish first.
        Refused once close() has started: the shutdown writes the last one.
        """
        if self._closing:
            raise EngineError("the ledger is closed or closing: the shutdown writes the last "
                              "checkpoint")
        with self._ckpt_mu:
            if self._closed:
                raise EngineError("the ledger is closed")
            return self._checkpoint_locked()

    def _checkpoint_locked(self) -> int:
        """Snapshot what changed and write it; call with ``_ckpt_mu`` held.

        The snapshot (under the ledger lock) copies every dirty row and record as it is at
        ``seq``; the write happens outside the ledger lock so calls go on meanwhile, but inside
        ``_ckpt_mu``, so no later snapshot can reach the disk before this one. ``ckpt_seq``
        moves only once the batch is on disk. If the write fails the journal stops (every
        later write and checkpoint is refused), so the dirty sets cleared here are not needed.
        """
        with self.lock:
            seq = self.seq
            puts: list[tuple[bytes, bytes]] = []
            deletes: list[bytes] = []
            for name in self._dirty_rows:
                puts.append((schema.pack_account(name),
                             self.matrix[self.index[name]].astype("<i8").tobytes()))
            for name in self._dirty_views | self._dirty_rows:
                puts.append((schema.pack_balance(name),
                             self.view[self.index[name]].astype("<i8").tobytes()))
            for table, key in self._dirty_recs:
                rec = self.tables[table].get(key)
                k = schema.pack_record(table, key)
                if rec is None:
                    deletes.append(k)
                else:
                    puts.append((k, json.dumps(rec, separators=(",", ":")).encode()))
            for table, key in self._dirty_vecs:
                vec = self.vectors.get((table, key))
                k = schema.pack_vector(table, key)
                if vec is None:
                    deletes.append(k)
                else:
                    puts.append((k, vec.astype("<i8").tobytes()))
            self._dirty_rows.clear()
            self._dirty_views.clear()
            self._dirty_recs.clear()
            self._dirty_vecs.clear()
        self.journal.write_checkpoint(seq, puts, deletes)
        self.ckpt_seq = seq
        self._last_ckpt_time = time.monotonic()
        log.debug("checkpoint at seq %s: %s records", f"{seq:,d}", f"{len(puts):,d}")
        return seq

    def close(self) -> None:
        """Checkpoint everything (a clean stop needs no replay) and close the store.

        From the first call on, new checkpoints are refused; one already writing finishes
        before the last one is taken.
        """
        self._closing = True
        with self._ckpt_mu:
            if self._closed:
                return
            try:
                if self.journal.failed is None:
                    self.journal.flush()
                    self._checkpoint_locked()
            finally:
                self._closed = True
                self.store.close()

    # ---------------------------------------------------------------- op group checks (commit)
    @staticmethod
    def _checked(fn, *args):
        """``fn(*args)``, its PegError (bad style, supply) as an EngineError for the caller."""
        try:
            return fn(*args)
        except peg.PegError as exc:
            raise EngineError(str(exc)) from None

    def _check_op(self, op) -> None:
        """Refuse an op of a commit group that its apply function would fail on, or that would
        break an invariant, in the state the ops before it in the group left."""
        kind = op.get("op") if isinstance(op, dict) else None
        if kind not in self.OPS:
            raise EngineError(f"unknown operation {kind!r}")
        try:
            getattr(self, f"_check_{kind}")(op)
        except EngineError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise EngineError(f"malformed {kind} operation ({type(exc).__name__}: {exc})") from None

    @staticmethod
    def _int(value, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EngineError(f"{what} must be an integer")
        return value

    def _vec(self, text) -> np.ndarray:
        vec = decode_vec(text) if isinstance(text, str) else None
        if vec is None or vec.shape != (peg.PEG_SIZE,):
            raise EngineError(f"a fraction vector has {peg.PEG_SIZE} steps")
        return vec

    def _check_user(self, name) -> str:
        name = check_name(name, allow_internal=True)
        if name == WITHDRAWS:  # its rows belong to pending withdraws (refund, burn)
            raise NameError_(RESERVED_MSG)
        return name

    def _check_trade(self, op: dict) -> None:
        u1 = self._check_user(op["u1"])
        self._check_user(op["u2"])
        amount = check_amount(op["amount"])
        self._checked(peg.check_style, op["style"])
        self._check_funds(u1, amount, op["style"])

    def _check_withdraw(self, op: dict) -> None:
        wid = op["id"]
        if not isinstance(wid, str) or wid in self.tables["withdraws"]:
            raise EngineError(f"withdraw id {wid!r} is taken or not a string")
        user = check_name(op["user"])
        amount = check_amount(op["amount"])
        self._checked(peg.check_style, op["style"])
        if not isinstance(op["address"], str):
            raise EngineError("a withdraw address is a string")
        self._int(op["cycle"], "cycle")
        self._check_funds(user, amount, op["style"])

    def _check_refund(self, op: dict) -> None:
        self._check_pending([op["id"]])

    def _check_burn(self, op: dict) -> None:
        self._check_pending(op["ids"])

    def _check_pending(self, wids) -> None:
        if not isinstance(wids, list) or len(set(wids)) != len(wids):
            raise EngineError("withdraw ids are a list without repeats")
        for wid in wids:
            if wid not in self.tables["withdraws"]:
                raise EngineError(f"no pending withdraw {wid}")

    def _check_credit(self, op: dict) -> None:
        key = op["key"]
        if not isinstance(key, str) or key in self.tables["inputs"]:
            raise EngineError(f"input {key!r} is already registered or not a string")
        vec = self._vec(op["vec"])
        value = self._int(op["value"], "value")
        if (vec < 0).any() or int(vec.sum()) != value:
            raise EngineError(f"input {key}: fractions must be >= 0 and sum to its value")
        owner = op["owner"]
        if owner is not None and owner != HOUSE:
            check_name(owner)
        if not isinstance(op["address"], (str, type(None))):
            raise EngineError("an input address is a string")
        for field in ("change", "frozen_until", "height"):
            self._int(op[field], field)

    def _check_spend(self, op: dict) -> None:
        keys_ = op["keys"]
        if not isinstance(keys_, list) or len(set(keys_)) != len(keys_):
            raise EngineError("spent inputs are a list without repeats")
        missing = [k for k in keys_ if k not in self.tables["inputs"]]
        if missing:
            raise EngineError(f"not registered inputs: {', '.join(map(str, missing))}")

    def _check_recompute(self, op: dict) -> None:
        self._checked(peg.check_supply, op["supply"])
        totals = op["totals"]
        if not isinstance(totals, dict) or set(totals) != {"liquid", "reserve", "subpremium",
                                                           "frozen"}:
            raise EngineError("recompute totals are {liquid, reserve, subpremium, frozen}")
        for field, value in totals.items():
            self._int(value, field)
        if op.get("cycle") is not None:
            self._int(op["cycle"], "cycle")

    def _check_adjust(self, op: dict) -> None:
        name, vec = self._check_user(op["name"]), self._vec(op["vec"])
        style = op.get("style", peg.LIQUID)
        self._checked(peg.check_style, style)
        i = self.index.get(name)
        row = self.matrix[i] if i is not None else np.zeros(peg.PEG_SIZE, dtype=np.int64)
        if (row + vec < 0).any():
            raise FundsError(f"adjusting {name} would leave a step below zero")
        total = int(vec.sum())
        if total < 0 and (i is None or int(self.view[i].sum()) < -total):
            raise FundsError(f"{name} holds less than the {-total:,d} sat to take")

    def _check_drift(self, op: dict) -> None:
        self._vec(op["vec"])

    def _check_put(self, op: dict) -> None:
        if op["table"] not in self.TABLES:
            raise EngineError(f"unknown table {op['table']!r}")
        if not isinstance(op["key"], str):
            raise EngineError("a record key is a string")


    # ---------------------------------------------------------------- apply (deterministic)
    def _apply(self, op: dict) -> None:
        getattr(self, f"_apply_{op['op']}")(op)

    def _save_row(self, i: int) -> None:
        if self._undo is not None:
            self._undo.save_row(i)

    def _move_rows(self, src: str, dst: str | None, vec: np.ndarray) -> None:
        i = self._row(src)
        self._save_row(i)
        self.matrix[i] -= vec
        self._dirty_rows.add(src)
        if dst is not None:
            j = self._row(dst)
            self._save_row(j)
            self.matrix[j] += vec
            self._dirty_rows.add(dst)

    def _move_view(self, src: str, dst: str | None, amount: int, style: str) -> None:
        """Move ``amount`` of balance in ``style``, overflowing into the other style if the
        source holds less of it (after a recompute reshuffled liquid and reserve)."""
        i = self.index[src]
        self._save_row(i)
        self._dirty_views.add(src)
        s = 0 if style == peg.LIQUID else 1
        first = min(amount, int(self.view[i, s]))
        second = amount - first
        self.view[i, s] -= first
        self.view[i, 1 - s] -= second
        if dst is not None:
            j = self._row(dst)
            self._save_row(j)
            self._dirty_views.add(dst)
            self.view[j, s] += first
            self.view[j, 1 - s] += second

    def _apply_trade(self, op: dict) -> None:
        u1, u2, amount, style = op["u1"], op["u2"], op["amount"], op["style"]
        vec = peg.deduction(self.matrix[self.index[u1]], amount, style, self.supply)
        self._move_rows(u1, u2, vec)
        self._move_view(u1, u2, amount, style)

    def _apply_credit(self, op: dict) -> None:
        """A registered input: credit its fractions to the owner (if any) and record it."""
        vec = decode_vec(op["vec"])
        key = op["key"]
        rec = {k: op[k] for k in ("value", "address", "owner", "change", "frozen_until",
                                  "height")}
        self._put("inputs", key, rec)
        self._put_vec("inputs", key, vec)
        owner = op["owner"]
        if owner:
            i = self._row(owner)
            self._save_row(i)
            self.matrix[i] += vec
            self.view[i, 1] += int(vec.sum())  # reserve until the recompute that follows
            self._dirty_rows.add(owner)
        claim = self.tables["claims"].get(key)
        if claim is not None:
            self._put("claims", key, {**claim, "registered": 1})

    def _apply_spend(self, op: dict) -> None:
        """Registered inputs spent on chain by the exchange leave the input set."""
        for key in op["keys"]:
            self._put("inputs", key, None)
            self._put_vec("inputs", key, None)
            self._figures.pop(key, None)

    def _apply_recompute(self, op: dict) -> None:
        n = len(self.names)
        if self._undo is not None:
            self._undo.save_views()
        liquid, reserve, _ = peg.assign_balances(self.matrix[:n], op["supply"],
                                                 op["totals"]["liquid"])
        self.view[:n, 0] = liquid
        self.view[:n, 1] = reserve
        self._dirty_views.update(self.names)  # 16 bytes each at the next checkpoint
        meta = dict(self.meta)
        meta.update(supply=op["supply"], totals=op["totals"])
        if op.get("cycle") is not None:
            meta["cycle"] = op["cycle"]
        self._put("meta", "engine", meta)

    def _apply_withdraw(self, op: dict) -> None:
        user, amount, style = op["user"], op["amount"], op["style"]
        vec = peg.deduction(self.matrix[self.index[user]], amount, style, self.supply)
        self._move_rows(user, WITHDRAWS, vec)
        self._move_view(user, WITHDRAWS, amount, style)
        rec = {k: op[k] for k in ("user", "amount", "style", "address", "cycle", "commission")
               if k in op}  # ops logged before commissions were kept have none
        self._put("withdraws", op["id"], rec)
        self._put_vec("withdraws", op["id"], vec)

    def _apply_refund(self, op: dict) -> None:
        wid = op["id"]
        rec = self.tables["withdraws"][wid]
        vec = self.vectors[("withdraws", wid)]
        self._move_rows(WITHDRAWS, rec["user"], vec)
        self._move_view(WITHDRAWS, rec["user"], rec["amount"], rec["style"])
        self._put("withdraws", wid, None)
        self._put_vec("withdraws", wid, None)

    def _apply_burn(self, op: dict) -> None:
        """Withdrawn coins leave the ledger (their transaction confirmed)."""
        for wid in op["ids"]:
            rec = self.tables["withdraws"][wid]
            vec = self.vectors[("withdraws", wid)]
            self._move_rows(WITHDRAWS, None, vec)
            self._move_view(WITHDRAWS, None, rec["amount"], rec["style"])
            self._put("withdraws", wid, None)
            self._put_vec("withdraws", wid, None)

    def _apply_adjust(self, op: dict) -> None:
        """Add a signed fraction vector to one account (the house's fee income or costs).

        A credit lands in the reserve view until the recompute that follows it; a debit takes
        balance like a trade in ``style``. Validated by the caller: the row stays >= 0.
        """
        name, vec = op["name"], decode_vec(op["vec"])
        i = self._row(name)
        self._save_row(i)
        self.matrix[i] += vec
        self._dirty_rows.add(name)
        total = int(vec.sum())
        if total >= 0:
            self.view[i, 1] += total
        else:
            self._move_view(name, None, -total, op.get("style", peg.LIQUID))

    def _apply_drift(self, op: dict) -> None:
        """Add to the per-step drift vector: registered inputs minus ledger accounts.

        On-chain spends assign fractions in the chain's proportions, not the ledger's; the
        difference per step is kept here so Σ accounts + drift == Σ registered inputs stays an
        exact law (BitBay core keeps the same thing as its "pegshift").
        """
        cur = self.vectors.get(("meta", "drift"))
        vec = decode_vec(op["vec"])
        self._put_vec("meta", "drift", vec if cur is None else cur + vec)

    def _apply_put(self, op: dict) -> None:
        self._put(op["table"], op["key"], op.get("value"))

    def _put(self, table: str, key: str, value) -> None:
        if self._undo is not None:
            self._undo.save_record(table, key)
        if value is None:
            self.tables[table].pop(key, None)
        else:
            self.tables[table][key] = value
        self._dirty_recs.add((table, key))

    def _put_vec(self, table: str, key: str, vec: np.ndarray | None) -> None:
        if self._undo is not None:
            self._undo.save_vector(table, key)
        if vec is None:
            self.vectors.pop((table, key), None)
        else:
            self.vectors[(table, key)] = vec
        self._dirty_vecs.add((table, key))

    # ---------------------------------------------------------------- reads
    @property
    def meta(self) -> dict:
        return self.tables["meta"].get("engine", {"supply": 0, "cycle": 0, "totals": {
            "liquid": 0, "reserve": 0, "subpremium": 0, "frozen": 0}})

    @property
    def supply(self) -> int:
        """The supply index the ledger's balances and trades are at (set by recompute)."""
        return self.meta["supply"]

    def balance(self, name: str) -> dict | None:
        """{liquid, reserve} of an account, or None if unknown."""
        with self.lock:
            i = self.index.get(name)
            if i is None:
                return None
            return {"liquid": int(self.view[i, 0]), "reserve": int(self.view[i, 1])}

    def exchange_balance(self) -> dict:
        """The exchange totals {liquid, reserve, subpremium, frozen} of the last recompute."""
        with self.lock:
            return dict(self.meta["totals"])

    def row(self, name: str) -> np.ndarray | None:
        """A copy of an account's per-step ledger row."""
        with self.lock:
            i = self.index.get(name)
            return None if i is None else self.matrix[i].copy()

    def record(self, table: str, key: str):
        """A deep copy of one table record, or None."""
        with self.lock:
            rec = self.tables[table].get(key)
            return copy.deepcopy(rec)

    def records(self, table: str) -> dict:
        """A deep copy of a whole table."""
        with self.lock:
            return copy.deepcopy(self.tables[table])

    def vector(self, table: str, key: str) -> np.ndarray | None:
        with self.lock:
            v = self.vectors.get((table, key))
            return None if v is None else v.copy()

    def digest(self) -> str:
        """A SHA-256 over the whole state (rows, balances, tables, vectors), order-independent.

        Two ledgers with equal digests hold exactly the same money and records; the crash and
        durability tests compare runs with it.
        """
        h = hashlib.sha256()
        with self.lock:
            for name in sorted(self.names):
                i = self.index[name]
                if not self.matrix[i].any() and not self.view[i].any():
                    continue  # an empty account is the same as no account
                h.update(name.encode() + b"\0")
                h.update(self.view[i].astype("<i8").tobytes())
                h.update(self.matrix[i].astype("<i8").tobytes())
            h.update(json.dumps(self.tables, sort_keys=True).encode())
            for key in sorted(self.vectors):
                h.update(repr(key).encode() + self.vectors[key].astype("<i8").tobytes())
        return h.hexdigest()

    def drift(self) -> np.ndarray:
        """The per-step drift vector (registered inputs − ledger accounts); zeros if none."""
        with self.lock:
            v = self.vectors.get(("meta", "drift"))
            return np.zeros(peg.PEG_SIZE, dtype=np.int64) if v is None else v.copy()

    def users(self) -> list[str]:
        with self.lock:
            return list(self.names)

    # ---------------------------------------------------------------- operations
    def trade(self, user1, amount, user2, style: str = peg.LIQUID) -> bool:
        """Move ``amount`` of ``style`` from user1 to user2 (ORIGINAL §1.3 Trade checks 5-11).

        ``user2 == ''`` is the pool: a negative amount debits user1 into ``pool``, a positive
        amount credits user1 out of it (the pool must hold enough: debit before credit).
        """
        check_name(user1)
        if user2 != "":
            if isinstance(user2, str) and user2.lower() == WITHDRAWS:
                raise NameError_(RESERVED_MSG)
            check_name(user2)
        amount = check_amount(amount, allow_negative=True)
        if user2 == "":
            if amount < 0:
                amount, user2 = -amount, POOL
            else:
                user1, user2 = POOL, user1
        elif amount < 0:
            raise AmountError("Amount can not be negative if both users are known")
        if style not in peg.STYLES:
            self._bad_style(style)
        with self.lock:
            self._check_funds(user1, amount, style)
            if user1 == user2:
                return True
            seq = self._submit([{"op": "trade", "u1": user1, "u2": user2, "amount": amount,
                                 "style": style}])
        self._durable(seq)
        return True

    @staticmethod
    def _bad_style(style) -> None:
        raise EngineError("Style must be 'liquid' or 'reserve'.")

    def _check_funds(self, user: str, amount: int, style: str) -> None:
        i = self.index.get(user)
        have = 0 if i is None else int(self.view[i, 0 if style == peg.LIQUID else 1])
        if amount > have:
            if user == POOL:
                raise FundsError(f"Insufficient funds in {style} pool. "
                                 "Please make the debit before the credit.")
            if i is None:
                raise UnknownAccount("Unknown user.")
            raise FundsError(f"Insufficient {style} balance")

    def credit_inputs(self, inputs: list[dict], *, supply: int, now: int,
                      cycle: int | None = None) -> None:
        """Register exchange inputs and recompute balances, as one durable step.

        Each item: {key, value, address, vector (np array), owner (a user, HOUSE, or None for
        change that replaces spent inputs), change, frozen_until, height}. An owner is credited
        with the input's fractions.
        """
        ops = []
        with self.lock:
            for item in inputs:
                key, vec = item["key"], np.asarray(item["vector"], dtype=np.int64)
                if key in self.tables["inputs"]:
                    raise EngineError(f"input {key} is already registered")
                if vec.shape != (peg.PEG_SIZE,) or (vec < 0).any():
                    raise EngineError(f"input {key}: a fraction vector has 1200 steps >= 0")
                if int(vec.sum()) != int(item["value"]):
                    raise EngineError(f"input {key}: fractions sum to {int(vec.sum()):,d}, "
                                      f"not its value {int(item['value']):,d}")
                owner = item.get("owner")
                if owner is not None and owner != HOUSE:
                    check_name(owner)
                ops.append(self.credit_op(key, item["value"], vec, owner=owner,
                                          address=item.get("address", ""),
                                          change=bool(item.get("change")),
                                          frozen_until=item.get("frozen_until", 0),
                                          height=item.get("height", 0)))
            seq = self._recompute_locked(ops, supply=supply, now=now, cycle=cycle)
        self._durable(seq)

    def spend_inputs(self, keys_: list[str], *, supply: int, now: int) -> None:
        """Registered inputs spent by an exchange transaction leave the input set."""
        with self.lock:
            missing = [k for k in keys_ if k not in self.tables["inputs"]]
            if missing:
                raise EngineError(f"not registered inputs: {', '.join(missing)}")
            seq = self._recompute_locked([{"op": "spend", "keys": list(keys_)}], supply=supply,
                                         now=now)
        self._durable(seq)

    def recompute(self, supply: int, *, now: int, cycle: int | None = None) -> dict:
        """Recompute exchange totals and every account's balance at ``supply``; returns totals."""
        with self.lock:
            seq = self._recompute_locked([], supply=supply, now=now, cycle=cycle)
            totals = dict(self.meta["totals"])
        self._durable(seq)
        return totals

    def _recompute_locked(self, ops: list[dict], *, supply: int, now: int,
                          cycle: int | None = None) -> int:
        """Apply ``ops``, then a recompute whose totals include what they register or spend;
        log all of it as one record (call with the lock held)."""
        supply = peg.check_supply(supply)
        for op in ops:
            self._apply(op)
        return self._log(ops + [self._recompute(supply, now, cycle)])

    def _recompute(self, supply: int, now: int, cycle: int | None) -> dict:
        """Apply a recompute at ``supply`` over the registered inputs; returns its op."""
        totals = input_totals(self.tables["inputs"], self.vectors, supply, now, self._figures)
        recompute = {"op": "recompute", "supply": supply, "totals": totals, "cycle": cycle}
        self._apply(recompute)
        return recompute

    def withdraw(self, wid: str, user, amount, style: str, address: str, cycle: int,
                 commission: int | None = None) -> None:
        """Move ``amount`` from ``user`` to the ``withdraws`` account under withdraw id ``wid``.

        ``commission`` (satoshi, 0 <= commission < amount) is the commission in force when the
        withdraw was accepted; it is kept with the withdraw and is what its batch charges,
        whatever the settings say by then. Without it the batch uses the settings of its time.
        """
        check_name(user)
        amount = check_amount(amount)
        if style not in peg.STYLES:
            self._bad_style(style)
        op = {"op": "withdraw", "id": wid, "user": user, "amount": amount, "style": style,
              "address": address, "cycle": int(cycle)}
        if commission is not None:
            if (isinstance(commission, bool) or not isinstance(commission, (int, np.integer))
                    or not 0 <= commission < amount):
                raise AmountError(f"commission must be a whole number of satoshi from 0 to "
                                  f"below the amount, got {commission!r}")
            op["commission"] = int(commission)
        with self.lock:
            if wid in self.tables["withdraws"]:
                raise EngineError(f"withdraw id {wid} already exists")
            self._check_funds(user, amount, style)
            seq = self._submit([op])
        self._durable(seq)

    def refund(self, wids: list[str], extra: list[dict] = ()) -> None:
        """Give pending withdraws back to their users, exactly the steps they gave."""
        self._finish("refund", wids, extra)

    def burn(self, wids: list[str], extra: list[dict] = ()) -> None:
        """Withdraws whose transaction confirmed leave the ledger."""
        self._finish("burn", wids, extra)

    def _finish(self, kind: str, wids: list[str], extra) -> None:
        with self.lock:
            for wid in wids:
                if wid not in self.tables["withdraws"]:
                    raise EngineError(f"no pending withdraw {wid}")
            if kind == "refund":
                ops = [{"op": "refund", "id": w} for w in wids]
            else:
                ops = [{"op": "burn", "ids": list(wids)}]
            seq = self._submit(ops + list(extra))
        self._durable(seq)

    def put(self, table: str, key: str, value) -> None:
        """Durably set (or, with None, delete) a table record."""
        self.put_many([(table, key, value)])

    def put_many(self, items: list[tuple[str, str, object]]) -> None:
        """Durably set several records as one atomic step."""
        ops = []
        for table, key, value in items:
            if table not in self.TABLES:
                raise EngineError(f"unknown table {table!r}")
            ops.append({"op": "put", "table": table, "key": str(key), "value": value})
        self.commit(ops)

    def exchange_settings(self) -> dict:
        """ExchangeSettings values with the original's defaults filled in."""
        rec = self.record("settings", "exchange") or {}
        return {"exchangeaccounts": rec.get("exchangeaccounts", []),
                "exchangefeeaccount": rec.get("exchangefeeaccount", ""),
                "commission": rec.get("commission", dict(DEFAULT_COMMISSION)),
                "exchangeconfirmations": rec.get("exchangeconfirmations",
                                                 DEFAULT_CONFIRMATIONS)}

    @staticmethod
    def credit_op(key: str, value: int, vector: np.ndarray, *, owner: str | None,
                  address: str = "", change: bool = False, frozen_until: int = 0,
                  height: int = 0) -> dict:
        """The op that registers an input (crediting ``owner``'s row with its fractions)."""
        return {"op": "credit", "key": key, "value": int(value), "address": address,
                "owner": owner, "change": int(bool(change)), "frozen_until": int(frozen_until),
                "height": int(height), "vec": encode_vec(np.asarray(vector, dtype=np.int64))}

    @staticmethod
    def adjust_op(name: str, vector: np.ndarray, style: str = peg.LIQUID) -> dict:
        """The op that adds a signed vector to an account (see ``_apply_adjust``)."""
        return {"op": "adjust", "name": name, "style": style,
                "vec": encode_vec(np.asarray(vector, dtype=np.int64))}

    @staticmethod
    def drift_op(vector: np.ndarray) -> dict:
        """The op that adds a signed vector to the per-step drift (see ``_apply_drift``)."""
        return {"op": "drift", "vec": encode_vec(np.asarray(vector, dtype=np.int64))}

    @staticmethod
    def put_op(table: str, key: str, value) -> dict:
        """The op that sets a record (for atomic groups built by other modules)."""
        return {"op": "put", "table": table, "key": str(key), "value": value}
