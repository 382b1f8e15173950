"""The ``bitbayd`` chain backend: a JSON-RPC client of a real BitBay node (DESIGN §5).

Transport: bitcoin-0.8-style JSON-RPC 1.0 over HTTP POST with Basic auth, stdlib
``http.client`` keep-alive connections (a small pool, so concurrent threads never queue behind
each other's requests). JSON numbers are parsed with ``parse_float=Decimal``: the wallet RPCs
report amounts as float BAY and :func:`btc_to_sat` turns them into exact int satoshi.

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
import http.client
import itertools
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from pegx.chain.base import (
    ChainRejected,
    ChainUnavailable,
    SignedTx,
    Tip,
    Tx,
    TxOut,
    Utxo,
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
UNLOCK_SECONDS = 60  # walletpassphrase timeout used before signing
PEG_CACHE_CYCLES = 64  # past cycles whose peg we remember (~9.5 days of mainnet)
FRACTIONS_CACHE_SIZE = 8192  # outpoints (9.6 kB each)
BLOCK_CACHE_SIZE = 4096  # blockhash -> height
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
    """

    name = "bitbayd"
    reorganises = True  # the block at a height can change (the node follows the best chain)

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        deadline: float = 15.0,
        retry: bool = False,
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
                resp = conn.getresponse()
                data = resp.read()
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

    def importprivkey(self, wif: str, label: str = "", rescan: bool = False) -> None:
        """``importprivkey wif label rescan``."""
        self._rpc("importprivkey", str(wif), str(label), bool(rescan))

    def validateaddress(self, address: str) -> dict:
        """``validateaddress address``: ``{isvalid[, address, ismine, watchonly, ...]}``."""
        return self._rpc("validateaddress", str(address))

    def walletpassphrase(self, passphrase: str, seconds: int = UNLOCK_SECONDS) -> None:
        """``walletpassphrase passphrase seconds``."""
        self._rpc("walletpassphrase", str(passphrase), int(seconds))

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
        btime = int(self.getblock(self.getblockhash(height)).get("time", 0))
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
        return Tip(height, int(info["cycle"]), int(info["peg"]), self._block_time(height))

    @_bounded
    def identity(self) -> str:
        """``getblockhash 0``: the genesis block's hash names the network (main, testnet, a
        regtest of its own)."""
        return self.block_hash(0)

    @_bounded
    def block_hash(self, height: int) -> str:
        """``getblockhash height``: the best chain's block there; NodeError (-1, "Block number
        out of range.") above the tip."""
        found = self.getblockhash(height)
        if len(found) != 64:
            raise NodeError(LOCAL_CHECK, f"block hash {found!r} is not 64 hex digits",
                            "getblockhash")
        return found

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

    def _fractions(self, key: str, value: int | None, cache: bool) -> tuple[np.ndarray, int] | None:
        """(fraction vector, lock) of an output, None if the node has no peg data for it."""
        with self._s.lock:
            hit = self._s.fractions.get(key)
        if hit is not None:
            return hit
        reply = self.getfractions(key)
        if not reply:
            return None
        values = reply.get("values")
        if (not isinstance(values, list) or len(values) != PEG_SIZE
                or not all(type(v) is int for v in values)):
            raise NodeError(LOCAL_CHECK, f"{key}: values is not {PEG_SIZE} ints", "getfractions")
        expect = value if value is not None else int(reply.get("total", sum(values)))
        if sum(values) != expect:
            raise NodeError(
                LOCAL_CHECK, f"{key}: fractions sum to {sum(values):,d} sat, not {expect:,d} sat",
                "getfractions",
            )
        vec = np.array(values, dtype=np.int64)
        vec.flags.writeable = False  # cached and shared: callers get copies
        found = (vec, int(reply.get("lock") or 0))
        if cache:
            with self._s.lock:
                _cache_put(self._s.fractions, key, found, FRACTIONS_CACHE_SIZE)
        return found

    @_bounded
    def list_unspent(self, min_conf: int = 0) -> list[Utxo]:
        """Wallet ``listunspent`` + ``listfrozen`` (frozen rows win; ``frozen_until`` from
        ``unlocktime``, else the fractions' lock, else FROZEN_UNKNOWN), each with its
        ``getfractions`` vector. Outputs the node has no peg data for yet are left out (they
        appear once it has). Fractions of confirmed outputs are cached per outpoint."""
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
            value = btc_to_sat(row["amount"])
            conf = int(row.get("confirmations") or 0)
            found = self._fractions(key, value, cache=conf > 0)
            if found is None:
                log.debug(f"{key}: no peg data at the node yet, skipped")
                continue
            vec, lock = found
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
    def _txout(vout: dict) -> TxOut:
        value = btc_to_sat(vout["value"])
        spk = vout.get("scriptPubKey") or {}
        data = op_return_data(bytes.fromhex(spk.get("hex", "")))
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
        outputs = [self._txout(v) for v in res.get("vout", [])]
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

    def _unlock(self, passphrase: str) -> None:
        try:
            self.walletpassphrase(passphrase, UNLOCK_SECONDS)
        except NodeError as exc:
            # already unlocked (by us a moment ago) or not encrypted: signing can go ahead
            if exc.code not in (RPC_WALLET_ALREADY_UNLOCKED, RPC_WALLET_WRONG_ENC_STATE):
                raise

    @_bounded
    def import_key(self, wif: str, passphrase: str = "") -> str:
        """``importprivkey wif "" false`` (no rescan); returns the key's address."""
        from pegx.crypto import wif_to_address

        try:
            address = wif_to_address(wif)
        except ValueError as exc:
            raise ChainRejected(f"not a BitBay private key: {exc}") from None
        if passphrase:
            self._unlock(passphrase)
        self.importprivkey(wif, "", False)
        return address

    @_bounded
    def is_mine(self, address: str) -> bool:
        """``validateaddress``'s ``ismine``: the wallet can spend what ``address`` receives
        (a watch-only address is not the wallet's own)."""
        if not isinstance(address, str):
            return False
        res = self.validateaddress(address)
        if not isinstance(res, dict):
            raise NodeError(LOCAL_CHECK, f"unreadable reply {res!r}", "validateaddress")
        return res.get("isvalid") is True and res.get("ismine") is True

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
        from pegx.crypto import address_to_script

        if len(set(inputs)) != len(inputs):
            raise ChainRejected("the same input is listed twice")
        try:
            prevouts = [split_outpoint(key) for key in inputs]
            scripts = [(o.value, op_return_script(o.data) if o.data is not None
                        else address_to_script(o.address)) for o in outputs]
            unsigned = serialize_tx(prevouts, scripts, self._tx_time())
        except ValueError as exc:  # TxFormatError, CryptoError
            raise ChainRejected(f"cannot build transaction: {exc}") from None
        if passphrase:
            self._unlock(passphrase)
        res = self.signrawtransaction(unsigned.hex())
        if not res.get("complete"):
            raise NodeError(LOCAL_CHECK, "could not sign every input (key missing or wallet "
                            "locked)", "signrawtransaction")
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
        """``sendrawtransaction``; if the node refuses a transaction it already has (a resend
        after a dropped reply, say), the txid is returned. Otherwise NodeError with its message."""
        try:
            txid = txid_of(bytes.fromhex(raw))
        except ValueError:
            raise ChainRejected("raw transaction is not hex") from None
        try:
            return self.sendrawtransaction(raw)
        except NodeError as exc:
            try:
                self.getrawtransaction(txid, 0)
            except NodeError:
                raise exc from None
            log.info(f"broadcast {txid}: node said {exc.message!r} but already has it")
            return txid
