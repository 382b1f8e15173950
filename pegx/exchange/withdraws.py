"""The withdraw lifecycle: batches in the block windows, tracking, cancels (DESIGN §6,
ORIGINAL §3.5-3.9).

The transactions are planned by the pure :mod:`pegx.exchange.planner` (commissions, fees,
input selection). :class:`WithdrawDesk` runs it in the block windows and follows every
transaction it sent until it is ``Complete`` (the coins leave the ledger) or ``Failed/Declined``
(refunded, only once the transaction can no longer confirm). The ledger's law is checked by
its audit (:mod:`pegx.ledger.audit`). The desk decides and talks to the chain; every record
it leaves is written by the ledger's lifecycle methods (:mod:`pegx.ledger.withdrawals`), which
also square the house account and the drift when a batch ends (:mod:`pegx.ledger.lifecycle`).
This module is ~650 lines: batching, tracking and endings follow one batch record through its
life, and every broadcast among them goes through the node-exact check below.

What must stay true:
* Everything about a batch (signed raw tx, inputs, withdraws, its lifecycle record) is committed
  before it is broadcast, so after a crash the desk resumes from the ledger alone.
* Inputs of a batch in flight stay registered (marked ``batch``) and are never selected again;
  the desk, not the cycle, registers the transaction's exchange-bound outputs, in the same
  commit that spends the inputs and burns the withdraws.
* Σ accounts + drift == Σ registered inputs, per step and exactly; the drift is 0 in value.
* A withdraw pays the commission in force when it was accepted (kept in its record), so a
  later ExchangeSettings never changes it; the planner builds no output below 0 and leaves
  out a withdraw it cannot pay or fund rather than fail the batch.
* A cancel is found like a batch, by the transaction that spends its input, so a malleated
  cancel settles like the original (input spent, output registered).
* Nothing is broadcast that the node's rule refuses: before every broadcast (a batch, a
  maintenance, a cancel, every rebroadcast, a Complete batch sent again after a deep
  reorganisation: :meth:`WithdrawDesk.check_batch`) the transaction is checked with
  :func:`pegx.exchange.planner.check_plan` (pegstd, the node's ``CalculateStandardFractions``
  and ``GetMinFee``) on the chain's own fractions of its inputs at the chain's current supply.
  A transaction that fails is logged with the reason and not sent: a new batch is not even
  recorded (its withdraws stay pending), a rebroadcast counts as a refusal.
* A withdraw a batch task leaves pending for a reason (no valid transaction can pay it now,
  the batch is full, its commission leaves nothing) gets the reason in the ledger
  (``note_waiting``), which ``CheckWithdraw`` shows as a ``Pending`` record until it is
  batched or expires.

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
  (a ledger changed by hand), the ledger refuses it (HouseShort), nothing changes, the desk
  logs an error and retries.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

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
    split_outpoint,
)
from pegx.exchange.planner import (
    Candidate,
    Plan,
    accepted_commission,
    check_plan,
    plan_batch,
    plan_maintenance,
    split_cost,
)
from pegx.exchange.planner import sat as _fmt
from pegx.ledger import engine
from pegx.ledger.lifecycle import IN_FLIGHT, Cancelled, Mined, Output
from pegx.ledger.rules import HOUSE, HouseShort

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


@dataclass(frozen=True)
class DeskPass:
    """What the exchange cycle hands the desk for one pass (the desk calls nothing back)."""

    final: int = CONFIRMATIONS  # confirmations that make a block final (pegx.exchange.follow)
    cycle: int = 0  # the ledger's cycle: withdraws not batched by the end of the next expire
    spendable: tuple[str, ...] = ()  # the Spendable view's outpoints: what a batch may spend
    passphrase: str = ""  # the wallet passphrase (ExchangePassword), for signing


def out_to_record(out: TxOut) -> list:
    """A planned output for the batch record: [value, address or None, data hex or None]."""
    return [out.value, out.address, None if out.data is None else out.data.hex()]


def batch_plan(b: dict) -> Plan:
    """The plan of a recorded batch (its inputs and outputs), to check it again before a
    rebroadcast."""
    outs = [TxOut(v, address=a, data=None if d is None else bytes.fromhex(d))
            for v, a, d in b["outs"]]
    return Plan(list(b["ins"]), outs, list(b["house_vouts"]), int(b["fee"]),
                style=b.get("style", ""), payees=list(b.get("payees", [])))


class DeskError(RuntimeError):
    """A batch that cannot be settled without breaking the ledger's law (nothing committed)."""


