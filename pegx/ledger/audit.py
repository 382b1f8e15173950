"""The audit: the conservation law and every ledger invariant, checked exactly.

One audit serves ``pegx audit`` (offline and ``pegx.audit``), ``pegx verify-backup``, the
crash test and the tests. Invariants: per step Σ accounts + drift == Σ registered inputs; no
negative step or balance; liquid + reserve == row total; Σ liquid <= the exchange's liquid;
the withdraws row == Σ pending withdraw vectors; claims registered <=> input registered.
Whether every input is still unspent is the chain's question: the caller passes a
``chain_check`` (see :func:`audit`), since the ledger never asks the chain itself.

Sums are exact Python ints (a corrupted row cannot overflow them), worked out chunk by chunk
so no temporary grows with the number of accounts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pegx import peg
from pegx.ledger.lifecycle import in_flight_inputs
from pegx.ledger.rules import HOUSE, INTERNAL, POOL, WITHDRAWS
from pegx.ledger.state import State

MAX_LISTED = 20  # problems of one kind listed before "... and N more"
COLUMNS = ("step", "users", "pool", "withdraws", "exchange", "inputs", "drift", "difference")
# where the per-step drift lives: registered inputs - accounts, from on-chain spends that split
# fractions in the chain's proportions rather than the ledger's
DRIFT = ("meta", "drift")
NO_CHAIN = "no chain: inputs and claims were not checked against it"
_LOW = (1 << 32) - 1
_CHUNK = 4096  # rows per pass: bounded temporaries however large the ledger is


@dataclass
class Snapshot:
    """What the audit reads, copied under the ledger lock in one consistent view."""

    names: list[str]
    view: np.ndarray
    cols: np.ndarray  # Σ per step over every account (exact)
    totals: np.ndarray  # Σ per account (exact)
    negative: list[tuple[int, int, int, int]]  # (account, first step, its value, count)
    special: dict[str, np.ndarray]  # the rows of pool, withdraws and exchange
    inputs: dict
    claims: dict
    withdraws: list[str]
    vectors: dict
    meta: dict
    in_flight: set[str]
    seq: int


@dataclass
class Findings:
    """Problems by kind (in the order kinds were first met) and notes."""

    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def problem(self, kind: str, text: str) -> None:
        self.problems.setdefault(kind, []).append(text)


# chain_check(snapshot, findings): adds the chain's problems and notes (pegx.admin.audit)
ChainCheck = Callable[[Snapshot, Findings], None]


def _exact_sum(a: np.ndarray, axis: int) -> np.ndarray:
    """Exact int64 sums as Python ints: high and low 32-bit halves are summed separately, so
    no total overflows (even of a corrupted row) for up to 2^31 terms."""
    hi = (a >> 32).sum(axis=axis)
    lo = (a & _LOW).sum(axis=axis)
    return hi.astype(object) * (1 << 32) + lo.astype(object)


def snapshot(state: State, seq: int) -> Snapshot:
    """Sum the rows and copy the records the audit needs; call under the ledger lock
    (calls wait, ~1 s per 100,000 accounts). Works in chunks of rows instead of copying the
    matrix (users x 1200 int64 can be GBs)."""
    n = len(state.names)
    cols = np.zeros(peg.PEG_SIZE, dtype=object)
    totals = np.zeros(n, dtype=object)
    negative = []
    for start in range(0, n, _CHUNK):
        chunk = state.matrix[start:min(n, start + _CHUNK)]
        cols = cols + _exact_sum(chunk, 0)
        totals[start:start + len(chunk)] = _exact_sum(chunk, 1)
        for r in np.flatnonzero((chunk < 0).any(axis=1)):
            neg = np.flatnonzero(chunk[r] < 0)
            negative.append((start + int(r), int(neg[0]), int(chunk[r, neg[0]]), neg.size))
    special = {name: state.matrix[state.index[name]].astype(object)
               for name in INTERNAL if name in state.index}
    tables = state.tables
    vectors = {k: v.copy() for k, v in state.vectors.items()
               if k[0] in ("inputs", "withdraws") or k == DRIFT}
    return Snapshot(names=list(state.names), view=state.view[:n].copy(), cols=cols,
                    totals=totals, negative=negative, special=special,
                    inputs=dict(tables["inputs"]), claims=dict(tables["claims"]),
                    withdraws=list(tables["withdraws"]), vectors=vectors,
                    meta=tables["meta"].get("engine", {"supply": 0, "cycle": 0,
                                                       "totals": {"liquid": 0}}),
                    in_flight=in_flight_inputs(tables["batches"]), seq=seq)


def report(snap: Snapshot, chain_check: ChainCheck | None = None) -> dict:
    """The audit report of ``snap``: ``ok``; ``problems`` (each names the step, account or
    input at fault); ``notes``; ``columns`` and ``steps`` (per-step rows, only for steps with
    a difference); ``totals`` (the same columns summed over all steps); ``summary``."""
    found = Findings()
    rows, differing = _conservation(snap, found)
    _accounts(snap, found, differing)
    assigned, ex_liquid = _liquid(snap, found)
    _withdraws(snap, found)
    _claims(snap, found)
    if chain_check is None:
        found.notes.append(NO_CHAIN)
    else:
        chain_check(snap, found)
    totals = dict(zip(COLUMNS[1:], (int(x) for x in rows.sum(axis=1)), strict=True))
    summary = {"accounts": len([a for a in snap.names if a not in INTERNAL]),
               "inputs": len(snap.inputs),
               "in_flight": len(snap.in_flight & set(snap.inputs)),
               "withdraws_pending": len(snap.withdraws), "claims": len(snap.claims),
               "supply": int(snap.meta.get("supply", 0)),
               "cycle": int(snap.meta.get("cycle", 0) or 0), "op_seq": snap.seq,
               "liquid_assigned": assigned, "exchange_liquid": ex_liquid,
               "drift": DRIFT in snap.vectors}
    listed = [t for kind in found.problems.values() for t in _limited(kind)]
    steps = [[i, *(int(x) for x in rows[:, i])] for i in differing]
    return {"ok": not found.problems, "problems": listed, "notes": found.notes,
            "columns": list(COLUMNS), "steps": steps, "totals": totals, "summary": summary}


def _limited(items: list[str]) -> list[str]:
    if len(items) <= MAX_LISTED:
        return items
    return items[:MAX_LISTED] + [f"... and {len(items) - MAX_LISTED:,d} more like this"]


def _conservation(snap: Snapshot, found: Findings) -> tuple[np.ndarray, list[int]]:
    """Per step: users, pool, withdraws, exchange, inputs, drift and their difference."""
    zero = np.zeros(peg.PEG_SIZE, dtype=object)
    pool, wds, house = (snap.special.get(a, zero) for a in (POOL, WITHDRAWS, HOUSE))
    users = snap.cols - pool - wds - house
    ins = zero.copy()
    for key, rec in snap.inputs.items():
        vec = snap.vectors.get(("inputs", key))
        if vec is None or vec.shape != (peg.PEG_SIZE,):
            found.problem("input", f"input {key}: its fraction vector is missing or malformed")
            continue
        if (vec < 0).any() or int(vec.sum()) != int(rec.get("value", -1)):
            found.problem("input", f"input {key}: fractions sum to {int(vec.sum()):,d}, "
                                   f"value is {rec.get('value')!r}")
        ins = ins + vec.astype(object)
    drift = snap.vectors[DRIFT].astype(object) if DRIFT in snap.vectors else zero.copy()
    diff = users + pool + wds + house + drift - ins
    differing = [int(i) for i in np.flatnonzero(diff != 0)]
    for i in differing:
        d = int(diff[i])
        found.problem("conservation", f"step {i}: accounts hold {abs(d):,d} sat "
                                      f"{'more' if d > 0 else 'less'} than the registered "
                                      f"inputs")
    return np.stack([users, pool, wds, house, ins, drift, diff]), differing


def _accounts(snap: Snapshot, found: Findings, differing: list[int]) -> None:
    """No negative step or balance; liquid + reserve == the row's total."""
    names, view = snap.names, snap.view
    for i, step, value, count in snap.negative:
        found.problem("negative", f"account {names[i]!r}: step {step} is {value:,d} sat "
                                  f"({count} negative steps)")
    see = f" (see step {', '.join(map(str, differing[:5]))})" if differing else ""
    for i in np.flatnonzero((view < 0).any(axis=1)):
        found.problem("negative", f"account {names[i]!r}: negative balance (liquid "
                                  f"{int(view[i, 0]):,d}, reserve {int(view[i, 1]):,d})")
    published = view[:, 0].astype(object) + view[:, 1].astype(object)
    for i in np.flatnonzero(published != snap.totals):
        found.problem("balance", f"account {names[i]!r}: liquid + reserve = "
                                 f"{int(published[i]):,d} sat but its steps sum to "
                                 f"{int(snap.totals[i]):,d} sat{see}")


