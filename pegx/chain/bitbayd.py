"""The ``bitbayd`` chain backend: a JSON-RPC client of a real BitBay node (DESIGN §5).

Transport: bitcoin-0.8-style JSON-RPC 1.0 over HTTP POST with Basic auth, stdlib
``http.client`` keep-alive connections (a small pool, so concurrent threads never queue behind
each other's requests). JSON numbers are parsed with ``parse_float=Decimal``.

Amounts: the node prints BAY amounts as doubles with 8 decimals, which are inexact above 2^53
sat (~90M BAY): 99,999,979,999,985,000 sat prints as ``999999799.99984992``. So the exact
integers are taken from elsewhere: a wallet output's value is its ``getfractions`` total (checked
against the printed amount with :func:`amount_is`), a transaction's output values come from its
raw bytes. A wallet output that cannot be reconciled is logged once and left out of
``list_unspent``; it never fails the whole list (issue #13).

Wallet: an encrypted wallet is unlocked with the passphrase given (ExchangePassword's) for
imports and signing, once per UNLOCK_REUSE seconds, and again if it was locked behind our back.
Without a passphrase a locked wallet raises WalletLocked ("wallet locked: call ExchangePassword").

Errors (STYLE item 5) are three classes: :class:`NodeError` (the node answered "no"; final),
:class:`NodeWarmingUp` (-28) and :class:`NodeUnavailable` (refused, reset, timeout, 401, 5xx,
non-JSON). The last two are ``ChainUnavailable`` and may be retried.

Time bounds, which must stay true: every public Chain method (``tip``, ``list_unspent``, ...)
finishes or raises within ``deadline`` seconds in total, whatever number of node calls it
makes; each socket operation waits at most ``min(timeout, time left)``. With ``retry=False``
(the default, for API calls) a transient fault raises at once; with ``retry=True`` (the cycle
thread) it is retried with capped exponential backoff 0.25 s → 4 s until the deadline.
``chain.with_retry(deadline)`` returns a view sharing connections and caches with other
settings, so the app builds one client and hands each thread the view it needs.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import http.client
import itertools
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from pegx import crypto
from pegx.chain.base import (
    CYCLE_BLOCKS,
    ChainRejected,
    ChainUnavailable,
    SignedTx,
    Tip,
    Tx,
    TxOut,
    Utxo,
    WalletLocked,
    outpoint,
    split_outpoint,
)
from pegx.chain.txbuild import op_return_data, op_return_script, parse_tx, serialize_tx, txid_of
from pegx.peg import PEG_SIZE

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:19915"
COIN = 100_000_000

# JSON-RPC error codes (bitcoin 0.8 rpcprotocol.h, which BitBay core keeps; BITBAYD §3)
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_WALLET_ERROR = -4
RPC_INVALID_ADDRESS_OR_KEY = -5  # also "No information available about transaction"
RPC_INVALID_PARAMETER = -8
RPC_WALLET_UNLOCK_NEEDED = -13
RPC_WALLET_PASSPHRASE_INCORRECT = -14
RPC_WALLET_WRONG_ENC_STATE = -15  # walletpassphrase on an unencrypted wallet
RPC_WALLET_ALREADY_UNLOCKED = -17
RPC_DESERIALIZATION_ERROR = -22
RPC_IN_WARMUP = -28
RPC_METHOD_NOT_FOUND = -32601
LOCAL_CHECK = 0  # not a node code: a reply that failed a consistency check made here

BACKOFF_FIRST = 0.25
BACKOFF_CAP = 4.0
OUTAGE_LOG_SECONDS = 60.0  # an ongoing outage is logged at most this often
POOL_SIZE = 4  # idle keep-alive connections kept
MAX_CONF = 9_999_999
UNLOCK_SECONDS = 60  # walletpassphrase timeout used before imports and signing
UNLOCK_REUSE = 40  # an unlock is trusted this long (each costs the node ~0.1 s of key stretching)
PEG_CACHE_CYCLES = 64  # past cycles whose peg we remember (~9.5 days of mainnet)
FRACTIONS_CACHE_SIZE = 8192  # outpoints (9.6 kB each)
BLOCK_CACHE_SIZE = 4096  # blockhash -> height
SKIPPED_LOG_SIZE = 65536  # outputs whose "skipped" warning was logged (each logged once)
LOCKED = "wallet locked: call ExchangePassword"
STAKING_ONLY = "wallet unlocked for staking only: call ExchangePassword"
WRONG_PASSPHRASE = "wallet passphrase incorrect: call ExchangePassword"
FROZEN_UNKNOWN = 0xFFFFFFFF  # frozen, but the node gave no unlock time: treat as locked


class NodeError(ChainRejected):
    """The node answered with a JSON-RPC error: final, not retried. ``.code`` and ``.message``."""

    def __init__(self, code: int, message: str, method: str = "") -> None:
        self.code = code
        self.message = message
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{message} (code {code})")


class NodeWarmingUp(ChainUnavailable):
    """The node is starting (-28, "Loading block index..."): retry later."""


class NodeUnavailable(ChainUnavailable):
    """No usable answer: refused, reset, timeout, HTTP 401/5xx, a reply that is not JSON-RPC."""


def btc_to_sat(value: Any) -> int:
    """Exact satoshi of a BAY amount given as Decimal (JSON parsed with ``parse_float=Decimal``),
    int or decimal string. Floats are refused (they would already have lost digits), as are
    negative amounts and amounts with non-zero digits beyond the 8th decimal.

    Trailing zeros are fine: bitbayd prints doubles with 16 significant digits, so 0.1 BAY
    arrives as ``0.1000000000000000``.
    """
    if isinstance(value, (bool, float)):
        raise TypeError(f"amount {value!r}: parse node JSON with parse_float=Decimal")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"amount {value!r} is not a number") from None
    if not dec.is_finite():
        raise ValueError(f"amount {value!r} is not finite")
    if dec < 0:
        raise ValueError(f"negative amount {value!r}")
    sat = dec * COIN
    if sat != sat.to_integral_value():
        raise ValueError(f"amount {value!r} has more than 8 decimals")
    return int(sat)


def amount_is(amount: Any, sat: int) -> bool:
    """True if ``amount`` (a BAY amount as the node printed it, parsed as Decimal) stands for
    ``sat`` satoshi: exactly, or as the node renders ``sat`` (ValueFromAmount: the double
    ``sat / 1e8``, printed with 8 decimals, which rounds above 2^53 sat)."""
    try:
        dec = Decimal(amount)
    except (InvalidOperation, TypeError, ValueError):
        return False
    if dec * COIN == sat:
        return True
    return Decimal(f"{float(sat) / COIN:.8f}") == dec


def backoff_delays(first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> Iterator[float]:
    """The pauses between retries: 0.25, 0.5, 1, 2, 4, 4, ... seconds."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


