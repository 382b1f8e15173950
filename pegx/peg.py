"""Pure peg math: fraction vectors, liquid/reserve split, nfreeze, rating, proportional moves.

Every coin amount is cut into PEG_SIZE fractions ("steps"). At supply index S, steps < S are
reserve and steps >= S are liquid (DESIGN §1, BITBAYD §1.3-§1.4, ORIGINAL §4).

Vectors are numpy int64 arrays of length PEG_SIZE. Values fit int64 (total BAY supply is about
1e17 satoshi), but products such as ``f[i] * amount`` do not, so every share is computed with
exact Python integers whenever an int64 product could overflow. No floats touch an amount.
"""

from __future__ import annotations

import bisect

import numpy as np

PEG_SIZE = 1200
PEG_RATE = 100
MAX_SUPPLY_INDEX = 1198
LAST_STEP = PEG_SIZE - 1
NFREEZE_STEPS = 3  # a 1-3 step move of the supply can freeze steps S..S+2
FUTURE_STEPS = 21  # the original's contractbuffer
SUBPREMIUM_RATING = 200
INT64_MAX = (1 << 63) - 1

LIQUID = "liquid"
RESERVE = "reserve"
STYLES = (LIQUID, RESERVE)


class PegError(ValueError):
    """A peg computation was asked something impossible (bad style, short funds, bad index)."""


def zeros() -> np.ndarray:
    """A fresh all-zero fraction vector."""
    return np.zeros(PEG_SIZE, dtype=np.int64)


def check_supply(supply: int) -> int:
    """Validate a supply index (0..MAX_SUPPLY_INDEX) and return it as an int."""
    if isinstance(supply, bool) or not isinstance(supply, (int, np.integer)):
        raise PegError(f"supply index must be an int, got {type(supply).__name__}")
    if not 0 <= supply <= MAX_SUPPLY_INDEX:
        raise PegError(f"supply index {supply} outside 0..{MAX_SUPPLY_INDEX}")
    return int(supply)


def check_style(style: str) -> str:
    """Validate a trade style ('liquid' or 'reserve')."""
    if style not in STYLES:
        raise PegError(f"style must be 'liquid' or 'reserve', got {style!r}")
    return style


def std_spread(value: int) -> np.ndarray:
    """The STD spread of a fresh amount: f[i] = left // 100 for i < 1199, f[1199] = the rest.

    1e11 gives 1000000000, 990000000, 980100000, ... and 584300 at the last step; the sum is
    exactly ``value``.
    """
    value = int(value)
    if value < 0:
        raise PegError(f"cannot spread a negative amount ({value})")
    out = [0] * PEG_SIZE
    left = value
    for i in range(LAST_STEP):
        f = left // PEG_RATE
        out[i] = f
        left -= f
        if left < PEG_RATE:  # every later share is 0: the tail goes to the last step
            break
    out[LAST_STEP] = left
    return np.array(out, dtype=np.int64)


def reserve_of(vec: np.ndarray, supply: int) -> int:
    """Σ steps < supply (the reserve part)."""
    return int(vec[:supply].sum())


def liquid_of(vec: np.ndarray, supply: int) -> int:
    """Σ steps >= supply (the liquid part)."""
    return int(vec[supply:].sum())


def split(vec: np.ndarray, supply: int) -> tuple[int, int]:
    """(liquid, reserve) of a vector at a supply index."""
    return liquid_of(vec, supply), reserve_of(vec, supply)


def _window(vec: np.ndarray, supply: int, width: int) -> int:
    """Σ steps supply..supply+width-1, the last step (1199) excluded as in FutureFreeze."""
    hi = min(supply + width, LAST_STEP)
    return int(vec[supply:hi].sum()) if hi > supply else 0


def nfreeze(vec: np.ndarray, supply: int) -> int:
    """Liquid that the next 1-3 step deflation may freeze: Σ steps S..S+2, step 1199 excluded.

    Decided (PegAPI.md, "Peg math next to the node"): at S >= 1196 this is Σ steps S..1198,
    not cut at the network's last supply index 1198. That is the original's FutureFreeze and
    the node's own buffer-3 exchange peg (CPegLevel: min(S + 3, 1199)).
    """
    return _window(vec, supply, NFREEZE_STEPS)


def future(vec: np.ndarray, supply: int) -> int:
    """Σ steps S..S+20, step 1199 excluded (the original's `future`)."""
    return _window(vec, supply, FUTURE_STEPS)


