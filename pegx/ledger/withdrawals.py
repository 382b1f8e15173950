"""The ledger's withdraws: requests, their limit, and the lifecycle of the batches that pay
them (:mod:`pegx.ledger.lifecycle` has the records and the settlement rules).

The withdraw desk (:mod:`pegx.exchange.withdraws`) decides what to batch and follows the
chain; every record it leaves behind is written here, by one operation group per step:
``mark_batched`` before the broadcast, ``update_batch`` as it is tracked, ``complete_batch``
or ``decline_batch`` at its end, ``expire`` for a withdraw no batch took in time,
``note_waiting`` for why a pending withdraw waits, and ``withdraw_status`` for CheckWithdraw. A mixin of :class:`pegx.ledger.engine.Exchange`.
"""

from __future__ import annotations

import copy

import numpy as np

from pegx.ledger import checks, lifecycle, ops
from pegx.ledger.core import Ledger
from pegx.ledger.lifecycle import Cancelled, Mined, Output
from pegx.ledger.rules import (
    LIMIT_MSGS,
    LIMITS,
    AmountError,
    EngineError,
    LimitReached,
    check_amount,
    check_name,
    check_style,
)


class Withdrawals(Ledger):
    """Withdraw requests and the batch lifecycle (see the module docstring)."""

    # ---------------------------------------------------------------- withdraws
    def withdraw_limit(self, style: str) -> str | None:
        """The limit message if ``style`` already has its maximum of pending withdraws."""
        with self._lock:
            pending = sum(1 for w in self._state.tables["withdraws"].values()
                          if w["style"] == style)
        return LIMIT_MSGS[style] if pending >= LIMITS[style] else None

    def withdraw_count(self) -> int:
        """Withdraws pending or in flight (their amounts are in the withdraws account)."""
        with self._lock:
            return len(self._state.tables["withdraws"])

    def request_withdraw(self, wid: str, user, amount, style: str, address: str, cycle: int,  # noqa: PLR0913 (the ledger call takes the withdraw's fields as the API passes them)
                         *, commission: int | None = None, limit: bool = False,
                         accepted: int | None = None) -> None:
        """Move ``amount`` from ``user`` to the ``withdraws`` account under withdraw id ``wid``.

        ``commission`` (satoshi, 0 <= commission < amount) is the commission in force when the
        withdraw was accepted; it is kept with the withdraw and is what its batch charges,
        whatever the settings say by then. Without it the batch uses the settings of its time.
        With ``limit``, a style that has its maximum of pending withdraws refuses it
        (LimitReached), counted and taken atomically. ``accepted`` (unix time) is kept as the
        record's ``time``: how long a withdraw has waited (pegx status, metrics); withdraws
        logged before it was kept have none.
        """
        check_name(user)
        amount = check_amount(amount)
        check_style(style)
        op = ops.withdraw(wid, user, amount, style, address, cycle)
        if commission is not None:
            if (isinstance(commission, bool) or not isinstance(commission, (int, np.integer))
                    or not 0 <= commission < amount):
                raise AmountError(f"commission must be a whole number of satoshi from 0 to "
                                  f"below the amount, got {commission!r}")
            op["commission"] = int(commission)
        if accepted is not None:
            op["time"] = int(accepted)
        with self._lock:
            full = self.withdraw_limit(style) if limit else None
            if full:
                raise LimitReached(full)
            if wid in self._state.tables["withdraws"]:
                raise EngineError(f"withdraw id {wid} already exists")
            checks.check_funds(self._state, user, amount, style)
            seq = self._submit([op])
        self._durable(seq)

    def refund(self, wids: list[str]) -> None:
        """Give pending withdraws back to their users, exactly the steps they gave."""
        self._finish([ops.refund(w) for w in wids], wids)

    def burn(self, wids: list[str]) -> None:
        """Withdraws whose transaction confirmed leave the ledger."""
        self._finish([ops.burn(wids)], wids)

    def _finish(self, group: list[dict], wids: list[str]) -> None:
        if len(set(wids)) != len(wids):
            raise EngineError("a withdraw id is listed twice")
        with self._lock:
            for wid in wids:
                if wid not in self._state.tables["withdraws"]:
                    raise EngineError(f"no pending withdraw {wid}")
            seq = self._submit(group)
        self._durable(seq)


    # ---------------------------------------------------------------- what the desk reads
    def unbatched_withdraws(self, style: str | None = None) -> list[tuple[str, dict]]:
        """Pending withdraws no batch took yet (of ``style``), oldest request first."""
        with self._lock:
            found = [(w, dict(r)) for w, r in self._state.tables["withdraws"].items()
                     if "batch" not in r and (style is None or r["style"] == style)]
        return sorted(found, key=lambda item: (item[1]["cycle"], item[0]))

    def free_inputs(self, keys: list[str]) -> list[tuple[str, str, np.ndarray]]:
        """(key, address, fractions) of each of ``keys`` that is registered and in no batch."""
        out = []
        with self._lock:
            inputs = self._state.tables["inputs"]
            for key in keys:
                rec = inputs.get(key)
                if rec is not None and "batch" not in rec:
                    out.append((key, rec["address"], self._state.input_vector(key).copy()))
        return out

    def unbatched_inputs(self) -> list[str]:
        """Every registered input no batch in flight spends, sorted."""
        with self._lock:
            return sorted(k for k, rec in self._state.tables["inputs"].items()
                          if "batch" not in rec)

    def input(self, key: str) -> dict | None:
        """Registered input ``key``'s record {value, address, owner, change, frozen_until,
        height[, batch]}, or None."""
        with self._lock:
            rec = self._state.tables["inputs"].get(key)
            return None if rec is None else dict(rec)

    def batch(self, master: str) -> dict | None:
        """A copy of batch ``master``'s lifecycle record, or None."""
        with self._lock:
            return copy.deepcopy(self._state.tables["batches"].get(master))

    def batches(self, states: tuple[str, ...] = lifecycle.IN_FLIGHT) -> dict[str, dict]:
        """Copies of the batch records in ``states`` {master: record} (by default: in flight)."""
        with self._lock:
            return {m: copy.deepcopy(b) for m, b in self._state.tables["batches"].items()
                    if b["state"] in states}

    def batch_withdraws(self, master: str) -> dict[str, dict]:
        """The withdraws of batch ``master`` still pending {id: record}, in the batch's order."""
        with self._lock:
            pending = self._state.tables["withdraws"]
            return {w: dict(pending[w]) for w in lifecycle.pending_of(self._state, master)}

    def house_outpoints(self) -> set[str]:
        """Every output the exchange's own transactions returned to it (its change), from the
        batch records alone (see lifecycle.house_outpoints)."""
        with self._lock:
            out: set[str] = set()
            for b in self._state.tables["batches"].values():
                out |= lifecycle.house_outpoints(b)
            return out

    # ---------------------------------------------------------------- the lifecycle
    def mark_batched(self, master: str, plan: dict) -> None:
        """Record batch ``master`` before its transaction is broadcast: its lifecycle record
        (``plan`` has lifecycle.PLAN_FIELDS), its withdraws and inputs marked as in it. Durable
        before the transaction can exist anywhere, so a restart resumes from the ledger."""
        self.commit([ops.batch(master, lifecycle.new_record(plan))])

    def update_batch(self, master: str, *, unset: list[str] = (), **changes) -> dict:
        """Change fields of batch ``master`` in flight (lifecycle.UPDATES), remove ``unset``
        ones (lifecycle.REMOVABLE); returns the new record."""
        with self.locked():
            self.commit([ops.batch_update(master, changes, unset)])
            return self.batch(master)

    def complete_batch(self, master: str, tx: Mined, outputs: list[Output], *,
                       now: int) -> list[str]:
        """Batch ``master``'s transaction ``tx`` is final: its inputs are spent, its withdraws
        burned, ``outputs`` (the house's change) registered, the house credited with the
        commissions less the costs; the batch ends Complete. Returns the withdraws burned.
        HouseShort (nothing changed) if the house would have to pay more than it holds."""
        with self.locked():
            ids = lifecycle.pending_of(self._state, master)
            self.commit(lifecycle.complete(self._state, master, tx, outputs),
                        supply=self._state.supply, now=now)
        return ids

    def decline_batch(self, master: str, reason: str, *, cancel: Cancelled | None = None,
                      now: int) -> list[str]:
        """Batch ``master`` can no longer confirm: its withdraws are refunded and it ends
        Failed/Declined (``reason``). With ``cancel`` (its confirmed cancel), the cancelled
        input is spent, the cancel's output registered, and its miner fee paid by
        ``cancel.house_paid`` from the house and ``cancel.withheld`` from the refunds.
        Returns the withdraws refunded."""
        with self.locked():
            ids = lifecycle.pending_of(self._state, master)
            self.commit(lifecycle.decline(self._state, master, reason, cancel),
                        supply=self._state.supply, now=now)
        return ids

    def note_waiting(self, reasons: dict[str, str], *, height: int) -> dict[str, str]:
        """Keep why each of ``reasons``' withdraws waits (a batch task at ``height`` left it
        out), for CheckWithdraw's ``Pending`` record. Withdraws no longer pending or already
        in a batch are skipped, and so are unchanged reasons; returns what was recorded."""
        with self.locked():
            pending, waiting = self._state.tables["withdraws"], self._state.tables["waiting"]
            new = {w: why[:checks.MAX_REASON] for w, why in reasons.items()
                   if w in pending and "batch" not in pending[w] and why
                   and (waiting.get(w) or {}).get("reason") != why[:checks.MAX_REASON]}
            if new:
                self.commit([ops.wait(new, height)])
        return new

    def expire(self, before_cycle: int, *, height: int, now: int) -> list[tuple[str, dict]]:
        """Refund every unbatched withdraw requested in a cycle before ``before_cycle``,
        recorded Expired at ``height``; returns them (id, record)."""
        with self.locked():
            stale = [(w, r) for w, r in self.unbatched_withdraws() if r["cycle"] < before_cycle]
            if stale:
                self.commit([ops.expire(w, height) for w, _ in stale],
                            supply=self._state.supply, now=now)
        return stale

    def withdraw_status(self, ident, *, clear: bool = False) -> dict | None:
        """CheckWithdraw's record for ``ident`` (a withdraw id, followed to its batch's master
        id; a master id; an expired withdraw id), or None. With ``clear``, a finished record
        of ``ident`` is no longer shown afterwards (one still in flight is kept)."""
        if not isinstance(ident, str):
            return None
        with self.locked():
            rec = lifecycle.status(self._state.tables, ident)
            if clear and rec is not None and rec["status"] in lifecycle.FINISHED:
                self.commit([ops.forget(ident)])
        return rec

    def withdraw_stages(self) -> tuple[list[tuple[str, str, dict]], dict[str, int],
                                       dict[str, int]]:
        """Where every withdraw is, in one pass under the lock: (in flight: [(id, stage,
        {style, amount[, time]})], finished: {stage: count} (lifecycle.stages), and
        :meth:`withdraw_statuses`)."""
        with self._lock:
            flight, finished = lifecycle.stages(self._state.tables)
            return flight, finished, self.withdraw_statuses()

    def withdraw_statuses(self) -> dict[str, int]:
        """{"pending": withdraws pending or in flight, status: CheckWithdraw records}."""
        with self._lock:
            counts = {"pending": len(self._state.tables["withdraws"])}
            counts.update(lifecycle.status_counts(self._state.tables))
            return counts