def _liquid(snap: Snapshot, found: Findings) -> tuple[int, int]:
    """Σ published liquid <= the exchange's liquid; returns both."""
    assigned = int(_exact_sum(snap.view[:, 0], 0))
    ex_liquid = int(snap.meta.get("totals", {}).get("liquid", 0))
    if assigned > ex_liquid:
        found.problem("liquid", f"accounts hold {assigned:,d} sat liquid, more than the "
                                f"exchange's liquid {ex_liquid:,d} sat")
    return assigned, ex_liquid


def _withdraws(snap: Snapshot, found: Findings) -> None:
    """The withdraws row is exactly the sum of the pending withdraws' deduction vectors."""
    zero = np.zeros(peg.PEG_SIZE, dtype=object)
    wds = snap.special.get(WITHDRAWS, zero)
    pending = zero.copy()
    for wid in snap.withdraws:
        vec = snap.vectors.get(("withdraws", wid))
        if vec is None:
            found.problem("withdraw", f"withdraw {wid}: its deduction vector is missing")
        else:
            pending = pending + vec.astype(object)
    for i in np.flatnonzero(pending != wds)[:1]:
        found.problem("withdraw", f"step {i}: the withdraws account holds {int(wds[i]):,d} "
                                  f"sat, the pending withdraws {int(pending[i]):,d} sat")


def _claims(snap: Snapshot, found: Findings) -> None:
    """Claims <=> inputs (a registered claim whose input left the set was spent on chain)."""
    for key, rec in snap.inputs.items():
        owner = rec.get("owner")
        if owner and owner != HOUSE:
            claim = snap.claims.get(key) or {}
            if claim.get("name") != owner or not claim.get("registered"):
                found.problem("claim", f"input {key} credited to {owner!r} has no registered "
                                       f"claim")
    for key, claim in snap.claims.items():
        if not claim.get("registered") and key in snap.inputs:
            found.problem("claim", f"input {key} is registered but its claim is not")