def rating(vec: np.ndarray, supply: int) -> list:
    """The original's rateliquidity (ORIGINAL §4.3) as [score, d1, c1, d2, c2, ...] (18 periods).

    Walking the liquid steps upward, each time the cumulative share of the liquid crosses
    10 %, 20 %, ... 90 % the distance to freezing (step - S) and the cumulative share are
    recorded. The score is Σ d_k * c_k over those pairs, computed exactly (the original used
    floats and could spin forever when fewer than 18 periods were found; short lists are padded
    with zeros here). The shares c_k are returned as floats for display; only the score is used.
    """
    supply = check_supply(supply)
    liquid = vec[supply:]
    total = int(liquid.sum())
    if total <= 0:
        return [0] + [0] * 18
    cum10 = np.cumsum(liquid) * 10  # <= 10 x total supply: fits int64
    # avg > 0.1 * m  <=>  10 * cum > m * total: the first offset where that holds, per m
    offsets = np.searchsorted(cum10, [m * total for m in range(1, 10)], side="right")
    pairs = [(int(d), int(cum10[d]) // 10) for d in offsets.tolist() if d < liquid.size]
    score = sum(d * c for d, c in pairs) // total
    flat: list = []
    for d, c in pairs:
        flat += [d, c / total]
    flat += [0] * (18 - len(flat))
    return [int(score)] + flat


def figures(mat: np.ndarray, supply: int) -> tuple[np.ndarray, ...]:
    """(liquid, reserve, nfreeze, subpremium) for every row of ``mat`` at once.

    ``subpremium`` is a bool per row: its liquidity rating (see :func:`rating`) is below 200.
    The rating's threshold crossings (10 * cum > k * T) are found with floats and every element
    within 1e-9 of a threshold is decided again with exact integers; the score's float sum is
    only trusted away from 200 (rows within 0.01 of it are recomputed exactly by
    :func:`rating`). Vectorised: ~20 ms per 2,048 full rows on the 2-core machines.
    """
    supply = check_supply(supply)
    n = mat.shape[0]
    liquid = mat[:, supply:].sum(axis=1)
    reserve = mat[:, :supply].sum(axis=1)
    hi = min(supply + NFREEZE_STEPS, LAST_STEP)
    nf = mat[:, supply:hi].sum(axis=1) if hi > supply else np.zeros(n, dtype=np.int64)
    sub = np.zeros(n, dtype=bool)
    live = np.flatnonzero(liquid > 0)
    if live.size == 0:
        return liquid, reserve, nf, sub
    cum = np.cumsum(mat[live, supply:], axis=1)
    total = cum[:, -1:]
    x = cum * (10.0 / total)  # the share in tenths
    q = np.floor(x)
    edge = np.abs(x - np.rint(x)) < 1e-9  # decide exactly: q >= k  <=>  10 * cum > k * total
    if edge.any():  # (10 * cum == k * total is not yet a crossing of k)
        r, c = np.nonzero(edge)
        q[r, c] = (cum[r, c] * 10 - 1) // total[r, 0]
    width = cum.shape[1]
    rows = np.arange(live.size)
    score = np.zeros(live.size)
    for k in range(1, 10):
        d = np.count_nonzero(q < k, axis=1)  # the first offset past k * 10 %
        ok = d < width
        at = cum[rows, np.minimum(d, width - 1)]
        score += np.where(ok, d * (at / total[:, 0]), 0.0)
    sub[live] = score < SUBPREMIUM_RATING
    for j in np.flatnonzero(np.abs(score - SUBPREMIUM_RATING) < 0.01).tolist():
        sub[live[j]] = rating(mat[live[j]], supply)[0] < SUBPREMIUM_RATING
    return liquid, reserve, nf, sub


# Σ_k d_k * c_k <= 9 * 1199 * T and 10 * P + 9 * T <= 19 * T: exact in int64 below this
_TABLE_SAFE = INT64_MAX // (10 * PEG_SIZE)
_TENTHS = np.arange(1, 10, dtype=np.int64)[:, None]  # the rating's 10 % ... 90 % crossings
SUPPLIES = MAX_SUPPLY_INDEX + 1  # a table per supply index has this many entries


def subpremium_table(mat: np.ndarray) -> np.ndarray:
    """For every row of ``mat`` and every supply index S: its liquid at S if its liquidity
    rating at S is below 200, else 0 (rows x SUPPLIES int64).

    What an input adds to the exchange's ``subpremium`` total at each supply, so a ledger can
    keep the per-supply sum of it and never look at the vectors again when the supply moves.
    Exactly ``rating(row, S)[0] < 200`` (a row with no liquid at S adds 0): with prefix sums
    P, the k-th crossing at S is the first m with 10 * P[m] > 10 * P[S] + k * (P[end] - P[S]),
    found by one binary search per (S, k), and the score's test Σ d_k * c_k < 200 * T is
    decided in int64 (rows of more than 7.7e14 sat: in Python ints). ~0.27 ms per row, most
    of it the 10,791 binary searches.
    """
    mat = np.atleast_2d(np.asarray(mat, dtype=np.int64))
    out = np.zeros((mat.shape[0], SUPPLIES), dtype=np.int64)
    if mat.shape[0] == 0:
        return out
    pre = np.zeros((mat.shape[0], PEG_SIZE + 1), dtype=np.int64)
    np.cumsum(mat, axis=1, out=pre[:, 1:])
    big = pre[:, -1] > _TABLE_SAFE
    rows = np.flatnonzero(~big)
    if rows.size:
        out[rows] = _table_int64(pre[rows])
    for r in np.flatnonzero(big).tolist():
        out[r] = _table_exact(pre[r])
    return out


_CROSSING = np.arange(1, SUPPLIES + 1)[None, :]  # S + 1: a crossing at m is d = m - S - 1


def _table_int64(pre: np.ndarray) -> np.ndarray:
    """subpremium_table's rows in int64, one row at a time (its 9 x 1199 temporaries stay in
    the CPU cache: 4x faster than stacking rows)."""
    out = np.empty((pre.shape[0], SUPPLIES), dtype=np.int64)
    for r in range(pre.shape[0]):
        p = pre[r]
        at = p[:SUPPLIES]  # P[S]
        total = p[-1] - at  # the liquid at S
        need = (10 * at)[None, :] + _TENTHS * total[None, :]
        m = np.searchsorted(p * 10, need.ravel(), side="right").reshape(need.shape)
        np.minimum(m, PEG_SIZE, out=m)  # no crossing only where the liquid is 0
        score = ((m - _CROSSING) * (p[m] - at[None, :])).sum(axis=0)
        out[r] = np.where((total > 0) & (score < SUBPREMIUM_RATING * total), total, 0)
    return out


def _table_exact(pre: np.ndarray) -> np.ndarray:
    """One row of subpremium_table in Python ints (a row too large for the int64 path)."""
    p = [int(x) for x in pre.tolist()]
    ten = [10 * x for x in p]
    end = p[-1]
    out = np.zeros(SUPPLIES, dtype=np.int64)
    for s in range(SUPPLIES):
        total = end - p[s]
        if total <= 0:
            continue
        score = 0
        for k in range(1, 10):
            m = min(bisect.bisect_right(ten, ten[s] + k * total), PEG_SIZE)
            score += (m - s - 1) * (p[m] - p[s])
        if score < SUBPREMIUM_RATING * total:
            out[s] = total
    return out


def _share(seg: np.ndarray, part: int, total: int) -> np.ndarray:
    """floor(seg[i] * part / total) for every i, exactly (int64 when safe, else Python ints)."""
    if part == total:
        return seg.copy()
    if part == 0 or total == 0:
        return np.zeros_like(seg)
    top = int(seg.max()) if seg.size else 0
    if top == 0:
        return np.zeros_like(seg)
    if top <= INT64_MAX // part:
        return seg * part // total
    return np.array([v * part // total for v in seg.tolist()], dtype=np.int64)


def _style_range(style: str, supply: int) -> tuple[int, int]:
    return (supply, PEG_SIZE) if style == LIQUID else (0, supply)


def _take_style(src: np.ndarray, out: np.ndarray, amount: int, style: str, supply: int) -> int:
    """Take up to ``amount`` from ``src`` steps of ``style`` into ``out``; return what is left.

    The original's order (ORIGINAL §3.1): a floor proportional share per step, then 1-unit
    remainders from the highest step of the style down (repeated passes), skipping steps that
    are exhausted. ``out`` is zero in the style's range (the two ranges do not overlap), so
    what is available is ``src`` itself. A Trade runs this under the ledger lock: few numpy
    calls (a small amount, whose shares are all 0, skips their arithmetic; ~10 us a call).
    """
    lo, hi = _style_range(style, supply)
    if hi <= lo or amount <= 0:
        return amount
    avail = src[lo:hi]  # a view: never written
    total = int(avail.sum())
    if total <= 0:
        return amount
    part = min(amount, total)
    if part == total:
        out[lo:hi] += avail
        return amount - total
    top = int(avail.max())
    if top * part < total:  # every floor share is 0: only the remainder units move
        room, owned = avail, False
    else:
        share = avail * part // total if top <= INT64_MAX // part else _share(avail, part,
                                                                              total)
        out[lo:hi] += share
        amount -= int(share.sum())
        room, owned = avail - share, True
    while amount > 0:
        idx = np.flatnonzero(room > 0)
        if idx.size == 0:
            break
        pick = idx[::-1][:amount]  # highest step first
        out[lo + pick] += 1
        amount -= int(pick.size)
        if amount > 0:
            if not owned:
                room, owned = room.copy(), True
            room[pick] -= 1
    return amount


def deduction(src: np.ndarray, amount: int, style: str, supply: int) -> np.ndarray:
    """The per-step vector a proportional move of ``amount`` in ``style`` takes from ``src``.

    Takes from the steps of the requested style in proportion, then remainder units from the
    highest step down, then overflows into the other style only if the style runs short.
    Decided (PegAPI.md): the node's MoveRatioPartTo places the remainder from the lowest
    non-zero step up instead (±1 sat per step, same total); pegx keeps the original's order so
    per-step ledgers stay those of the original exchange.
    Raises PegError when ``src`` holds less than ``amount`` in total.
    """
    check_style(style)
    supply = check_supply(supply)
    amount = int(amount)
    if amount <= 0:
        raise PegError(f"amount must be positive, got {amount}")
    out = np.zeros(PEG_SIZE, dtype=np.int64)
    left = _take_style(src, out, amount, style, supply)
    if left > 0:
        other = RESERVE if style == LIQUID else LIQUID
        left = _take_style(src, out, left, other, supply)
    if left > 0:
        raise PegError(f"not enough funds: short by {left:,d} sat")
    return out


def assign_balances(
    matrix: np.ndarray, supply: int, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Derive every account's (liquid, reserve) from the per-step ledger (DESIGN §1).

    ``matrix`` is accounts x PEG_SIZE. Steps below ``supply`` are reserve. Liquid is handed out
    from the top step down until ``budget`` (the exchange's real liquid) is used up; the step
    where it runs out is split pro rata with floor shares; everything else is reserve. The
    result does not depend on account order, assigns every unit (liquid + reserve == each row's
    total) and never hands out more liquid than the budget. Decided (PegAPI.md): the floors
    leave 1..users-1 sat of the partial step as reserve where the node's updatepegbalances,
    slicing the pool user after user, hands those units to whoever comes first; an
    order-independent result is worth those few satoshi.
    Returns (liquid, reserve, totals) as Python-int-safe int64 arrays.
    """
    supply = check_supply(supply)
    budget = max(0, int(budget))
    n = matrix.shape[0]
    totals = matrix.sum(axis=1)
    liquid = np.zeros(n, dtype=np.int64)
    if n == 0:
        return liquid, totals.copy(), totals
    steps = matrix.sum(axis=0)  # Σ over accounts per step (fits int64: < total supply)
    # cum[i] = Σ steps[i..PEG_SIZE-1]
    cum = np.cumsum(steps[::-1])[::-1]
    liq_steps = cum[supply:]
    # first step (from the top) whose cumulative total exceeds the budget
    over = np.flatnonzero(liq_steps > budget)
    if over.size == 0:
        cut = supply  # every liquid step fits inside the budget
        part_step = -1
    else:
        k = supply + int(over[-1])  # the highest step whose cumulative total exceeds it
        cut = k + 1
        part_step = k
    if cut < PEG_SIZE:
        liquid += matrix[:, cut:].sum(axis=1)
    if part_step >= 0:
        above = int(cum[cut]) if cut < PEG_SIZE else 0
        part = budget - above
        col = matrix[:, part_step]
        liquid += _share(col, part, int(steps[part_step]))
    reserve = totals - liquid
    return liquid, reserve, totals
