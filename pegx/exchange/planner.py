"""Pure withdraw planning: commissions, fees and the transactions of batches and maintenance
(DESIGN §6, ORIGINAL §3.5-3.6).

:func:`plan_batch` and :func:`plan_maintenance` build, from pending withdraws and candidate
inputs, a transaction that satisfies the peg's spend rules (BITBAYD §1.9) exactly, with a known
miner fee. Nothing here reads the ledger or the chain; :mod:`pegx.exchange.withdraws` runs them.

What must stay true: no output is ever below 0 (a withdraw that cannot be paid is left out),
and Σ inputs − Σ outputs is exactly the planned miner fee.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

import numpy as np

from pegx import peg
from pegx.chain.base import FREEZE_NOTARY_VALUE, MIN_FEE_PER_IO, NOTARY_VALUE, TxOut

log = logging.getLogger(__name__)

FEE_PER_OUTPUT = 10000
FEE_BASE = 500000
LIQUID_BATCH = 300  # withdraws per liquid batch
RESERVE_BATCH = 45  # distinct recipients per reserve batch
MAX_INPUTS = 100
MAINT_INPUTS = 45
MAINT_MIN = 10**8  # merge only when at least 1 BAY of liquid is involved
MIN_PAYOUT = 10000  # a payee gets more: Withdraw refuses amounts <= min commission + this
MAX_DROPS = 8  # NO_FUNDS retries, each leaving the largest withdraw for a later window
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


def f_notation(start: int, n: int) -> bytes:
    """The ``**F**`` index list of the original (§3.5 G) for ``n`` recipients from ``start``."""
    if n == 1:
        idx = [start] * 3
    elif n == 2:
        idx = [start, start + 1, start + 1]
    else:
        idx = list(range(start, start + n))
    return b"**F**" + ":".join(map(str, idx)).encode()


@dataclass
class Plan:
    """A transaction to sign: inputs, outputs, which outputs come back to the exchange."""

    inputs: list[str]
    outputs: list[TxOut]
    house_vouts: list[int]
    fee: int  # miner fee: Σ inputs − Σ outputs
    ids: list[str] = field(default_factory=list)
    total: int = 0  # Σ withdrawn amounts
    commission: int = 0


Candidate = tuple[str, str, np.ndarray]  # (key, address, fraction vector)


def _build(style: str, sel: list[Candidate], recipients: dict[str, int], total: int, comm: int,
           n_w: int, supply: int, acct0: str, fee_acct: str, master: str) -> Plan | str:
    """Outputs for the selected inputs, simulating the peg's fill order (devnet_peg rules)."""
    pools: dict[str, int] = {}
    liquid = 0
    for _, addr, vec in sel:
        pools[addr] = pools.get(addr, 0) + peg.reserve_of(vec, supply)
        liquid += peg.liquid_of(vec, supply)
    outs: list[TxOut] = []
    n_f = 0
    if style == peg.RESERVE:
        n_f = len(sel)
        note = f_notation(n_f, len(recipients))
        outs += [TxOut(FREEZE_NOTARY_VALUE, data=note) for _ in sel]
        need = total - comm  # rule 2: each notary moves its input address's reserve to payees
        for _, addr, _ in sel:
            t = min(pools[addr], need)
            pools[addr] -= t
            need -= t
        if need > 0:
            return NO_FUNDS
        for _ in range(n_f):  # rule 3: notary dust from reserve pools in address order
            need = FREEZE_NOTARY_VALUE
            for addr in sorted(pools):
                t = min(pools[addr], need)
                pools[addr] -= t
                need -= t
            liquid -= need
    else:
        liquid -= total - comm
    for addr in sorted(recipients):
        outs.append(TxOut(recipients[addr], address=addr))
    # liquid change: the commission pays every dust output, the miner fee and the fee account;
    # notary dust the reserve pools paid comes back as liquid the commission no longer needs
    change = liquid - comm + n_f * FREEZE_NOTARY_VALUE
    if change < 0:
        return NO_FUNDS
    ex = {a: r for a, r in pools.items() if r > 0}
    notary = NOTARY_VALUE if ex.get(acct0, 0) + change == 0 else 0
    dust = n_f * FREEZE_NOTARY_VALUE + NOTARY_VALUE + notary
    n_ex = len(set(ex) | {acct0, fee_acct})
    minimum = MIN_FEE_PER_IO * (len(sel) + len(outs) + n_ex + 1)
    fee = max(estimated_fees(n_w) - dust, minimum)
    fee_out = comm - dust - fee
    if fee_out < 0:
        return NO_FEES
    ex[acct0] = ex.get(acct0, 0) + change + notary
    if fee_out:
        ex[fee_acct] = ex.get(fee_acct, 0) + fee_out
    vouts = []
    for addr in sorted(ex):
        vouts.append(len(outs))
        outs.append(TxOut(ex[addr], address=addr))
    outs.append(TxOut(NOTARY_VALUE, data=master.encode()))
    value_in = sum(int(v.sum()) for _, _, v in sel)
    assert value_in - sum(o.value for o in outs) == fee, "fee arithmetic is off"
    return Plan([k for k, _, _ in sel], outs, vouts, fee, total=total, commission=comm)


