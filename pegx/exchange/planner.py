"""Pure withdraw planning: commissions, fees and the transactions of batches and maintenance
(DESIGN §6, ORIGINAL §3.5-3.6), shaped so that the BitBay node's own spend rule
(``CalculateStandardFractions`` + ``GetMinFee``, :mod:`pegx.chain.pegstd`) accepts them and
gives every payee exactly its style and amount.

Nothing here reads the ledger or the chain; :mod:`pegx.exchange.withdraws` runs it.
:func:`plan_batch` checks every plan it returns with :func:`check_plan` (pegstd on the
candidates' fractions); the desk checks it again with the chain's fractions before it
broadcasts.

The transaction shapes, and why the node's strict output-index fill order gives the payees
what they asked for (``n`` inputs, ``p`` payee addresses, one output per payee address holding
Σ amount − commission of its withdraws):

* **Liquid batch.** Outputs: first the exchange's outputs, then the payees by address, last the
  id notary (OP_RETURN ``master``, 5,575 sat). The exchange's outputs are the reserve of each
  input address back to that address (merged with the change when it is ``acct0``, with the
  fee output when it is the fee account), sorted by address, then the change to ``acct0`` and
  the fee output when they do not go to an input address. An output to an input address takes
  that address's reserve first, so by the time the payees are filled every reserve pool is
  empty, and a payee gets liquidity only, even one paid at an input address or at the burn
  address (which, like an OP_RETURN, would take reserve first).
* **Reserve batch.** Outputs: the payees by address with ONE ``**F**`` notary (5,590 sat)
  among them at index ``k = min(p, n − 1)``, then the exchange's outputs as above, then the id
  notary. The input with the most reserve sits at index ``k`` (a notary belongs to the input
  at its index); the notary lists every payee index (``**F**i:i:i`` for one payee,
  ``**F**i:j:j`` for two, ``**F**i:j:...`` for more). A list of two or more parts puts the
  node in shared freezing: each payee, in index order, is frozen and takes reserve from the
  notary input's address, then from the other input addresses in sorted order, liquidity only
  for what no reserve is left for. Three parts at least, so the two-output fair-escrow split
  never applies. The payees come first, so they see the reserve of every input at every
  address; the notary (an OP_RETURN: it takes reserve first) comes after all of them when
  there are more inputs than payees, otherwise it takes its 5,590 sat before the payees after
  it. The planner builds a batch only when the reserve covers every payee in that order, so a
  payee gets reserve only.

In both: the commission pays the dust (notaries), the miner fee (the estimated fees, 10,000
sat per withdraw + 500,000, less the dust, and never below ``GetMinFee``) and the fee output
(the rest). The change to ``acct0`` is what liquidity is left (plus, for reserve, the notary
dust the reserve paid), an extra 5,575 sat to ``acct0`` when nothing else would go there.

What must stay true: no output is ever 0 or below (a withdraw that cannot be paid is left
out), Σ inputs − Σ outputs is exactly the planned miner fee, and a withdraw left out of a
batch is named with the reason (``Plan.waiting`` / ``Refusal.waiting``).

Over 400 lines (~510): one pure algorithm (withdraw choice, input selection, transaction shapes,
the node-exact check), each step its own function; the planning is kept in one module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

import numpy as np

from pegx import peg
from pegx.chain import pegstd
from pegx.chain.base import FREEZE_NOTARY_VALUE, NOTARY_VALUE, TxOut

log = logging.getLogger(__name__)

FEE_PER_OUTPUT = 10000
FEE_BASE = 500000
LIQUID_BATCH = 300  # withdraws per liquid batch
RESERVE_BATCH = 45  # distinct recipients per reserve batch (the **F** list fits 250 bytes)
MAX_INPUTS = 100
MAINT_INPUTS = 45
MAINT_MIN = 10**8  # merge only when at least 1 BAY of liquid is involved
MIN_PAYOUT = 10000  # a payee gets more: Withdraw refuses amounts <= min commission + this
MAX_OP_RETURN = 250  # the node's MAX_OP_RETURN_RELAY: a longer OP_RETURN is not standard
NO_FEES = ("Not enough funds for fees. Withdraws need more funds to cover it. Try setting higher "
           "commissions for withdraws.")
NO_FUNDS = "Not enough funds"


def commission(amount: int, cfg: dict) -> int:
    """floor(amount × percent) clamped to [min, max]; percent is a decimal string."""
    c = int((Decimal(amount) * Decimal(str(cfg["percent"]))).to_integral_value(ROUND_FLOOR))
    return max(int(cfg["min"]), min(int(cfg["max"]), c))


def estimated_fees(n_withdraws: int) -> int:
    """10000 per withdraw output + 500000 (ORIGINAL §3.5 D)."""
    return FEE_PER_OUTPUT * n_withdraws + FEE_BASE


def f_notation(indices: list[int]) -> bytes:
    """The ``**F**`` list freezing the outputs at ``indices``, always three parts or more
    (the original's padding, §3.5 G): with two parts the node's fair-escrow split would pay
    the lower output partly in liquidity."""
    if len(indices) == 1:
        indices = indices * 3
    elif len(indices) == 2:
        indices = [indices[0], indices[1], indices[1]]
    return b"**F**" + ":".join(map(str, indices)).encode()


@dataclass
class Plan:
    """A transaction to sign: inputs in order, outputs, which outputs come back to the
    exchange (``house_vouts``) and which pay the withdraws (``payees``)."""

    inputs: list[str]
    outputs: list[TxOut]
    house_vouts: list[int]
    fee: int  # miner fee: Σ inputs − Σ outputs
    ids: list[str] = field(default_factory=list)
    total: int = 0  # Σ withdrawn amounts
    commission: int = 0
    style: str = ""  # the payees' style ('' for maintenance and cancels)
    payees: list[int] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # withdraws left out: id -> why


@dataclass
class Refusal:
    """No batch can be built: ``reason`` (the original's message first, then the detail) and,
    for each withdraw given, why it waits."""

    reason: str
    waiting: dict[str, str] = field(default_factory=dict)


@dataclass
class _Short:
    """Why one build failed: ``kind`` says what more inputs would have to bring."""

    kind: str  # "reserve" | "liquid" | "fees"
    detail: str


Candidate = tuple[str, str, np.ndarray]  # (key, address, fraction vector)


def _take(pools: dict[str, int], order: list[str], want: int) -> int:
    """Take up to ``want`` out of the reserve ``pools`` in ``order`` (the node's order of
    addresses for the output being filled); returns what was taken."""
    taken = 0
    for addr in order:
        t = min(pools[addr], want - taken)
        pools[addr] -= t
        taken += t
    return taken


def _build(style: str, sel: list[Candidate], recipients: dict[str, int], total: int, comm: int,  # noqa: PLR0913 (pure: every input explicit)
           n_w: int, supply: int, acct0: str, fee_acct: str, master: str) -> Plan | _Short:
    """The batch transaction on inputs ``sel`` (module docstring), simulating the node's fill
    order on the pools' totals (every move is exact while the source holds enough)."""
    pools: dict[str, int] = {}
    liquid = 0
    for _, addr, vec in sel:
        pools[addr] = pools.get(addr, 0) + peg.reserve_of(vec, supply)
        liquid += peg.liquid_of(vec, supply)
    payees = sorted(recipients)
    head: list[TxOut] = []  # reserve: the payees and the **F** notary
    payee_vouts: list[int] = []
    dust = NOTARY_VALUE
    if style == peg.RESERVE:
        built = _reserve_head(sel, pools, recipients, payees, total - comm, supply)
        if isinstance(built, _Short):
            return built
        sel, head, payee_vouts, paid_by_reserve = built
        dust += FREEZE_NOTARY_VALUE
        change = liquid - comm + paid_by_reserve
        if change < 0:
            return _Short("liquid", f"{NO_FUNDS}: the commission's fees need {sat(comm)} of "
                          f"liquidity, {len(sel)} inputs hold {sat(liquid)} at supply {supply}")
    else:
        change = liquid - total
        if change < 0:
            return _Short("liquid", f"{NO_FUNDS}: the withdraws need {sat(total)} of "
                          f"liquidity, {len(sel)} inputs hold {sat(liquid)} at supply {supply}")
    ex = {a: r for a, r in pools.items() if r > 0}
    extra = NOTARY_VALUE if ex.get(acct0, 0) + change == 0 else 0  # something goes to acct0
    dust += extra
    ex[acct0] = ex.get(acct0, 0) + change + extra

    def outputs(house: dict[str, int]) -> tuple[list[TxOut], list[int], list[int]]:
        order = sorted(house, key=lambda a: (a not in pools, a))  # input addresses first
        outs = [TxOut(house[a], address=a) for a in order]
        if style == peg.RESERVE:
            return head + outs + [TxOut(NOTARY_VALUE, data=master.encode())], \
                list(range(len(head), len(head) + len(outs))), payee_vouts
        pay = [TxOut(recipients[a], address=a) for a in payees]
        return outs + pay + [TxOut(NOTARY_VALUE, data=master.encode())], \
            list(range(len(outs))), list(range(len(outs), len(outs) + len(pay)))

    probe = dict(ex)
    probe[fee_acct] = probe.get(fee_acct, 0) + 1  # count the fee output for the minimum fee
    minimum = pegstd.min_fee(len(sel), outputs(probe)[0])
    fee = max(estimated_fees(n_w) - dust, minimum)
    fee_out = comm - dust - fee
    if fee_out < 0:
        return _Short("fees", f"{NO_FEES} (the commissions, {sat(comm)}, do not cover the dust "
                      f"{sat(dust)} and the miner fee {sat(fee)})")
    if fee_out:
        ex[fee_acct] = ex.get(fee_acct, 0) + fee_out
    outs, house_vouts, payee_vouts = outputs(ex)
    value_in = sum(int(v.sum()) for _, _, v in sel)
    assert value_in - sum(o.value for o in outs) == fee, "fee arithmetic is off"
    return Plan([k for k, _, _ in sel], outs, house_vouts, fee, total=total, commission=comm,
                style=style, payees=payee_vouts)


def _reserve_head(sel: list[Candidate], pools: dict[str, int], recipients: dict[str, int],
                  payees: list[str], payout: int, supply: int
                  ) -> tuple[list[Candidate], list[TxOut], list[int], int] | _Short:
    """A reserve batch's first outputs, the payees and the **F** freeze notary at index ``k``
    (the input holding the most reserve moved to index ``k``, so the node's fill order pays
    the payees from reserve), taken from ``pools``: (the reordered inputs, those outputs, the
    payees' output indexes, the notary dust the reserve pays), or _Short when the reserve
    does not cover ``payout``."""
    k = min(len(payees), len(sel) - 1)
    lead = max(range(len(sel)), key=lambda i: (peg.reserve_of(sel[i][2], supply), -i))
    rest = sel[:lead] + sel[lead + 1:]
    sel = rest[:k] + [sel[lead]] + rest[k:]
    first = [sel[k][1]] + sorted(a for a in pools if a != sel[k][1])
    slots = iter(payees)
    head: list[TxOut] = []
    payee_vouts: list[int] = []
    paid_by_reserve = 0  # the notary dust the reserve pays
    for i in range(len(payees) + 1):
        if i == k:
            paid_by_reserve = _take(pools, sorted(pools), FREEZE_NOTARY_VALUE)
            head.append(TxOut(FREEZE_NOTARY_VALUE, data=b""))  # the list is set below
            continue
        addr = next(slots)
        got = _take(pools, first, recipients[addr])
        if got < recipients[addr]:
            have = sum(peg.reserve_of(v, supply) for _, _, v in sel)
            before = (f" (and the freeze notary {sat(FREEZE_NOTARY_VALUE)} before some of "
                      "them)" if k < len(payees) else "")
            return _Short("reserve", f"{NO_FUNDS}: the payees need {sat(payout)} of "
                          f"reserve{before}; {len(sel)} inputs hold {sat(have)} of reserve "
                          f"at supply {supply}")
        payee_vouts.append(i)
        head.append(TxOut(recipients[addr], address=addr))
    head[k] = TxOut(FREEZE_NOTARY_VALUE, data=f_notation(payee_vouts))
    return sel, head, payee_vouts, paid_by_reserve


def check_plan(plan: Plan, inputs: list[tuple[str, np.ndarray]], supply: int) -> str:  # noqa: PLR0911 (one ordered list of checks; the first failure is the answer)
    """'' when a BitBay node would take ``plan``'s transaction into its mempool and its payees
    get exactly their style (reserve: frozen, reserve steps only; liquid: liquid steps only),
    else what is wrong, for a human. ``inputs``: (address, fractions) of ``plan.inputs``."""
    for i, out in enumerate(plan.outputs):
        if out.value <= 0:  # the node's IsStandard: a 0-value output is dust
            return f"output {i} carries {sat(out.value)} (the node refuses it as dust)"
        if out.data is not None and len(out.data) > MAX_OP_RETURN:
            return f"output {i}: an OP_RETURN of {len(out.data)} bytes is not standard"
    v = pegstd.verdict(supply, inputs, plan.outputs)
    if not v.ok:
        return f"{v.detail} [node: {v.cause}]"
    if v.fee != plan.fee:
        return f"the miner fee would be {sat(v.fee)}, the plan says {sat(plan.fee)}"
    for i in plan.payees:
        reserve = int(v.fractions[i][:supply].sum())
        liquid = int(v.fractions[i][supply:].sum())
        if plan.style == peg.RESERVE and (not v.frozen[i] or liquid):
            return (f"reserve payee output {i} would get {sat(liquid)} of liquidity"
                    f"{'' if v.frozen[i] else ' and not be frozen'}")
        if plan.style == peg.LIQUID and (v.frozen[i] or reserve):
            return f"liquid payee output {i} would get {sat(reserve)} of reserve"
    return ""


def accepted_commission(rec: dict, cfg: dict) -> int:
    """The commission a withdraw pays: the one kept when it was accepted (Withdraw stores it);
    for a withdraw accepted before commissions were kept, the settings ``cfg`` of now."""
    kept = rec.get("commission")
    return commission(rec["amount"], cfg) if kept is None else int(kept)


def plan_batch(style: str, withdraws: list[tuple[str, dict]], candidates: list[Candidate],
               supply: int, acct0: str, fee_acct: str, cfg: dict, master: str) -> Plan | Refusal:
    """The batch transaction for pending ``withdraws`` of ``style`` (in queue order), in the
    shape of the module docstring (ORIGINAL §3.5 C-H, fixed).

    Each withdraw pays the commission kept when it was accepted (:func:`accepted_commission`);
    one whose payee would get ``MIN_PAYOUT`` or less is left out (it expires and is refunded),
    so no output is ever 0 or below. Inputs (those at a payee's address only when the others
    do not suffice): liquid takes the smallest input that covers the batch alone, else the
    largest first; reserve takes the largest reserve first; then, while
    the node's rule leaves a payee or the commission short, one more input with what is short
    (reserve, else any input, which moves the notary after more payees; liquidity), up to
    ``MAX_INPUTS``. When the inputs cannot fund the whole batch it is split: in queue order,
    each withdraw joins if the batch can still be funded with it, else it waits for a later
    window with the reason (it expires and is refunded if it never fits). Every plan passes
    :func:`check_plan` on the candidates' fractions, or none is returned.
    """
    chosen, waiting, addresses = _choose(style, withdraws, cfg)
    if not chosen:
        return Refusal(next(iter(waiting.values())) if waiting else "Success", waiting)
    cands = [c for c in candidates if int(c[2].sum()) > 0]
    lq = {k: peg.liquid_of(v, supply) for k, _, v in cands}
    rs = {k: peg.reserve_of(v, supply) for k, _, v in cands}
    most = (sum(sorted(lq.values(), reverse=True)[:MAX_INPUTS]) if style == peg.LIQUID
            else sum(sorted(rs.values(), reverse=True)[:MAX_INPUTS]))
    # inputs at a payee's address come last: the node's rule would pay them right (see the
    # shapes), but the exchange's change then lands beside a payee's coins
    by_liquid = sorted(cands, key=lambda c: (c[1] in addresses, -lq[c[0]], c[0]))
    by_reserve = sorted(cands, key=lambda c: (c[1] in addresses, -rs[c[0]], c[0]))

    def attempt(items: list[tuple[str, dict, int]]) -> Plan | _Short:
        need = sum(r["amount"] - (0 if style == peg.LIQUID else c) for _, r, c in items)
        if need > most:  # no selection can fund it: say so without building
            part = "liquidity" if style == peg.LIQUID else f"reserve at supply {supply}"
            return _Short(style, f"{NO_FUNDS}: the batch needs {sat(need)} of {part}, the "
                          f"exchange's {min(len(cands), MAX_INPUTS)} best spendable inputs hold "
                          f"{sat(most)}")
        return _plan_chosen(style, items, by_liquid, by_reserve, lq, rs, supply, acct0,
                            fee_acct, master, addresses)

    plan = attempt(chosen)
    if isinstance(plan, _Short) and plan.kind != "fees" and len(chosen) > 1:
        plan, chosen = _split(attempt, chosen, waiting, plan)
    if isinstance(plan, Plan):
        plan = _checked(plan, cands, supply, style)
    if isinstance(plan, _Short):
        for wid, _, _ in chosen:
            waiting.setdefault(wid, plan.detail)
        return Refusal(plan.detail, waiting)
    plan.waiting = waiting
    return plan


def _choose(style: str, withdraws: list[tuple[str, dict]], cfg: dict
            ) -> tuple[list[tuple[str, dict, int]], dict[str, str], set[str]]:
    """The withdraws one batch can take, in queue order: (id, record, commission) of each, why
    each other one waits, and the chosen payee addresses."""
    chosen: list[tuple[str, dict, int]] = []  # (id, record, commission)
    waiting: dict[str, str] = {}
    addresses: set[str] = set()
    for wid, rec in withdraws:
        c = accepted_commission(rec, cfg)
        if rec["amount"] - c <= MIN_PAYOUT:  # only a withdraw accepted before commissions
            log.warning("withdraw %s left out: a commission of %s leaves its payee %s (it "
                        "expires and is refunded)", wid, sat(c), sat(rec["amount"] - c))
            waiting[wid] = (f"a commission of {sat(c)} leaves the payee {sat(rec['amount'] - c)}"
                            ": it cannot be paid and is refunded when it expires")
            continue
        addr = rec["address"]
        if style == peg.RESERVE and addr not in addresses and len(addresses) >= RESERVE_BATCH:
            waiting[wid] = f"the batch is full ({RESERVE_BATCH} payee addresses)"
            continue
        if style == peg.LIQUID and len(chosen) >= LIQUID_BATCH:
            waiting[wid] = f"the batch is full ({LIQUID_BATCH} withdraws)"
            continue
        chosen.append((wid, rec, c))
        addresses.add(addr)
    return chosen, waiting, addresses


def _split(attempt: Callable[[list], Plan | _Short], chosen: list[tuple[str, dict, int]],
           waiting: dict[str, str], plan: _Short) -> tuple[Plan | _Short, list]:
    """The inputs cannot fund the whole batch: in queue order, each withdraw joins if the
    batch can still be funded with it, else it waits (its reason in ``waiting``). Returns the
    plan and the withdraws it pays (the whole list again if none fits)."""
    kept: list[tuple[str, dict, int]] = []
    for item in chosen:  # queue order: the oldest withdraws first
        trial = attempt(kept + [item])
        if isinstance(trial, Plan) or trial.kind == "fees":  # more withdraws may pay fees
            kept.append(item)
        else:
            waiting[item[0]] = f"waits for a later batch: {trial.detail}"
            log.info("withdraw %s (%s) waits for a later batch: %s", item[0],
                     sat(item[1]["amount"]), trial.detail)
    return (attempt(kept) if kept else plan), (kept or chosen)


def _checked(plan: Plan, cands: list[Candidate], supply: int, style: str) -> Plan | _Short:
    """``plan`` if the node's rule takes it on the candidates' fractions (check_plan)."""
    by_key = {k: (a, v) for k, a, v in cands}
    why = check_plan(plan, [by_key[k] for k in plan.inputs], supply)
    if why:  # a planner bug: never hand out what the node would refuse
        log.error("%s batch not planned: the node's rule would refuse it: %s", style, why)
        return _Short("check", f"the node's rule would refuse the batch: {why}")
    return plan


def _plan_chosen(style: str, chosen: list[tuple[str, dict, int]], by_liquid: list[Candidate],  # noqa: PLR0913 (pure: every input explicit)
                 by_reserve: list[Candidate], lq: dict, rs: dict, supply: int, acct0: str,
                 fee_acct: str, master: str, avoid: set[str]) -> Plan | _Short:
    """Select inputs for exactly the ``chosen`` withdraws and build their transaction (the
    candidates at an ``avoid`` address, sorted last, only when the others do not suffice)."""
    recipients: dict[str, int] = {}
    ids, total, comm = [], 0, 0
    for wid, rec, c in chosen:
        recipients[rec["address"]] = recipients.get(rec["address"], 0) + rec["amount"] - c
        ids.append(wid)
        total += rec["amount"]
        comm += c
    if estimated_fees(len(ids)) > comm:
        return _Short("fees", NO_FEES)
    if style == peg.LIQUID:
        sel = _first_liquid(by_liquid, lq, total, avoid)
    else:
        sel = _largest_first(by_reserve, rs, total - comm + FREEZE_NOTARY_VALUE)
    if not sel:
        return _Short(style, f"{NO_FUNDS}: the exchange has no spendable input holding "
                      f"{style} at supply {supply}")
    while True:
        plan = _build(style, sel, recipients, total, comm, len(ids), supply, acct0, fee_acct,
                      master)
        if isinstance(plan, Plan):
            plan.ids = ids
            return plan
        if plan.kind == "fees" or len(sel) >= MAX_INPUTS:
            return plan
        more = _one_more(plan.kind, sel, by_liquid, by_reserve, lq, rs)
        if more is None:
            return plan
        sel = sel + [more]


def _first_liquid(by_liquid: list[Candidate], lq: dict, total: int,
                  avoid: set[str]) -> list[Candidate]:
    """A liquid batch's inputs: the smallest that covers it alone, of the first group (not at
    an ``avoid`` address first) that has one; else the largest first."""
    covering = [c for c in by_liquid if lq[c[0]] >= total]
    if covering:
        group = covering[0][1] in avoid
        return [[c for c in covering if (c[1] in avoid) == group][-1]]
    return _largest_first(by_liquid, lq, total)


def _largest_first(ordered: list[Candidate], amount: dict, need: int) -> list[Candidate]:
    """Inputs in ``ordered`` order that hold some ``amount``, until they hold ``need`` (at most
    MAX_INPUTS)."""
    sel: list[Candidate] = []
    got = 0
    for c in ordered:
        if got >= need or len(sel) >= MAX_INPUTS:
            break
        if amount[c[0]]:
            sel.append(c)
            got += amount[c[0]]
    return sel


def _one_more(kind: str, sel: list[Candidate], by_liquid: list[Candidate],
              by_reserve: list[Candidate], lq: dict, rs: dict) -> Candidate | None:
    """One more input with what is short (``kind``); for reserve with none left, any input
    (the notary moves after one more payee); None when there is none."""
    pool, amount = (by_reserve, rs) if kind == "reserve" else (by_liquid, lq)
    more = [c for c in pool if c not in sel and amount[c[0]] > 0]
    if not more and kind == "reserve":
        more = [c for c in by_liquid if c not in sel]
    return more[0] if more else None


def plan_maintenance(candidates: list[Candidate], supply: int, acct0: str,
                     master: str) -> Plan | str | None:
    """Merge inputs of differing liquidity quality into 4 outputs to ``acct0`` (ORIGINAL §3.6).

    None when there is nothing to merge (one rating, or less than 1 BAY of liquid); the
    reserve of every input goes back to its own address (an output to an input address takes
    that address's reserve first: the first output to ``acct0`` takes ``acct0``'s, so the
    other three and the id, after every address's own output, get liquidity only).
    """
    cands = sorted(((k, a, v) for k, a, v in candidates if peg.liquid_of(v, supply) > 0),
                   key=lambda c: (peg.liquid_of(c[2], supply), c[0]))[:MAINT_INPUTS]
    if len({peg.rating(v, supply)[0] for _, _, v in cands}) < 2:
        return None
    ltot = sum(peg.liquid_of(v, supply) for _, _, v in cands)
    if ltot < MAINT_MIN:
        return None
    fees = estimated_fees(len(cands))
    part = (ltot - fees) // 4
    if part < 2500:
        return "Not enough funds for account maintenance."
    pools: dict[str, int] = {}
    for _, a, v in cands:
        pools[a] = pools.get(a, 0) + peg.reserve_of(v, supply)
    outs = [TxOut(part + pools.pop(acct0, 0), address=acct0)]
    outs += [TxOut(part, address=acct0) for _ in range(3)]
    outs += [TxOut(pools[a], address=a) for a in sorted(pools) if pools[a] > 0]
    outs.append(TxOut(NOTARY_VALUE, data=master.encode()))
    fee = sum(int(v.sum()) for _, _, v in cands) - sum(o.value for o in outs)
    if fee < pegstd.min_fee(len(cands), outs):
        return "Not enough funds for account maintenance."
    return Plan([k for k, _, _ in cands], outs, list(range(len(outs) - 1)), fee)


def split_cost(cost: int, weights: dict[str, int]) -> dict[str, int]:
    """``cost`` shared in proportion to ``weights``: floor shares, then one unit each to the
    largest remainders (ties by key). No share exceeds its weight; zero shares are left out.
    Raises ValueError when ``cost`` is more than Σ weights."""
    total = sum(weights.values())
    if cost > total:
        raise ValueError(f"{sat(cost)} is more than the {sat(total)} it may be taken from")
    if cost <= 0:
        return {}
    shares = {k: cost * w // total for k, w in weights.items()}
    left = cost - sum(shares.values())
    for k in sorted(weights, key=lambda k: (-(cost * weights[k] % total), k))[:left]:
        shares[k] += 1
    return {k: v for k, v in shares.items() if v}


def sat(n: int) -> str:
    """``n`` for a log line: thousands separators and the unit."""
    return f"{n:,d} sat"
