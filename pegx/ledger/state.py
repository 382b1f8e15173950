"""The ledger's state in memory and the deterministic functions that apply operations to it.

* the **per-step ledger**: one int64 row of PEG_SIZE steps per account (users and the
  pseudo-accounts ``pool``, ``withdraws`` and ``exchange``), held in one numpy matrix;
* the **published balances** ({liquid, reserve} per account, ``view``), derived by a recompute
  from the rows and the exchange's real liquid, and moved incrementally by trades in between;
* small **tables** of records and the fraction **vectors** some records own.

Only :class:`pegx.ledger.engine.Exchange` holds a State, under its lock; nothing outside the
ledger package reads one. Apply functions never fail on an operation the checks accepted,
replace records (never mutate them in place: readers may hold the old one) and report every
change to the dirty sets (the next checkpoint) and to an active savepoint (a refused group).
"""

from __future__ import annotations

import json

import numpy as np

from pegx import peg
from pegx.ledger import ops, schema
from pegx.ledger.lifecycle import ENDINGS
from pegx.ledger.rules import FROZEN_GRACE, WITHDRAWS
from pegx.ledger.savepoint import Savepoint

TABLES = ("claims", "inputs", "withdraws", "settings", "addresses", "exec", "meta", "batches",
          "batch_of", "expired", "waiting")
LEGACY_TABLES = ("history",)  # older layouts (pegx.ledger.migrate); replayed ops may write them
FIGURE_CHUNK = 2048  # input vectors stacked per vectorised figures() call
NO_TOTALS = {"liquid": 0, "reserve": 0, "subpremium": 0, "frozen": 0}


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
    t = dict(NO_TOTALS)
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


