"""The exchange's totals at any supply, from two per-supply tables instead of every input's
vector (issue #15: 100,000 inputs' vectors are 0.96 GB, and their figures at a new supply took
~3 s to work out).

What a recompute needs of the registered inputs (ORIGINAL §3.2, :func:`input_totals`) is
additive over inputs at every supply S:

* liquid − nfreeze and reserve + nfreeze are linear in the vectors: the sum of every
  registered input's vector (``SUM``, 1200 steps) gives them at any S;
* subpremium is Σ liquid(S) over inputs whose rating at S is below 200: each input adds its
  row of :func:`pegx.peg.subpremium_table` (0.25 ms per input, once, when it is registered)
  to ``SUB`` (one int64 per supply index), and takes it away when spent;
* frozen inputs count apart: the few with a ``frozen_until`` mark still in force are taken
  out again with their own figures (their vectors read back, figures cached per supply).

Both tables are vectors of the ``meta`` table in the State, so they are applied by the credit
and spend operations, checkpointed, replayed and digested like any other state; the audit
checks them against the vectors on disk. The result is exactly :func:`input_totals` (tests).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pegx import peg
from pegx.ledger.rules import FROZEN_GRACE

SUM = ("meta", "inputs_sum")  # Σ registered input vectors per step
SUB = ("meta", "inputs_sub")  # per supply index: Σ subpremium_table rows of registered inputs
CHUNK = 2048  # vectors stacked per vectorised call
NO_TOTALS = {"liquid": 0, "reserve": 0, "subpremium": 0, "frozen": 0}


def input_totals(inputs: dict, vectors: dict, supply: int, now: int,
                 cache: dict | None = None) -> dict:
    """Exchange totals {liquid, reserve, subpremium, frozen} over ``inputs`` (key -> record)
    whose vectors are ``vectors[("inputs", key)]``, input by input (ORIGINAL §3.2).

    Frozen inputs (or unfrozen less than 12 h ago) count as frozen. Otherwise the liquid part
    minus nfreeze (the ~3-step buffer) is liquid and the rest reserve; an input whose liquidity
    rating is below 200 adds its liquid to subpremium. ``cache`` (key -> (supply, liquid,
    reserve, nfreeze, subpremium)) keeps each input's figures until the supply moves. The
    reference the tables are held to, and what ``pegx recover`` uses on the chain's outputs.
    """
    cache = {} if cache is None else cache
    missing = [k for k in inputs if cache.get(k, (None,))[0] != supply]
    for at in range(0, len(missing), CHUNK):
        chunk = missing[at:at + CHUNK]
        stack = np.stack([vectors[("inputs", k)] for k in chunk])
        liquid, reserve, nf, sub = peg.figures(stack, supply)
        for j, k in enumerate(chunk):
            cache[k] = (supply, int(liquid[j]), int(reserve[j]), int(nf[j]), bool(sub[j]))
    t = dict(NO_TOTALS)
    for key, rec in inputs.items():
        _, liquid, reserve, nf, sub = cache[key]
        if is_frozen(rec, now):
            t["frozen"] += liquid + reserve
            continue
        t["liquid"] += liquid - nf
        t["reserve"] += reserve + nf
        if sub:
            t["subpremium"] += liquid
    return t


def is_frozen(rec: dict, now: int) -> bool:
    """Does input record ``rec`` count as frozen at ``now`` (its mark, plus 12 h of grace)?"""
    until = rec.get("frozen_until", 0)
    return bool(until) and until > now - FROZEN_GRACE


def tables_of(vectors: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(SUM, SUB) of a set of input vectors, worked out CHUNK at a time (a migration from
    format 2 and the audit)."""
    total = np.zeros(peg.PEG_SIZE, dtype=np.int64)
    sub = np.zeros(peg.SUPPLIES, dtype=np.int64)
    batch: list[np.ndarray] = []
    for vec in vectors:
        batch.append(vec)
        if len(batch) == CHUNK:
            total, sub = _add_batch(total, sub, batch)
            batch = []
    if batch:
        total, sub = _add_batch(total, sub, batch)
    return total, sub


def _add_batch(total, sub, batch):
    stack = np.stack(batch)
    return total + stack.sum(axis=0), sub + peg.subpremium_table(stack).sum(axis=0)


def totals(total: np.ndarray | None, sub: np.ndarray | None, frozen: dict, supply: int,
           now: int, vector_of, cache: dict) -> dict:
    """Exchange totals at ``supply`` from the tables (None: no input registered), taking out
    the inputs of ``frozen`` (key -> record of every input with a frozen_until mark) that
    count as frozen at ``now``; ``vector_of(key)`` reads a vector, ``cache`` holds their
    figures per supply. Equal to :func:`input_totals` over every registered input."""
    t = dict(NO_TOTALS)
    if total is None:
        return t
    hi = min(supply + peg.NFREEZE_STEPS, peg.LAST_STEP)
    nf = int(total[supply:hi].sum()) if hi > supply else 0
    t["liquid"] = int(total[supply:].sum()) - nf
    t["reserve"] = int(total[:supply].sum()) + nf
    t["subpremium"] = int(sub[supply])
    held = {k: rec for k, rec in frozen.items() if is_frozen(rec, now)}
    if not held:
        return t
    vectors = {("inputs", k): vector_of(k) for k in held
               if cache.get(k, (None,))[0] != supply}
    apart = input_totals(held, vectors, supply, now, cache)  # all of it frozen
    figs = [cache[k] for k in held]
    t["liquid"] -= sum(liquid - nf for _, liquid, _, nf, _ in figs)
    t["reserve"] -= sum(reserve + nf for _, _, reserve, nf, _ in figs)
    t["subpremium"] -= sum(liquid for _, liquid, _, _, sub in figs if sub)
    t["frozen"] = apart["frozen"]
    return t
