"""Withdraw batching, fees, input selection and the withdraw lifecycle (DESIGN §6, ORIGINAL §3.5-3.9).

:func:`plan_batch` and :func:`plan_maintenance` are pure: from pending withdraws and candidate
inputs they build a transaction that satisfies the peg's spend rules (BITBAYD §1.9) exactly,
with a known miner fee. :class:`WithdrawDesk` runs them in the block windows and follows every
transaction it sent until it is ``Complete`` (the coins leave the ledger) or ``Failed/Declined``
(refunded, only once the transaction can no longer confirm). :func:`conservation` states the
ledger's law so tests and operators can check it in-process.

What must stay true:
* Everything about a batch (signed raw tx, inputs, withdraws, history) is committed before it is
  broadcast, so after a crash the desk resumes from the ledger alone.
* Inputs of a batch in flight stay registered (marked ``batch``) and are never selected again;
  the desk, not the cycle, registers the transaction's exchange-bound outputs, in the same
  commit that spends the inputs and burns the withdraws.
* Σ accounts + drift == Σ registered inputs, per step and exactly; the drift is 0 in value.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

import numpy as np

from pegx import peg
from pegx.chain.base import (
    CYCLE_BLOCKS,
    FREEZE_NOTARY_VALUE,
    MIN_FEE_PER_IO,
    NOTARY_VALUE,
    ChainError,
    ChainRejected,
    Tip,
    Tx,
    TxOut,
    WalletLocked,
    outpoint,
)
from pegx.ledger import engine

log = logging.getLogger(__name__)

NO_RETURN_ADDRESS = "No return address for exchange"
NO_FEE_ADDRESS = "No address for collecting withdraw fees"

TASK_SPACING = 25  # blocks between two window tasks (ORIGINAL §2.7), in a 200-block cycle
FEE_PER_OUTPUT = 10000
FEE_BASE = 500000
LIQUID_BATCH = 300  # withdraws per liquid batch
RESERVE_BATCH = 45  # distinct recipients per reserve batch
MAX_INPUTS = 100
MAINT_INPUTS = 45
MAINT_MIN = 10**8  # merge only when at least 1 BAY of liquid is involved
MAX_REFUSALS = 3  # refused rebroadcasts (one per block) before the batch is cancelled
CANCEL_FEE = 2 * MIN_FEE_PER_IO  # one input, one output
CONFIRMATIONS = 1  # a mined transaction completes its withdraws
NO_FEES = ("Not enough funds for fees. Withdraws need more funds to cover it. Try setting higher "
           "commissions for withdraws.")
NO_FUNDS = "Not enough funds"


def task_spacing(interval: int = CYCLE_BLOCKS) -> int:
    """Blocks between two window tasks: 25 of a 200-block cycle, scaled to ``interval``
    (testnet's 20-block cycle: 2)."""
    return max(1, TASK_SPACING * interval // CYCLE_BLOCKS)


def window_task(height: int, interval: int = CYCLE_BLOCKS) -> str | None:
    """The task of a block position in the cycle: 10-74 liquid, 75-119 reserve, 120-144
    maintenance, 145-174 status checks, otherwise none (positions of a 200-block cycle; a
    cycle of another length is mapped onto them in proportion)."""
    pos = height % interval * CYCLE_BLOCKS // interval
    if 10 <= pos < 75:
        return "liquid"
    if 75 <= pos < 120:
        return "reserve"
    if 120 <= pos < 145:
        return "maintenance"
    if 145 <= pos < 175:
        return "status"
    return None


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


def plan_batch(style: str, withdraws: list[tuple[str, dict]], candidates: list[Candidate],
               supply: int, acct0: str, fee_acct: str, cfg: dict, master: str) -> Plan | str:
    """The batch transaction for pending ``withdraws`` of ``style`` (ORIGINAL §3.5 C-H, fixed).

    Commission per withdraw, recipients merged by address, fees = 10000 per withdraw + 500000
    (the dust outputs and the miner fee come out of it, the rest of the commission goes to the
    fee account). Inputs: liquid takes the smallest input that covers the batch alone, else the
    largest first; reserve takes the largest reserve first, then liquid inputs if the fees need
    them. Outputs in a fixed order: ``**F**`` notaries (reserve), recipients by address,
    exchange outputs by address (reserve back to its own address, change, fee), the id.
    Returns a :class:`Plan`, or the original's message when nothing can be built.
    """
    recipients: dict[str, int] = {}
    ids, total, comm = [], 0, 0
    for wid, rec in withdraws:
        addr = rec["address"]
        if style == peg.RESERVE and addr not in recipients and len(recipients) >= RESERVE_BATCH:
            break
        if style == peg.LIQUID and len(ids) >= LIQUID_BATCH:
            break
        c = commission(rec["amount"], cfg)
        recipients[addr] = recipients.get(addr, 0) + rec["amount"] - c
        ids.append(wid)
        total += rec["amount"]
        comm += c
    if not ids:
        return "Success"
    if estimated_fees(len(ids)) > comm:
        return NO_FEES
    # an input at a payee's address would pay that payee reserve first: keep them apart
    cands = [c for c in candidates if c[1] not in recipients and int(c[2].sum()) > 0]
    lq = {k: peg.liquid_of(v, supply) for k, _, v in cands}
    rs = {k: peg.reserve_of(v, supply) for k, _, v in cands}
    by_liquid = sorted(cands, key=lambda c: (-lq[c[0]], c[0]))

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
        for c in sorted(cands, key=lambda c: (-rs[c[0]], c[0])):
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


def conservation(ledger: engine.Exchange) -> dict:
    """The ledger's law, checked exactly (a pure read; hold no lock when calling).

    ``ok``: per step Σ accounts + drift == Σ registered inputs; ``drift_value`` (must be 0);
    ``liquid_ok``: Σ published user liquid <= the exchange's liquid.
    """
    with ledger.lock:
        n = len(ledger.names)
        accounts = ledger.matrix[:n].sum(axis=0)
        registered = np.zeros(peg.PEG_SIZE, dtype=np.int64)
        for key in ledger.tables["inputs"]:
            registered += ledger.vectors[("inputs", key)]
        drift = ledger.drift()
        users = [i for i, name in enumerate(ledger.names) if name not in engine.INTERNAL]
        user_liquid = int(ledger.view[users, 0].sum()) if users else 0
        liquid = int(ledger.meta["totals"]["liquid"])
    off = accounts + drift - registered
    return {"ok": not off.any(), "steps_off": int(np.count_nonzero(off)),
            "accounts": int(accounts.sum()), "registered": int(registered.sum()),
            "drift_value": int(drift.sum()), "drift_abs": int(np.abs(drift).sum()),
            "user_liquid": user_liquid, "exchange_liquid": liquid,
            "liquid_ok": user_liquid <= liquid}


def _fmt(n: int) -> str:
    return f"{n:,d} sat"


class WithdrawDesk:
    """Batches withdraws in the block windows and follows each batch to its end (DESIGN §6).

    ``run`` is called by the exchange cycle after every pass. Every pass tracks the batches in
    flight and expires stale withdraws (cheap); the window task runs when 25 blocks have passed
    since the last one (``meta/desk.last_task_height``), whatever its outcome, so a failing
    task is logged and never retried in a tight loop.
    """

    def __init__(self, ledger: engine.Exchange, chain):
        self.ledger = ledger
        self.chain = chain
        self.last_result = ""

    # ---------------------------------------------------------------- the pass
    def run(self, tip: Tip, now: int, cycle) -> None:
        """One pass: track batches, expire stale withdraws, maybe run the window task."""
        self.track(tip, now, cycle)
        self.expire(tip, cycle.cycle())
        state = self.ledger.record("meta", "desk") or {"last_task_height": 0}
        if tip.height - state["last_task_height"] < task_spacing(tip.interval):
            return
        task = window_task(tip.height, tip.interval)
        try:
            if task in (peg.LIQUID, peg.RESERVE):
                result = self.batch(task, tip, cycle)
            elif task == "maintenance":
                result = self.maintenance(tip, cycle)
            elif task == "status":
                result = self.status_summary()
            else:
                result = "nothing to do at this block position"
        except ChainError as exc:
            result = f"chain: {exc}"
            if isinstance(exc, WalletLocked):  # pegx.status shows it until ExchangePassword
                cycle.wallet_note = str(exc)
            log.warning("withdraw task %s at height %s failed: %s", task, f"{tip.height:,d}", exc)
        except Exception as exc:  # logged; the next window tries again, never a tight loop
            result = f"{type(exc).__name__}: {exc}"
            log.exception("withdraw task %s at height %s failed", task, f"{tip.height:,d}")
        self.last_result = str(result)
        if result in (NO_RETURN_ADDRESS, NO_FEE_ADDRESS) and self.ledger.tables["withdraws"]:
            # withdraws keep being accepted and would silently expire: say why, each window
            log.warning("withdraws are pending but cannot be batched: %s (set it with "
                        "ExchangeSettings)", result)
        self.ledger.put("meta", "desk", {"last_task_height": tip.height, "task": task,
                                         "result": self.last_result})

    # ---------------------------------------------------------------- batching
    def _candidates(self, cycle) -> list[Candidate]:
        """Confirmed, registered, unfrozen exchange inputs not already in a batch."""
        out = []
        spendable = cycle.spendable()
        with self.ledger.lock:
            inputs = self.ledger.tables["inputs"]
            for key in sorted(spendable):
                rec = inputs.get(key)
                if rec is not None and "batch" not in rec:
                    out.append((key, rec["address"], self.ledger.vectors[("inputs", key)].copy()))
        return out

    def batch(self, style: str, tip: Tip, cycle) -> str:
        """Build, record and broadcast one batch of pending ``style`` withdraws."""
        settings = self.ledger.exchange_settings()
        if not settings["exchangeaccounts"]:
            return NO_RETURN_ADDRESS
        if not settings["exchangefeeaccount"]:
            return NO_FEE_ADDRESS
        pending = sorted(((w, r) for w, r in self.ledger.records("withdraws").items()
                          if r["style"] == style and "batch" not in r),
                         key=lambda item: (item[1]["cycle"], item[0]))
        if not pending:
            return "Success"
        master = os.urandom(16).hex()
        plan = plan_batch(style, pending, self._candidates(cycle), tip.supply,
                          settings["exchangeaccounts"][0], settings["exchangefeeaccount"],
                          settings["commission"], master)
        if not isinstance(plan, Plan):
            if plan != "Success":
                log.warning("%s withdraws not batched at height %s: %s", style,
                            f"{tip.height:,d}", plan)
            return plan
        return self._send(style, plan, master, tip, cycle)

    def maintenance(self, tip: Tip, cycle) -> str:
        """Account maintenance (ORIGINAL §3.6), paid by the house account."""
        settings = self.ledger.exchange_settings()
        if not settings["exchangeaccounts"]:
            return NO_RETURN_ADDRESS
        master = os.urandom(16).hex()
        plan = plan_maintenance(self._candidates(cycle), tip.supply,
                                settings["exchangeaccounts"][0], master)
        if plan is None:
            return "Success"
        if not isinstance(plan, Plan):
            return plan
        house = self.ledger.row(engine.HOUSE)
        cost = plan.fee + NOTARY_VALUE
        if house is None or int(house.sum()) < cost:
            return f"the house account cannot pay {_fmt(cost)} for account maintenance"
        return self._send("maintenance", plan, master, tip, cycle)

    def _send(self, kind: str, plan: Plan, master: str, tip: Tip, cycle) -> str:
        signed = self.chain.create_transaction(plan.inputs, plan.outputs, cycle.passphrase)
        batch = {"kind": kind, "ids": plan.ids, "ins": plan.inputs, "txid": signed.txid,
                 "raw": signed.raw, "house_vouts": plan.house_vouts, "fee": plan.fee,
                 "total": plan.total, "commission": plan.commission, "state": "sent",
                 "height": tip.height, "refusals": 0, "last_try": tip.height}
        put = engine.Exchange.put_op
        ops = [put("batches", master, batch)]
        with self.ledger.lock:
            for wid in plan.ids:
                ops.append(put("withdraws", wid, {**self.ledger.tables["withdraws"][wid],
                                                  "batch": master}))
                ops.append(put("history", wid, master))
            for key in plan.inputs:
                ops.append(put("inputs", key, {**self.ledger.tables["inputs"][key],
                                               "batch": master}))
        ops.append(put("history", master, {"status": "unconfirmed", "txid": signed.txid,
                                           "ID": master, "block": tip.height,
                                           "in0": plan.inputs[0]}))
        self.ledger.commit(ops)  # durable before the transaction can exist anywhere
        log.info("%s batch %s: tx %s, %d withdraws, %s out, commission %s, miner fee %s, "
                 "%d inputs", kind, master, signed.txid, len(plan.ids), _fmt(plan.total),
                 _fmt(plan.commission), _fmt(plan.fee), len(plan.inputs))
        for wid in plan.ids:
            log.info("withdraw %s: unconfirmed (batch %s, tx %s)", wid, master, signed.txid)
        try:
            self.chain.broadcast(signed.raw)
        except ChainError as exc:  # tracking rebroadcasts; refusals lead to a cancel
            log.warning("batch %s: broadcast failed: %s", master, exc)
            if isinstance(exc, ChainRejected):
                self._bump(master, tip.height)
            return "Transaction declined"
        return "Success"

    def _bump(self, master: str, height: int) -> dict:
        b = self.ledger.record("batches", master)
        b["refusals"] += 1
        b["last_try"] = height
        self.ledger.put("batches", master, b)
        return b

    # ---------------------------------------------------------------- expiry
    def expire(self, tip: Tip, current_cycle: int) -> None:
        """Refund withdraws not batched by the end of the cycle after their request."""
        stale = [(w, r) for w, r in self.ledger.records("withdraws").items()
                 if "batch" not in r and r["cycle"] < current_cycle - 1]
        if not stale:
            return
        ops = []
        for wid, _ in stale:
            ops.append({"op": "refund", "id": wid})
            ops.append(engine.Exchange.put_op("history", wid, {
                "status": "Expired", "txid": "", "ID": wid, "block": tip.height, "in0": ""}))
        self.ledger.commit(ops, supply=self.ledger.supply, now=tip.time)
        for wid, rec in stale:
            log.info("withdraw %s: Expired, %s refunded to %s", wid, _fmt(rec["amount"]),
                     rec["user"])

    # ---------------------------------------------------------------- tracking
    def active(self) -> dict:
        """Batches still in flight {master: record}."""
        with self.ledger.lock:
            return {m: dict(b) for m, b in self.ledger.tables["batches"].items()
                    if b["state"] in ("sent", "cancelling")}

    def status_summary(self) -> str:
        pending = len(self.ledger.tables["withdraws"])
        text = f"{pending} withdraws pending or in flight, {len(self.active())} batches in flight"
        log.info("withdraw status: %s", text)
        return text

    def _find(self, master: str, b: dict) -> Tx | None:
        """The batch's transaction, or its malleated twin: same first input and OP_RETURN id."""
        tx = self.chain.get_transaction(b.get("txid2") or b["txid"])
        if tx is not None:
            return tx
        spender = getattr(self.chain, "spender", None)
        if spender is not None:
            txids = [spender(b["ins"][0])]
        else:  # a real node: look at the transactions that paid the exchange
            txids = sorted({u.txid for u in self.chain.list_unspent()})
        for txid in txids:
            if txid is None or txid == b["txid"]:
                continue
            t = self.chain.get_transaction(txid)
            if t is not None and t.inputs[:1] == b["ins"][:1] and t.op_return == master.encode():
                return t
        return None

    def track(self, tip: Tip, now: int, cycle) -> None:
        """Move every batch in flight along its lifecycle (see the module docstring)."""
        for master, b in sorted(self.active().items(), key=lambda kv: kv[1]["height"]):
            try:
                self._track_one(master, b, tip, now, cycle)
            except ChainError as exc:
                log.warning("batch %s: status check failed: %s", master, exc)

    def _track_one(self, master: str, b: dict, tip: Tip, now: int, cycle) -> None:
        tx = self._find(master, b)
        if tx is not None:
            hist = self.ledger.record("history", master) or {}
            changed = False
            if tx.txid != b["txid"] and hist.get("txid2") != tx.txid:
                hist["txid2"] = tx.txid
                b["txid2"] = tx.txid
                changed = True
                log.info("batch %s: tx %s was malleated into %s", master, b["txid"], tx.txid)
            if hist.get("status") == "unconfirmed":
                hist["status"] = "Processing"
                changed = True
                for wid in b["ids"]:
                    log.info("withdraw %s: Processing (tx %s)", wid, tx.txid)
            if changed:
                self.ledger.put_many([("history", master, hist), ("batches", master, b)])
            if tx.height and tx.confirmations >= CONFIRMATIONS:
                self._complete(master, b, tx, hist, now)
            return
        if b["state"] == "cancelling":
            self._track_cancel(master, b, tip, now)
            return
        if not all(self.chain.is_unspent(k) for k in b["ins"]):
            # an input went elsewhere: this transaction can never confirm
            self._decline(master, b, None, now, "an input was spent by another transaction")
            return
        if tip.height <= b["last_try"]:
            return  # one rebroadcast per block at most
        try:
            self.chain.broadcast(b["raw"])
            b["last_try"] = tip.height
            self.ledger.put("batches", master, b)
            log.info("batch %s: rebroadcast tx %s", master, b["txid"])
        except ChainRejected as exc:
            b = self._bump(master, tip.height)
            log.warning("batch %s: rebroadcast refused (%d/%d): %s", master, b["refusals"],
                        MAX_REFUSALS, exc)
            if b["refusals"] >= MAX_REFUSALS:
                self._start_cancel(master, b, tip, cycle)

    def _start_cancel(self, master: str, b: dict, tip: Tip, cycle) -> None:
        """Spend one batch input back to its own address so the batch can never confirm."""
        with self.ledger.lock:
            key = max(b["ins"], key=lambda k: (self.ledger.tables["inputs"][k]["value"], k))
            rec = dict(self.ledger.tables["inputs"][key])
        signed = self.chain.create_transaction(
            [key], [TxOut(rec["value"] - CANCEL_FEE, address=rec["address"])], cycle.passphrase)
        b.update(state="cancelling", cancel={"txid": signed.txid, "raw": signed.raw, "in": key},
                 last_try=tip.height)
        self.ledger.put("batches", master, b)
        log.warning("batch %s: refused %d times; cancelling it with tx %s (spends %s)", master,
                    b["refusals"], signed.txid, key)
        try:
            self.chain.broadcast(signed.raw)
        except ChainError as exc:
            log.warning("batch %s: cancel broadcast failed: %s", master, exc)

    def _track_cancel(self, master: str, b: dict, tip: Tip, now: int) -> None:
        c = b["cancel"]
        ctx = self.chain.get_transaction(c["txid"])
        if ctx is not None:
            if ctx.height and ctx.confirmations >= CONFIRMATIONS:
                self._decline(master, b, ctx, now, "cancelled after refusals")
            return
        if not self.chain.is_unspent(c["in"]):
            self._decline(master, b, None, now, "an input was spent by another transaction")
            return
        if tip.height > b["last_try"]:
            b["last_try"] = tip.height
            self.ledger.put("batches", master, b)
            try:
                self.chain.broadcast(c["raw"])
            except ChainError as exc:
                log.warning("batch %s: cancel rebroadcast failed: %s", master, exc)

    # ---------------------------------------------------------------- endings
    def _settle(self, spent: list[str], tx: Tx | None, vouts: list[int], burned: list[str],
                ops: list[dict]) -> None:
        """Ops that spend ``spent``, register ``tx``'s ``vouts``, burn ``burned`` withdraws and
        square the house account and the drift, exactly (appended to ``ops``)."""
        led = self.ledger
        reg = np.zeros(peg.PEG_SIZE, dtype=np.int64)
        value = 0
        with led.lock:
            for key in spent:
                reg -= led.vectors[("inputs", key)]
                value -= led.tables["inputs"][key]["value"]
            wd = np.zeros(peg.PEG_SIZE, dtype=np.int64)
            for wid in burned:
                wd += led.vectors[("withdraws", wid)]
                value += led.tables["withdraws"][wid]["amount"]
            house = led.row(engine.HOUSE)
        if burned:
            ops.append({"op": "burn", "ids": list(burned)})
        if spent:
            ops.append({"op": "spend", "keys": list(spent)})
        for vout in vouts:
            key = outpoint(tx.txid, vout)
            vec = self.chain.get_fractions(key)
            out = tx.outputs[vout]
            reg += vec
            value += out.value
            ops.append(engine.Exchange.credit_op(key, out.value, vec, owner=None,
                                                 address=out.address, change=True,
                                                 height=tx.height))
            ops.append(engine.Exchange.put_op("claims", key,
                                              {"name": "exchange", "registered": 1}))
        # value is now what the house gains (commissions − miner fee − dust) or pays (< 0)
        delta = reg + wd  # what the ledger must gain per step for zero drift
        if value > 0:
            hv = peg.deduction(np.maximum(delta, 0), value, peg.LIQUID, led.supply)
        elif value < 0:
            take = min(-value, int(house.sum()) if house is not None else 0)
            hv = (-peg.deduction(house, take, peg.LIQUID, led.supply) if take
                  else np.zeros(peg.PEG_SIZE, dtype=np.int64))
            if take < -value:
                log.error("the house account cannot pay %s of transaction costs; the ledger "
                          "now owes more than the exchange holds", _fmt(-value - take))
        else:
            hv = np.zeros(peg.PEG_SIZE, dtype=np.int64)
        if hv.any():
            ops.append(engine.Exchange.adjust_op(engine.HOUSE, hv))
        drift = delta - hv
        if drift.any():
            ops.append(engine.Exchange.drift_op(drift))

    def _complete(self, master: str, b: dict, tx: Tx, hist: dict, now: int) -> None:
        ops: list[dict] = []
        with self.ledger.lock:
            ids = [w for w in b["ids"] if w in self.ledger.tables["withdraws"]]
        self._settle(b["ins"], tx, b["house_vouts"], ids, ops)
        hist["status"] = "Complete"
        b.update(state="done", final_txid=tx.txid)
        b.pop("raw", None)
        ops.append(engine.Exchange.put_op("history", master, hist))
        ops.append(engine.Exchange.put_op("batches", master, b))
        self.ledger.commit(ops, supply=self.ledger.supply, now=now)
        log.info("%s batch %s: Complete in block %s (tx %s)", b["kind"], master,
                 f"{tx.height:,d}", tx.txid)
        for wid in ids:
            log.info("withdraw %s: Complete (tx %s)", wid, tx.txid)

    def _decline(self, master: str, b: dict, cancel: Tx | None, now: int, why: str) -> None:
        ops: list[dict] = []
        put = engine.Exchange.put_op
        with self.ledger.lock:
            ids = [w for w in b["ids"] if w in self.ledger.tables["withdraws"]]
            amounts = {w: self.ledger.tables["withdraws"][w]["amount"] for w in ids}
            gone = b["cancel"]["in"] if cancel is not None else None
            for key in b["ins"]:
                rec = self.ledger.tables["inputs"].get(key)
                if rec is not None and key != gone:
                    ops.append(put("inputs", key, {k: v for k, v in rec.items() if k != "batch"}))
        ops += [{"op": "refund", "id": w} for w in ids]
        if cancel is not None:
            self._settle([gone], cancel, [0], [], ops)
        hist = self.ledger.record("history", master) or {
            "txid": b["txid"], "ID": master, "block": b["height"], "in0": b["ins"][0]}
        hist["status"] = "Failed/Declined"
        b.update(state="failed", reason=why)
        b.pop("raw", None)
        ops.append(put("history", master, hist))
        ops.append(put("batches", master, b))
        self.ledger.commit(ops, supply=self.ledger.supply, now=now)
        log.warning("%s batch %s: Failed/Declined (%s)", b["kind"], master, why)
        for wid in ids:
            log.info("withdraw %s: Failed/Declined, %s refunded", wid, _fmt(amounts[wid]))