class _Health:
    """Outage bookkeeping shared by all views: one warning when the node goes away, a reminder
    at most once a minute, one "connection restored" when it answers again."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.lock = threading.Lock()
        self.since: float | None = None
        self.logged = 0.0

    def down(self, exc: Exception) -> None:
        now = time.monotonic()
        with self.lock:
            if self.since is None:
                self.since = self.logged = now
                log.warning(f"bitbayd {self.where} unavailable: {exc}")
            elif now - self.logged >= OUTAGE_LOG_SECONDS:
                self.logged = now
                log.warning(
                    f"bitbayd {self.where} still unavailable after {now - self.since:,.0f} s: {exc}"
                )

    def up(self) -> None:
        with self.lock:
            if self.since is not None:
                log.info(
                    f"bitbayd {self.where}: connection restored after "
                    f"{time.monotonic() - self.since:,.1f} s"
                )
                self.since = None


class _Shared:
    """State every view of one client shares: connections, caches, health, request ids."""

    def __init__(self, where: str) -> None:
        self.lock = threading.Lock()  # guards pool, closed and the caches below
        self.pool: list[http.client.HTTPConnection] = []
        self.closed = False
        self.ids = itertools.count(1)
        self.health = _Health(where)
        self.local = threading.local()  # .end: monotonic deadline of the running operation
        self.pegs: OrderedDict[int, int] = OrderedDict()  # cycle -> peg seen as current
        self.fractions: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self.block_heights: OrderedDict[str, int] = OrderedDict()
        self.tip_block: tuple[int, int] | None = None  # (height, time) of the last tip seen
        self.skipped: OrderedDict[str, str] = OrderedDict()  # outputs logged as unreconcilable
        self.unlocked: tuple[bytes, float] | None = None  # (sha256 of passphrase, trusted until)


def _bounded(method):
    """Run a public method under one deadline for all the node calls it makes, and turn a
    reply of an unexpected shape (missing key, wrong type) into NodeError: a node version
    mismatch, which no retry fixes."""

    @functools.wraps(method)
    def wrapper(self: Bitbayd, *args: Any, **kwargs: Any) -> Any:
        local = self._s.local
        if getattr(local, "end", None) is not None:
            return method(self, *args, **kwargs)  # nested: the outer deadline applies
        local.end = time.monotonic() + self.deadline
        try:
            return method(self, *args, **kwargs)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise NodeError(LOCAL_CHECK, f"unexpected reply shape: {exc!r}",
                            method.__name__) from exc
        finally:
            local.end = None

    return wrapper


def _quickack(sock: socket.socket | None) -> None:
    """Acknowledge the reply's segments at once. The node writes a reply larger than its
    stream buffer (getfractions' ~14 kB, a big listunspent) in several writes, and Nagle holds
    the last one until our ACK, which Linux delays by 40 ms: measured on loopback, getfractions
    took 44 ms, 2.2 ms with this. The kernel clears the flag again, so it is set per request."""
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


def _read_all(resp: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> bytes:
    """The reply body, acknowledging each piece at once (see _quickack): a reply of many
    segments (a verbose transaction with 100 outputs, a long listunspent) would otherwise wait
    40 ms more per delayed ACK."""
    parts = []
    while resp.length != 0:  # None: no Content-Length, read to the end
        _quickack(conn.sock)
        part = resp.read1(1 << 16)
        if not part:
            break
        parts.append(part)
    parts.append(resp.read())  # b"" by now; marks the reply done so the connection is reused
    return b"".join(parts)


def _check_times(timeout: float, deadline: float) -> None:
    if not (timeout > 0 and deadline > 0):
        raise ValueError(f"timeout {timeout} and deadline {deadline} must be positive")


def _cache_put(cache: OrderedDict, key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


class Bitbayd:
    """JSON-RPC client of a BitBay node implementing :class:`pegx.chain.base.Chain`.

    ``url`` is ``http://[user:password@]host[:port][/path]`` (port 19915 by default).
    ``timeout`` bounds each socket wait, ``deadline`` each public call in total; ``retry``
    chooses between failing fast and retrying transient faults until the deadline.
    ``network`` gives the address and key versions the node uses.
    """

    name = "bitbayd"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        deadline: float = 15.0,
        retry: bool = False,
        network: crypto.Network = crypto.MAIN,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"bitbayd URL must be http://[user:password@]host[:port]: {url!r}")
        _check_times(timeout, deadline)
        self._host = parts.hostname
        self._port = parts.port or 19915
        self._path = parts.path or "/"
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        self.url = f"http://{self._host}:{self._port}{self._path}"  # no credentials: safe to log
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        self.retry = bool(retry)
        self.network = network
        self._s = _Shared(self.url)

    def __repr__(self) -> str:
        return f"Bitbayd({self.url!r}, retry={self.retry}, deadline={self.deadline:g})"

    def with_options(
        self, *, retry: bool | None = None, deadline: float | None = None,
        timeout: float | None = None,
    ) -> Bitbayd:
        """A view of this client (same connections, caches and health) with other settings."""
        _check_times(timeout or self.timeout, deadline or self.deadline)
        view = copy.copy(self)
        if retry is not None:
            view.retry = bool(retry)
        if deadline is not None:
            view.deadline = float(deadline)
        if timeout is not None:
            view.timeout = float(timeout)
        return view

    def with_retry(self, deadline: float | None = None) -> Bitbayd:
        """The view the cycle thread uses: retry transient faults until ``deadline`` seconds
        (``math.inf``: for ever; each socket wait stays bounded by ``timeout``)."""
        return self.with_options(retry=True, deadline=deadline)

    def close(self) -> None:
        """Close every pooled connection; later calls raise NodeUnavailable."""
        with self._s.lock:
            self._s.closed = True
            pool, self._s.pool = self._s.pool, []
        for conn in pool:
            conn.close()

    # ------------------------------------------------------------------ transport

    def _checkout(self, fresh: bool = False) -> http.client.HTTPConnection:
        """An idle pooled connection, or a new one. ``fresh`` also drops the idle ones: after
        one went stale (node restarted, idle timeout) the others are likely stale too."""
        stale: list[http.client.HTTPConnection] = []
        with self._s.lock:
            if self._s.closed:
                raise NodeUnavailable(f"bitbayd client for {self.url} is closed")
            if fresh:
                stale, self._s.pool = self._s.pool, []
            elif self._s.pool:
                return self._s.pool.pop()
        for conn in stale:
            conn.close()
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._s.lock:
            if not self._s.closed and len(self._s.pool) < POOL_SIZE:
                self._s.pool.append(conn)
                return
        conn.close()

    def _call(self, method: str, params: list, end: float) -> Any:
        """One JSON-RPC exchange, finished by monotonic time ``end``. A connection dropped
        without a reply (typically a keep-alive socket the node closed) is retried once on a
        fresh connection; ``broadcast`` copes with the resulting duplicate send."""
        rid = next(self._s.ids)
        body = json.dumps({"jsonrpc": "1.0", "id": rid, "method": method, "params": params})
        for attempt in (1, 2):
            wait = min(self.timeout, end - time.monotonic())
            if wait <= 0:
                raise NodeUnavailable(f"{method}: deadline of {self.deadline:g} s passed")
            conn = self._checkout(fresh=attempt == 2)
            conn.timeout = wait
            if conn.sock is not None:
                conn.sock.settimeout(wait)
            try:
                conn.request("POST", self._path, body.encode(), self._headers)
                _quickack(conn.sock)
                resp = conn.getresponse()
                data = _read_all(resp, conn)
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                    http.client.IncompleteRead, http.client.BadStatusLine) as exc:
                conn.close()  # RemoteDisconnected is both a reset and a bad status line
                if attempt == 1:
                    continue
                raise NodeUnavailable(f"{method}: connection to {self.url} dropped: {exc!r}")
            except TimeoutError:
                conn.close()
                raise NodeUnavailable(f"{method}: no reply from {self.url} in {wait:.2f} s")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise NodeUnavailable(f"{method}: cannot reach {self.url}: {exc}")
            if resp.will_close:
                conn.close()
            else:
                self._checkin(conn)
            try:
                reply = json.loads(data, parse_float=Decimal)
            except ValueError:
                reply = None
            if isinstance(reply, dict) and reply.get("id") not in (rid, None):
                raise NodeUnavailable(f"{method}: reply id {reply.get('id')!r} is not {rid}")
            return self._classify(resp.status, reply, method)
        raise AssertionError("unreachable")

    @staticmethod
    def _classify(status: int, reply: Any, method: str = "") -> Any:
        """The result of a reply, or the taxonomy exception it means. A JSON-RPC error object
        wins over the HTTP status: bitcoind sends its errors with HTTP 500 (404 for -32601)."""
        if status == HTTPStatus.UNAUTHORIZED:
            raise NodeUnavailable(f"{method}: HTTP 401, the node refused the RPC user/password")
        if not isinstance(reply, dict) or not ("result" in reply or "error" in reply):
            raise NodeUnavailable(f"{method}: HTTP {status} without a JSON-RPC reply")
        err = reply.get("error")
        if err is None:
            return reply.get("result")
        code, message = RPC_MISC_ERROR, str(err)
        if isinstance(err, dict):
            if type(err.get("code")) is int:
                code = err["code"]
            message = str(err.get("message", ""))
        if code == RPC_IN_WARMUP:
            raise NodeWarmingUp(f"{method}: node warming up: {message}")
        raise NodeError(code, message, method)

    def _rpc(self, method: str, *params: Any) -> Any:
        """Call ``method`` under the running operation's deadline (or a fresh one), retrying
        ChainUnavailable with backoff when this view has ``retry``."""
        end = getattr(self._s.local, "end", None) or time.monotonic() + self.deadline
        delays = backoff_delays()
        while True:
            try:
                result = self._call(method, list(params), end)
            except ChainRejected:
                self._s.health.up()  # the node answered: it is reachable
                raise
            except ChainUnavailable as exc:
                self._s.health.down(exc)
                left = end - time.monotonic()
                if not self.retry or left <= 0 or self._s.closed:
                    raise
                time.sleep(min(next(delays), left))
                if end - time.monotonic() <= 0:
                    raise
                continue
            self._s.health.up()
            return result

    # ------------------------------------------------------------------ node calls

    def getblockcount(self) -> int:
        """``getblockcount``: height of the best block."""
        return int(self._rpc("getblockcount"))

    def getblockhash(self, height: int) -> str:
        """``getblockhash height``."""
        return str(self._rpc("getblockhash", int(height)))

    def getblock(self, blockhash: str) -> dict:
        """``getblock hash``: the verbose block (``height``, ``time``, ...)."""
        return self._rpc("getblock", str(blockhash))

    def getpeginfo(self) -> dict:
        """``getpeginfo``: ``{steps, cycle, interval, startingblock, pegfeeperinput,
        subpremiumrating, peg, pegnext, pegnextnext}`` (network pegs, no buffer)."""
        return self._rpc("getpeginfo")

    def listunspent(self, minconf: int = 1, maxconf: int = MAX_CONF) -> list[dict]:
        """Wallet-mode ``listunspent``: rows with float-BAY ``amount``, ``reserve``,
        ``liquidity`` (sic), ``confirmations``, ``spendable``."""
        return self._rpc("listunspent", int(minconf), int(maxconf))

    def listfrozen(self, minconf: int = 1, maxconf: int = MAX_CONF) -> list[dict]:
        """Wallet-mode ``listfrozen``: frozen wallet outputs, rows as ``listunspent``."""
        return self._rpc("listfrozen", int(minconf), int(maxconf))

    def getfractions(self, key: str) -> dict:
        """``getfractions "txid:vout"``: ``{total, reserve, liquidity, peg, lock, flags,
        values[1200]}`` in int satoshi, or ``{}`` for an unknown output."""
        return self._rpc("getfractions", str(key))

    def getrawtransaction(self, txid: str, verbose: int = 1) -> Any:
        """``getrawtransaction txid verbose``: hex, or the bitcoin-0.8 verbose dict."""
        return self._rpc("getrawtransaction", str(txid), int(verbose))

    def gettxout(self, txid: str, n: int, include_mempool: bool = True) -> dict | None:
        """``gettxout txid n include_mempool``: the output, or None once spent/unknown."""
        return self._rpc("gettxout", str(txid), int(n), bool(include_mempool))

    def importprivkey(self, wif: str, label: str = "", rescan: bool = False) -> Any:
        """``importprivkey wif label rescan``: ``{"address": ...}`` (also for a key the wallet
        already has)."""
        return self._rpc("importprivkey", str(wif), str(label), bool(rescan))

    def walletpassphrase(self, passphrase: str, seconds: int = UNLOCK_SECONDS) -> None:
        """``walletpassphrase passphrase seconds``: null, also when already unlocked."""
        self._rpc("walletpassphrase", str(passphrase), int(seconds))

    def getinfo(self) -> dict:
        """``getinfo``: ``unlocked_until`` (0 = locked) only when the wallet is encrypted."""
        return self._rpc("getinfo")

    def signrawtransaction(self, rawhex: str) -> dict:
        """``signrawtransaction hex``: ``{hex, complete}``."""
        return self._rpc("signrawtransaction", str(rawhex))

    def sendrawtransaction(self, rawhex: str) -> str:
        """``sendrawtransaction hex``: the txid."""
        return str(self._rpc("sendrawtransaction", str(rawhex)))

    # ------------------------------------------------------------------ Chain protocol

    def _remember_peg(self, info: dict) -> None:
        with self._s.lock:
            _cache_put(self._s.pegs, int(info["cycle"]), int(info["peg"]), PEG_CACHE_CYCLES)

    def _block_time(self, height: int) -> int:
        with self._s.lock:
            if self._s.tip_block is not None and self._s.tip_block[0] == height:
                return self._s.tip_block[1]
        try:
            blockhash = self.getblockhash(height)
        except NodeError as exc:
            # -1 "Block number out of range." (-8 on bitcoin): the chain got shorter between
            # getblockcount and this call (a reorganisation); the next read will do
            if "out of range" not in exc.message:
                raise
            raise NodeUnavailable(f"block {height:,d} vanished: {exc.message}") from None
        btime = int(self.getblock(blockhash).get("time", 0))
        with self._s.lock:
            self._s.tip_block = (height, btime)
        return btime

    @_bounded
    def tip(self) -> Tip:
        """Height from ``getblockcount``; cycle and supply from ``getpeginfo``; block time."""
        height = self.getblockcount()
        info = self.getpeginfo()
        interval = int(info.get("interval") or 0)
        if interval > 0 and height // interval != int(info["cycle"]):
            # a block (and a new cycle) arrived between the two calls: read both again
            height = self.getblockcount()
            info = self.getpeginfo()
        self._remember_peg(info)
        return Tip(height, int(info["cycle"]), int(info["peg"]), self._block_time(height),
                   interval if interval > 0 else CYCLE_BLOCKS)

    @_bounded
    def supply_for_cycle(self, cycle: int) -> int:
        """The peg of ``cycle``: the current cycle and the next two come from ``getpeginfo``
        (``peg``, ``pegnext``, ``pegnextnext``); past cycles only from the pegs this client
        saw as current (the last PEG_CACHE_CYCLES cycles, since start): ChainRejected else."""
        with self._s.lock:
            if cycle in self._s.pegs:
                return self._s.pegs[cycle]
        info = self.getpeginfo()
        self._remember_peg(info)
        ahead = cycle - int(info["cycle"])
        if 0 <= ahead <= 2:
            return int(info[("peg", "pegnext", "pegnextnext")[ahead]])
        if ahead < 0:
            raise ChainRejected(f"supply of past cycle {cycle} not known to this bitbayd client")
        raise ChainRejected(f"supply of cycle {cycle} not known yet (now {info['cycle']})")

    def _fractions(self, key: str, amount: Any, cache: bool) -> tuple[np.ndarray, int] | None:
        """(fraction vector, lock) of an output, None if the node has no peg data for it. The
        vector's integers are the truth: they must sum to ``total``, and ``amount`` (the BAY
        amount listunspent printed, if given) must stand for that total (:func:`amount_is`);
        NodeError(LOCAL_CHECK) otherwise."""
        with self._s.lock:
            hit = self._s.fractions.get(key)
        if hit is not None:
            return hit
        reply = self.getfractions(key)
        if not reply:
            return None
        values = reply.get("values")
        if (not isinstance(values, list) or len(values) != PEG_SIZE
                or not all(type(v) is int and v >= 0 for v in values)):
            raise NodeError(LOCAL_CHECK, f"{key}: values is not {PEG_SIZE} ints >= 0",
                            "getfractions")
        total = reply.get("total", sum(values))
        if type(total) is not int or sum(values) != total:
            raise NodeError(
                LOCAL_CHECK, f"{key}: fractions sum to {sum(values):,d} sat, not the total "
                f"{total!r} sat", "getfractions",
            )
        if amount is not None and not amount_is(amount, total):
            raise NodeError(
                LOCAL_CHECK, f"{key}: the wallet lists {Decimal(amount):,} BAY, which is not the "
                f"fractions' total of {total:,d} sat", "getfractions",
            )
        vec = np.array(values, dtype=np.int64)
        vec.flags.writeable = False  # cached and shared: callers get copies
        found = (vec, int(reply.get("lock") or 0))
        if cache:
            with self._s.lock:
                _cache_put(self._s.fractions, key, found, FRACTIONS_CACHE_SIZE)
        return found

    def _skip(self, key: str, why: str) -> None:
        """Log once that a wallet output is left out (a warning per output, not per pass)."""
        with self._s.lock:
            if key in self._s.skipped:
                return
            _cache_put(self._s.skipped, key, why, SKIPPED_LOG_SIZE)
        why = why.removeprefix(f"{key}: ")
        log.warning(f"wallet output {key} skipped (logged once): {why}")

    @_bounded
    def list_unspent(self, min_conf: int = 0) -> list[Utxo]:
        """Wallet ``listunspent`` + ``listfrozen`` (frozen rows win; ``frozen_until`` from
        ``unlocktime``, else the fractions' lock, else FROZEN_UNKNOWN), each with its
        ``getfractions`` vector, valued at the vector's exact total. Outputs the node has no
        peg data for yet are left out (they appear once it has), and so are outputs whose data
        cannot be reconciled (logged once each): one odd output, at an address pegx may not
        even watch, must not stop the exchange. Fractions of confirmed outputs are cached."""
        for _ in range(2):  # confirmations -> height needs a tip that did not move meanwhile
            before = self.getblockcount()
            rows = {outpoint(r["txid"], int(r["vout"])): (r, False)
                    for r in self.listunspent(min_conf)}
            try:
                frozen = self.listfrozen(min_conf)
            except NodeError as exc:
                if exc.code != RPC_METHOD_NOT_FOUND:
                    raise  # dropping frozen outputs silently would look like spends
                frozen = []
            rows.update({outpoint(r["txid"], int(r["vout"])): (r, True) for r in frozen})
            height = self.getblockcount()
            if height == before:
                break
        out = []
        for key, (row, is_frozen) in rows.items():
            try:
                conf = int(row.get("confirmations") or 0)
                found = self._fractions(key, row["amount"], cache=conf > 0)
            except NodeError as exc:
                if exc.code != LOCAL_CHECK:
                    raise  # the node said no: not this output's problem
                self._skip(key, exc.message)
                continue
            except (KeyError, TypeError, ValueError) as exc:
                self._skip(key, f"unreadable listunspent row: {exc!r}")
                continue
            if found is None:
                log.debug(f"{key}: no peg data at the node yet, skipped")
                continue
            vec, lock = found
            value = int(vec.sum())
            until = 0
            if is_frozen:
                until = int(row.get("unlocktime") or 0) or lock or FROZEN_UNKNOWN
            out.append(Utxo(
                txid=str(row["txid"]), vout=int(row["vout"]), address=str(row.get("address", "")),
                value=value, fractions=vec.copy(), confirmations=conf,
                height=height - conf + 1 if conf > 0 else 0, frozen_until=until,
            ))
        return out

    @_bounded
    def get_fractions(self, key: str) -> np.ndarray:
        """``getfractions`` of one output (checked: 1200 ints summing to ``total``)."""
        try:
            split_outpoint(key)
        except ValueError as exc:
            raise ChainRejected(str(exc)) from None
        found = self._fractions(key, None, cache=False)
        if found is None:
            raise ChainRejected(f"unknown output {key}")
        return found[0].copy()

    def _block_height(self, blockhash: str) -> int:
        with self._s.lock:
            if blockhash in self._s.block_heights:
                return self._s.block_heights[blockhash]
        try:
            height = int(self.getblock(blockhash)["height"])
        except NodeError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:  # block gone between the two calls
                raise NodeUnavailable(f"block {blockhash} vanished (reorganisation?)") from None
            raise
        with self._s.lock:
            _cache_put(self._s.block_heights, blockhash, height, BLOCK_CACHE_SIZE)
        return height

    @staticmethod
    def _txout(vout: dict, exact: tuple[int, bytes] | None) -> TxOut:
        """One output: value and script from the raw bytes when we have them (``exact``), else
        from the JSON (whose float value is inexact above 2^53 sat)."""
        spk = vout.get("scriptPubKey") or {}
        if exact is not None:
            value, script = exact
        else:
            value, script = btc_to_sat(vout["value"]), bytes.fromhex(spk.get("hex", ""))
        data = op_return_data(script)
        if data is not None:
            return TxOut(value, data=data)
        addresses = spk.get("addresses") or []
        # "" stands for a script without an address (coinstake marker, nonstandard)
        return TxOut(value, address=str(addresses[0]) if addresses else "")

    @_bounded
    def get_transaction(self, txid: str) -> Tx | None:
        """``getrawtransaction txid 1`` as a Tx (height via ``getblock`` when mined); None
        when the node does not know the txid (-5)."""
        try:
            res = self.getrawtransaction(txid, 1)
        except NodeError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:
                return None
            raise
        inputs = [outpoint(v["txid"], int(v["vout"])) for v in res.get("vin", []) if "txid" in v]
        vouts = res.get("vout", [])
        try:
            raw = parse_tx(bytes.fromhex(str(res.get("hex", "")))).outputs
        except ValueError:  # no or unreadable hex: the JSON values then
            raw = ()
        exact = raw if len(raw) == len(vouts) else [None] * len(vouts)
        outputs = [self._txout(v, exact[i]) for i, v in enumerate(vouts)]
        conf = int(res.get("confirmations") or 0)
        height = self._block_height(res["blockhash"]) if conf > 0 and res.get("blockhash") else 0
        return Tx(str(res.get("txid", txid)), inputs, outputs, height, conf, str(res.get("hex", "")))

    @_bounded
    def is_unspent(self, key: str) -> bool:
        """``gettxout txid n true``: False once spent (mempool included) or unknown."""
        try:
            txid, n = split_outpoint(key)
        except ValueError as exc:
            raise ChainRejected(str(exc)) from None
        return self.gettxout(txid, n, True) is not None

    def _unlock(self, passphrase: str, force: bool = False) -> None:
        """``walletpassphrase`` for UNLOCK_SECONDS, unless this passphrase unlocked the wallet
        less than UNLOCK_REUSE seconds ago (and ``force`` is not set)."""
        digest = hashlib.sha256(passphrase.encode("utf-8", "surrogatepass")).digest()
        with self._s.lock:
            last = self._s.unlocked
            if not force and last is not None and last[0] == digest and last[1] > time.monotonic():
                return
            self._s.unlocked = None
        try:
            self.walletpassphrase(passphrase, UNLOCK_SECONDS)
        except NodeError as exc:
            if exc.code == RPC_WALLET_PASSPHRASE_INCORRECT:
                raise WalletLocked(WRONG_PASSPHRASE) from None
            # -17: an old node's "already unlocked" (this one answers null); -15: the wallet is
            # not encrypted: either way the wallet call can go ahead
            if exc.code not in (RPC_WALLET_ALREADY_UNLOCKED, RPC_WALLET_WRONG_ENC_STATE):
                raise
        with self._s.lock:
            self._s.unlocked = (digest, time.monotonic() + UNLOCK_REUSE)

    def _locked_reason(self, exc: NodeError) -> str:
        """Why a wallet call failed, if the cause is a locked wallet: -13 says so itself;
        -4 ("Error adding key to wallet") only getinfo's ``unlocked_until`` == 0 tells."""
        if exc.code == RPC_WALLET_UNLOCK_NEEDED:
            return STAKING_ONLY if "staking only" in exc.message else LOCKED
        if exc.code == RPC_WALLET_ERROR:
            info = self.getinfo()
            if isinstance(info, dict) and "unlocked_until" in info \
                    and int(info["unlocked_until"]) == 0:
                return LOCKED
        return ""

    def _wallet_call(self, passphrase: str, call: Any) -> Any:
        """Run a call that needs the wallet's keys: unlocked first with ``passphrase`` (if
        any), retried once after a fresh unlock if the wallet was locked meanwhile;
        WalletLocked when a locked wallet is the reason it fails."""
        if passphrase:
            self._unlock(passphrase)
        for attempt in (1, 2):
            try:
                return call()
            except NodeError as exc:
                if exc.code not in (RPC_WALLET_ERROR, RPC_WALLET_UNLOCK_NEEDED):
                    raise
                if passphrase and attempt == 1:
                    self._unlock(passphrase, force=True)  # locked behind our back
                    continue
                why = self._locked_reason(exc)
                if why:
                    raise WalletLocked(why) from None
                raise
        raise AssertionError("unreachable")

    @_bounded
    def import_key(self, wif: str, passphrase: str = "") -> str:
        """``importprivkey wif "" false`` (no rescan), unlocking an encrypted wallet with
        ``passphrase``; returns the key's address, checked against the node's answer."""
        net = self.network
        try:
            address = crypto.wif_to_address(wif, net)
        except ValueError as exc:
            raise ChainRejected(f"not a BitBay {net.name} private key: {exc}") from None
        try:
            reply = self._wallet_call(passphrase, lambda: self.importprivkey(wif, "", False))
        except NodeError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:  # "Invalid private key"
                raise NodeError(exc.code, f"{exc.message}: the node takes no {net.name} keys; "
                                f"is network = {net.name} right for this node?",
                                "importprivkey") from None
            raise
        got = reply.get("address") if isinstance(reply, dict) else None
        if got is not None and got != address:
            raise NodeError(LOCAL_CHECK, f"the node imported the key as {got}, not {address}: "
                            f"is network = {net.name} right for this node?", "importprivkey")
        return address

    def _tx_time(self) -> int:
        """nTime for a new transaction: the tip's block time, so that the next block (whose
        time must not be earlier) can include it; the clock if the node reports none."""
        return self._block_time(self.getblockcount()) or int(time.time())

    @_bounded
    def create_transaction(
        self, inputs: list[str], outputs: list[TxOut], passphrase: str = ""
    ) -> SignedTx:
        """Serialise the transaction here (txbuild), unlock the wallet if a passphrase is
        given, have the node sign it, and check the signed bytes spend and pay exactly that."""
        if len(set(inputs)) != len(inputs):
            raise ChainRejected("the same input is listed twice")
        try:
            prevouts = [split_outpoint(key) for key in inputs]
            scripts = [(o.value, op_return_script(o.data) if o.data is not None
                        else crypto.address_to_script(o.address, self.network)) for o in outputs]
            unsigned = serialize_tx(prevouts, scripts, self._tx_time())
        except ValueError as exc:  # TxFormatError, CryptoError
            raise ChainRejected(f"cannot build transaction: {exc}") from None
        res = self._wallet_call(passphrase, lambda: self.signrawtransaction(unsigned.hex()))
        if not res.get("complete"):
            raise NodeError(LOCAL_CHECK, "could not sign every input (a key missing from the "
                            "wallet)", "signrawtransaction")
        try:
            signed = bytes.fromhex(res["hex"])
            got, want = parse_tx(signed), parse_tx(unsigned)
        except (KeyError, ValueError) as exc:
            raise NodeError(LOCAL_CHECK, f"unreadable signed transaction: {exc}",
                            "signrawtransaction") from None
        same = (got.ntime == want.ntime and got.outputs == want.outputs
                and [(i.txid, i.vout) for i in got.inputs] == [(i.txid, i.vout) for i in want.inputs])
        if not same:
            raise NodeError(LOCAL_CHECK, "signed transaction differs from the one built",
                            "signrawtransaction")
        return SignedTx(txid_of(signed), signed.hex(), tuple(inputs))

    @_bounded
    def broadcast(self, raw: str) -> str:
        """``sendrawtransaction``; the txid also when the node has the transaction already: it
        answers the txid for one in its mempool, -5 "transaction already in block <hash>" for a
        mined one (a resend after a dropped reply, say), and for any other refusal we ask
        whether it knows the txid. Otherwise NodeError with the node's message."""
        try:
            txid = txid_of(bytes.fromhex(raw))
        except ValueError:
            raise ChainRejected("raw transaction is not hex") from None
        try:
            return self.sendrawtransaction(raw)
        except NodeError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY and "already in block" in exc.message:
                log.info(f"broadcast {txid}: {exc.message}")
                return txid
            try:
                self.getrawtransaction(txid, 0)
            except NodeError:
                raise exc from None
            log.info(f"broadcast {txid}: node said {exc.message!r} but already has it")
            return txid