def accepted_commission(rec: dict, cfg: dict) -> int:
    """The commission a withdraw pays: the one kept when it was accepted (Withdraw stores it);
    for a withdraw accepted before commissions were kept, the settings ``cfg`` of now."""
    kept = rec.get("commission")
    return commission(rec["amount"], cfg) if kept is None else int(kept)


def plan_batch(style: str, withdraws: list[tuple[str, dict]], candidates: list[Candidate],
               supply: int, acct0: str, fee_acct: str, cfg: dict, master: str) -> Plan | str:
    """The batch transaction for pending ``withdraws`` of ``style`` (ORIGINAL §3.5 C-H, fixed).

    Each withdraw pays the commission kept when it was accepted (:func:`accepted_commission`);
    one whose payee would get ``MIN_PAYOUT`` or less is left out (it expires and is refunded),
    so no output is ever negative. Recipients are merged by address, fees = 10000 per withdraw
    + 500000 (the dust outputs and the miner fee come out of it, the rest of the commission
    goes to the fee account). Inputs: liquid takes the smallest input that covers the batch
    alone, else the largest first; reserve takes the largest reserve first, then liquid inputs
    if the fees need them. When the inputs cannot fund the whole batch, the largest withdraws
    wait for a later window (up to ``MAX_DROPS`` tries beyond what the inputs' total rules
    out), so one withdraw never holds back the others. Outputs in a fixed order: ``**F**``
    notaries (reserve), recipients by address, exchange outputs by address (reserve back to its
    own address, change, fee), the id.
    Returns a :class:`Plan`, or the original's message when nothing can be built.
    """
    chosen: list[tuple[str, dict, int]] = []  # (id, record, commission)
    addresses: set[str] = set()
    for wid, rec in withdraws:
        c = accepted_commission(rec, cfg)
        if rec["amount"] - c <= MIN_PAYOUT:  # only a withdraw accepted before commissions
            log.warning("withdraw %s left out: a commission of %s leaves its payee %s (it "
                        "expires and is refunded)", wid, sat(c), sat(rec["amount"] - c))
            continue
        addr = rec["address"]
        if style == peg.RESERVE and addr not in addresses and len(addresses) >= RESERVE_BATCH:
            break
        if style == peg.LIQUID and len(chosen) >= LIQUID_BATCH:
            break
        chosen.append((wid, rec, c))
        addresses.add(addr)
    if not chosen:
        return "Success"
    # an input at a payee's address would pay that payee reserve first: keep them apart
    cands = [c for c in candidates if c[1] not in addresses and int(c[2].sum()) > 0]
    lq = {k: peg.liquid_of(v, supply) for k, _, v in cands}
    rs = {k: peg.reserve_of(v, supply) for k, _, v in cands}
    by_liquid = sorted(cands, key=lambda c: (-lq[c[0]], c[0]))
    by_reserve = sorted(cands, key=lambda c: (-rs[c[0]], c[0]))
    # what the inputs can give at most: for liquid exactly what a batch needs (its liquid
    # change is Σ selected liquid − Σ amounts), for reserve a bound (payees' reserve)
    if style == peg.LIQUID:
        most = sum(lq[k] for k, _, _ in by_liquid[:MAX_INPUTS])
    else:
        most = sum(rs[k] for k, _, _ in by_reserve[:RESERVE_BATCH])

    def need() -> int:
        if style == peg.LIQUID:
            return sum(r["amount"] for _, r, _ in chosen)
        return sum(r["amount"] - c for _, r, c in chosen)

    def drop_largest() -> None:
        i = max(range(len(chosen)), key=lambda j: (chosen[j][1]["amount"], j))
        wid, rec, _ = chosen.pop(i)
        log.info("withdraw %s (%s) waits for a later batch: the exchange's %s inputs cannot "
                 "fund it with the others now", wid, sat(rec["amount"]), style)

    while len(chosen) > 1 and need() > most:
        drop_largest()
    plan = _plan_chosen(style, chosen, by_liquid, by_reserve, lq, rs, supply, acct0, fee_acct,
                        master)
    for _ in range(MAX_DROPS):
        if plan != NO_FUNDS or len(chosen) == 1:
            break
        drop_largest()
        plan = _plan_chosen(style, chosen, by_liquid, by_reserve, lq, rs, supply, acct0,
                            fee_acct, master)
    return plan


