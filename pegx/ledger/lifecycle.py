"""The withdraw lifecycle's vocabulary: batch states, the statuses CheckWithdraw shows.

A batch record (table ``batches``, one per master id) goes ``sent`` → (``cancelling``) →
``done`` or ``failed``; its ``status`` goes ``unconfirmed`` → ``Processing`` → ``Complete``, or
ends ``Failed/Declined``. A withdraw that expired unbatched ends ``Expired``.
"""

from __future__ import annotations

IN_FLIGHT = ("sent", "cancelling")  # batch states whose transaction may be on chain
FINISHED = ("Complete", "Failed/Declined", "Expired")  # statuses CheckWithdraw(clear=1) clears


def in_flight_inputs(batches: dict) -> set[str]:
    """Inputs spent by exchange transactions not settled yet (withdraw batches being sent or
    cancelled): they may be spent on chain while still registered."""
    return {k for b in batches.values()
            if isinstance(b, dict) and b.get("state", "sent") in IN_FLIGHT
            for k in b.get("ins", [])}
