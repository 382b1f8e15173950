"""The withdraw lifecycle: batches in the block windows, tracking, cancels (DESIGN §6,
ORIGINAL §3.5-3.9).

The transactions are planned by the pure :mod:`pegx.exchange.planner` (commissions, fees,
input selection). :class:`WithdrawDesk` runs it in the block windows and follows every
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
* A withdraw pays the commission in force when it was accepted (kept in its record), so a
  later ExchangeSettings never changes it; the planner builds no output below 0 and leaves
  out a withdraw it cannot pay or fund rather than fail the batch.
* A cancel is found like a batch, by the transaction that spends its input, so a malleated
  cancel settles like the original (input spent, output registered).

Who pays the exchange's own transactions (exact; the house account is ``exchange``):
* A withdraw batch that completes pays its miner fee and dust from its commissions; the
  rest is the fee-account output, which the house account gains.
* Account maintenance is paid by the house account, and is only sent when the house can pay
  it from its *free* funds: its balance minus the cost of every maintenance transaction still
  in flight (:meth:`WithdrawDesk.house_free`). That held-back cost also covers the
  maintenance's own cancel (CANCEL_FEE is smaller).
* A cancel's miner fee (CANCEL_FEE, 10,000 sat) is paid by the house account's free funds
  as far as they go; what they cannot pay is withheld from the refunds of the cancelled
  batch's withdraws, in proportion to the commissions they would have paid (floor shares,
  the remaining satoshi to the largest remainders, ties by id), never more than a withdraw's
  commission. A batch's commissions are at least 10,000 sat per withdraw + 500,000, so they
  always cover it; the withheld steps are taken from each withdraw's own steps.
* So the house account never pays more than it holds: if a settlement would need that
  (a ledger changed by hand), the desk commits nothing, logs an error and retries.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pegx import peg
from pegx.chain.base import (
    CYCLE_BLOCKS,
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
from pegx.exchange.planner import (
    Candidate,
    Plan,
    accepted_commission,
    plan_batch,
    plan_maintenance,
    split_cost,
)
from pegx.exchange.planner import sat as _fmt
from pegx.ledger import engine

log = logging.getLogger(__name__)

NO_RETURN_ADDRESS = "No return address for exchange"
NO_FEE_ADDRESS = "No address for collecting withdraw fees"

TASK_SPACING = 25  # blocks between two window tasks (ORIGINAL §2.7), in a 200-block cycle
MAX_REFUSALS = 3  # refused rebroadcasts (one per block) before the batch is cancelled
CANCEL_FEE = 2 * MIN_FEE_PER_IO  # one input, one output
CONFIRMATIONS = 1  # the final depth when no exchange cycle says otherwise (tests driving the desk)


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


class DeskError(RuntimeError):
    """A batch that cannot be settled without breaking the ledger's law (nothing committed)."""


def maintenance_cost(b: dict) -> int:
    """What a maintenance batch charges the house account: its miner fee and the OP_RETURN
    id's dust (its cancel, CANCEL_FEE, costs less)."""
    return int(b["fee"]) + NOTARY_VALUE


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