def maintenance_cost(b: dict) -> int:
    """What a maintenance batch charges the house account: its miner fee and the OP_RETURN
    id's dust (its cancel, CANCEL_FEE, costs less)."""
    return int(b["fee"]) + NOTARY_VALUE


class WithdrawDesk:
    """Batches withdraws in the block windows and follows each batch to its end (DESIGN §6).

    ``run`` is called by the exchange cycle after every pass, with a :class:`DeskPass`. Every
    pass tracks the batches in flight and expires stale withdraws (cheap); the window task runs
    when 25 blocks have passed since the last one (``meta/desk.last_task_height``), whatever its
    outcome, so a failing task is logged and never retried in a tight loop.
    """

    def __init__(self, ledger: engine.Exchange, chain):
        self.ledger = ledger
        self.chain = chain
        self.last_result = ""
        # the last window task found the wallet locked: why (the cycle shows it in pegx status)
        self.wallet_locked = ""
        self.waiting_note = ""  # the last batch task left withdraws out: why (pegx status)
        # confirmations that make a block final (pegx.exchange.follow); set by each pass
        self.final = CONFIRMATIONS

    # ---------------------------------------------------------------- the pass
    def run(self, tip: Tip, now: int, ctx: DeskPass) -> None:
        """One pass: track batches, expire stale withdraws, maybe run the window task."""
        self.final = ctx.final
        self.track(tip, now, ctx)
        self.expire(tip, ctx.cycle)
        state = self.ledger.record("meta", "desk") or {"last_task_height": 0}
        if tip.height - state["last_task_height"] < task_spacing(tip.interval):
            return
        task = window_task(tip.height, tip.interval)
        self.wallet_locked = ""
        self.waiting_note = ""
        result = self._run_task(task, tip, ctx)
        self.last_result = str(result)
        if result in (NO_RETURN_ADDRESS, NO_FEE_ADDRESS) and self.ledger.withdraw_count():
            # withdraws keep being accepted and would silently expire: say why, each window
            log.warning("withdraws are pending but cannot be batched: %s (set it with "
                        "ExchangeSettings)", result)
        # why each style's last batch task could not batch (pegx status shows it); a batch
        # sent, even one whose broadcast failed (tracking resends it), clears it
        blocked = dict(state.get("blocked", {}))
        if task in (peg.LIQUID, peg.RESERVE):
            if result in ("Success", "Transaction declined") and not self.waiting_note:
                blocked.pop(task, None)
            else:
                blocked[task] = self.waiting_note or self.last_result
        self.ledger.put("meta", "desk", {"last_task_height": tip.height, "task": task,
                                         "result": self.last_result, "blocked": blocked})

    def _run_task(self, task: str | None, tip: Tip, ctx: DeskPass) -> str:
        """The window task's result; a failure is logged and is the result (the next window
        tries again, never a tight loop)."""
        try:
            if task in (peg.LIQUID, peg.RESERVE):
                return self.batch(task, tip, ctx)
            if task == "maintenance":
                return self.maintenance(tip, ctx)
            if task == "status":
                return self.status_summary()
            return "nothing to do at this block position"
        except ChainError as exc:
            if isinstance(exc, WalletLocked):  # pegx.status shows it until ExchangePassword
                self.wallet_locked = str(exc)
            log.warning("withdraw task %s at height %s failed: %s", task, f"{tip.height:,d}", exc)
            return f"chain: {exc}"
        except Exception as exc:
            log.exception("withdraw task %s at height %s failed", task, f"{tip.height:,d}")
            return f"{type(exc).__name__}: {exc}"

    def not_batchable(self) -> str:
        """Why the pending (unbatched) withdraws cannot be batched, as the last batch task of
        their style said ('' when nothing is pending or nothing stood in the way)."""
        blocked = (self.ledger.record("meta", "desk") or {}).get("blocked", {})
        styles = {r["style"] for _, r in self.ledger.unbatched_withdraws()}
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
    def _candidates(self, ctx: DeskPass) -> list[Candidate]:
        """Confirmed, registered, unfrozen exchange inputs not already in a batch."""
        return self.ledger.free_inputs(list(ctx.spendable))

    def batch(self, style: str, tip: Tip, ctx: DeskPass) -> str:
        """Build, record and broadcast one batch of pending ``style`` withdraws."""
        settings = self.ledger.exchange_settings()
        if not settings["exchangeaccounts"]:
            return NO_RETURN_ADDRESS
        if not settings["exchangefeeaccount"]:
            return NO_FEE_ADDRESS
        pending = self.ledger.unbatched_withdraws(style)
        if not pending:
            return "Success"
        refused = self._unspendable_return(settings["exchangeaccounts"][0])
        if refused:
            return refused
        master = os.urandom(16).hex()
        plan = plan_batch(style, pending, self._candidates(ctx), tip.supply,
                          settings["exchangeaccounts"][0], settings["exchangefeeaccount"],
                          settings["commission"], master)
        self._wait(plan.waiting, tip)
        if not isinstance(plan, Plan):
            log.warning("%s withdraws not batched at height %s: %s", style,
                        f"{tip.height:,d}", plan.reason)
            return plan.reason
        result = self._send(style, plan, master, tip, ctx)
        if plan.waiting and result in ("Success", "Transaction declined"):
            n = len(plan.waiting)
            why = next(iter(plan.waiting.values()))
            self.waiting_note = (f"{n} {style} withdraw{'s' if n > 1 else ''} left out of the "
                                 f"last batch, e.g.: {why}")
        return result

    def _wait(self, waiting: dict[str, str], tip: Tip) -> None:
        """Keep why each withdraw in ``waiting`` waits (CheckWithdraw shows it as Pending)."""
        for wid, why in self.ledger.note_waiting(waiting, height=tip.height).items():
            log.info("withdraw %s: Pending (%s)", wid, why)

    def _node_check(self, plan: Plan) -> str:
        """'' if the node's rule (pegstd) accepts ``plan``'s transaction with the chain's own
        fractions of its inputs at the chain's supply now, and its payees get exactly their
        style; else why not (see planner.check_plan)."""
        supply = self.chain.tip().supply
        inputs = []
        for key in plan.inputs:
            rec = self.ledger.input(key)
            address = rec["address"] if rec is not None else None
            if address is None:  # spent in the ledger (a batch sent again after a reorg)
                txid, vout = split_outpoint(key)
                tx = self.chain.get_transaction(txid)
                if tx is None or vout >= len(tx.outputs):
                    return f"input {key} is not known to the chain"
                address = tx.outputs[vout].address
            inputs.append((address, self.chain.get_fractions(key)))
        return check_plan(plan, inputs, supply)

    def check_batch(self, b: dict) -> str:
        """:meth:`_node_check` of a recorded batch ('' for one recorded before its outputs
        were kept, which cannot be checked)."""
        return self._node_check(batch_plan(b)) if "outs" in b else ""

    def maintenance(self, tip: Tip, ctx: DeskPass) -> str:
        """Account maintenance (ORIGINAL §3.6), paid by the house account."""
        settings = self.ledger.exchange_settings()
        if not settings["exchangeaccounts"]:
            return NO_RETURN_ADDRESS
        refused = self._unspendable_return(settings["exchangeaccounts"][0])
        if refused:
            return refused
        master = os.urandom(16).hex()
        plan = plan_maintenance(self._candidates(ctx), tip.supply,
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
        return self._send("maintenance", plan, master, tip, ctx)

    def house_free(self, exclude: str | None = None) -> tuple[int, int]:
        """(what the house account may spend, what it holds back): the house keeps the cost of
        every maintenance transaction in flight (but ``exclude``'s), which covers that
        transaction's cancel too, so no later charge can leave one unpaid."""
        held = sum(maintenance_cost(b) for m, b in self.ledger.batches(IN_FLIGHT).items()
                   if m != exclude and b["kind"] == "maintenance")
        house = self.ledger.row(HOUSE)
        have = 0 if house is None else int(house.sum())
        return max(0, have - held), held

    def _send(self, kind: str, plan: Plan, master: str, tip: Tip, ctx: DeskPass) -> str:
        why = self._node_check(plan)
        if why:  # nothing signed, nothing recorded: the withdraws stay pending
            result = f"{kind} transaction not sent: the node's rule would refuse it: {why}"
            log.error("%s (height %s)", result, f"{tip.height:,d}")
            self._wait({wid: result for wid in plan.ids}, tip)
            return result
        signed = self.chain.create_transaction(plan.inputs, plan.outputs, ctx.passphrase)
        batch = {"kind": kind, "ids": plan.ids, "ins": plan.inputs, "txid": signed.txid,
                 "raw": signed.raw, "house_vouts": plan.house_vouts, "fee": plan.fee,
                 "total": plan.total, "commission": plan.commission, "height": tip.height,
                 "style": plan.style, "payees": plan.payees,
                 "outs": [out_to_record(o) for o in plan.outputs]}
        self.ledger.mark_batched(master, batch)  # durable before the tx can exist anywhere
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
        b = self.ledger.batch(master)
        return self.ledger.update_batch(master, refusals=b["refusals"] + 1, last_try=height)

    # ---------------------------------------------------------------- expiry
    def expire(self, tip: Tip, current_cycle: int) -> None:
        """Refund withdraws not batched by the end of the cycle after their request."""
        stale = self.ledger.expire(current_cycle - 1, height=tip.height, now=tip.time)
        for wid, rec in stale:
            log.info("withdraw %s: Expired, %s refunded to %s", wid, _fmt(rec["amount"]),
                     rec["user"])

    # ---------------------------------------------------------------- tracking
    def active(self) -> dict:
        """Batches still in flight {master: record}."""
        return self.ledger.batches(IN_FLIGHT)

    def status_summary(self) -> str:
        pending = self.ledger.withdraw_count()
        text = f"{pending} withdraws pending or in flight, {len(self.active())} batches in flight"
        log.info("withdraw status: %s", text)
        return text

    def _spenders(self, key: str) -> list[Tx]:
        """Transactions (mined or in the mempool) that spend ``key``, among those the chain
        names as its possible spenders (:meth:`pegx.chain.base.Chain.spenders`)."""
        txids = self.chain.spenders(key)
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
        rec = self.ledger.input(c["in"])  # registered until the cancel settles
        if rec is None:
            return None
        want = [TxOut(rec["value"] - CANCEL_FEE, address=rec["address"])]
        for t in self._spenders(c["in"]):
            if t.inputs == [c["in"]] and list(t.outputs) == want:
                return t
        return None

    def track(self, tip: Tip, now: int, ctx: DeskPass) -> None:
        """Move every batch in flight along its lifecycle (see the module docstring)."""
        for master, b in sorted(self.active().items(), key=lambda kv: kv[1]["height"]):
            try:
                self._track_one(master, b, tip, now, ctx)
            except ChainError as exc:
                log.warning("batch %s: status check failed: %s", master, exc)
            except (DeskError, HouseShort) as exc:  # nothing committed; the batch stays in flight
                log.error("batch %s: cannot settle: %s", master, exc)

    def _track_one(self, master: str, b: dict, tip: Tip, now: int, ctx: DeskPass) -> None:
        tx = self._find(master, b)
        if tx is not None:
            self._seen(master, b, tx)
            if tx.height and tx.confirmations >= self.final:
                self._complete(master, b, tx, now)
            return
        if b["status"] == "Processing":
            # seen before, on no branch or mempool now: what the chain proved is gone
            self._update(master, b, status="unconfirmed", confirmations=0)
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
        if "gone_since" in b:
            self._update(master, b, unset=["gone_since"])
            log.warning("batch %s: its inputs are unspent again (a reorganisation); it is "
                        "broadcast again", master)
        if tip.height > b["last_try"]:  # one rebroadcast per block at most
            self._rebroadcast(master, b, tip, ctx)

    def _seen(self, master: str, b: dict, tx: Tx) -> None:
        """The batch's transaction (or its malleated twin) is on chain or in the mempool."""
        changes: dict = {}
        if tx.txid != b["txid"] and b.get("txid2") != tx.txid:
            changes["txid2"] = tx.txid
            log.info("batch %s: tx %s was malleated into %s", master, b["txid"], tx.txid)
        where = f"in block {tx.height:,d}" if tx.height else "in the mempool"
        status = b["status"]
        if status == "unconfirmed":
            changes["status"] = status = "Processing"
            for wid in b["ids"]:
                log.info("withdraw %s: Processing (tx %s %s)", wid, tx.txid, where)
        conf = tx.confirmations if tx.height else 0
        if b.get("confirmations", 0) != conf and status == "Processing":
            if conf < b.get("confirmations", 0):  # a reorganisation moved it
                log.warning("batch %s: tx %s now has %d confirmations (had %d): %s", master,
                            tx.txid, conf, b.get("confirmations", 0), where)
            changes["confirmations"] = conf
        unset = ["gone_since"] if "gone_since" in b else []
        if changes or unset:
            self._update(master, b, unset=unset, **changes)

    def _update(self, master: str, b: dict, **changes) -> None:
        """Change batch ``master`` in the ledger (update_batch) and this pass's copy ``b``."""
        new = self.ledger.update_batch(master, **changes)
        b.clear()
        b.update(new)

    def _rebroadcast(self, master: str, b: dict, tip: Tip, ctx: DeskPass) -> None:
        why = self.check_batch(b)  # (one recorded before its outputs were kept: unchecked)
        if why:  # e.g. the supply moved: the node would refuse it now, so it is not sent
            b = self._bump(master, tip.height)
            log.warning("batch %s: rebroadcast not sent (%d/%d): the node's rule would refuse "
                        "it: %s", master, b["refusals"], MAX_REFUSALS, why)
            if b["refusals"] >= MAX_REFUSALS:
                self._start_cancel(master, b, tip, ctx)
            return
        # recorded before it is sent: with a strict sync standby this commit returns once the
        # standby holds it and every earlier record (the batch), so no batch reaches the chain
        # that a promoted standby would not know of (and pay again)
        self.ledger.update_batch(master, last_try=tip.height)
        try:
            self.chain.broadcast(b["raw"])
            log.info("batch %s: rebroadcast tx %s", master, b["txid"])
        except ChainRejected as exc:
            b = self._bump(master, tip.height)
            log.warning("batch %s: rebroadcast refused (%d/%d): %s", master, b["refusals"],
                        MAX_REFUSALS, exc)
            if b["refusals"] >= MAX_REFUSALS:
                self._start_cancel(master, b, tip, ctx)

    def _cancel_shaped(self, key: str, t: Tx) -> bool:
        """Is ``t`` a spend of registered input ``key`` whole back to its own address less
        CANCEL_FEE? Only the exchange's key can sign it, and it is exactly the cancel the desk
        signs for ``key`` (deterministic signatures), whoever broadcast it."""
        rec = self.ledger.input(key)
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
                    self._update(master, b, state="cancelling", cancel={"txid": t.txid, "in": key},
                                 last_try=tip.height,
                                 unset=["gone_since"] if "gone_since" in b else [])
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
            self._update(master, b, gone_since=tip.height)
            found = ", ".join(f"{t.txid} ({t.confirmations} confirmations)" for t in seen)
            log.warning("batch %s: input %s spent by %s; the batch is declined once that "
                        "spend is %d blocks deep", master, gone[0], found or "a transaction "
                        "pegx cannot see", self.final)
        elif not seen and tip.height - b["gone_since"] + 1 >= self.final:
            self._decline(master, b, None, now, "an input was spent by another transaction")

    def _start_cancel(self, master: str, b: dict, tip: Tip, ctx: DeskPass) -> None:
        """Spend one batch input back to its own address so the batch can never confirm."""
        ins = {k: self.ledger.input(k) for k in b["ins"]}
        key = max(b["ins"], key=lambda k: (ins[k]["value"], k))
        cancel = self._cancel_plan(key)
        why = self._node_check(cancel)
        if why:  # the batch stays in flight; the next block tries again
            log.error("batch %s: cancel not sent: the node's rule would refuse it: %s", master,
                      why)
            return
        signed = self.chain.create_transaction([key], cancel.outputs, ctx.passphrase)
        b = self.ledger.update_batch(master, state="cancelling", last_try=tip.height,
                                     cancel={"txid": signed.txid, "raw": signed.raw, "in": key})
        log.warning("batch %s: refused %d times; cancelling it with tx %s (spends %s)", master,
                    b["refusals"], signed.txid, key)
        try:
            self.chain.broadcast(signed.raw)
        except ChainError as exc:
            log.warning("batch %s: cancel broadcast failed: %s", master, exc)

    def _cancel_plan(self, key: str) -> Plan:
        """The cancel of a batch: its input ``key`` back to its own address less CANCEL_FEE."""
        rec = self.ledger.input(key)
        return Plan([key], [TxOut(rec["value"] - CANCEL_FEE, address=rec["address"])], [0],
                    CANCEL_FEE)

    def _track_cancel(self, master: str, b: dict, tip: Tip, now: int) -> None:
        c = b["cancel"]
        ctx = self._find_cancel(b)
        if ctx is not None:
            changes: dict = {}
            if ctx.txid != c["txid"] and c.get("txid2") != ctx.txid:
                changes["cancel"] = {**c, "txid2": ctx.txid}
                log.info("batch %s: cancel tx %s was malleated into %s", master, c["txid"],
                         ctx.txid)
            unset = ["gone_since"] if "gone_since" in b else []
            if changes or unset:
                self._update(master, b, unset=unset, **changes)
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
            self.ledger.update_batch(master, state="sent", refusals=0, unset=["cancel"])
            log.warning("batch %s: its cancel %s left the chain; the batch is broadcast again",
                        master, c["txid"])
            return
        if tip.height > b["last_try"]:
            self.ledger.update_batch(master, last_try=tip.height)
            why = self._node_check(self._cancel_plan(c["in"]))
            if why:
                log.error("batch %s: cancel rebroadcast not sent: the node's rule would "
                          "refuse it: %s", master, why)
                return
            try:
                self.chain.broadcast(c["raw"])
            except ChainError as exc:
                log.warning("batch %s: cancel rebroadcast failed: %s", master, exc)

    # ---------------------------------------------------------------- endings
    def _output(self, tx: Tx, vout: int) -> Output:
        """Output ``vout`` of the exchange's own transaction ``tx``, with its fractions."""
        key = outpoint(tx.txid, vout)
        out = tx.outputs[vout]
        return Output(key, out.value, out.address, self.chain.get_fractions(key), tx.height)

    def _complete(self, master: str, b: dict, tx: Tx, now: int) -> None:
        outputs = [self._output(tx, v) for v in b["house_vouts"]]
        # the raw (and the outputs, for the check) stay in the record: if a reorganisation
        # deeper than the final depth drops the transaction, it is broadcast again
        # (ExchangeCycle._final_items)
        ids = self.ledger.complete_batch(master, Mined(tx.txid, tx.height, tx.confirmations),
                                         outputs, now=now)
        log.info("%s batch %s: Complete in block %s (tx %s)", b["kind"], master,
                 f"{tx.height:,d}", tx.txid)
        for wid in ids:
            log.info("withdraw %s: Complete (tx %s)", wid, tx.txid)

    def _decline(self, master: str, b: dict, cancel: Tx | None, now: int, why: str) -> None:
        recs = self.ledger.batch_withdraws(master)
        paid = None
        if cancel is None:
            self._report_lost_inputs(master, b)
        else:
            paid = self._cancel_paid(master, b, cancel, recs)
        self.ledger.decline_batch(master, why, cancel=paid, now=now)
        log.warning("%s batch %s: Failed/Declined (%s)", b["kind"], master, why)
        withheld = {} if paid is None else paid.withheld
        if paid is not None:
            log.info("batch %s: cancel tx %s cost %s: %s paid by the house account, %s withheld "
                     "from refunds", master, cancel.txid,
                     _fmt(paid.house_paid + sum(withheld.values())), _fmt(paid.house_paid),
                     _fmt(sum(withheld.values())))
        for wid, rec in recs.items():
            x = withheld.get(wid, 0)
            log.info("withdraw %s: Failed/Declined, %s refunded%s", wid, _fmt(rec["amount"] - x),
                     f" ({_fmt(x)} withheld for the cancel's miner fee)" if x else "")

    def _cancel_paid(self, master: str, b: dict, cancel: Tx,
                     recs: dict[str, dict]) -> Cancelled:
        """Who pays the confirmed cancel's miner fee: the house from what it does not hold
        back for maintenance in flight; the rest is withheld from the refunds, pro rata to the
        commissions the batch would have charged (see the module docstring)."""
        cost = self.ledger.input(b["cancel"]["in"])["value"] - sum(o.value for o in cancel.outputs)
        free, _ = self.house_free(exclude=master)
        house_part = min(cost, free)
        cfg = self.ledger.exchange_settings()["commission"]
        weights = {w: min(accepted_commission(r, cfg), r["amount"]) for w, r in recs.items()}
        try:
            withheld = split_cost(cost - house_part, weights)
        except ValueError as exc:
            raise DeskError(f"the cancel's {_fmt(cost)} cannot be paid: {exc}") from None
        return Cancelled([self._output(cancel, 0)], house_part, withheld)

    def _report_lost_inputs(self, master: str, b: dict) -> None:
        for key in b["ins"]:
            if not self.chain.is_unspent(key):
                # neither the batch nor its cancel spent it: where the coins went is not
                # ours to guess, so it stays registered and `pegx audit` names it
                log.error("batch %s: input %s was spent by a transaction that is neither "
                          "the batch nor its cancel; it stays registered until an operator "
                          "accounts for it", master, key)
