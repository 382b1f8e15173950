"""The ledger's side of replication (pegx.replication): the only door it goes through.

A primary hands its journal a :class:`pegx.ledger.journal.Sink` (every durable group goes to
the standby; in sync mode ``wait`` returns only once the standby holds it) and reads its own
op log back as stored, to ship it. A standby applies the primary's records with the replay
path and logs them under the same seq as the same bytes, so both ledgers stay equal
(``digest_at``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pegx.ledger.core import Ledger
from pegx.ledger.journal import Sink, read_raw
from pegx.ledger.rules import EngineError


class Replicated(Ledger):
    """Replication's narrow view of the ledger (part of the Exchange façade)."""

    def replicate_to(self, sink: Sink | None) -> None:
        """Give every durable group to ``sink`` from now on (None: to nobody)."""
        self.journal.sink = sink

    def log_bounds(self) -> tuple[int, int]:
        """(the last seq fsynced here, the last seq whose log record was deleted): the log
        holds every record in between."""
        return self.journal.local_seq, self.journal.deleted_seq

    def log_records(self, after: int) -> Iterator[tuple[int, bytes]]:
        """The op-log records after seq ``after``, in order, as the bytes stored."""
        return read_raw(self.store, after)

    def apply_replicated(self, records: list[tuple[int, bytes]]) -> int:
        """A standby's path: apply records received from the primary and log them as they
        were sent; returns the last seq, durable when this returns.

        Each record is applied exactly as a replay at start-up applies it (no checks: the
        primary checked it before logging it) and logged under the same seq, so this ledger
        stays equal to the primary's. A record out of order or one that fails to apply stops
        the journal: memory may then hold a partial record, which no checkpoint may write.
        """
        with self._lock:
            try:
                for seq, data in records:
                    if seq != self.seq + 1:
                        raise EngineError(f"replicated record {seq:,d} does not follow "
                                          f"{self.seq:,d}")
                    for op in json.loads(data):
                        self._state.apply(op)
                    self.journal.append_raw(seq, data)
                    self.seq = seq
            except Exception as exc:
                self.journal.fail(exc, "a replicated record could not be applied")
                raise
            last = self.seq
        self.journal.wait(last)
        self._checkpoints.maybe()
        return last

    def digest_at(self) -> tuple[int, str]:
        """(seq, digest()) of one consistent view: equal on a primary and a standby that hold
        the same records."""
        with self._lock:
            return self.seq, self.digest()
