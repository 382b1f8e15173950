"""pegx.chain.pegstd's pieces: the node's MoveRatioPartTo, strtol, GetMinFee, refusals.

The whole rule is held to the node's answers in test_pegstd_vectors.py; these pin the parts
the vectors reach only indirectly (the 128-bit branch, the remainder loop's wrap, the byte
part of the minimum fee, what pegstd does not model).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from pegx.chain import pegstd
from pegx.chain.base import TxOut
from pegx.peg import PEG_SIZE, std_spread

A = "B5hMh125aJyts7gQ3G8XNK2ZFgtt7Uf3hC"
B = "B7dA9zEkKuYXcFWnT8iGPLV7vEvtKdsTmY"


def node_move(src: list[int], value: int) -> tuple[list[int], list[int], int]:
    """MoveRatioPartTo step by step in plain Python integers, as the node's loop reads."""
    src = list(src)
    total = sum(src)
    if total == 0:
        return src, [0] * len(src), value
    if value == 0:
        return src, [0] * len(src), 0
    if value >= total:
        return [0] * len(src), src, value - total
    dst = [0] * len(src)
    first = next(i for i, v in enumerate(src) if v)
    for i, v in enumerate(src):
        vp = v * value // total
        dst[i] += vp
        src[i] -= vp
    short = value - sum(dst)
    idx = first
    while short > 0:
        if src[idx] > 0:
            short -= 1
            dst[idx] += 1
            src[idx] -= 1
        idx += 1
        if idx >= len(src):
            idx = first
    return src, dst, 0


def test_move_ratio_part_remainder_goes_from_the_first_non_zero_step_up():
    src = np.array([0, 3, 3, 3] + [0] * (PEG_SIZE - 4), dtype=np.int64)
    dst = np.zeros(PEG_SIZE, dtype=np.int64)
    assert pegstd.move_ratio_part(src, dst, 4) == 0
    assert dst[:4].tolist() == [0, 2, 1, 1] and src[:4].tolist() == [0, 1, 2, 2]


def test_move_ratio_part_moves_everything_when_short_and_says_what_is_missing():
    src = std_spread(1000)
    dst = np.zeros(PEG_SIZE, dtype=np.int64)
    assert pegstd.move_ratio_part(src, dst, 1500) == 500
    assert int(dst.sum()) == 1000 and not src.any()
    assert pegstd.move_ratio_part(src, dst, 7) == 7  # empty source: nothing moves


@pytest.mark.parametrize("seed", range(40))
def test_move_ratio_part_is_the_nodes_loop_exactly(seed):
    """Random sparse, shifted and huge vectors (products far past int64: the node's 128-bit
    branch): the vectorised move equals the node's loop unit for unit."""
    rng = random.Random(seed)
    top = rng.choice([10**3, 10**10, 10**15, 7 * 10**15])  # Σ stays within int64
    vec = [rng.randint(0, top) if rng.random() < rng.choice([0.02, 0.5, 1.0]) else 0
           for _ in range(PEG_SIZE)]
    vec[rng.randrange(PEG_SIZE)] += 1
    total = sum(vec)
    value = rng.choice([1, 2, rng.randint(1, total), total - 1, total, total + 5])
    want_src, want_dst, want_left = node_move(vec, value)
    src = np.array(vec, dtype=np.int64)
    dst = np.zeros(PEG_SIZE, dtype=np.int64)
    assert pegstd.move_ratio_part(src, dst, value) == want_left
    assert src.tolist() == want_src and dst.tolist() == want_dst


def test_ratio_matches_the_nodes_scalar_ratio_part():
    assert pegstd.ratio(10, 0, 5) == 0 and pegstd.ratio(10, 5, 0) == 0
    big = 9_000_000_000_000_000_000 // 3
    assert pegstd.ratio(big, big, big + 1) == big * big // (big + 1)  # past int64, exact


@pytest.mark.parametrize(
    "text, value",
    [(b"1", 1), (b"0x1", 1), (b"0X1f", 31), (b"010", 8), (b" 1", 1), (b"\t\n+1", 1),
     (b"1abc", 1), (b"08", 0), (b"0x", 0), (b"0xg", 0), (b"-1", -1), (b"-0", 0),
     (b"1\x002", 1), (b"", None), (b"x", None), (b"+", None), (b"- 1", None), (b"\x001", None),
     (b"99999999999999999999999", (1 << 63) - 1)],
)
def test_strtol0_reads_indices_as_the_node_does(text, value):
    assert pegstd.strtol0(text) == value


def test_min_fee_per_input_and_output_or_per_kilobyte():
    pay = TxOut(10**9, address=A)
    assert pegstd.min_fee(1, [pay]) == 10_000
    assert pegstd.min_fee(1, [pay] * 4) == 25_000
    big = TxOut(0, data=b"x" * 2000)  # a 2 kB notary: the size part is the larger one
    assert pegstd.tx_bytes(1, [big]) > 2000 and pegstd.min_fee(1, [big]) == 30_000


def test_a_fee_refusal_keeps_the_fractions_and_says_peg_ok():
    vec = std_spread(10**9)
    v = pegstd.verdict(500, [(A, vec)], [TxOut(10**9 - 9_999, address=A)])
    assert not v.ok and v.peg_ok and v.fee == 9_999 and v.min_fee == 10_000
    assert v.cause == "GetMinFee: fee 9999 < 10000 (5000 x 1 inputs + 1 outputs)"
    assert int(v.fractions[0].sum()) == 10**9 - 9_999
    ok = pegstd.verdict(500, [(A, vec)], [TxOut(10**9 - 10_000, address=A)])
    assert ok.ok and ok.cause == "" and int(ok.fee_fractions.sum()) == 10_000


def test_an_unfillable_output_is_named_in_the_detail_while_the_node_says_p_g_3():
    vec = std_spread(10**11)  # at S=500 liquid is 657,048,351
    v = pegstd.verdict(500, [(A, vec)], [TxOut(10**10, address=B),
                                         TxOut(9 * 10**10 - 20_000, address=A)])
    assert not v.ok and not v.peg_ok
    assert v.cause.startswith("P-G-3: Total mismatch on fee fractions")
    assert v.detail.startswith(f"output 0 (to {B}, 10,000,000,000 sat) is short by")
    assert "reserve can only return to its own address" in v.detail


@pytest.mark.parametrize("mark", [b"**V**", b"**L**", b"**C**"])
def test_unmodelled_notaries_are_refused_not_guessed(mark):
    vec = std_spread(10**9)
    outs = [TxOut(5590, data=mark + b"1"), TxOut(10**8, address=B),
            TxOut(10**9 - 10**8 - 5590 - 20_000, address=A)]
    v = pegstd.verdict(0, [(A, vec)], outs)
    assert not v.ok and v.cause == f"pegstd: {mark.decode()} notaries are not modelled"
    # the same bytes where no input sits are a plain notary, as for the node
    v = pegstd.verdict(0, [(A, vec)], [outs[2], outs[1], outs[0]])
    assert v.ok and not any(v.frozen)


def test_inputs_are_not_modified():
    vec = std_spread(10**11)
    before = vec.copy()
    outs = [TxOut(5590, data=b"**F**1"), TxOut(10**10, address=B),
            TxOut(10**11 - 10**10 - 5590 - 20_000, address=A)]
    v = pegstd.verdict(500, [(A, vec)], outs)
    assert v.ok and v.frozen == [False, True, False]
    assert np.array_equal(vec, before)
