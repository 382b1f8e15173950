"""The running exchange as the API sees it (issue #11): the state the cycle thread writes and
the API reads, so that neither calls into the other.

* ``started``: StartExchange(1) was called (and no StartExchange(0) since); the thread itself
  is the exchange cycle's, started and stopped through the :class:`Runner` attached here.
* ``loaded``: the first pass finished (the original's exchangeready).
* busy: a recompute of every balance is running; calls wait up to ``busy_wait`` for it.
* the wallet passphrase (ExchangePassword, memory only) and ``wallet_note``, why the wallet
  cannot be used (for pegx status), set by whoever found it locked.
* the Spendable view: the exchange's confirmed wallet outputs in the GetSpendable shape and
  the outputs behind them, replaced whole by each pass.
* GetCycle: the cycle of the published balances plus the republications after
  reorganisations.

The API sees it as a :class:`pegx.rpc.api.Control`; the cycle writes it; the withdraw desk
is handed what it needs from it by the cycle (:class:`pegx.exchange.withdraws.DeskPass`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from pegx.chain.base import Chain, Utxo
from pegx.exchange import follow
from pegx.ledger import engine


class Runner(Protocol):
    """The cycle thread, as the session starts and stops it."""

    def start(self) -> None: ...
    def stop(self, timeout: float = 30.0) -> None: ...
    def wake(self) -> None: ...


class Session:
    """The exchange's started/loaded/busy state, the wallet passphrase and the Spendable view;
    see the module docstring. Thread-safe: each field is replaced whole."""

    def __init__(self, ledger: engine.Exchange, chain: Chain, *,
                 on_shutdown: Callable[[], None] | None = None):
        self.ledger = ledger
        self.chain = chain
        self.on_shutdown = on_shutdown
        self.runner: Runner | None = None
        self._mu = threading.Lock()
        self._started = False
        self._loaded = False
        self._idle = threading.Event()
        self._idle.set()
        self._passphrase = ""
        self.wallet_note = ""  # why the wallet cannot be used (locked...), for pegx.status
        self._spendable: dict[str, dict] = {}
        self._utxos: dict[str, Utxo] = {}

    def attach(self, runner: Runner) -> None:
        """The thread StartExchange starts and stops."""
        self.runner = runner

    # ---------------------------------------------------------------- Control (the API)
    def started(self) -> bool:
        return self._started

    def loaded(self) -> bool:
        return self._loaded

    def wait_not_busy(self, timeout: float) -> bool:
        """False when a recompute is still running after ``timeout`` seconds."""
        return self._idle.wait(timeout)

    def start(self) -> None:
        """StartExchange(start=1): run the cycle thread (again)."""
        with self._mu:
            self._started = True
        if self.runner is not None:
            self.runner.start()

    def stop(self, timeout: float = 30.0) -> None:
        """StartExchange(start=0): halt the cycle thread after its current pass."""
        with self._mu:
            self._started = False
        if self.runner is not None:
            self.runner.stop(timeout)

    def shutdown(self) -> None:
        """ShutDown: asks the daemon to stop (asynchronous: the call answers first)."""
        if self.on_shutdown is not None:
            self.on_shutdown()

    def set_wallet_passphrase(self, passphrase: str) -> None:
        self._passphrase = passphrase
        self.wallet_note = ""  # the next pass says again if the wallet is still unusable
        if self.runner is not None:
            self.runner.wake()

    def spendable(self) -> dict:
        """{"txid:vout": entry} of the exchange's confirmed wallet outputs (GetSpendable)."""
        return dict(self._spendable)

    def owns_address(self, address: str) -> bool:
        """Is ``address`` one of the wallet's own (can it spend what the address receives)?
        Raises ChainError when the node cannot say."""
        return self.chain.is_mine(address)

    def cycle(self) -> int:
        """The cycle of the last published balances."""
        return self.ledger.cycle

    def published(self) -> int:
        """What GetCycle answers: the cycle of the published balances plus the number of
        republications after reorganisations, so it moves on at every publication."""
        return self.cycle() + follow.republished(self.ledger)

    # ---------------------------------------------------------------- the cycle's side
    @property
    def passphrase(self) -> str:
        return self._passphrase

    def mark_loaded(self) -> None:
        self._loaded = True

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """While a recompute runs: calls that need balances wait for it (BUSY after
        ``busy_wait``)."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    def publish_spendable(self, entries: dict[str, dict], utxos: dict[str, Utxo]) -> None:
        """Replace the Spendable view (its entries and the outputs behind them)."""
        self._spendable, self._utxos = entries, utxos

    def utxo(self, key: str) -> Utxo | None:
        """The wallet output behind a Spendable entry."""
        return self._utxos.get(key)

    def reflag_change(self, house: set[str]) -> None:
        """Flag change exactly the entries whose outputs are the house's (``house``), so
        Spendable never shows the exchange's own change unflagged."""
        view = self._spendable
        if any(bool(e.get("change")) != (k in house) for k, e in view.items()):
            self._spendable = {k: {**{f: v for f, v in e.items() if f != "change"},
                                   **({"change": 1} if k in house else {})}
                               for k, e in view.items()}
