"""The withdraw pipeline as an operator sees it: how many withdraws are at each stage, and how
long the oldest has waited (pegx status, the metrics and the status page).

Stages, in order (STAGES):

* ``pending``: accepted, in no batch yet (the ``withdraws`` table, no ``batch`` mark);
* ``batched``: in a batch committed and broadcast, not seen on the chain yet (its history
  record says ``unconfirmed``);
* ``processing``: its batch's transaction is known to the chain (``Processing``);
* ``complete``, ``failed`` (``Failed/Declined``, refunded), ``expired`` (not batched in time,
  refunded): finished, counted per withdraw from the history.

Ages come from the time kept with each withdraw when it was accepted (``time``); a withdraw
logged before that was kept has none and is counted without an age. Reading takes the ledger
lock once and copies nothing, so a metrics scrape does not hold up trades for long.
"""

from __future__ import annotations

from pegx.ledger import engine

IN_FLIGHT = ("pending", "batched", "processing")
FINISHED = ("complete", "failed", "expired")
STAGES = IN_FLIGHT + FINISHED

# history status -> stage
_FINAL = {"Complete": "complete", "Failed/Declined": "failed", "Expired": "expired"}
_FLIGHT = {"unconfirmed": "batched", "Processing": "processing"}
OLDEST_SHOWN = 10  # in-flight withdraws listed by pipeline(), oldest first


def pipeline(ledger: engine.Exchange, now: float) -> dict:
    """{stages: {stage: {count, amount, oldest_age}}, oldest: [...], by_status: {...}} at unix
    time ``now``.

    ``oldest_age`` is the seconds the stage's oldest withdraw (with a known accept time) has
    waited since it was accepted, -1 if none has one; finished stages have -1 and amount 0.
    ``oldest`` lists the OLDEST_SHOWN in-flight withdraws waiting longest: {id, stage, style,
    amount, age}. ``by_status`` is pegx.status's older ``withdraws`` count: ``pending`` (every
    withdraw still in the ledger) and each history record's status (batches and expired
    withdraws; a ``Pending`` record is already counted as pending).
    """
    stages = {s: {"count": 0, "amount": 0, "oldest_age": -1} for s in STAGES}
    waiting: list[tuple[float, str, str, str, int]] = []
    by_status: dict[str, int] = {}
    with ledger.lock:
        by_status["pending"] = len(ledger.tables["withdraws"])
        history = ledger.tables["history"]
        batches = ledger.tables["batches"]
        for wid, rec in ledger.tables["withdraws"].items():
            stage = "pending"
            if "batch" in rec:
                master = history.get(rec["batch"])
                status = master.get("status") if isinstance(master, dict) else None
                stage = _FLIGHT.get(status, "batched")
            stages[stage]["count"] += 1
            stages[stage]["amount"] += int(rec["amount"])
            if "time" in rec:
                waiting.append((rec["time"], wid, stage, rec["style"], int(rec["amount"])))
        for key, value in history.items():
            if isinstance(value, dict) and value.get("status") != "Pending":
                by_status[value["status"]] = by_status.get(value["status"], 0) + 1
            if isinstance(value, str):  # a withdraw's id -> its batch's master id
                master = history.get(value)
                status = master.get("status") if isinstance(master, dict) else None
            elif isinstance(value, dict) and key not in batches:  # a withdraw's own record
                status = value.get("status")
            else:  # a batch's record: its withdraws are counted by their ids
                continue
            stage = _FINAL.get(status)
            if stage is not None:
                stages[stage]["count"] += 1
    waiting.sort()
    for accepted, _, stage, _, _ in waiting:
        if stages[stage]["oldest_age"] < 0:
            stages[stage]["oldest_age"] = max(0, int(now - accepted))
    oldest = [{"id": wid, "stage": stage, "style": style, "amount": amount,
               "age": max(0, int(now - accepted))}
              for accepted, wid, stage, style, amount in waiting[:OLDEST_SHOWN]]
    return {"stages": stages, "oldest": oldest, "by_status": by_status}
