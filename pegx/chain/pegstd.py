"""The BitBay node's spend rule, exactly: ``CalculateStandardFractions`` plus ``GetMinFee``.

Pure (numpy + stdlib): given the supply index, the inputs (address + 1200-step fraction
vector) and the outputs (address or OP_RETURN data, value), :func:`verdict` says what a BitBay
node at bitbay-core 3d39e0a says: a rejection with the node's cause text, or every output's
fractions, its ``NOTARY_F`` (frozen) flag and the fee's fractions. The devnet applies it to
every spend; the withdraw builder can check a plan with it before broadcasting.
``tests/chain/test_pegstd_vectors.py`` holds it to the node's answers on 3,000 golden transactions
(``shared/reference/vectors``, whose README names the node's steps referred to below).

Written from reading the node (``src/peg/pegstd.cpp``, ``CFractions`` in
``src/peg/pegfractions.cpp``, ``RatioPart`` in ``src/peg/pegdata.cpp``, ``GetMinFee`` in
``src/main.cpp``); no node code is copied. The node's rule in short:

1. Input pass. Each input's reserve (steps < S) joins a reserve pool for its address, its
   liquidity (steps >= S) one common pool. An OP_RETURN output at the index of an input whose
   data starts with ``**F**`` is that input's freeze notary: the text after it is split on
   ``:`` and each part read as C ``strtol(part, 0)`` (hex ``0x1``, octal ``010``, a leading
   space or sign, trailing junk all pass; no digit, an index >= the output count or the
   notary's own index refuse the transaction). Every listed output is marked frozen and
   remembers the address of the last input naming it. A list of two or more parts switches the
   whole transaction to shared freezing; so does a single ``**F**a`` whose *own input's*
   reserve is below output a's value. Otherwise (single, enough) output a takes its value out
   of that address's pool right away, before any output is filled.
2. Output pass, strictly by output index, each output taking from the pools as they stand:
   a frozen output under shared freezing that is still empty takes reserve from its notary's
   address, then from the other input addresses in sorted order, then liquidity; with exactly
   two frozen outputs in the transaction named by one two-part list, the lower one only takes
   its proportional share of that address's reserve (``RatioPart``) when the reserve is short
   of both values (fair escrow split). A non-frozen output to an input address takes that
   address's reserve first; to the burn address or any OP_RETURN but ``**Z**``, reserve of
   every input address in sorted order first; anything else takes liquidity only. What no
   output took is the fee. An output that cannot be filled ends the pass; the node then
   reports the fee-total mismatch (``P-G-3``), not the ``P-O-*`` cause.
3. ``GetMinFee`` (as ``AcceptToMemoryPool`` applies it): fee >= max(5000 × (inputs +
   outputs), 10000 × (1 + bytes / 1000)).

Every move is the node's ``MoveRatioPartTo``: per step ``floor(f[i] × part / total)``, exact
(the node switches to 128-bit products on int64 overflow; here Python integers), then the units
still missing one each from the source's first non-zero step upward, over steps that still hold
something, wrapping until the part is complete.

Not modelled (:func:`verdict` refuses them with cause ``pegstd: ...``; pegx never builds
them): ``**V**``, ``**L**`` and ``**C**`` notaries at an input's index (voluntary freeze,
liquidity freeze, cold coins) and inputs carrying notary flags (frozen inputs are the caller's
check: the devnet refuses them before this rule runs, as the node's ``P-I-4`` does).

Over 400 lines (~405): one rule of the node, kept in one module so that it reads against
the node's source step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pegx.chain.base import TxOut
from pegx.peg import INT64_MAX, PEG_SIZE

BURN_ADDRESS = "bJnV8J5v74MGctMyVSVPfGu1mGQ9nMTiB3"
FEE_PER_IO = 5000  # PEG_MAKETX_FEE_INP_OUT
MIN_TX_FEE = 10000  # MIN_TX_FEE = MIN_RELAY_TX_FEE, per started 1000 bytes
P2PKH_INPUT_BYTES = 148  # a signed P2PKH input (the vectors' byte estimate)
F_PREFIX = b"**F**"
Z_PREFIX = b"**Z**"
UNMODELLED = (b"**V**", b"**L**", b"**C**")

_HEX = "0123456789abcdef"

Input = tuple[str, np.ndarray]


@dataclass
class Verdict:
    """The node's answer on one transaction.

    ``ok``: accepted into the mempool. ``cause``: the node's own text when refused (``""``
    when accepted); ``detail``: what went wrong first, for a human (an unfillable output is
    named here, while the node's cause reads ``P-G-3``). ``peg_ok``: the peg rule accepted and
    only the minimum fee refused. ``fractions``/``frozen``: per output (empty when the peg rule
    refused). ``fee`` = Σ inputs − Σ outputs; ``fee_fractions`` where it came from.
    """

    ok: bool
    cause: str = ""
    detail: str = ""
    peg_ok: bool = False
    fractions: list[np.ndarray] = field(default_factory=list)
    frozen: list[bool] = field(default_factory=list)
    fee: int = 0
    fee_fractions: np.ndarray | None = None
    min_fee: int = 0


# ---------------------------------------------------------------------------- arithmetic


def ratio(value: int, part: int, total: int) -> int:
    """The node's scalar ``RatioPart``: floor(value × part / total), 0 if part or total is 0."""
    if part == 0 or total == 0:
        return 0
    return value * part // total


def _scaled(vec: np.ndarray, part: int, total: int) -> np.ndarray:
    """floor(vec[i] × part / total) per step, exact for non-negative ``vec``.

    int64 where the product fits, exact Python integers for the steps where it would not (the
    node's 128-bit branch gives the same floor)."""
    limit = INT64_MAX // part
    big = vec > limit
    if not big.any():
        return vec * part // total
    out = np.where(big, 0, vec) * part // total
    at = np.flatnonzero(big)
    out[at] = [int(v) * part // total for v in vec[at].tolist()]
    return out


def move_ratio_part(src: np.ndarray, dst: np.ndarray, value: int) -> int:
    """The node's ``MoveRatioPartTo``: move ``value`` sat out of ``src`` into ``dst`` in place.

    Moves everything when ``src`` holds ``value`` or less; returns the amount not moved.
    ``src`` must be non-negative (every pool built from chain outputs is).
    """
    total = int(src.sum())
    if total == 0:
        return value
    if value == 0:
        return 0
    if value >= total:
        dst += src
        src[:] = 0
        return value - total
    first = int(np.flatnonzero(src)[0])  # the node's adjust_from
    part = _scaled(src, value, total)
    src -= part
    dst += part
    short = value - int(part.sum())
    while short > 0:  # one unit per step that still holds something, upward, wrapping
        room = np.flatnonzero(src[first:] > 0) + first
        if room.size == 0:
            raise ValueError("move_ratio_part: source ran dry (negative fractions?)")
        pick = room[:short]
        src[pick] -= 1
        dst[pick] += 1
        short -= int(pick.size)
    return 0


def strtol0(text: bytes) -> int | None:
    """C ``strtol(text, &end, 0)`` in the C locale; None when it converts no digit.

    Stops at a NUL (the node passes ``c_str()``); out-of-range values clamp as strtol does.
    """
    text = text.split(b"\0", 1)[0]
    i, n = 0, len(text)
    while i < n and text[i] in b" \t\n\v\f\r":
        i += 1
    sign = 1
    if i < n and text[i] in b"+-":
        sign = -1 if text[i] == ord("-") else 1
        i += 1
    base = 10
    if i < n and text[i] == ord("0"):
        base = 8
        if i + 2 < n and text[i + 1] in b"xX" and chr(text[i + 2]).lower() in _HEX:
            base, i = 16, i + 2
    digits = _HEX[:base]
    j = i
    while j < n and chr(text[j]).lower() in digits:
        j += 1
    if j == i:
        return None
    value = sign * int(text[i:j].decode(), base)
    return max(-(1 << 63), min(INT64_MAX, value))


def tx_bytes(n_inputs: int, outputs: Sequence[TxOut]) -> int:
    """Estimated size of the signed transaction (148 bytes per P2PKH input, as the vectors)."""

    def varint(n: int) -> int:
        return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5

    size = 4 + 4 + 4 + varint(n_inputs) + varint(len(outputs))  # version, time, locktime
    size += P2PKH_INPUT_BYTES * n_inputs
    for out in outputs:
        if out.data is None:
            script = 25
        else:
            ln = len(out.data)
            script = 1 + (1 if ln < 76 else 2 if ln < 256 else 3) + ln
        size += 8 + varint(script) + script
    return size


def min_fee(n_inputs: int, outputs: Sequence[TxOut]) -> int:
    """``GetMinFee`` for relay: max(5000 × (inputs + outputs), 10000 × (1 + bytes // 1000))."""
    by_size = MIN_TX_FEE * (1 + tx_bytes(n_inputs, outputs) // 1000)
    return max(by_size, FEE_PER_IO * (n_inputs + len(outputs)))


# ---------------------------------------------------------------------------- the rule


@dataclass
class _Frozen:
    """An output a ``**F**`` notary names (the node's ``FrozenTxOut``)."""

    value: int
    address: str = ""
    fractions: np.ndarray | None = None
    fair: tuple[int, int] | None = None  # (lower, higher) of a two-part list


def _zeros() -> np.ndarray:
    return np.zeros(PEG_SIZE, dtype=np.int64)


class _Refused(Exception):
    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(cause)
        self.cause, self.detail = cause, detail or cause


def _what(pos: int, out: TxOut) -> str:
    dest = "OP_RETURN" if out.data is not None else f"to {out.address}"
    return f"output {pos} ({dest}, {out.value:,d} sat)"


def _input_pass(supply: int, inputs: Sequence[Input], outputs: Sequence[TxOut]):  # noqa: C901, PLR0912 (follows the node's peg input loop step by step, BITBAYD.md)
    """Pools, frozen outputs and the shared-freeze switch after the node's input pass."""
    reserves: dict[str, np.ndarray] = {}
    liquidity = _zeros()
    liquid_total = 0
    frozen: dict[int, _Frozen] = {}
    freeze_all = False
    n_out = len(outputs)
    for i, (address, vec) in enumerate(inputs):
        if vec.shape != (PEG_SIZE,) or (vec < 0).any():
            raise ValueError(f"input {i}: want {PEG_SIZE} non-negative fractions")
        pool = reserves.setdefault(address, _zeros())
        pool[:supply] += vec[:supply]
        reserve_in = int(vec[:supply].sum())
        liquidity[supply:] += vec[supply:]
        liquid_total += int(vec[supply:].sum())
        data = outputs[i].data if i < n_out else None
        if data is None:
            continue
        if data.startswith(UNMODELLED):
            raise _Refused(f"pegstd: {data[:5].decode()} notaries are not modelled",
                           f"output {i}: {data[:5].decode()} notaries are not modelled by pegx")
        if not data.startswith(F_PREFIX):
            continue
        parts = data[len(F_PREFIX):].split(b":")
        named = []
        for part in parts:
            idx = strtol0(part)
            if idx is None or not 0 <= idx < n_out:
                raise _Refused("P-I-N-3: Freeze notary: not convertible to output index",
                               f"**F** notary at output {i}: {part!r} is not an output index "
                               f"(0..{n_out - 1})")
            if idx == i:
                raise _Refused("P-I-N-4: Freeze notary: output refers itself",
                               f"**F** notary at output {i} names itself")
            slot = frozen.setdefault(idx, _Frozen(outputs[idx].value))
            slot.value, slot.address = outputs[idx].value, address  # the last naming input wins
            named.append(idx)
        if len(parts) > 1:
            freeze_all = True
        if len(named) == 2:
            lo, hi = sorted(named)
            frozen[lo].fair = (lo, hi)
        if len(named) == 1:
            value = outputs[named[0]].value
            if reserve_in < value:  # only this input's own reserve counts
                freeze_all = True
            elif len(parts) == 1:
                slot = frozen[named[0]]
                got = _zeros()
                move_ratio_part(pool, got, value)
                slot.fractions = got if slot.fractions is None else slot.fractions + got
    return reserves, liquidity, liquid_total, frozen, freeze_all


def _take_reserves(reserves: dict[str, np.ndarray], order: Sequence[str], dst: np.ndarray,
                   want: int) -> int:
    """Take up to ``want`` reserve from the address pools in ``order``; return what is taken."""
    taken = 0
    for address in order:
        pool = reserves.get(address)
        if want == 0:
            break
        if pool is None:
            continue
        have = int(pool.sum())
        if have == 0:
            continue
        t = min(want, have)
        move_ratio_part(pool, dst, t)
        want -= t
        taken += t
    return taken


def standard_fractions(supply: int, inputs: Sequence[Input], outputs: Sequence[TxOut]) -> Verdict:  # noqa: C901, PLR0912, PLR0915 (follows the node's STD fraction rule step by step, BITBAYD.md)
    """The node's ``CalculateStandardFractions`` alone (no minimum-fee rule): see the module doc.

    ``inputs``: (address, fraction vector) per input, in transaction order; ``outputs``: the
    transaction's outputs in order. The vectors are not modified.
    """
    inputs = [(a, np.asarray(v, dtype=np.int64)) for a, v in inputs]
    try:
        reserves, liquidity, common, frozen, freeze_all = _input_pass(supply, inputs, outputs)
    except _Refused as exc:
        return Verdict(False, exc.cause, exc.detail)
    result: list[np.ndarray] = []
    marks: list[bool] = []
    value_out = 0
    cause = detail = ""
    for i, out in enumerate(outputs):
        value_out += out.value
        got = _zeros()
        slot = frozen.get(i)
        left, step = 0, "P-O-1"
        if slot is not None:  # named by a **F** notary: frozen whatever it holds
            marks.append(True)
            if slot.fractions is not None and (not freeze_all or int(slot.fractions.sum()) > 0):
                got = slot.fractions.copy()  # filled in the input pass
            elif freeze_all:
                step = "P-O-1"
                order = [slot.address] + sorted(a for a in reserves if a != slot.address)
                want = out.value
                if slot.fair is not None and slot.fair[0] == i and len(frozen) == 2:
                    v1, v2 = frozen[slot.fair[0]].value, frozen[slot.fair[1]].value
                    r = int(reserves[slot.address].sum())
                    if r <= v1 + v2 and v1 + v2 > 0:  # fair escrow: only its share of reserve
                        s1, s2 = ratio(r, v1, v1 + v2), ratio(r, v2, v1 + v2)
                        want = s1 + (r - s1 - s2)
                left = out.value - _take_reserves(reserves, order, got, want)
        else:
            marks.append(False)
            left = out.value
            if out.data is None and out.address in reserves:
                step = "P-O-2"
                left -= _take_reserves(reserves, [out.address], got, left)
            elif out.address == BURN_ADDRESS or (
                out.data is not None and not out.data.startswith(Z_PREFIX)
            ):
                step = "P-O-3"
                left -= _take_reserves(reserves, sorted(reserves), got, left)
            else:
                step = "P-O-4"
        if left > common:
            # the node stops here; its fee-total check below then overwrites this cause
            cause = f"{step}: No liquidity left"
            hint = ""
            if step == "P-O-4":
                hint = " (reserve can only return to its own address or move under a **F** notary)"
            detail = f"{_what(i, out)} is short by {left - common:,d} sat: no liquidity left{hint}"
            result.append(got)
            break
        if left > 0:
            move_ratio_part(liquidity, got, left)
            common -= left
        result.append(got)
    if not cause:
        for i, (out, got) in enumerate(zip(outputs, result)):
            if int(got.sum()) != out.value or (got < 0).any():
                cause = f"P-G-2: Total mismatch on output {i}"
                detail = f"{_what(i, out)} was filled with {int(got.sum()):,d} sat"
                break
    fee = sum(int(v.sum()) for _, v in inputs) - value_out
    fee_vec = liquidity.copy()
    for pool in reserves.values():
        fee_vec += pool
    if fee != int(fee_vec.sum()):
        cause = f"P-G-3: Total mismatch on fee fractions {fee} vs {int(fee_vec.sum())}"
        detail = detail or (f"outputs ({value_out:,d} sat) exceed inputs" if fee < 0 else cause)
    if (fee_vec < 0).any():
        cause = "P-G-4: Non-positive fee fractions"
        detail = detail or cause
    if cause:
        return Verdict(False, cause, detail)
    return Verdict(True, peg_ok=True, fractions=result, frozen=marks, fee=fee,
                   fee_fractions=fee_vec)


def verdict(supply: int, inputs: Sequence[Input], outputs: Sequence[TxOut]) -> Verdict:
    """Would the node accept this transaction into its mempool? The peg rule, then the fee rule.

    A refusal by the fee rule keeps ``peg_ok`` True and the computed fractions.
    """
    v = standard_fractions(supply, inputs, outputs)
    v.min_fee = min_fee(len(inputs), outputs)
    if v.ok and v.fee < v.min_fee:
        v.ok = False
        n_in, n_out = len(inputs), len(outputs)
        if v.min_fee == FEE_PER_IO * (n_in + n_out):
            why = f"{FEE_PER_IO} x {n_in} inputs + {n_out} outputs"
        else:
            why = f"{MIN_TX_FEE} x (1 + {tx_bytes(n_in, outputs)} bytes / 1000)"
        v.cause = f"GetMinFee: fee {v.fee} < {v.min_fee} ({why})"
        v.detail = (f"fee {v.fee:,d} sat is below the node's minimum {v.min_fee:,d} sat "
                    f"({why})")
    return v
