"""The withdraw lifecycle as the ledger keeps it: one record per batch, and what settles one.

Records (table: key -> value):

* ``batches``: master id -> the batch's one lifecycle record: ``kind`` (liquid, reserve,
  maintenance), ``ids`` (its withdraws), ``ins`` (the inputs it spends), ``txid``, ``raw``
  (until it ends), ``house_vouts``, ``fee``, ``total``, ``commission``, ``height`` (sent at),
  ``refusals``, ``last_try``, ``state`` (``sent`` → (``cancelling``) → ``done`` or
  ``failed``; a reorganisation can take a cancel away: back to ``sent``), ``status`` (what
  CheckWithdraw shows: ``unconfirmed`` → ``Processing`` → ``Complete``, or ``Failed/Declined``;
  a transaction that left the chain goes back to ``unconfirmed``), ``confirmations``, and as
  they happen ``txid2`` (malleated), ``gone_since`` (an input spent elsewhere since that
  height), ``cancel`` {txid, in[, raw (one the desk signed), txid2, cost, house_paid]},
  ``withheld``, ``final_txid`` and ``final_height`` (``raw`` is kept: a reorganisation past
  the final depth may need it broadcast again), ``reason``, ``cleared`` (CheckWithdraw(clear=1)
  on the master id); from the planner, ``style``, ``payees`` (the payee output indices) and
  ``outs`` (every output, [value, address, data hex]: the desk checks the transaction with the
  node's rule again before it sends it again; dropped with ``raw``).
* ``batch_of``: withdraw id -> the master id of the batch it went out in.
* ``expired``: withdraw id -> {block}: refunded because no batch took it in time.
* ``waiting``: withdraw id -> {block, reason}: a pending withdraw a batch task left out, and
  why (CheckWithdraw shows it as ``Pending``); removed when a batch takes it or it expires.

A batched withdraw and the inputs of a batch in flight carry ``batch: <master id>`` in their
own records; only the ledger's operations set and clear it. The op groups that move a batch
along are built here from the state; the Exchange checks and commits them atomically.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pegx import peg
from pegx.ledger import ops
from pegx.ledger.rules import HOUSE, EngineError, HouseShort

IN_FLIGHT = ("sent", "cancelling")  # batch states whose transaction may be on chain
FINISHED = ("Complete", "Failed/Declined", "Expired")  # statuses CheckWithdraw(clear=1) clears
KINDS = ("liquid", "reserve", "maintenance")
ENDINGS = {"Complete": "done", "Failed/Declined": "failed"}  # status -> state
PLAN_FIELDS = ("kind", "ids", "ins", "txid", "raw", "house_vouts", "fee", "total", "commission",
               "height")
PLAN_CHECK_FIELDS = ("style", "payees", "outs")  # all or none (batches recorded before: none)
# what update_batch may change while a batch is in flight, with the values it may take, and
# what it may remove
UPDATES = {"last_try": int, "refusals": int, "txid2": str, "cancel": dict, "confirmations": int,
           "gone_since": int, "status": ("Processing", "unconfirmed"),
           "state": ("cancelling", "sent")}
REMOVABLE = ("gone_since", "cancel")
END_FIELDS = ("final_txid", "final_height", "confirmations", "reason", "cancel", "withheld")


class Output(NamedTuple):
    """An output of an exchange transaction that comes back to the exchange (its change)."""

    key: str  # "txid:vout"
    value: int
    address: str
    vector: np.ndarray
    height: int


class Mined(NamedTuple):
    """A batch's transaction as the chain has it: final, it completes the batch."""

    txid: str
    height: int
    confirmations: int


class Cancelled(NamedTuple):
    """A batch's confirmed cancel: its one output, and who pays its miner fee."""

    outputs: list[Output]  # the cancel's output, back at the cancelled input's address
    house_paid: int  # sat the house account pays
    withheld: dict[str, int]  # sat withheld from each withdraw's refund (id -> sat)


def in_flight_inputs(batches: dict) -> set[str]:
    """Inputs spent by exchange transactions not settled yet (withdraw batches being sent or
    cancelled): they may be spent on chain while still registered."""
    return {k for b in batches.values()
            if isinstance(b, dict) and b.get("state", "sent") in IN_FLIGHT
            for k in b.get("ins", [])}


def house_outpoints(batch: dict) -> set[str]:
    """The outputs of the exchange's own transaction ``batch`` that come back to it: the
    plan's ``house_vouts`` (reserve back to its address, change, fee, notary to acct0) under
    every txid the transaction had (sent, malleated, mined), and a cancel's one output.

    These and only these are change: settling a batch registers exactly them, and the cycle
    flags exactly them ``change`` in Spendable. A payee output is not, even when it pays one
    of the exchange's addresses: it is a deposit to claim.
    """
    out = set()
    for txid in {batch.get("txid"), batch.get("txid2"), batch.get("final_txid")} - {None}:
        out.update(f"{txid}:{v}" for v in batch.get("house_vouts", ()))
    cancel = batch.get("cancel")
    if cancel:
        for txid in {cancel.get("txid"), cancel.get("txid2")} - {None}:
            out.add(f"{txid}:0")
    return out