def house_outpoints(batch: dict) -> set[str]:
    """The outputs of the exchange's own transaction ``batch`` that come back to it: the
    plan's ``house_vouts`` (reserve back to its address, change, fee, notary to acct0) under
    every txid the transaction had (sent, malleated, mined), and a cancel's one output.

    These and only these are change: ``_complete`` and ``_decline`` register exactly them
    (``_settle``), and the cycle flags exactly them ``change`` in Spendable. A payee output is
    not, even when it pays one of the exchange's addresses: it is a deposit to claim.
    """
    out = set()
    for txid in {batch.get("txid"), batch.get("txid2"), batch.get("final_txid")} - {None}:
        out.update(outpoint(txid, v) for v in batch.get("house_vouts", ()))
    cancel = batch.get("cancel")
    if cancel:
        for txid in {cancel.get("txid"), cancel.get("txid2")} - {None}:
            out.add(outpoint(txid, 0))
    return out


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
        # confirmations that make a block final (pegx.exchange.follow); set by each pass
        self.final = CONFIRMATIONS

    # ---------------------------------------------------------------- the pass
    def run(self, tip: Tip, now: int, cycle) -> None:
        """One pass: track batches, expire stale withdraws, maybe run the window task."""
        final_depth = getattr(cycle, "final_depth", None)
        self.final = final_depth() if final_depth is not None else CONFIRMATIONS
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
        # why each style's last batch task could not batch (pegx status shows it); a batch
        # sent, even one whose broadcast failed (tracking resends it), clears it
        blocked = dict(state.get("blocked", {}))
        if task in (peg.LIQUID, peg.RESERVE):
            if result in ("Success", "Transaction declined"):
                blocked.pop(task, None)
            else:
                blocked[task] = self.last_result
        self.ledger.put("meta", "desk", {"last_task_height": tip.height, "task": task,
                                         "result": self.last_result, "blocked": blocked})

    def not_batchable(self) -> str:
        """Why the pending (unbatched) withdraws cannot be batched, as the last batch task of
        their style said ('' when nothing is pending or nothing stood in the way)."""
        blocked = (self.ledger.record("meta", "desk") or {}).get("blocked", {})
        with self.ledger.lock:
            styles = {w["style"] for w in self.ledger.tables["withdraws"].values()
                      if "batch" not in w}
        why = {s: blocked[s] for s in peg.STYLES if s in styles and blocked.get(s)}
        if len(set(why.values())) == 1:
            return next(iter(why.values()))
        return "; ".join(f"{s}: {r}" for s, r in why.items())

    def _unspendable_return(self, acct0: str) -> str | None:
        """Why change must not go to ``acct0`` (the wallet has no key for it), or None.
        ExchangeSettings refuses such accounts; this guards settings stored before it did."""
        if self.chain.is_mine(acct0):
            return None
        log.warning("exchange account %s is not an address of the wallet: nothing is sent "
                    "until ExchangeSettings names one that is", acct0)
        return (f"Exchange account {acct0} is not an address of the exchange's wallet, which "
                "could not spend the change sent to it")

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
        refused = self._unspendable_return(settings["exchangeaccounts"][0])
        if refused:
            return refused
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
        refused = self._unspendable_return(settings["exchangeaccounts"][0])
        if refused:
            return refused
        master = os.urandom(16).hex()
        plan = plan_maintenance(self._candidates(cycle), tip.supply,
                                settings["exchangeaccounts"][0], master)
        if plan is None:
            return "Success"
        if not isinstance(plan, Plan):
            return plan
        cost = plan.fee + NOTARY_VALUE
        free, held = self.house_free()
        if free < cost:
            return (f"the house account cannot pay {_fmt(cost)} for account maintenance "
                    f"({_fmt(free)} free, {_fmt(held)} held for maintenance in flight)")
        return self._send("maintenance", plan, master, tip, cycle)

    def house_free(self, exclude: str | None = None) -> tuple[int, int]:
        """(what the house account may spend, what it holds back): the house keeps the cost of
        every maintenance transaction in flight (but ``exclude``'s), which covers that
        transaction's cancel too, so no later charge can leave one unpaid."""
        with self.ledger.lock:
            held = sum(maintenance_cost(b) for m, b in self.ledger.tables["batches"].items()
                       if m != exclude and b["kind"] == "maintenance"
                       and b["state"] in ("sent", "cancelling"))
            house = self.ledger.row(engine.HOUSE)
        have = 0 if house is None else int(house.sum())
        return max(0, have - held), held

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
                                           "in0": plan.inputs[0], "confirmations": 0}))
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

    def _spenders(self, key: str) -> list[Tx]:
        """Transactions (mined or in the mempool) that may spend ``key``: the devnet names its
        spender; on a real node, every transaction that paid the wallet and spends ``key``
        (each of ours pays an exchange address: change, notary or the cancel's output)."""
        spender = getattr(self.chain, "spender", None)
        if spender is not None:
            txids = [t for t in [spender(key)] if t is not None]
        else:
            txids = sorted({u.txid for u in self.chain.list_unspent()})
        found = []
        for txid in txids:
            tx = self.chain.get_transaction(txid)
            if tx is not None and key in tx.inputs:
                found.append(tx)
        return found

    def _find(self, master: str, b: dict) -> Tx | None:
        """The batch's transaction, or its malleated twin: same first input and OP_RETURN id."""
        tx = self.chain.get_transaction(b.get("txid2") or b["txid"])
        if tx is not None:
            return tx
        for t in self._spenders(b["ins"][0]):
            if t.txid != b["txid"] and t.inputs[:1] == b["ins"][:1] and \
                    t.op_return == master.encode():
                return t
        return None

    def _find_cancel(self, b: dict) -> Tx | None:
        """The batch's cancel, or its malleated twin: the one transaction spending exactly the
        cancel's input into one output of value − CANCEL_FEE at the input's own address."""
        c = b["cancel"]
        tx = self.chain.get_transaction(c.get("txid2") or c["txid"])
        if tx is not None:
            return tx
        rec = self.ledger.record("inputs", c["in"])  # registered until the cancel settles
        if rec is None:
            return None
        want = [TxOut(rec["value"] - CANCEL_FEE, address=rec["address"])]
        for t in self._spenders(c["in"]):
            if t.inputs == [c["in"]] and list(t.outputs) == want:
                return t
        return None

    def track(self, tip: Tip, now: int, cycle) -> None:
        """Move every batch in flight along its lifecycle (see the module docstring)."""
        for master, b in sorted(self.active().items(), key=lambda kv: kv[1]["height"]):
            try:
                self._track_one(master, b, tip, now, cycle)
            except ChainError as exc:
                log.warning("batch %s: status check failed: %s", master, exc)
            except DeskError as exc:  # nothing was committed; the batch stays in flight
                log.error("batch %s: cannot settle: %s", master, exc)

    def _track_one(self, master: str, b: dict, tip: Tip, now: int, cycle) -> None:
        tx = self._find(master, b)
        hist = self.ledger.record("history", master) or {}
        if tx is not None:
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
                    log.info("withdraw %s: Processing (tx %s %s)", wid, tx.txid,
                             f"in block {tx.height:,d}" if tx.height else "in the mempool")
            conf = tx.confirmations if tx.height else 0
            if hist.get("confirmations", 0) != conf and hist.get("status") == "Processing":
                if conf < hist.get("confirmations", 0):  # a reorganisation moved it
                    log.warning("batch %s: tx %s now has %d confirmations (had %d): %s",
                                master, tx.txid, conf, hist.get("confirmations", 0),
                                f"in block {tx.height:,d}" if tx.height else "in the mempool")
                hist["confirmations"] = conf
                changed = True
            if b.pop("gone_since", None) is not None:
                changed = True
            if changed:
                self.ledger.put_many([("history", master, hist), ("batches", master, b)])
            if tx.height and tx.confirmations >= self.final:
                self._complete(master, b, tx, hist, now)
            return
        if hist.get("status") == "Processing":
            # seen before, on no branch or mempool now: what the chain proved is gone
            hist.update(status="unconfirmed", confirmations=0)
            self.ledger.put("history", master, hist)
            for wid in b["ids"]:
                log.warning("withdraw %s: back to unconfirmed (tx %s is no longer on the "
                            "chain or in the mempool; it is broadcast again)", wid,
                            b.get("txid2") or b["txid"])
        if b["state"] == "cancelling":
            self._track_cancel(master, b, tip, now)
            return
        gone = [k for k in b["ins"] if not self.chain.is_unspent(k)]
        if gone:
            # an input went elsewhere: this transaction cannot confirm on this branch
            self._spent_elsewhere(master, b, gone, tip, now)
            return
        if b.pop("gone_since", None) is not None:
            self.ledger.put("batches", master, b)
            log.warning("batch %s: its inputs are unspent again (a reorganisation); it is "
                        "broadcast again", master)
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

    def _cancel_shaped(self, key: str, t: Tx) -> bool:
        """Is ``t`` a spend of registered input ``key`` whole back to its own address less
        CANCEL_FEE? Only the exchange's key can sign it, and it is exactly the cancel the desk
        signs for ``key`` (deterministic signatures), whoever broadcast it."""
        rec = self.ledger.record("inputs", key)
        return rec is not None and t.inputs == [key] and list(t.outputs) == [
            TxOut(rec["value"] - CANCEL_FEE, address=rec["address"])]

    def _spent_elsewhere(self, master: str, b: dict, gone: list[str], tip: Tip,
                         now: int) -> None:
        """Inputs of the batch are spent by other transactions: adopt one that is the batch's
        cancel; decline the batch only once a spender is final (``self.final`` deep), or, for
        a spender pegx cannot see, once the input has been spent for that many blocks."""
        spenders = {k: self._spenders(k) for k in gone}
        for key in gone:
            for t in spenders[key]:
                if self._cancel_shaped(key, t):
                    b.update(state="cancelling", cancel={"txid": t.txid, "in": key},
                             last_try=tip.height)
                    b.pop("gone_since", None)
                    self.ledger.put("batches", master, b)
                    log.warning("batch %s: input %s is spent by %s, the batch's cancel; it "
                                "settles when that is %d blocks deep", master, key, t.txid,
                                self.final)
                    self._track_cancel(master, b, tip, now)
                    return
        seen = [t for ts in spenders.values() for t in ts]
        if any(t.height and t.confirmations >= self.final for t in seen):
            self._decline(master, b, None, now, "an input was spent by another transaction")
            return
        if b.get("gone_since") is None:
            b["gone_since"] = tip.height
            self.ledger.put("batches", master, b)
            found = ", ".join(f"{t.txid} ({t.confirmations} confirmations)" for t in seen)
            log.warning("batch %s: input %s spent by %s; the batch is declined once that "
                        "spend is %d blocks deep", master, gone[0], found or "a transaction "
                        "pegx cannot see", self.final)
        elif not seen and tip.height - b["gone_since"] + 1 >= self.final:
            self._decline(master, b, None, now, "an input was spent by another transaction")

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
        ctx = self._find_cancel(b)
        if ctx is not None:
            changed = False
            if ctx.txid != c["txid"] and c.get("txid2") != ctx.txid:
                c["txid2"] = ctx.txid
                changed = True
                log.info("batch %s: cancel tx %s was malleated into %s", master, c["txid"],
                         ctx.txid)
            if b.pop("gone_since", None) is not None:
                changed = True
            if changed:
                self.ledger.put("batches", master, b)
            if ctx.height and ctx.confirmations >= self.final:
                self._decline(master, b, ctx, now, "cancelled after refusals"
                              if c.get("raw") else "cancelled by a spend of its input")
            return
        if not self.chain.is_unspent(c["in"]):
            self._spent_elsewhere(master, b, [c["in"]], tip, now)
            return
        if not c.get("raw"):
            # a cancel the desk did not sign left the chain (a reorganisation): nothing stops
            # the batch now, so it goes back to being broadcast
            b.update(state="sent", refusals=0)
            b.pop("cancel")
            self.ledger.put("batches", master, b)
            log.warning("batch %s: its cancel %s left the chain; the batch is broadcast again",
                        master, c["txid"])
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
                ops: list[dict], withheld: np.ndarray | None = None) -> None:
        """Ops that spend ``spent``, register ``tx``'s ``vouts``, burn ``burned`` withdraws and
        square the house account and the drift, exactly (appended to ``ops``). ``withheld``
        is what refunds kept back to pay the transaction (their ops are the caller's).
        Raises DeskError, appending nothing, if the house account would have to pay more than
        it holds: the ledger never owes more than the exchange has."""
        led = self.ledger
        reg = np.zeros(peg.PEG_SIZE, dtype=np.int64)
        value = 0 if withheld is None else int(withheld.sum())
        new: list[dict] = []
        with led.lock:
            for key in spent:
                reg -= led.vectors[("inputs", key)]
                value -= led.tables["inputs"][key]["value"]
            wd = np.zeros(peg.PEG_SIZE, dtype=np.int64) if withheld is None else withheld.copy()
            for wid in burned:
                wd += led.vectors[("withdraws", wid)]
                value += led.tables["withdraws"][wid]["amount"]
            house = led.row(engine.HOUSE)
        if burned:
            new.append({"op": "burn", "ids": list(burned)})
        if spent:
            new.append({"op": "spend", "keys": list(spent)})
        for vout in vouts:
            key = outpoint(tx.txid, vout)
            vec = self.chain.get_fractions(key)
            out = tx.outputs[vout]
            reg += vec
            value += out.value
            new.append(engine.Exchange.credit_op(key, out.value, vec, owner=None,
                                                 address=out.address, change=True,
                                                 height=tx.height))
            new.append(engine.Exchange.put_op("claims", key,
                                              {"name": "exchange", "registered": 1}))
        # value is now what the house gains (commissions − miner fee − dust) or pays (< 0)
        delta = reg + wd  # what the ledger must gain per step for zero drift
        if value > 0:
            hv = peg.deduction(np.maximum(delta, 0), value, peg.LIQUID, led.supply)
        elif value < 0:
            have = 0 if house is None else int(house.sum())
            if have < -value:  # house_free() and the cancel rule make this unreachable
                raise DeskError(f"the house account holds {_fmt(have)} and would have to pay "
                                f"{_fmt(-value)}")
            hv = -peg.deduction(house, -value, peg.LIQUID, led.supply)
        else:
            hv = np.zeros(peg.PEG_SIZE, dtype=np.int64)
        if hv.any():
            new.append(engine.Exchange.adjust_op(engine.HOUSE, hv))
        drift = delta - hv
        if drift.any():
            new.append(engine.Exchange.drift_op(drift))
        ops += new

    def _complete(self, master: str, b: dict, tx: Tx, hist: dict, now: int) -> None:
        ops: list[dict] = []
        with self.ledger.lock:
            ids = [w for w in b["ids"] if w in self.ledger.tables["withdraws"]]
        self._settle(b["ins"], tx, b["house_vouts"], ids, ops)
        hist.update(status="Complete", confirmations=tx.confirmations)
        # the raw stays: if a reorganisation deeper than the final depth drops the transaction,
        # it is broadcast again (ExchangeCycle._final_items)
        b.update(state="done", final_txid=tx.txid, final_height=tx.height)
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
        cfg = self.ledger.exchange_settings()["commission"]
        with self.ledger.lock:
            pending = self.ledger.tables["withdraws"]
            ids = [w for w in b["ids"] if w in pending]
            recs = {w: dict(pending[w]) for w in ids}
            vecs = {w: self.ledger.vectors[("withdraws", w)].copy() for w in ids}
            gone = b["cancel"]["in"] if cancel is not None else None
            cost = 0 if gone is None else (self.ledger.tables["inputs"][gone]["value"]
                                           - sum(o.value for o in cancel.outputs))
            for key in b["ins"]:
                rec = self.ledger.tables["inputs"].get(key)
                if rec is not None and key != gone:
                    ops.append(put("inputs", key, {k: v for k, v in rec.items() if k != "batch"}))
        ops += [{"op": "refund", "id": w} for w in ids]
        withheld: dict[str, int] = {}
        if cancel is not None:
            # the house pays the cancel's miner fee from what it does not hold back for
            # maintenance in flight; the rest is withheld from the refunds, pro rata to the
            # commissions the batch would have charged (see the module docstring)
            free, _ = self.house_free(exclude=master)
            house_part = min(cost, free)
            weights = {w: min(accepted_commission(recs[w], cfg), recs[w]["amount"])
                       for w in ids}
            try:
                withheld = split_cost(cost - house_part, weights)
            except ValueError as exc:
                raise DeskError(f"the cancel's {_fmt(cost)} cannot be paid: {exc}") from None
            kept = np.zeros(peg.PEG_SIZE, dtype=np.int64)
            for wid, x in withheld.items():
                vec = peg.deduction(vecs[wid], x, recs[wid]["style"], self.ledger.supply)
                kept += vec
                ops.append(engine.Exchange.adjust_op(recs[wid]["user"], -vec,
                                                     recs[wid]["style"]))
            self._settle([gone], cancel, [0], [], ops, withheld=kept)
            b["cancel"].update(cost=cost, house_paid=house_part)
            if withheld:
                b["withheld"] = withheld
        else:
            for key in b["ins"]:
                if not self.chain.is_unspent(key):
                    # neither the batch nor its cancel spent it: where the coins went is not
                    # ours to guess, so it stays registered and `pegx audit` names it
                    log.error("batch %s: input %s was spent by a transaction that is neither "
                              "the batch nor its cancel; it stays registered until an operator "
                              "accounts for it", master, key)
        hist = self.ledger.record("history", master) or {
            "txid": b["txid"], "ID": master, "block": b["height"], "in0": b["ins"][0]}
        hist["status"] = "Failed/Declined"
        b.update(state="failed", reason=why)
        b.pop("raw", None)
        ops.append(put("history", master, hist))
        ops.append(put("batches", master, b))
        self.ledger.commit(ops, supply=self.ledger.supply, now=now)
        log.warning("%s batch %s: Failed/Declined (%s)", b["kind"], master, why)
        if cancel is not None:
            log.info("batch %s: cancel tx %s cost %s: %s paid by the house account, %s withheld "
                     "from refunds", master, cancel.txid, _fmt(cost),
                     _fmt(b["cancel"]["house_paid"]), _fmt(sum(withheld.values())))
        for wid in ids:
            x = withheld.get(wid, 0)
            log.info("withdraw %s: Failed/Declined, %s refunded%s", wid,
                     _fmt(recs[wid]["amount"] - x),
                     f" ({_fmt(x)} withheld for the cancel's miner fee)" if x else "")
