"""What a daemon with replication is right now — standby, primary or fenced — and what that
lets callers do.

* standby: the read-only calls are served from the replicated ledger (GetBalance,
  GetDeposits, GetSpendable, CheckWithdraw, GetCycle, StartExchange(isrunning=1)); every call
  that would change state answers :data:`STANDBY_MSG` in the call's own shape (a string, or a
  ``(message, '')`` pair for Withdraw and GenerateDepositAddress), after the password check as
  any refusal (a wrong password answers "Incorrect Password" in the same shape, from the
  guard: the write method is never called on a standby or a fenced primary). ShutDown and ExchangePassword (memory only) are served.
* primary: everything is served as without replication.
* fenced: a newer primary exists; every API call answers the fence message, ShutDown aside.

The guards wrap the published callables (``functools.wraps`` keeps their signatures, so the
server's arity checks and introspection are unchanged) and read the role on every call.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable

from pegx.ledger.journal import NotAcknowledged
from pegx.rpc.api import WRONG_PASSWORD
from pegx.rpc.server import CallError

STANDBY, PRIMARY, FENCED = "standby", "primary", "fenced"
STANDBY_MSG = "This pegx is a standby (read-only): send state changes to the primary."
READS = frozenset({"GetBalance", "GetDeposits", "GetSpendable", "CheckWithdraw", "GetCycle",
                   "StartExchange", "ShutDown", "ExchangePassword"})
PAIRS = frozenset({"Withdraw", "GenerateDepositAddress"})  # answer (message, '')
DEVNET_READS = frozenset({"devnet.info", "devnet.balance"})
SPENDABLE_SECONDS = 0.5  # a standby recomputes GetSpendable from its chain at most this often


class Role:
    """The current role, read by the guards on every call."""

    def __init__(self, state: str):
        self.state = state
        self.reason = ""
        self.promoted = False  # a standby made primary in this process

    def refusal(self) -> str:
        if self.state == FENCED:
            return f"This pegx was {self.reason}."
        return STANDBY_MSG


def _writes(name: str, args: inspect.BoundArguments) -> bool:
    if name == "StartExchange":
        return args.arguments.get("isrunning", 0) != 1
    if name == "CheckWithdraw":
        return args.arguments.get("clear", 0) == 1
    return name not in READS


def guard_api(methods: dict[str, Callable], role: Role,
              password_ok: Callable[[object], bool]) -> dict[str, Callable]:
    """The API methods, refusing what the role does not allow (see the module docstring)."""
    return {name: _guard(name, fn, role, password_ok) for name, fn in methods.items()}


def _guard(name: str, fn: Callable, role: Role, password_ok) -> Callable:
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        state = role.state
        if state == PRIMARY or (state == FENCED and name == "ShutDown"):
            try:
                return fn(*args, **kwargs)
            except NotAcknowledged as exc:  # on this disk, but the sync standby never said so
                raise CallError(f"not acknowledged: {exc}") from None
        bound = sig.bind(*args, **kwargs)
        if state == STANDBY and not _writes(name, bound):
            return fn(*args, **kwargs)
        # never call a write method here, not even to have it say "Incorrect Password": it
        # checks the password again, and replication may have just set this one
        if "passw" in sig.parameters and not password_ok(bound.arguments.get("passw", "")):
            msg = WRONG_PASSWORD
        else:
            msg = role.refusal()
        return (msg, "") if name in PAIRS else msg
    return call


def guard_devnet(methods: dict[str, Callable], role: Role) -> dict[str, Callable]:
    """devnet.* levers: a standby's chain follows the primary's, so only reads are served."""
    def guard(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if role.state != PRIMARY and name not in DEVNET_READS:
                raise CallError(f"{name}: {role.refusal()}")
            return fn(*args, **kwargs)
        return call
    return {name: guard(name, fn) for name, fn in methods.items()}


class RoleControl:
    """The API's Control (pegx.rpc.api.Control) for a daemon that may be a standby: the
    exchange session's while primary; while standby (and after a promotion, until the cycle's
    first pass is done) the exchange counts as loaded and never busy (nothing runs here but the
    replication), and GetSpendable is computed from this daemon's own chain (its replicated
    devnet, or its own node) by ``refresh_spendable`` (the cycle's, without a pass)."""

    def __init__(self, session, role: Role, refresh_spendable: Callable[[], None]):
        self.session = session
        self.role = role
        self.refresh_spendable = refresh_spendable
        self._mu = threading.Lock()
        self._spendable_at = 0.0

    def _idle(self) -> bool:
        """Is the ledger served without the cycle: a standby, or a promoted standby whose
        cycle has not finished its first pass (the ledger was loaded all along; with a strict
        sync standby to come, that pass waits for it, reads must not)."""
        if self.role.state != PRIMARY:
            return True
        return self.role.promoted and not self.session.loaded()

    def started(self) -> bool:
        return True if self.role.state != PRIMARY else self.session.started()

    def loaded(self) -> bool:
        return True if self._idle() else self.session.loaded()

    def wait_not_busy(self, timeout: float) -> bool:
        return True if self._idle() else self.session.wait_not_busy(timeout)

    def spendable(self) -> dict:
        if self._idle():
            with self._mu:
                if time.monotonic() - self._spendable_at >= SPENDABLE_SECONDS:
                    self.refresh_spendable()
                    self._spendable_at = time.monotonic()
        return self.session.spendable()

    def start(self) -> None:
        self.session.start()

    def stop(self) -> None:
        self.session.stop()

    def shutdown(self) -> None:
        self.session.shutdown()

    def set_wallet_passphrase(self, passphrase: str) -> None:
        self.session.set_wallet_passphrase(passphrase)

    def owns_address(self, address: str) -> bool:
        return self.session.owns_address(address)

    def cycle(self) -> int:
        return self.session.cycle()

    def published(self) -> int:
        return self.session.published()
