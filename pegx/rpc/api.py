"""PegAPI: the 15 documented calls of the Python Halo Peg Exchange, faithful to the original.

Names, argument order and defaults follow PegAPI.txt; the order of checks and the return values
follow ORIGINAL §1.3, so an exchange's existing ``xmlrpc.client`` code works unchanged. The
original's bugs are fixed; every fix a client can see is listed in PegAPI.md.

This module knows the engine (the ledger) and a :class:`Control` (the exchange's session:
started, loaded, busy; the Spendable view; shutdown). It never touches LevelDB or the node.
Errors the API defines are returned as values; anything else raised here is turned into a clean
Fault by rpcserver.

Over 400 lines (~450): the 15 calls, each one ordered list of the original's checks; they share
the password gate and the refusals.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from typing import Protocol

from pegx import crypto, peg
from pegx.chain.base import ChainError
from pegx.exchange import planner
from pegx.ledger import rules
from pegx.ledger import settings as exchange_settings
from pegx.ledger.engine import Exchange
from pegx.ledger.rules import EngineError, coerce_amount

log = logging.getLogger(__name__)

WRONG_PASSWORD = "Incorrect Password"
STOPPED = "Exchange is stopped."
NOT_LOADED = "Exchange is not loaded yet."
BALANCE_UPDATING = "Balance is updating"
BUSY = "Exchange is busy. Please try again in a few minutes."
TXIDS_MSG = "txids must be a non-empty list of 'txid:vout' strings."
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class Control(Protocol):
    """What the API needs from the running exchange (pegx.exchange.session.Session)."""

    def started(self) -> bool: ...          # StartExchange(start=1) and not stopping
    def loaded(self) -> bool: ...           # the exchange finished loading (exchangeready)
    def wait_not_busy(self, timeout: float) -> bool: ...  # False: a recompute is still running
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def shutdown(self) -> None: ...         # asynchronous: the call answers first
    def set_wallet_passphrase(self, passphrase: str) -> None: ...
    def spendable(self) -> dict: ...        # {"txid:vout": entry} of confirmed exchange inputs
    def owns_address(self, address: str) -> bool: ...  # the wallet's own key? (ChainError)
    def cycle(self) -> int: ...             # the cycle of the last published balances
    def published(self) -> int: ...         # GetCycle: cycle + republications after reorgs


class _Answer(Exception):
    """A refusal a call answers with ``answer`` (a message, or False)."""

    def __init__(self, answer: str | bool):
        super().__init__(answer)
        self.answer = answer


class PasswordGate:
    """The API password: blank by default, a salted scrypt hash in the ledger, constant time.

    Checking scrypt on every call would cost ~40 ms; after the first successful check the
    password's salted SHA-256 is kept in memory, and from then on every check (right or wrong)
    is one SHA-256 and one constant-time compare, so both take the same time.
    """

    def __init__(self, ledger: Exchange):
        self.ledger = ledger
        # (stored hash, salted SHA-256 of the proven password): the shortcut is only valid for
        # the record it was proven against, so a SetPassword racing a check cannot leave a
        # shortcut for the old password behind (which would lock everyone out)
        self._fast: tuple[str, bytes] | None = None
        self._mu = threading.Lock()
        # scrypt takes ~16 MB and ~50 ms: one at a time, so a flood of wrong passwords from
        # many connections cannot exhaust memory (it queues instead)
        self._slow_mu = threading.Lock()

    def _record(self) -> dict | None:
        # read without the ledger lock and deep copy: every call starts here, and a record is
        # only ever replaced whole (never mutated in place)
        return self.ledger.setting("password")

    def _shortcut(self, rec: dict, passw: str) -> bool | None:
        """True/False from the in-memory shortcut, or None when it does not apply to ``rec``."""
        fast = hashlib.sha256(bytes.fromhex(rec["salt"]) + passw.encode("utf-8", "surrogatepass"))
        with self._mu:
            cached = self._fast
        if cached is None or cached[0] != rec["hash"]:
            return None
        return hmac.compare_digest(fast.digest(), cached[1])

    def check(self, passw) -> bool:
        rec = self._record()
        if not rec:
            return True  # blank password: every call passes, as the original
        if not isinstance(passw, str):
            passw = ""
        quick = self._shortcut(rec, passw)
        if quick is not None:
            return quick
        with self._slow_mu:
            rec = self._record()  # SetPassword may have replaced it while we waited
            if not rec:
                return True
            quick = self._shortcut(rec, passw)
            if quick is not None:  # another call proved this record's password meanwhile
                return quick
            salt = bytes.fromhex(rec["salt"])
            secret = passw.encode("utf-8", "surrogatepass")
            slow = hashlib.scrypt(secret, salt=salt, n=rec["n"], r=rec["r"], p=rec["p"],
                                  maxmem=64 << 20)
            ok = hmac.compare_digest(slow, bytes.fromhex(rec["hash"]))
            if ok:
                with self._mu:
                    self._fast = (rec["hash"], hashlib.sha256(salt + secret).digest())
        return ok

    def set(self, newpassw: str) -> None:
        # no _slow_mu here: a check queued behind a running scrypt re-reads the record, and a
        # shortcut proven against the old record never applies to the new one (its hash differs)
        if newpassw == "":
            self.ledger.put("settings", "password", None)
        else:
            salt = os.urandom(16)
            digest = hashlib.scrypt(newpassw.encode("utf-8", "surrogatepass"), salt=salt,
                                    maxmem=64 << 20, **SCRYPT)
            self.ledger.put("settings", "password",
                            {"salt": salt.hex(), "hash": digest.hex(), **SCRYPT})
        with self._mu:
            self._fast = None


class PegAPI:
    """The documented calls. Method names are the wire names."""

    def __init__(self, ledger: Exchange, control: Control, *, busy_wait: float = 2.0,
                 exec_api=None, network: crypto.Network = crypto.MAIN):
        self.ledger = ledger
        self.net = network  # the address and key versions (the network setting)
        self.control = control
        self.busy_wait = busy_wait
        self.exec_api = exec_api
        self.password = PasswordGate(ledger)

    METHODS = ("SetPassword", "StartExchange", "ShutDown", "ExchangePassword",
               "GenerateDepositAddress", "GetSpendable", "Deposit", "GetDeposits", "GetBalance",
               "Trade", "ExchangeSettings", "Withdraw", "CheckWithdraw", "GetCycle", "API")

    def methods(self) -> dict:
        """{wire name: bound method} for rpcserver."""
        return {name: getattr(self, name) for name in self.METHODS}

    # -------------------------------------------------------------------- helpers
    def _stopped(self) -> bool:
        return not self.control.started()

    def _busy(self) -> bool:
        return not self.control.wait_not_busy(self.busy_wait)

    def settings(self) -> dict:
        """The exchange settings with defaults filled in."""
        return self.ledger.exchange_settings()

    # -------------------------------------------------------------------- calls
    def SetPassword(self, newpassw="", passw=""):
        """SetPassword(newpassw='', passw='') -> True. A blank password means none is needed."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if not isinstance(newpassw, str):
            return "The new password must be a string."
        self.password.set(newpassw)
        return True

    def StartExchange(self, passw="", start=1, isrunning=0):
        """StartExchange(passw='', start=1, isrunning=0): start (1) or stop (0) the exchange;
        with isrunning=1 only tell whether it is loaded."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if isrunning not in (0, 1) or isinstance(isrunning, float):
            return "isrunning must be 0 or 1."
        if isrunning == 1:
            return bool(self.control.loaded())
        if start not in (0, 1) or isinstance(start, float):
            return "start must be 1 (start) or 0 (stop)."
        if start == 1:
            self.control.start()
        else:
            self.control.stop()
        return True

    def ShutDown(self, passw=""):
        """ShutDown(passw='') -> True, then the daemon checkpoints and exits."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        self.control.shutdown()
        return True

    def ExchangePassword(self, xpassw="", passw=""):
        """ExchangePassword(xpassw='', passw='') -> True: the wallet passphrase (memory only)."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if not isinstance(xpassw, str):
            return "The wallet passphrase must be a string."
        self.control.set_wallet_passphrase(xpassw)
        return True

    def GenerateDepositAddress(self, passw=""):
        """GenerateDepositAddress(passw='') -> (wif_key, True). Archive the key."""
        if not self.password.check(passw):
            return (WRONG_PASSWORD, "")
        if self._stopped():
            return (STOPPED, "")
        key = crypto.generate_deposit_key(self.net)
        address = crypto.wif_to_address(key, self.net)
        # durable before we answer; the cycle thread imports it into the wallet
        self.ledger.put("addresses", address, {"wif": key, "imported": 0})
        return (key, True)

    def GetSpendable(self, address="", passw=""):
        """GetSpendable(address='', passw='') -> {"txid:vout": {...}} of the exchange's inputs."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if not self.control.loaded():
            return NOT_LOADED
        spendable = self.control.spendable()
        if address == "":
            return spendable
        return {k: v for k, v in spendable.items() if v.get("address") == address}

    def Deposit(self, name, txids, passw=""):  # noqa: PLR0911 (one ordered list of checks in the original's order, ORIGINAL.md §1.3)
        """Deposit(name, txids, passw='') -> True: claim inputs ("txid:vout") for a user."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        try:
            rules.check_name(name)
        except EngineError as exc:
            return str(exc)
        if self._stopped():
            return STOPPED
        if not self.control.loaded():
            return NOT_LOADED
        # an empty list claims nothing: answering True let a client record a deposit that was
        # never made (e.g. one that called Deposit before GetSpendable listed the input)
        if (not isinstance(txids, (list, tuple)) or not txids
                or not all(isinstance(t, str) for t in txids)):
            return TXIDS_MSG
        refused, new = self._claimable(name, txids)
        if refused:
            return refused
        try:
            self.ledger.claim_deposits(name, new)  # first claim wins, even between two calls
        except EngineError as exc:
            return str(exc)
        return True

    def _claimable(self, name: str, txids) -> tuple[str | None, list[str]]:
        """Deposit's checks of each txid in order (in Spendable, not change, not claimed by
        someone else): (the first refusal, []) or (None, the txids to claim)."""
        spendable = self.control.spendable()
        new: list[str] = []
        for txid in txids:
            entry = spendable.get(txid)
            if entry is None:
                return f"{txid} not in Spendable list yet.", []
            if entry.get("change"):
                return "You can not deposit change transactions.", []
            claim = self.ledger.claim(txid)
            if claim is not None and claim["name"] != name:
                return rules.TAKEN_MSG.format(key=txid), []
            if claim is None and txid not in new:
                new.append(txid)
        return None, new

    def GetDeposits(self, txid="", passw=""):
        """GetDeposits(txid='', passw='') -> all claims, or one {'name'[, 'registered': 1]}."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if not self.control.loaded():
            return NOT_LOADED
        if txid == "":
            return self.ledger.claims()
        if not isinstance(txid, str):
            return False
        rec = self.ledger.claim(txid)
        return False if rec is None else rec

    def GetBalance(self, user, passw=""):  # noqa: PLR0911 (one ordered list of checks in the original's order, ORIGINAL.md §1.3)
        """GetBalance(user, passw='') -> {liquid, reserve}; 'exchange' adds subpremium, frozen."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if not self.control.loaded():
            return NOT_LOADED
        if self._busy():
            return BALANCE_UPDATING
        if self._stopped():
            return STOPPED
        if not isinstance(user, str):
            return False
        if user.lower() == "exchange":
            return self.ledger.exchange_balance()
        bal = self.ledger.balance(user)
        return False if bal is None else bal

    def Trade(self, user1, amount, user2, style="liquid", passw=""):
        """Trade(user1, amount, user2, style='liquid', passw='') -> True.

        user2 '' is the pool: a negative amount debits user1 into it, a positive one credits
        user1 out of it (debit before credit).
        """
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if self._busy():
            return BUSY
        if not self.control.loaded():
            return NOT_LOADED
        if self._stopped():
            return STOPPED
        try:
            rules.check_trade_names(user1, user2)
            amount = coerce_amount(amount)
            return self.ledger.trade(user1, amount, user2, style)
        except EngineError as exc:
            return str(exc)

    def ExchangeSettings(self, exchangeaccounts="", exchangefeeaccount="", commission="",
                         exchangeconfirmations="", passw=""):
        """ExchangeSettings(exchangeaccounts='', exchangefeeaccount='', commission='',
        exchangeconfirmations='', passw='') -> True. Everything is validated before anything
        changes, and all of it is saved."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if self._stopped():
            return STOPPED
        try:
            new = exchange_settings.updated(
                self.settings(), exchangeaccounts=exchangeaccounts,
                exchangefeeaccount=exchangefeeaccount, commission=commission,
                exchangeconfirmations=exchangeconfirmations, not_in_wallet=self._not_in_wallet,
                network=self.net)
        except exchange_settings.Refused as refused:
            return refused.answer
        self.ledger.put("settings", "exchange", new)
        return True

    def _not_in_wallet(self, accounts) -> str | None:
        """The refusal for the first exchange account the wallet does not own, or None.

        The exchange's change goes to these accounts and later withdraws spend it: change sent
        where the wallet has no key is lost to the exchange, and the withdraws after it stall.
        """
        for addr in accounts:
            try:
                mine = self.control.owns_address(addr)
            except ChainError as exc:
                return (f"Could not ask the node whether exchange account {addr!r} is the "
                        f"wallet's: {exc}.")
            if not mine:
                return (f"Exchange account {addr!r} is not an address of the exchange's wallet: "
                        "the wallet could not spend the change sent to it.")
        return None

    def Withdraw(self, user, amount, address, style="liquid", passw=""):
        """Withdraw(user, amount, address, style='liquid', passw='') -> (True, id) or
        (message, '')."""
        if not self.password.check(passw):
            return (WRONG_PASSWORD, "")
        if not self.control.loaded():
            return (NOT_LOADED, "")
        try:
            amount, rates = self._withdraw_checks(amount, address, style)
        except _Answer as refused:
            return (refused.answer, "")
        # then Trade's own checks, as the original's Withdraw calls Trade: busy, names, funds
        if self._busy():
            return (BUSY, "")
        uid = os.urandom(16).hex()
        try:
            rules.check_name(user)
            # the limit is counted and the slot taken atomically (limit=True)
            self.ledger.request_withdraw(uid, user, amount, style, address, self.control.cycle(),
                                         commission=planner.commission(amount, rates),
                                         limit=True, accepted=int(time.time()))
        except EngineError as exc:
            return (str(exc), "")
        return (True, uid)

    def _withdraw_checks(self, amount, address, style) -> tuple[int, dict]:
        """Withdraw's own checks in the original's order, up to the pending limit; returns
        (amount, the commission rates in force) or raises _Answer."""
        if address == "":
            raise _Answer(False)
        try:
            crypto.validate_address(address, self.net)
        except crypto.CryptoError:
            raise _Answer("Withdraw address not valid") from None
        try:
            amount = coerce_amount(amount)
        except EngineError as exc:
            raise _Answer(str(exc)) from None
        # one reading of the settings: the commission checked here is the one kept with the
        # withdraw, so a later ExchangeSettings cannot change what this withdraw pays
        rates = self.settings()["commission"]
        if amount <= coerce_amount(rates["min"]) + planner.MIN_PAYOUT:
            raise _Answer("Withdraw amount is too low")
        if self._stopped():
            raise _Answer(STOPPED)
        if style not in peg.STYLES:
            raise _Answer(rules.STYLE_MSG)
        full = self.ledger.withdraw_limit(style)
        if full:
            raise _Answer(full)
        return amount, rates

    def CheckWithdraw(self, ID, clear=0, passw=""):
        """CheckWithdraw(ID, clear=0, passw='') -> the batch record {status, txid, ID, block,
        in0[, txid2]} (a user's id is followed to its master id), or "ID not found"."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if not self.control.loaded():
            return NOT_LOADED
        # clear=1 forgets only a finished record, never one in flight (ORIGINAL §5 items 16, 17)
        rec = self.ledger.withdraw_status(ID, clear=clear == 1)
        return "ID not found" if rec is None else rec

    def GetCycle(self, passw=""):
        """GetCycle(passw='') -> the exchange cycle of the published balances (int)."""
        if not self.password.check(passw):
            return WRONG_PASSWORD
        if not self.control.loaded():
            return NOT_LOADED
        # the cycle plus the republications after reorganisations (pegx.exchange.follow): it
        # moves on whenever balances are published again, as for a new cycle
        return self.control.published()

    def API(self, command):
        """API(command) -> runs a signed exec command; False unless the operator enabled it."""
        if self.exec_api is None:
            return False
        return self.exec_api.run(command)