class State:
    """Rows, balances, tables and vectors, with the apply function of every operation."""

    def __init__(self, capacity: int = 1024):
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.matrix = np.zeros((max(capacity, 8), peg.PEG_SIZE), dtype=np.int64)
        self.view = np.zeros((self.matrix.shape[0], 2), dtype=np.int64)  # liquid, reserve
        self.tables: dict[str, dict] = {t: {} for t in TABLES}
        self.vectors: dict[tuple[str, str], np.ndarray] = {}
        self.dirty_rows: set[str] = set()
        self.dirty_views: set[str] = set()
        self.dirty_recs: set[tuple[str, str]] = set()
        self.dirty_vecs: set[tuple[str, str]] = set()
        self.figures: dict[str, tuple] = {}  # input key -> figures at a supply (input_totals)
        self.undo: Savepoint | None = None  # set while a commit group is applied

    # ---------------------------------------------------------------- accounts
    def add_account(self, name: str, *, dirty: bool = True) -> int:
        """A new account's row index (a savepoint drops accounts added after it by length)."""
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
            self.dirty_rows.add(name)
        return i

    def row_of(self, name: str) -> int:
        """The row index of ``name``, creating the account if it has none."""
        i = self.index.get(name)
        return self.add_account(name) if i is None else i

    def have(self, name: str, style: str) -> int:
        """The published balance of ``style`` (0 for an unknown account)."""
        i = self.index.get(name)
        return 0 if i is None else int(self.view[i, 0 if style == peg.LIQUID else 1])

    # ---------------------------------------------------------------- reads
    @property
    def meta(self) -> dict:
        """The engine record: supply, cycle and exchange totals of the last recompute."""
        return self.tables["meta"].get("engine", {"supply": 0, "cycle": 0,
                                                  "totals": dict(NO_TOTALS)})

    @property
    def supply(self) -> int:
        return self.meta["supply"]

    # ---------------------------------------------------------------- low-level writes
    def put(self, table: str, key: str, value) -> None:
        """Set or (None) delete a record; tables of older layouts are created as replayed."""
        if self.undo is not None:
            self.undo.save_record(table, key)
        recs = self.tables.setdefault(table, {})
        if value is None:
            recs.pop(key, None)
        else:
            recs[key] = value
        self.dirty_recs.add((table, key))

    def put_vec(self, table: str, key: str, vec: np.ndarray | None) -> None:
        if self.undo is not None:
            self.undo.save_vector(table, key)
        if vec is None:
            self.vectors.pop((table, key), None)
        else:
            self.vectors[(table, key)] = vec
        self.dirty_vecs.add((table, key))

    def _save_row(self, i: int) -> None:
        if self.undo is not None:
            self.undo.save_row(i)

    def _move_rows(self, src: str, dst: str | None, vec: np.ndarray) -> None:
        i = self.row_of(src)
        self._save_row(i)
        self.matrix[i] -= vec
        self.dirty_rows.add(src)
        if dst is not None:
            j = self.row_of(dst)
            self._save_row(j)
            self.matrix[j] += vec
            self.dirty_rows.add(dst)

    def _move_view(self, src: str, dst: str | None, amount: int, style: str) -> None:
        """Move ``amount`` of balance in ``style``, overflowing into the other style if the
        source holds less of it (after a recompute reshuffled liquid and reserve)."""
        i = self.index[src]
        self._save_row(i)
        self.dirty_views.add(src)
        s = 0 if style == peg.LIQUID else 1
        first = min(amount, int(self.view[i, s]))
        second = amount - first
        self.view[i, s] -= first
        self.view[i, 1 - s] -= second
        if dst is not None:
            j = self.row_of(dst)
            self._save_row(j)
            self.dirty_views.add(dst)
            self.view[j, s] += first
            self.view[j, 1 - s] += second

    def _credit_row(self, name: str, vec: np.ndarray) -> None:
        """Add fractions to a row; the balance lands in reserve until the next recompute."""
        i = self.row_of(name)
        self._save_row(i)
        self.matrix[i] += vec
        self.view[i, 1] += int(vec.sum())
        self.dirty_rows.add(name)

    # ---------------------------------------------------------------- apply (deterministic)
    def apply(self, op: dict) -> None:
        """Apply one accepted (or logged) operation."""
        getattr(self, f"_apply_{op['op']}")(op)

    def _apply_trade(self, op: dict) -> None:
        u1, u2, amount, style = op["u1"], op["u2"], op["amount"], op["style"]
        vec = peg.deduction(self.matrix[self.index[u1]], amount, style, self.supply)
        self._move_rows(u1, u2, vec)
        self._move_view(u1, u2, amount, style)

    def _apply_credit(self, op: dict) -> None:
        """A registered input: credit its fractions to the owner (if any) and record it."""
        vec = ops.decode_vec(op["vec"])
        key = op["key"]
        rec = {k: op[k] for k in ("value", "address", "owner", "change", "frozen_until",
                                  "height")}
        self.put("inputs", key, rec)
        self.put_vec("inputs", key, vec)
        if op["owner"]:
            self._credit_row(op["owner"], vec)
        claim = self.tables["claims"].get(key)
        if claim is not None:
            self.put("claims", key, {**claim, "registered": 1})

    def _apply_spend(self, op: dict) -> None:
        """Registered inputs spent on chain by the exchange leave the input set."""
        for key in op["keys"]:
            self.put("inputs", key, None)
            self.put_vec("inputs", key, None)
            self.figures.pop(key, None)

    def _apply_recompute(self, op: dict) -> None:
        n = len(self.names)
        if self.undo is not None:
            self.undo.save_views()
        liquid, reserve, _ = peg.assign_balances(self.matrix[:n], op["supply"],
                                                 op["totals"]["liquid"])
        self.view[:n, 0] = liquid
        self.view[:n, 1] = reserve
        self.dirty_views.update(self.names)  # 16 bytes each at the next checkpoint
        meta = dict(self.meta)
        meta.update(supply=op["supply"], totals=op["totals"])
        if op.get("cycle") is not None:
            meta["cycle"] = op["cycle"]
        self.put("meta", "engine", meta)

    def _apply_withdraw(self, op: dict) -> None:
        user, amount, style = op["user"], op["amount"], op["style"]
        vec = peg.deduction(self.matrix[self.index[user]], amount, style, self.supply)
        self._move_rows(user, WITHDRAWS, vec)
        self._move_view(user, WITHDRAWS, amount, style)
        rec = {k: op[k] for k in ("user", "amount", "style", "address", "cycle", "commission",
                                  "time")
               if k in op}  # ops logged before commissions (times) were kept have none
        self.put("withdraws", op["id"], rec)
        self.put_vec("withdraws", op["id"], vec)

    def _apply_refund(self, op: dict) -> None:
        wid = op["id"]
        rec = self.tables["withdraws"][wid]
        vec = self.vectors[("withdraws", wid)]
        self._move_rows(WITHDRAWS, rec["user"], vec)
        self._move_view(WITHDRAWS, rec["user"], rec["amount"], rec["style"])
        self.put("withdraws", wid, None)
        self.put_vec("withdraws", wid, None)

    def _apply_burn(self, op: dict) -> None:
        """Withdrawn coins leave the ledger (their transaction confirmed)."""
        for wid in op["ids"]:
            rec = self.tables["withdraws"][wid]
            vec = self.vectors[("withdraws", wid)]
            self._move_rows(WITHDRAWS, None, vec)
            self._move_view(WITHDRAWS, None, rec["amount"], rec["style"])
            self.put("withdraws", wid, None)
            self.put_vec("withdraws", wid, None)

    def _apply_adjust(self, op: dict) -> None:
        """Add a signed fraction vector to one account (the house's fee income or costs).

        A credit lands in the reserve view until the recompute that follows it; a debit takes
        balance like a trade in ``style``. Validated by the checks: the row stays >= 0.
        """
        name, vec = op["name"], ops.decode_vec(op["vec"])
        total = int(vec.sum())
        if total >= 0:
            self._credit_row(name, vec)
            return
        i = self.row_of(name)
        self._save_row(i)
        self.matrix[i] += vec
        self.dirty_rows.add(name)
        self._move_view(name, None, -total, op.get("style", peg.LIQUID))

    def _apply_drift(self, op: dict) -> None:
        """Add to the per-step drift vector: registered inputs minus ledger accounts.

        On-chain spends assign fractions in the chain's proportions, not the ledger's; the
        difference per step is kept here so Σ accounts + drift == Σ registered inputs stays an
        exact law (BitBay core keeps the same thing as its "pegshift").
        """
        cur = self.vectors.get(("meta", "drift"))
        vec = ops.decode_vec(op["vec"])
        self.put_vec("meta", "drift", vec if cur is None else cur + vec)

    def _apply_claim(self, op: dict) -> None:
        if op["key"] not in self.tables["claims"]:
            self.put("claims", op["key"], {"name": op["name"]})

    def _mark(self, table: str, key: str, master: str | None) -> None:
        """Set (or, with None, clear) the ``batch`` mark of a withdraw or input record."""
        rec = {k: v for k, v in self.tables[table][key].items() if k != "batch"}
        if master is not None:
            rec["batch"] = master
        self.put(table, key, rec)

    def _apply_batch(self, op: dict) -> None:
        master, rec = op["id"], op["batch"]
        self.put("batches", master, rec)
        for wid in rec["ids"]:
            self._mark("withdraws", wid, master)
            self.put("batch_of", wid, master)
            if wid in self.tables["waiting"]:  # it waits no more
                self.put("waiting", wid, None)
        for key in rec["ins"]:
            self._mark("inputs", key, master)

    def _apply_batch_update(self, op: dict) -> None:
        master, gone = op["id"], op.get("unset", ())
        rec = {k: v for k, v in self.tables["batches"][master].items() if k not in gone}
        self.put("batches", master, {**rec, **op["set"]})

    def _apply_batch_end(self, op: dict) -> None:
        master = op["id"]
        b = self.tables["batches"][master]
        rec = {**b, **op["set"], "state": ENDINGS[op["status"]], "status": op["status"]}
        if op["status"] != "Complete":  # a Complete one keeps it for a deep reorganisation
            rec.pop("raw", None)
            rec.pop("outs", None)
        self.put("batches", master, rec)
        for key in b["ins"]:  # spent ones left the input set; the others are free again
            if self.tables["inputs"].get(key, {}).get("batch") == master:
                self._mark("inputs", key, None)

    def _apply_expire(self, op: dict) -> None:
        self._apply_refund(op)
        self.put("expired", op["id"], {"block": op["block"]})
        if op["id"] in self.tables["waiting"]:
            self.put("waiting", op["id"], None)

    def _apply_wait(self, op: dict) -> None:
        for wid, reason in op["ids"].items():
            self.put("waiting", wid, {"block": op["block"], "reason": reason})

    def _apply_forget(self, op: dict) -> None:
        ident = op["id"]
        if ident in self.tables["batch_of"]:
            self.put("batch_of", ident, None)
        elif ident in self.tables["expired"]:
            self.put("expired", ident, None)
        else:
            self.put("batches", ident, {**self.tables["batches"][ident], "cleared": 1})

    def _apply_put(self, op: dict) -> None:
        self.put(op["table"], op["key"], op.get("value"))

    # ---------------------------------------------------------------- loading
    def load_checkpoint(self, store) -> None:
        """Read the last checkpoint's rows, balances, records and vectors from ``store``."""
        for k, v in store.scan(schema.ACCOUNT):
            i = self.add_account(schema.unpack_account(k), dirty=False)
            self.matrix[i] = np.frombuffer(v, dtype="<i8")
        for k, v in store.scan(schema.BALANCE):
            i = self.row_of(schema.unpack_balance(k))
            self.view[i] = np.frombuffer(v, dtype="<i8")
        for k, v in store.scan(schema.TABLE):
            table, key = schema.unpack_record(k)
            self.tables.setdefault(table, {})[key] = json.loads(v)
        for k, v in store.scan(schema.VECTOR):
            table, key = schema.unpack_vector(k)
            self.vectors[(table, key)] = np.frombuffer(v, dtype="<i8").astype(np.int64)
