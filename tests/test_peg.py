"""Peg math against the published figures and small hand-worked cases."""

import numpy as np
import pytest

from pegx import peg
from pegx.chain import pegstd


def test_std_spread_of_1e11_matches_bitbay_core():
    f = peg.std_spread(10**11)
    assert f[:5].tolist() == [1000000000, 990000000, 980100000, 970299000, 960596010]
    assert int(f[1199]) == 584300
    assert int(f.sum()) == 10**11
    # BITBAYD §1.3: at supply 500, Low = 99 342 951 649 and High = 657 048 351
    assert peg.split(f, 500) == (657048351, 99342951649)


def test_std_spread_small_amounts_put_the_tail_on_the_last_step():
    f = peg.std_spread(250)
    assert f[:3].tolist() == [2, 2, 2]
    assert int(f.sum()) == 250
    assert peg.std_spread(99)[1199] == 99 and int(peg.std_spread(99).sum()) == 99
    assert int(peg.std_spread(0).sum()) == 0
    with pytest.raises(peg.PegError):
        peg.std_spread(-1)


def test_split_nfreeze_future_hand_worked():
    v = peg.zeros()
    v[0], v[10], v[11], v[12], v[13], v[1199] = 5, 7, 11, 13, 17, 19
    assert peg.split(v, 10) == (7 + 11 + 13 + 17 + 19, 5)
    assert peg.split(v, 0) == (72, 0)
    assert peg.nfreeze(v, 10) == 7 + 11 + 13  # steps 10..12
    assert peg.nfreeze(v, 11) == 11 + 13 + 17
    assert peg.future(v, 10) == 7 + 11 + 13 + 17  # steps 10..30, 1199 excluded
    # step 1199 is never counted in nfreeze
    assert peg.nfreeze(v, 1198) == 0 and peg.nfreeze(v, 1197) == 0


def test_rating_hand_worked_and_never_loops():
    v = peg.zeros()
    v[100] = 50
    v[110] = 50
    # at supply 100: 50 % is reached at offset 0 (m = 1..4), 100 % at offset 10 (m = 5..9)
    r = peg.rating(v, 100)
    assert len(r) == 19
    assert r[1:3] == [0, 0.5] and r[9:11] == [10, 1.0]
    # score = Σ d*c = 4 * 0 * 0.5 + 5 * 10 * 1.0 = 50
    assert r[0] == 50
    # a single step: every threshold crosses at once; the original's loop spun forever here
    one = peg.zeros()
    one[500] = 1
    assert peg.rating(one, 0)[0] == 500 * 9
    assert peg.rating(peg.zeros(), 10) == [0] * 19


def test_deduction_proportional_then_units_from_the_top():
    src = peg.zeros()
    src[5], src[6], src[7] = 10, 10, 10  # all liquid at supply 5
    d = peg.deduction(src, 10, peg.LIQUID, 5)
    # floor shares 3, 3, 3, then the one remaining unit from the highest step down
    assert d[5:8].tolist() == [3, 3, 4]
    assert int(d.sum()) == 10


def test_deduction_overflows_into_the_other_style_only_when_short():
    src = peg.zeros()
    src[0], src[1] = 100, 100  # reserve at supply 2
    src[2] = 30  # liquid
    d = peg.deduction(src, 50, peg.LIQUID, 2)
    assert d[2] == 30  # all the liquid first
    assert d[0] + d[1] == 20 and d[0] == 10 and d[1] == 10
    d2 = peg.deduction(src, 20, peg.RESERVE, 2)
    assert d2[2] == 0 and d2[0] == 10 and d2[1] == 10
    with pytest.raises(peg.PegError, match="not enough funds"):
        peg.deduction(src, 231, peg.LIQUID, 2)


