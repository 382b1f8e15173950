"""The exchange ledger's façade: :class:`Exchange`.

One object holds the whole ledger (:mod:`pegx.ledger.core`: state, lock, commits,
checkpoints) with the operations callers use: trades, deposits and recomputes
(:mod:`pegx.ledger.accounts`), withdraws and the lifecycle of their batches
(:mod:`pegx.ledger.withdrawals`), and narrow reads. Callers outside the ledger package use
these methods only; none of them touches the state or the lock.

Invariants (checked by tests/ledger/test_engine_properties.py and :mod:`pegx.ledger.audit`):
* per step, Σ accounts + drift == Σ registered inputs (nothing is created or lost; the drift
  vector, 0 in value, records where the chain's spends put fractions the ledger did not);
* no negative step or balance; every account's liquid + reserve == its step total;
* Σ account liquid <= the exchange's liquid after every recompute.
"""

from __future__ import annotations

from pegx.ledger.accounts import Accounts
from pegx.ledger.replicated import Replicated
from pegx.ledger.withdrawals import Withdrawals


class Exchange(Accounts, Withdrawals, Replicated):
    """The ledger state machine with durable operations (see the module docstring)."""
