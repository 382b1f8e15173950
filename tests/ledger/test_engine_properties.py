"""Property tests of the ledger: conservation, no negatives, balances that add up.

A hypothesis state machine drives a real Exchange on a real LevelDB through random deposits
(STD spreads and arbitrary fraction vectors, some huge so peg._share takes its Python-int path),
spends of inputs, trades of both styles, pool debits and credits, withdraw moves, refunds, burns,
supply moves and close/reopen cycles (with checkpoints in LevelDB keys or in checkpoint files:
``file_rows`` 0 writes files at every checkpoint), and checks the engine's invariants after
every step:

* per step, Σ accounts (users, pool, withdraws, exchange) == Σ registered inputs − Σ burned
  + Σ spent (a spend takes an input out of the set without touching the accounts);
* every recompute publishes exactly the totals :func:`pegx.ledger.figures.input_totals`
  works out input by input (the ledger's per-supply tables, frozen inputs or not);
* no negative step in any row, no negative published balance;
* every account's published liquid + reserve == its row total;
* Σ published liquid <= the exchange's liquid of the last recompute.

Two smaller properties pin the peg math the engine builds on: ``peg.deduction`` and
``peg.assign_balances``.
"""

import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pegx import peg
from pegx.ledger.engine import Exchange
from pegx.ledger.figures import input_totals
from pegx.ledger.rules import FROZEN_GRACE, HOUSE, INTERNAL, POOL, EngineError, FundsError
from pegx.ledger.store import Store

USERS = ("alice", "bobby", "carol", "dave1", "erin1", "frank")
# The whole ledger stays under the total BAY supply (~1e17 sat), so every amount passes
# check_amount (<= 2e17) and every row or column sum fits int64, as on the real chain.
LEDGER_CAP = 10**17
SUPPLY_MAX = peg.MAX_SUPPLY_INDEX
HUGE_STEP = 10**15  # far above INT64_MAX // amount for amounts over ~9,000 sat
RARELY = st.integers(0, 4).map(lambda x: x == 0)  # a refused request in about 1 of 5 draws


# ------------------------------------------------------------------ fraction vector strategies
@st.composite
def sparse_vectors(draw) -> np.ndarray:
    """A few non-zero steps anywhere, with values from 1 to HUGE_STEP."""
    cells = draw(st.dictionaries(st.integers(0, peg.LAST_STEP),
                                 st.one_of(st.integers(1, 100), st.integers(1, HUGE_STEP)),
                                 min_size=1, max_size=24))
    vec = peg.zeros()
    for i, v in cells.items():
        vec[i] = v
    return vec


@st.composite
def dense_vectors(draw) -> np.ndarray:
    """Most steps non-zero; the values come from a seeded generator so a 1200-step vector is
    cheap to draw, and the seed (and scale) still shrink."""
    seed = draw(st.integers(0, 2**32 - 1))
    top = draw(st.sampled_from([2, 100, 10**6, 10**11, 10**13, 8 * 10**13]))
    density = draw(st.sampled_from([0.3, 0.9, 1.0]))
    rng = np.random.default_rng(seed)
    vec = rng.integers(0, top, peg.PEG_SIZE, dtype=np.int64, endpoint=True)
    vec[rng.random(peg.PEG_SIZE) > density] = 0
    if not vec.any():
        vec[peg.LAST_STEP] = 1
    return vec


def any_vectors() -> st.SearchStrategy:
    """STD spreads of 1..1e14 and arbitrary sparse or dense fraction vectors."""
    return st.one_of(st.integers(1, 10**14).map(peg.std_spread), sparse_vectors(),
                     dense_vectors())


