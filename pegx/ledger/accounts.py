"""The ledger's money in and out of accounts: trades, deposits (claims and the inputs that
register them) and recomputes of the published balances.

A mixin of :class:`pegx.ledger.engine.Exchange` over :class:`pegx.ledger.core.Ledger`.
"""

from __future__ import annotations

import numpy as np

from pegx import peg
from pegx.ledger import checks, figures, ops
from pegx.ledger.core import Ledger
from pegx.ledger.rules import (
    HOUSE,
    POOL,
    AmountError,
    EngineError,
    check_amount,
    check_name,
    check_style,
    check_trade_names,
)


class Accounts(Ledger):
    """Trades, deposits and recomputes (see the module docstring)."""

    # ---------------------------------------------------------------- trades
    def trade(self, user1, amount, user2, style: str = peg.LIQUID) -> bool:
        """Move ``amount`` of ``style`` from user1 to user2 (ORIGINAL §1.3 Trade checks 5-11).

        ``user2 == ''`` is the pool: a negative amount debits user1 into ``pool``, a positive
        amount credits user1 out of it (the pool must hold enough: debit before credit).
        """
        check_trade_names(user1, user2)
        amount = check_amount(amount, allow_negative=True)
        if user2 == "":
            if amount < 0:
                amount, user2 = -amount, POOL
            else:
                user1, user2 = POOL, user1
        elif amount < 0:
            raise AmountError("Amount can not be negative if both users are known")
        check_style(style)
        with self._lock:
            checks.check_funds(self._state, user1, amount, style)
            if user1 == user2:
                return True
            seq = self._submit([ops.trade(user1, user2, amount, style)])
        self._durable(seq)
        return True

    # ---------------------------------------------------------------- inputs and recomputes
    def credit_inputs(self, inputs: list[dict], *, supply: int, now: int,
                      cycle: int | None = None) -> None:
        """Register exchange inputs and recompute balances, as one durable step.

        Each item: {key, value, address, vector (np array), owner (a user, HOUSE, or None for
        change that replaces spent inputs), change, frozen_until, height}. An owner is credited
        with the input's fractions.
        """
        group, held = [], {}
        for item in inputs:  # checks of the items alone, and their figures: before the lock
            key, vec = item["key"], np.array(item["vector"], dtype=np.int64)  # (a copy)
            if vec.shape != (peg.PEG_SIZE,) or (vec < 0).any():
                raise EngineError(f"input {key}: a fraction vector has 1200 steps >= 0")
            if int(vec.sum()) != int(item["value"]):
                raise EngineError(f"input {key}: fractions sum to {int(vec.sum()):,d}, "
                                  f"not its value {int(item['value']):,d}")
            if key in held:
                raise EngineError(f"input {key} is listed twice")
            owner = item.get("owner")
            if owner is not None and owner != HOUSE:
                check_name(owner)
            group.append(ops.credit(key, item["value"], vec, owner=owner,
                                    address=item.get("address", ""),
                                    change=bool(item.get("change")),
                                    frozen_until=item.get("frozen_until", 0),
                                    height=item.get("height", 0)))
            held[key] = vec
        # each input's subpremium row (0.27 ms each) is worked out here, not under the lock
        for at in range(0, len(group), figures.CHUNK):
            keys = list(held)[at:at + figures.CHUNK]
            rows = peg.subpremium_table(np.stack([held[k] for k in keys]))
            for key, row in zip(keys, rows, strict=True):
                held[key] = (held[key], row)
        with self._lock:
            for key in held:
                if key in self._state.tables["inputs"]:
                    raise EngineError(f"input {key} is already registered")
            seq = self._recompute_locked(group, supply=supply, now=now, cycle=cycle,
                                         figured=held)
        del group, held  # a checkpoint may follow: it finds their memory free (trim)
        self._durable(seq)

    def spend_inputs(self, keys_: list[str], *, supply: int, now: int) -> None:
        """Registered inputs spent by an exchange transaction leave the input set."""
        with self._lock:
            missing = [k for k in keys_ if k not in self._state.tables["inputs"]]
            if missing:
                raise EngineError(f"not registered inputs: {', '.join(missing)}")
            seq = self._recompute_locked([ops.spend(keys_)], supply=supply, now=now)
        self._durable(seq)

    def recompute(self, supply: int, *, now: int, cycle: int | None = None) -> dict:
        """Recompute exchange totals and every account's balance at ``supply``; returns totals."""
        with self._lock:
            seq = self._recompute_locked([], supply=supply, now=now, cycle=cycle)
            totals = dict(self._state.meta["totals"])
        self._durable(seq)
        return totals

    def _recompute_locked(self, group: list[dict], *, supply: int, now: int,
                          cycle: int | None = None, figured: dict | None = None) -> int:
        """Apply ``group``, then a recompute whose totals include what it registers or spends;
        log all of it as one record (call with the lock held). ``figured``: the vector and
        subpremium row of each input the group credits, if already worked out. All or
        nothing: if the recompute (or a spend) fails reading a vector from LevelDB after
        credits were applied, they are undone, so memory never holds coins the log lacks."""
        supply = peg.check_supply(supply)
        with self._all_or_nothing():
            self._state.apply_group(group, figured)
            recompute = self._recompute(supply, now, cycle)
        return self._log([*group, recompute])

    # ---------------------------------------------------------------- deposits
    def claim_deposits(self, name, keys: list[str]) -> None:
        """Claim outputs ("txid:vout") for user ``name``, all or none: the cycle credits each
        to ``name`` when it registers it. The first claim wins, even between two concurrent
        calls: an output claimed by someone else refuses the call (EngineError, the API's
        message); one already claimed by ``name`` is left as it is."""
        check_name(name)
        with self._lock:
            claims = self._state.tables["claims"]
            for key in keys:
                checks.check_claim(self._state, key, name)
            new = list(dict.fromkeys(k for k in keys if k not in claims))
            if not new:
                return
            seq = self._submit([ops.claim(k, name) for k in new])
        self._durable(seq)

    def unregistered_claims(self, keys) -> dict[str, str]:
        """{key: claimant} for each of ``keys`` claimed but not registered yet."""
        with self._lock:
            claims, inputs = self._state.tables["claims"], self._state.tables["inputs"]
            return {k: claims[k]["name"] for k in keys
                    if k in claims and not claims[k].get("registered") and k not in inputs}

    def inputs_since(self, height: int) -> dict[str, dict]:
        """Registered inputs from blocks above ``height`` {key: record}, in key order."""
        with self._lock:
            return {k: dict(r) for k, r in sorted(self._state.tables["inputs"].items())
                    if int(r.get("height") or 0) > height}

    def input_count(self) -> int:
        """How many inputs (the exchange's outputs on chain) are registered."""
        with self._lock:
            return len(self._state.tables["inputs"])

    def deposit_addresses(self) -> set[str]:
        """Every deposit address GenerateDepositAddress made."""
        with self._lock:
            return set(self._state.tables["addresses"])

    def unimported_keys(self) -> dict[str, str]:
        """{address: wif} of deposit keys not imported into the wallet yet."""
        with self._lock:
            return {a: r["wif"] for a, r in self._state.tables["addresses"].items()
                    if not r.get("imported")}

    def claim(self, key: str) -> dict | None:
        """The claim on output ``key``: {name[, registered: 1]}, or None."""
        with self._lock:
            rec = self._state.tables["claims"].get(key)
            return None if rec is None else dict(rec)

    def claims(self) -> dict:
        """Every claim {key: {name[, registered: 1]}} (GetDeposits)."""
        with self._lock:
            return {k: dict(v) for k, v in self._state.tables["claims"].items()}