def new_record(plan: dict) -> dict:
    """The lifecycle record of a batch about to be broadcast (``plan``: PLAN_FIELDS)."""
    rec = {k: plan[k] for k in PLAN_FIELDS if k != "height"}
    if "outs" in plan:
        rec.update({k: plan[k] for k in PLAN_CHECK_FIELDS})
    rec.update(state="sent", height=plan["height"], refusals=0, last_try=plan["height"],
               status="unconfirmed", confirmations=0)
    return rec


def answer(batches: dict, master: str) -> dict | None:
    """CheckWithdraw's record of batch ``master`` {status, txid, ID, block, in0[,
    confirmations][, txid2]}, or None if there is none (or it was cleared). A batch recorded
    before confirmations were kept (ledger format 1) shows none."""
    b = batches.get(master)
    if not isinstance(b, dict) or b.get("cleared"):
        return None
    rec = {"status": b["status"], "txid": b["txid"], "ID": master, "block": b["height"],
           "in0": b["ins"][0] if b["ins"] else ""}
    for field in ("confirmations", "txid2"):
        if field in b:
            rec[field] = b[field]
    return rec


def status(tables: dict, ident: str) -> dict | None:
    """CheckWithdraw's record for a withdraw id (followed to its batch's master id), a master
    id, an expired withdraw id, or a pending one a batch task left out (``Pending``, with the
    reason); None for another pending or an unknown id."""
    master = tables["batch_of"].get(ident)
    if master is not None:
        return answer(tables["batches"], master)
    expired = tables["expired"].get(ident)
    if expired is not None:
        return {"status": "Expired", "txid": "", "ID": ident, "block": expired["block"],
                "in0": ""}
    waiting = tables["waiting"].get(ident)
    if waiting is not None:
        return {"status": "Pending", "txid": "", "ID": ident, "block": waiting["block"],
                "in0": "", "reason": waiting["reason"]}
    return answer(tables["batches"], ident)


def status_counts(tables: dict) -> dict[str, int]:
    """How many CheckWithdraw records there are of each status."""
    counts: dict[str, int] = {}
    for b in tables["batches"].values():
        if not b.get("cleared"):
            counts[b["status"]] = counts.get(b["status"], 0) + 1
    if tables["expired"]:
        counts["Expired"] = counts.get("Expired", 0) + len(tables["expired"])
    return counts


# withdraw stages as an operator sees them (pegx.exchange.pipeline), in order
IN_FLIGHT_STAGES = ("pending", "batched", "processing")
FINISHED_STAGES = ("complete", "failed", "expired")
_FLIGHT_STAGE = {"unconfirmed": "batched", "Processing": "processing"}
_FINAL_STAGE = {"Complete": "complete", "Failed/Declined": "failed", "Expired": "expired"}


def stages(tables: dict) -> tuple[list[tuple[str, str, dict]], dict[str, int]]:
    """(in flight: [(withdraw id, stage, {style, amount[, time]})], finished: {stage: count}).

    In flight: ``pending`` (in no batch yet), ``batched`` (its batch is ``unconfirmed``),
    ``processing``. Finished: counted per withdraw whose CheckWithdraw record is there
    (``complete``, ``failed``, ``expired``); a cleared one is not counted.
    """
    batches = tables["batches"]
    flight = []
    for wid, rec in tables["withdraws"].items():
        stage = "pending"
        if "batch" in rec:
            stage = _FLIGHT_STAGE.get((batches.get(rec["batch"]) or {}).get("status"), "batched")
        flight.append((wid, stage, {k: rec[k] for k in ("style", "amount", "time") if k in rec}))
    finished = dict.fromkeys(FINISHED_STAGES, 0)
    for master in tables["batch_of"].values():
        rec = answer(batches, master)
        stage = _FINAL_STAGE.get(rec["status"]) if rec is not None else None
        if stage is not None:
            finished[stage] += 1
    finished["expired"] += len(tables["expired"])
    return flight, finished