# ------------------------------------------------------------------ the state machine
class LedgerMachine(RuleBasedStateMachine):
    """Random operations on a real Exchange; the invariants are checked after every step."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="pegx-prop-")
        self.path = f"{self.dir}/ledger"
        self.ex: Exchange | None = None
        self.checkpoint_ops = 5000
        self.file_rows = 4096
        self.registered = peg.zeros()  # Σ vectors ever registered
        self.spent = peg.zeros()
        self.burned = peg.zeros()
        self.total = 0
        self.n_inputs = 0
        self.n_withdraws = 0

    def teardown(self):
        if self.ex is not None and not self.ex.store.db.closed:
            self.ex.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------
    def open(self) -> None:
        self.ex = Exchange(Store(self.path), checkpoint_ops=self.checkpoint_ops,
                           file_rows=self.file_rows)

    def published(self, name: str, style: str) -> int:
        bal = self.ex.balance(name)
        return 0 if bal is None else bal[style]

    def holders(self) -> list[str]:
        """Accounts that hold something, users only (the ones that can send)."""
        return [u for u in USERS if self.ex.balance(u) and sum(self.ex.balance(u).values())]

    def register(self, owner: str, vec: np.ndarray, frozen: bool) -> None:
        key = f"{self.n_inputs:064x}:0"
        self.n_inputs += 1
        if owner != HOUSE:
            self.ex.claim_deposits(owner, [key])
        self.ex.credit_inputs([{"key": key, "value": int(vec.sum()), "address": "Bdeposit",
                                "vector": vec, "owner": owner,
                                "frozen_until": 10**9 if frozen else 0}],
                              supply=self.ex.supply, now=0)
        self.registered += vec
        self.total += int(vec.sum())

    def amount_of(self, have: int, per_mille: int) -> int:
        return max(1, have * per_mille // 1000)

    def refused(self, call, *args) -> None:
        """``call`` must raise FundsError and change nothing."""
        before, seq = self.ex.digest(), self.ex.seq
        with pytest.raises(FundsError):
            call(*args)
        assert self.ex.digest() == before and self.ex.seq == seq

    # -- rules -----------------------------------------------------------------------------
    @initialize(supply=st.integers(0, SUPPLY_MAX), ckpt=st.sampled_from([3, 11, 5000]),
                files=st.sampled_from([0, 2, 4096]), owner=st.sampled_from(USERS),
                value=st.integers(1, 10**14))
    def start(self, supply, ckpt, files, owner, value):
        self.checkpoint_ops, self.file_rows = ckpt, files
        self.open()
        self.ex.recompute(supply, now=0)
        self.register(owner, peg.std_spread(value), frozen=False)

    @rule(owner=st.sampled_from(USERS + (HOUSE,)), vec=any_vectors(),
          frozen=st.sampled_from([False, False, False, True]))
    def deposit(self, owner, vec, frozen):
        if self.total + int(vec.sum()) > LEDGER_CAP:
            return  # keep the ledger within the coin's supply
        self.register(owner, vec, frozen)

    @rule(data=st.data(), style=st.sampled_from(peg.STYLES), per_mille=st.integers(1, 1000),
          receiver=st.sampled_from(USERS))
    def trade(self, data, style, per_mille, receiver):
        senders = self.holders()
        if not senders:
            return
        sender = data.draw(st.sampled_from(senders))
        have = self.published(sender, style)
        if have == 0:
            self.refused(self.ex.trade, sender, 1, receiver, style)
            return
        self.ex.trade(sender, self.amount_of(have, per_mille), receiver, style)

    @rule(data=st.data(), style=st.sampled_from(peg.STYLES), extra=st.integers(1, 10**12),
          receiver=st.sampled_from(USERS))
    def trade_too_much(self, data, style, extra, receiver):
        senders = self.holders()
        if not senders:
            return
        sender = data.draw(st.sampled_from(senders))
        self.refused(self.ex.trade, sender, self.published(sender, style) + extra, receiver,
                     style)

    @rule(data=st.data(), style=st.sampled_from(peg.STYLES), per_mille=st.integers(1, 1000))
    def pool_debit(self, data, style, per_mille):
        senders = self.holders()
        if not senders:
            return
        user = data.draw(st.sampled_from(senders))
        have = self.published(user, style)
        if have == 0:
            self.refused(self.ex.trade, user, -1, "", style)
            return
        self.ex.trade(user, -self.amount_of(have, per_mille), "", style)

    @rule(user=st.sampled_from(USERS), style=st.sampled_from(peg.STYLES),
          per_mille=st.integers(1, 1000), over=RARELY)
    def pool_credit(self, user, style, per_mille, over):
        have = self.published(POOL, style)
        if over or have == 0:
            self.refused(self.ex.trade, user, have + 1, "", style)
            return
        self.ex.trade(user, self.amount_of(have, per_mille), "", style)

    @rule(data=st.data(), style=st.sampled_from(peg.STYLES), per_mille=st.integers(1, 1000),
          over=RARELY)
    def withdraw(self, data, style, per_mille, over):
        senders = self.holders()
        if not senders:
            return
        user = data.draw(st.sampled_from(senders))
        have = self.published(user, style)
        wid = f"w{self.n_withdraws}"
        if over or have == 0:
            self.refused(self.ex.request_withdraw, wid, user, have + 1, style, "Bwithdraw", 0)
            return
        self.n_withdraws += 1
        self.ex.request_withdraw(wid, user, self.amount_of(have, per_mille), style, "Bwithdraw", 0)
        assert int(self.ex.vector("withdraws", wid).sum()) == self.amount_of(have, per_mille)

    def pending(self) -> list[str]:
        return sorted(self.ex.records("withdraws"))

    @precondition(lambda self: self.ex is not None and self.pending())
    @rule(data=st.data())
    def refund(self, data):
        ids = data.draw(st.lists(st.sampled_from(self.pending()), min_size=1, unique=True))
        owners = {w: self.ex.record("withdraws", w)["user"] for w in ids}
        rows = {u: self.ex.row(u) for u in set(owners.values())}
        given_back = {u: peg.zeros() for u in rows}
        for w, u in owners.items():
            given_back[u] += self.ex.vector("withdraws", w)
        before = self.ex.digest()
        with pytest.raises(EngineError, match="no pending withdraw"):  # all or nothing
            self.ex.refund(ids + ["nope"])
        assert self.ex.digest() == before
        self.ex.refund(ids)
        for u, row in rows.items():  # each user gets back exactly the steps it gave
            assert (self.ex.row(u) - row == given_back[u]).all()

    @precondition(lambda self: self.ex is not None and self.pending())
    @rule(data=st.data())
    def burn(self, data):
        ids = data.draw(st.lists(st.sampled_from(self.pending()), min_size=1, unique=True))
        for w in ids:
            self.burned += self.ex.vector("withdraws", w)
        before = self.ex.digest()
        with pytest.raises(EngineError, match="no pending withdraw"):
            self.ex.burn(["nope"] + ids)
        assert self.ex.digest() == before
        self.ex.burn(ids)

    @precondition(lambda self: self.ex is not None and self.ex.input_count())
    @rule(data=st.data())
    def spend(self, data):
        keys = data.draw(st.lists(st.sampled_from(sorted(self.ex.records("inputs"))),
                                  min_size=1, max_size=3, unique=True))
        for key in keys:
            self.spent += self.ex.vector("inputs", key)
        self.ex.spend_inputs(keys, supply=self.ex.supply, now=0)
        assert all(self.ex.vector("inputs", k) is None for k in keys)

    @rule(step=st.integers(-3, 3), jump=st.one_of(st.none(), st.integers(0, SUPPLY_MAX)),
          now=st.sampled_from([0, 10**9 + FROZEN_GRACE - 1, 10**9 + FROZEN_GRACE]))
    def recompute(self, step, jump, now):
        supply = jump if jump is not None else min(SUPPLY_MAX, max(0, self.ex.supply + step))
        totals = self.ex.recompute(supply, now=now)
        assert self.ex.supply == supply and totals == self.ex.exchange_balance()
        inputs = self.ex.records("inputs")
        vectors = {("inputs", k): self.ex.vector("inputs", k) for k in inputs}
        assert totals == input_totals(inputs, vectors, supply, now)

    @rule(clean=st.booleans())
    def reopen(self, clean):
        digest, seq = self.ex.digest(), self.ex.seq
        if clean:
            self.ex.close()  # checkpoint, nothing to replay
        else:
            self.ex.store.close()  # like a crash after the last acknowledged call
        self.open()
        assert self.ex.digest() == digest and self.ex.seq == seq
        if clean:
            assert self.ex.replayed == 0
        # the per-supply input tables agree with the vectors (read back from disk)
        tables = [p for p in self.ex.audit()["problems"] if "table" in p or "sum of the" in p]
        assert tables == []

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def conservation(self):
        if self.ex is None:
            return
        names = self.ex.users()
        matrix = np.array([self.ex.row(u) for u in names])
        view = np.array([[self.ex.balance(u)["liquid"], self.ex.balance(u)["reserve"]]
                         for u in names])
        inputs = self.ex.holdings()
        assert (inputs == self.registered - self.spent).all()
        assert (matrix.sum(axis=0) == inputs + self.spent - self.burned).all()
        assert (matrix >= 0).all() and (view >= 0).all()
        assert (view.sum(axis=1) == matrix.sum(axis=1)).all()
        assert int(view[:, 0].sum()) <= self.ex.exchange_balance()["liquid"]
        assert set(INTERNAL) <= set(names)


LedgerMachine.TestCase.settings = settings(stateful_step_count=40)
TestLedgerProperties = LedgerMachine.TestCase


# ------------------------------------------------------------------ peg math properties
@given(src=any_vectors(), supply=st.integers(0, SUPPLY_MAX), style=st.sampled_from(peg.STYLES),
       data=st.data())
def test_deduction_is_exact_bounded_and_proportional(src, supply, style, data):
    total = int(src.sum())
    amount = data.draw(st.one_of(st.integers(1, min(10, total)), st.integers(1, total)))
    lo, hi = (supply, peg.PEG_SIZE) if style == peg.LIQUID else (0, supply)
    in_style = int(src[lo:hi].sum())
    out = peg.deduction(src, amount, style, supply)
    assert (out >= 0).all() and (out <= src).all()
    assert int(out.sum()) == amount
    other = np.ones(peg.PEG_SIZE, dtype=bool)
    other[lo:hi] = False
    if amount <= in_style:
        assert not out[other].any()  # the other style is untouched
        # within 1 unit of the exact share: |out_i * T - src_i * a| <= T, in Python ints
        for o, s in zip(out[lo:hi].tolist(), src[lo:hi].tolist(), strict=True):
            assert abs(o * in_style - s * amount) <= in_style
    else:  # the style runs short: all of it is taken, the rest comes from the other style
        assert (out[lo:hi] == src[lo:hi]).all()
    with pytest.raises(peg.PegError):
        peg.deduction(src, total + 1, style, supply)


def deduction_by_steps(src: np.ndarray, amount: int, style: str, supply: int) -> list[int]:
    """The original's rule step by step in Python ints (ORIGINAL §3.1): floor proportional
    shares of the style's steps, then 1-unit remainders from its highest step down in passes,
    then the other style the same way."""
    s, out = src.tolist(), [0] * peg.PEG_SIZE

    def take(lo: int, hi: int, left: int) -> int:
        total = sum(s[lo:hi])
        if hi <= lo or left <= 0 or total <= 0:
            return left
        part = min(left, total)
        for i in range(lo, hi):
            out[i] = s[i] * part // total
            left -= out[i]
        moved = True
        while left > 0 and moved:
            moved = False
            for i in range(hi - 1, lo - 1, -1):
                if left and out[i] < s[i]:
                    out[i] += 1
                    left -= 1
                    moved = True
        return left

    liquid = style == peg.LIQUID
    first, second = ((supply, peg.PEG_SIZE), (0, supply))[::1 if liquid else -1]
    take(*second, take(*first, amount))
    return out


@given(src=any_vectors(), supply=st.integers(0, SUPPLY_MAX), style=st.sampled_from(peg.STYLES),
       data=st.data())
def test_deduction_is_the_step_by_step_rule(src, supply, style, data):
    """peg.deduction's fast paths (all shares 0; no second pass; the style taken whole) give
    exactly what the rule gives."""
    total = int(src.sum())
    amount = data.draw(st.one_of(st.integers(1, min(10, total)), st.integers(1, total)))
    assert peg.deduction(src, amount, style, supply).tolist() == \
        deduction_by_steps(src, amount, style, supply)


@given(rows=st.lists(any_vectors(), min_size=1, max_size=8), supply=st.integers(0, SUPPLY_MAX),
       data=st.data())
def test_assign_balances_is_order_free_and_within_budget(rows, supply, data):
    matrix = np.array(rows, dtype=np.int64)
    liquid_steps = int(matrix[:, supply:].sum())
    budget = data.draw(st.one_of(st.integers(0, liquid_steps + 10), st.integers(-5, 5)))
    liquid, reserve, totals = peg.assign_balances(matrix, supply, budget)
    assert (liquid >= 0).all() and (reserve >= 0).all()
    assert (liquid + reserve == matrix.sum(axis=1)).all() and (totals == matrix.sum(axis=1)).all()
    assert (liquid <= matrix[:, supply:].sum(axis=1)).all()  # liquid only from liquid steps
    handed = int(liquid.sum())
    cap = min(max(budget, 0), liquid_steps)
    assert cap - len(rows) < handed <= cap  # the budget is used up, less floor remainders
    perm = np.array(data.draw(st.permutations(range(len(rows)))))
    p_liquid, p_reserve, _ = peg.assign_balances(matrix[perm], supply, budget)
    assert (p_liquid == liquid[perm]).all() and (p_reserve == reserve[perm]).all()