def _plan_chosen(style: str, chosen: list[tuple[str, dict, int]], by_liquid: list[Candidate],
                 by_reserve: list[Candidate], lq: dict, rs: dict, supply: int, acct0: str,
                 fee_acct: str, master: str) -> Plan | str:
    """Select inputs for exactly the ``chosen`` withdraws and build their transaction."""
    recipients: dict[str, int] = {}
    ids, total, comm = [], 0, 0
    for wid, rec, c in chosen:
        recipients[rec["address"]] = recipients.get(rec["address"], 0) + rec["amount"] - c
        ids.append(wid)
        total += rec["amount"]
        comm += c
    if estimated_fees(len(ids)) > comm:
        return NO_FEES

    def build(sel):
        return _build(style, sel, recipients, total, comm, len(ids), supply, acct0, fee_acct,
                      master)

    sel: list[Candidate] = []
    if style == peg.LIQUID:
        covering = [c for c in by_liquid if lq[c[0]] >= total]
        if covering:
            sel = [covering[-1]]
        else:
            got = 0
            for c in by_liquid:
                if got >= total or len(sel) >= MAX_INPUTS or lq[c[0]] == 0:
                    break
                sel.append(c)
                got += lq[c[0]]
        plan = build(sel) if sel else NO_FUNDS
    else:
        got = 0
        for c in by_reserve:
            if got >= total - comm or len(sel) >= RESERVE_BATCH or rs[c[0]] == 0:
                break
            sel.append(c)
            got += rs[c[0]]
        plan = build(sel) if sel else NO_FUNDS
        rest = [c for c in by_liquid if c not in sel and lq[c[0]] > 0]
        while plan == NO_FUNDS and rest and len(sel) < RESERVE_BATCH:
            sel.append(rest.pop(0))  # liquid for the commission's fee and dust
            plan = build(sel)
    if isinstance(plan, Plan):
        plan.ids = ids
    return plan


def plan_maintenance(candidates: list[Candidate], supply: int, acct0: str,
                     master: str) -> Plan | str | None:
    """Merge inputs of differing liquidity quality into 4 outputs to ``acct0`` (ORIGINAL §3.6).

    None when there is nothing to merge (one rating, or less than 1 BAY of liquid); the
    reserve of every input goes back to its own address.
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
    if fee < MIN_FEE_PER_IO * (len(cands) + len(outs)):
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
