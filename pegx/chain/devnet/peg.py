"""Peg rules the devnet applies to every spend (BITBAYD §1.8-§1.9, simplified but real).

Pure functions: given the spent outputs' fraction vectors, the outputs and the supply index,
work out every output's fraction vector, which outputs get frozen, and the fee; or raise
ChainRejected with a reason a human can act on. ``devnet.py`` owns the chain state; this module
only knows vectors.

The rules, in the order they are applied:

1. Each input is split at the supply S: steps < S go to a reserve pool **per input address**,
   steps >= S to one common liquidity pool.
2. ``**F**`` notaries: an OP_RETURN output at index i (i < number of inputs) whose data starts
   with ``b"**F**"`` moves the reserve pool of input i's address into the listed outputs
   (``**F**a``, ``**F**a:b``, ``**F**a:b:c...``), at most what those outputs still need,
   shared in proportion to their values. The listed outputs are frozen for 30 days.
3. Outputs are then filled in index order with what they still need: an output paying one of
   the inputs' addresses takes from that address's reserve pool first, then from liquidity;
   an OP_RETURN output (id / notary, 5575 or 5590) takes from the reserve pools in sorted
   address order, then from liquidity; any other output takes liquidity only.
4. What is left in the pools is the fee; it must be >= 5000 per input and output.

Every move uses the node's proportional rounding, :func:`ratio_part`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pegx.chain.base import MIN_FEE_PER_IO, ChainRejected, TxOut
from pegx.peg import PEG_SIZE

F_PREFIX = b"**F**"
FREEZE_SECONDS = 30 * 24 * 3600  # NOTARY_F locks for nPegFrozenTime: 30 days on mainnet
MAX_F_TARGETS = 50  # the original refused longer `**F**` lists
_INT64_MAX = (1 << 63) - 1


def _floor_share(vec: np.ndarray, part: int, total: int) -> np.ndarray:
    """trunc(vec[i] * part / total) for every step, exactly (Python ints when int64 overflows)."""
    top = int(vec.max()) if vec.size else 0
    if top == 0 or part == 0:
        return np.zeros_like(vec)
    if top <= _INT64_MAX // part:
        return vec * part // total
    return np.array([v * part // total for v in vec.tolist()], dtype=np.int64)


def ratio_part(vec: np.ndarray, part: int) -> np.ndarray:
    """The slice of ``vec`` worth exactly ``part``, with the node's rounding (BITBAYD §1.8).

    ``slice[i] = trunc(vec[i] * part / total)``, then the shortfall is added one unit at a time
    from the first non-zero step upward, skipping steps that are exhausted, wrapping around
    until the slice totals ``part``. ``vec`` must be non-negative and hold at least ``part``.
    """
    part = int(part)
    total = int(vec.sum())
    if part < 0 or part > total:
        raise ValueError(f"cannot take {part:,d} sat from a vector of {total:,d} sat")
    if part == total:
        return vec.copy()
    out = _floor_share(vec, part, total)
    short = part - int(out.sum())
    while short > 0:
        room = np.flatnonzero(vec - out > 0)  # ascending: the first non-zero step comes first
        pick = room[:short]
        out[pick] += 1
        short -= int(pick.size)
    return out


def parse_f_notation(data: bytes, pos: int, n_outputs: int) -> list[int]:
    """The output indices a ``**F**`` notary at output ``pos`` lists, duplicates removed.

    Accepted forms (ORIGINAL §4.2): ``**F**a``, ``**F**a:b`` (a != b) and ``**F**a:b:c...``
    (at most 50 indices; repeats allowed, as the exchange writes ``**F**s:s:s`` for one
    recipient). Every index must be a real output other than the notary itself.
    """
    text = data[len(F_PREFIX) :]
    try:
        parts = text.decode("ascii").split(":")
    except UnicodeDecodeError:
        raise ChainRejected(f"**F** notary at output {pos}: notation is not ASCII") from None
    if not all(p.isdigit() for p in parts):
        raise ChainRejected(
            f"**F** notary at output {pos}: bad notation {data!r} "
            "(want **F**a, **F**a:b or **F**a:b:c...)"
        )
    idx = [int(p) for p in parts]
    if len(idx) > MAX_F_TARGETS:
        raise ChainRejected(
            f"**F** notary at output {pos} lists {len(idx)} outputs (max {MAX_F_TARGETS})"
        )
    if len(idx) == 2 and idx[0] == idx[1]:
        raise ChainRejected(f"**F** notary at output {pos}: a:b notation with a == b ({idx[0]})")
    for i in idx:
        if i >= n_outputs:
            raise ChainRejected(
                f"**F** notary at output {pos} lists output {i}, which does not exist"
            )
        if i == pos:
            raise ChainRejected(f"**F** notary at output {pos} lists itself")
    return list(dict.fromkeys(idx))


@dataclass
class PegResult:
    """Outcome of a valid spend: a vector per output, which outputs freeze, and the fee."""

    fractions: list[np.ndarray]
    frozen: list[bool]
    fee: int


def _take(pool: np.ndarray, dst: np.ndarray, amount: int) -> int:
    """Move up to ``amount`` from ``pool`` into ``dst`` proportionally; return what is missing."""
    have = int(pool.sum())
    got = min(have, amount)
    if got > 0:
        piece = ratio_part(pool, got)
        pool -= piece
        dst += piece
    return amount - got


def apply_peg_rules(
    inputs: Sequence[tuple[str, np.ndarray]], outputs: Sequence[TxOut], supply: int
) -> PegResult:
    """Assign fractions to ``outputs`` of a spend of ``inputs`` ((address, fractions) pairs).

    Raises ChainRejected naming the output and the shortfall when an output cannot be filled
    under the rules above, or when the fee is below 5000 sat per input and output.
    """
    n_in, n_out = len(inputs), len(outputs)
    reserve: dict[str, np.ndarray] = {}
    liquid = np.zeros(PEG_SIZE, dtype=np.int64)
    for address, vec in inputs:
        pool = reserve.setdefault(address, np.zeros(PEG_SIZE, dtype=np.int64))
        pool[:supply] += vec[:supply]
        liquid[supply:] += vec[supply:]
    got = [np.zeros(PEG_SIZE, dtype=np.int64) for _ in range(n_out)]
    frozen = [False] * n_out

    # Rule 2: **F** notaries move their input address's reserve into the listed outputs.
    for pos, out in enumerate(outputs):
        if out.data is None or not out.data.startswith(F_PREFIX):
            continue
        if pos >= n_in:
            raise ChainRejected(
                f"**F** notary at output {pos} has no input {pos} to take reserve from"
            )
        targets = parse_f_notation(out.data, pos, n_out)
        for t in targets:
            if outputs[t].address is None:
                raise ChainRejected(f"**F** notary at output {pos} lists output {t}, an OP_RETURN")
            frozen[t] = True
        pool = reserve[inputs[pos][0]]
        needs = [outputs[t].value - int(got[t].sum()) for t in targets]
        want = sum(needs)
        take = min(int(pool.sum()), want)
        if take <= 0:
            continue
        # shares in proportion to what each listed output still needs, units left by the
        # floors go to the listed outputs in order (never above their need)
        shares = [take * n // want for n in needs]
        left = take - sum(shares)
        for k in range(len(targets)):
            if left == 0:
                break
            if shares[k] < needs[k]:
                shares[k] += 1
                left -= 1
        for t, share in zip(targets, shares):
            if share > 0:
                _take(pool, got[t], share)

    # Rule 3: fill every output, in order, with what it still needs.
    input_addresses = set(reserve)
    for pos, out in enumerate(outputs):
        need = out.value - int(got[pos].sum())
        if need <= 0:
            continue
        if out.data is not None:
            for address in sorted(reserve):
                need = _take(reserve[address], got[pos], need)
        elif out.address in input_addresses:
            need = _take(reserve[out.address], got[pos], need)
        need = _take(liquid, got[pos], need)
        if need > 0:
            what = "OP_RETURN" if out.data is not None else f"to {out.address}"
            hint = (
                ""
                if out.address in input_addresses
                else (" (reserve can only return to its own address or move under a **F** notary)")
            )
            raise ChainRejected(
                f"output {pos} ({what}, {out.value:,d} sat) is short by {need:,d} sat{hint}"
            )

    fee = int(liquid.sum()) + sum(int(p.sum()) for p in reserve.values())
    minimum = MIN_FEE_PER_IO * (n_in + n_out)
    if fee < minimum:
        raise ChainRejected(
            f"Fees are below the 5000 satoshis per input/output minimum. "
            f"(fee {fee:,d} sat, need {minimum:,d} sat for {n_in} inputs and {n_out} outputs)"
        )
    return PegResult(got, frozen, fee)
