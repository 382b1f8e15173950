"""The withdraw pipeline as an operator sees it: how many withdraws are at each stage, and how
long the oldest has waited (pegx status, the metrics and the status page).

Stages, in order (STAGES; the ledger says where each withdraw is,
:func:`pegx.ledger.lifecycle.stages`):

* ``pending``: accepted, in no batch yet;
* ``batched``: in a batch committed and broadcast, not seen on the chain yet (its batch is
  ``unconfirmed``);
* ``processing``: its batch's transaction is known to the chain (``Processing``);
* ``complete``, ``failed`` (``Failed/Declined``, refunded), ``expired`` (not batched in time,
  refunded): finished, counted per withdraw from the CheckWithdraw records.

Ages come from the time kept with each withdraw when it was accepted (``time``); a withdraw
logged before that was kept has none and is counted without an age. The ledger is read in one
pass under its lock that copies little, so a metrics scrape does not hold up trades for long.
"""

from __future__ import annotations

from pegx.ledger import engine
from pegx.ledger.lifecycle import FINISHED_STAGES as FINISHED
from pegx.ledger.lifecycle import IN_FLIGHT_STAGES as IN_FLIGHT

STAGES = IN_FLIGHT + FINISHED
OLDEST_SHOWN = 10  # in-flight withdraws listed by pipeline(), oldest first


def pipeline(ledger: engine.Exchange, now: float) -> dict:
    """{stages: {stage: {count, amount, oldest_age}}, oldest: [...], by_status: {...}} at unix
    time ``now``.

    ``oldest_age`` is the seconds the stage's oldest withdraw (with a known accept time) has
    waited since it was accepted, -1 if none has one; finished stages have -1 and amount 0.
    ``oldest`` lists the OLDEST_SHOWN in-flight withdraws waiting longest: {id, stage, style,
    amount, age}. ``by_status`` is pegx.status's older ``withdraws`` count: ``pending`` (every
    withdraw still in the ledger) and each CheckWithdraw record's status (batches and expired
    withdraws).
    """
    flight, finished, by_status = ledger.withdraw_stages()
    stages = {s: {"count": 0, "amount": 0, "oldest_age": -1} for s in STAGES}
    waiting: list[tuple[float, str, str, str, int]] = []
    for wid, stage, rec in flight:
        stages[stage]["count"] += 1
        stages[stage]["amount"] += int(rec["amount"])
        if "time" in rec:
            waiting.append((rec["time"], wid, stage, rec["style"], int(rec["amount"])))
    for stage, count in finished.items():
        stages[stage]["count"] += count
    waiting.sort()
    for accepted, _, stage, _, _ in waiting:
        if stages[stage]["oldest_age"] < 0:
            stages[stage]["oldest_age"] = max(0, int(now - accepted))
    oldest = [{"id": wid, "stage": stage, "style": style, "amount": amount,
               "age": max(0, int(now - accepted))}
              for accepted, wid, stage, style, amount in waiting[:OLDEST_SHOWN]]
    return {"stages": stages, "oldest": oldest, "by_status": by_status}