def test_deduction_is_exact_beyond_int64_products():
    src = peg.std_spread(10**17)  # f[i] * amount overflows int64
    amount = 123456789012345678 % (10**16)
    d = peg.deduction(src, amount, peg.RESERVE, 1198)
    assert int(d.sum()) == amount and (d >= 0).all() and (d <= src).all()
    exact = [int(v) * amount // int(src[:1198].sum()) for v in src[:1198].tolist()]
    assert all(0 <= int(d[i]) - exact[i] <= 1 for i in range(1198))


def test_deduction_rejects_bad_arguments():
    src = peg.std_spread(1000)
    for bad in (0, -5):
        with pytest.raises(peg.PegError):
            peg.deduction(src, bad, peg.LIQUID, 0)
    with pytest.raises(peg.PegError):
        peg.deduction(src, 1, "frozen", 0)
    with pytest.raises(peg.PegError):
        peg.deduction(src, 1, peg.LIQUID, 1199)


def test_assign_balances_top_down_with_a_pro_rata_cut():
    m = np.zeros((2, peg.PEG_SIZE), dtype=np.int64)
    m[0, 1199], m[1, 1199] = 30, 10  # the top step: 40
    m[0, 1198], m[1, 1198] = 10, 30  # the next: 40
    m[0, 5], m[1, 3] = 7, 9  # reserve at supply 10
    liquid, reserve, totals = peg.assign_balances(m, 10, 60)
    # top step fully liquid (40), then 20 of the 40 at step 1198: floor halves 5 and 15
    assert liquid.tolist() == [30 + 5, 10 + 15]
    assert (liquid + reserve == totals).all()
    assert reserve.tolist() == [5 + 7, 15 + 9]
    # order independence: swap the rows
    l2, r2, _ = peg.assign_balances(m[::-1].copy(), 10, 60)
    assert l2.tolist() == liquid.tolist()[::-1] and r2.tolist() == reserve.tolist()[::-1]
    # a budget above everything liquid: all liquid steps are liquid, nothing more
    l3, r3, _ = peg.assign_balances(m, 10, 10**9)
    assert l3.tolist() == [40, 40] and r3.tolist() == [7, 9]
    l4, r4, _ = peg.assign_balances(m, 10, 0)
    assert l4.tolist() == [0, 0] and (r4 == totals).all()


@pytest.mark.parametrize("supply", [0, 3, 500, 1100, 1198])
def test_vectorised_figures_equal_the_scalar_ones(supply):
    rng = np.random.default_rng(7)
    m = np.zeros((200, peg.PEG_SIZE), dtype=np.int64)
    for i in range(200):
        kind = i % 4
        if kind == 0:
            m[i] = peg.std_spread(int(rng.integers(1, 10**14)))
        elif kind == 1:
            m[i, rng.integers(0, peg.PEG_SIZE, 20)] = rng.integers(0, 10**12, 20)
        elif kind == 2:  # equal amounts: shares land exactly on the 10 % thresholds
            m[i, rng.integers(0, peg.PEG_SIZE, 10)] = 10
        else:
            m[i, 1190:] = rng.integers(0, 10**9, 10)
    liquid, reserve, nf, sub = peg.figures(m, supply)
    for i in range(200):
        v = m[i]
        assert (liquid[i], reserve[i]) == peg.split(v, supply)
        assert nf[i] == peg.nfreeze(v, supply)
        assert sub[i] == (peg.liquid_of(v, supply) > 0
                          and peg.rating(v, supply)[0] < peg.SUBPREMIUM_RATING)


def _table_rows() -> np.ndarray:
    """Vectors whose ratings cross 200 at many supplies: STD spreads, sparse ones, equal
    amounts (shares exactly on the 10 % thresholds), a top-heavy tail, and rows too large for
    the int64 path (the table's Python-int branch)."""
    rng = np.random.default_rng(11)
    m = np.zeros((14, peg.PEG_SIZE), dtype=np.int64)
    m[0] = peg.std_spread(10**11)
    m[1] = peg.std_spread(123_456_789)
    for i in (2, 3):
        m[i, rng.integers(0, peg.PEG_SIZE, 25)] = rng.integers(0, 10**12, 25)
    m[4, rng.integers(0, peg.PEG_SIZE, 12)] = 10
    m[5, ::7] = 3
    m[6, 1150:] = rng.integers(0, 10**9, 50)
    m[7, :40] = 5  # liquid only at low supplies
    m[8, 1199] = 77  # only the last step
    m[9] = rng.integers(0, 10**6, peg.PEG_SIZE)
    m[10] = rng.integers(0, 8 * 10**13, peg.PEG_SIZE)  # ~5e16 in all: Python ints
    m[11, rng.integers(0, peg.PEG_SIZE, 30)] = 10**15
    m[12, 600:603] = [10**17, 1, 10**17]
    return m  # row 13 stays empty


def test_subpremium_table_is_the_rating_at_every_supply():
    m = _table_rows()
    table = peg.subpremium_table(m)
    assert table.shape == (len(m), peg.MAX_SUPPLY_INDEX + 1)
    for i, v in enumerate(m):
        for s in range(peg.MAX_SUPPLY_INDEX + 1):
            liquid = peg.liquid_of(v, s)
            sub = liquid > 0 and peg.rating(v, s)[0] < peg.SUBPREMIUM_RATING
            assert table[i, s] == (liquid if sub else 0), (i, s)
    assert table[13].sum() == 0 and table[8].any() and not table[8].all()


def test_subpremium_table_agrees_with_the_vectorised_figures():
    m = _table_rows()
    table = peg.subpremium_table(m)
    for s in (0, 1, 250, 599, 600, 601, 1100, 1197, 1198):
        liquid, _, _, sub = peg.figures(m, s)
        assert (table[:, s] == np.where(sub, liquid, 0)).all(), s


# ------------------------------------------- decided differences from the node (PegAPI.md)


def test_decision_nfreeze_near_the_top_keeps_step_1198_and_leaves_out_1199():
    """At S >= 1196 nfreeze is Σ steps S..1198: step 1199 is left out (the original's
    FutureFreeze) and the window is not cut at the network's last supply index 1198 (which
    would make step 1198 never freezable). It is the node's own buffer-3 exchange peg,
    CPegLevel's min(S + 3, 1199), so the held-back liquid equals what the node holds back."""
    v = np.arange(1, peg.PEG_SIZE + 1, dtype=np.int64)  # every step non-zero, all different
    for s in range(1190, peg.MAX_SUPPLY_INDEX + 1):
        buffered = min(s + 3, peg.PEG_SIZE - 1)  # CPegLevel: nSupply = min(supply + buffer, 1199)
        assert peg.nfreeze(v, s) == int(v[s:buffered].sum()), s
    assert peg.nfreeze(v, 1196) == 1197 + 1198 + 1199  # steps 1196, 1197, 1198 (values i + 1)
    assert peg.nfreeze(v, 1198) == 1199  # step 1198 alone; 0 if capped at 1198
    _, _, nf, _ = peg.figures(v[None, :], 1197)
    assert int(nf[0]) == 1198 + 1199


def test_decision_trade_remainder_units_go_top_down_unlike_the_nodes_bottom_up():
    """A trade's remainder units go from the highest step of the style down (the original's
    order, ORIGINAL §5: per-step ledgers stay those of the original exchange); the node's
    MoveRatioPartTo places them from the lowest non-zero step up. Same total, ±1 per step."""
    src = peg.zeros()
    src[5:12] = 10  # 70 sat of liquid at supply 5: 7 steps
    mine = peg.deduction(src, 40, peg.LIQUID, 5)
    node_src, node = src.copy(), peg.zeros()
    pegstd.move_ratio_part(node_src, node, 40)
    assert mine[5:12].tolist() == [5, 5, 6, 6, 6, 6, 6]  # floor 5 each, 5 units from the top
    assert node[5:12].tolist() == [6, 6, 6, 6, 6, 5, 5]  # from the lowest step up
    assert int(mine.sum()) == int(node.sum()) == 40
    assert int(np.abs(mine - node).max()) == 1


def test_decision_assign_balances_floors_the_partial_step_for_every_user():
    """Under a pegshift the step where the exchange's liquid runs out is split pro rata with a
    floor per user, so up to users - 1 sat of that step stay reserve: the users get 1..users-1
    sat less liquid than the node's updatepegbalances, whose sequential pool slices hand out
    the last units to whoever comes first. Kept: the result must not depend on account order,
    and liquid never exceeds the exchange's real liquid."""
    m = np.zeros((3, peg.PEG_SIZE), dtype=np.int64)
    m[:, 1199] = 100  # the top step, fully liquid: 300
    m[:, 1198] = 100  # the partial step: 300, of which 200 are liquid
    liquid, reserve, totals = peg.assign_balances(m, 10, 500)
    assert liquid.tolist() == [166, 166, 166]  # 100 + floor(100 * 200 / 300) each
    assert 500 - int(liquid.sum()) == 2  # 1 <= deficit <= users - 1
    assert (liquid + reserve == totals).all()
    l2, _, _ = peg.assign_balances(m[[2, 0, 1]].copy(), 10, 500)
    assert l2.tolist() == liquid.tolist()