# ------------------------------------------------------------------------- settling
def settle(state, spent: list[str], outputs: list[Output], burned: list[str],
           withheld: np.ndarray | None = None) -> list[dict]:
    """Ops that spend ``spent``, register ``outputs`` (the house's change), burn ``burned``
    withdraws and square the house account and the drift, exactly. ``withheld`` is what
    refunds kept back to pay the transaction (their ops are the caller's). Raises HouseShort
    if the house account would have to pay more than it holds: the ledger never owes more
    than the exchange has."""
    tables, vectors = state.tables, state.vectors
    reg = np.zeros(peg.PEG_SIZE, dtype=np.int64)
    value = 0 if withheld is None else int(withheld.sum())
    for key in spent:
        reg -= vectors[("inputs", key)]
        value -= tables["inputs"][key]["value"]
    wd = np.zeros(peg.PEG_SIZE, dtype=np.int64) if withheld is None else withheld.copy()
    for wid in burned:
        wd += vectors[("withdraws", wid)]
        value += tables["withdraws"][wid]["amount"]
    group: list[dict] = []
    if burned:
        group.append(ops.burn(burned))
    if spent:
        group.append(ops.spend(spent))
    for out in outputs:
        reg += out.vector
        value += out.value
        group.append(ops.claim(out.key, HOUSE))  # the credit registers it
        group.append(ops.credit(out.key, out.value, out.vector, owner=None, address=out.address,
                                change=True, height=out.height))
    # value is now what the house gains (commissions − miner fee − dust) or pays (< 0)
    delta = reg + wd  # what the ledger must gain per step for zero drift
    hv = _house_share(state, delta, value)
    if hv.any():
        group.append(ops.adjust(HOUSE, hv))
    drift = delta - hv
    if drift.any():
        group.append(ops.drift(drift))
    return group


def _house_share(state, delta: np.ndarray, value: int) -> np.ndarray:
    """The steps the house account gains (value > 0) or pays (value < 0)."""
    if value > 0:
        return peg.deduction(np.maximum(delta, 0), value, peg.LIQUID, state.supply)
    if value == 0:
        return np.zeros(peg.PEG_SIZE, dtype=np.int64)
    i = state.index.get(HOUSE)
    house = state.matrix[i] if i is not None else np.zeros(peg.PEG_SIZE, dtype=np.int64)
    have = int(house.sum())
    if have < -value:  # the desk's house_free() and the cancel rule make this unreachable
        raise HouseShort(f"the house account holds {have:,d} sat and would have to pay "
                         f"{-value:,d} sat")
    return -peg.deduction(house, -value, peg.LIQUID, state.supply)


def pending_of(state, master: str) -> list[str]:
    """The withdraws of batch ``master`` still pending (not refunded or burned yet)."""
    return [w for w in state.tables["batches"][master]["ids"] if w in state.tables["withdraws"]]


def complete(state, master: str, tx: Mined, outputs: list[Output]) -> list[dict]:
    """The group that ends batch ``master`` Complete: its final transaction ``tx`` spent its
    inputs, paid its withdraws and returned ``outputs`` to the house."""
    b = state.tables["batches"][master]
    group = settle(state, b["ins"], outputs, pending_of(state, master))
    group.append(ops.batch_end(master, "Complete", {
        "final_txid": tx.txid, "final_height": tx.height, "confirmations": tx.confirmations}))
    return group


def decline(state, master: str, reason: str, cancel: Cancelled | None) -> list[dict]:
    """The group that ends batch ``master`` Failed/Declined: its withdraws are refunded, less
    what pays the miner fee of its confirmed ``cancel``, which spends the cancelled input and
    returns its output to the house; without a cancel nothing is spent and the batch's
    inputs stay registered."""
    b = state.tables["batches"][master]
    ids = pending_of(state, master)
    group = [ops.refund(w) for w in ids]
    fields: dict = {}
    if cancel is not None:
        paid, cost = _cancel_paid(state, master, ids, cancel)
        group += paid
        fields["cancel"] = {**b["cancel"], "cost": cost, "house_paid": cancel.house_paid}
        if cancel.withheld:
            fields["withheld"] = dict(cancel.withheld)
    fields["reason"] = reason
    group.append(ops.batch_end(master, "Failed/Declined", fields))
    return group


def _cancel_paid(state, master: str, ids: list[str],
                 cancel: Cancelled) -> tuple[list[dict], int]:
    """Ops that take the withheld steps from the refunded withdraws' users and settle the
    cancel (its input spent, its output registered, the house paying its part), and the
    cancel's miner fee."""
    tables = state.tables
    gone = tables["batches"][master]["cancel"]["in"]
    cost = tables["inputs"][gone]["value"] - sum(o.value for o in cancel.outputs)
    withheld = cancel.withheld
    if cancel.house_paid < 0 or cancel.house_paid + sum(withheld.values()) != cost or \
            not set(withheld) <= set(ids):
        raise EngineError(f"batch {master}: the cancel's {cost:,d} sat are not paid by "
                          f"{cancel.house_paid:,d} sat from the house and {withheld!r} withheld")
    group = []
    kept = np.zeros(peg.PEG_SIZE, dtype=np.int64)
    for wid, x in withheld.items():
        rec = tables["withdraws"][wid]
        try:
            vec = peg.deduction(state.vectors[("withdraws", wid)], x, rec["style"], state.supply)
        except peg.PegError as exc:
            raise EngineError(f"withdraw {wid}: cannot withhold {x:,d} sat: {exc}") from None
        kept += vec
        group.append(ops.adjust(rec["user"], -vec, rec["style"]))
    return group + settle(state, [gone], cancel.outputs, [], withheld=kept), cost
