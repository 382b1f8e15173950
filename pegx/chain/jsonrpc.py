"""JSON-RPC 1.0 transport to a BitBay node, and its error taxonomy (STYLE item 5).

Bitcoin-0.8-style JSON-RPC over HTTP POST with Basic auth, stdlib ``http.client`` keep-alive
connections (a small pool, so concurrent threads never queue behind each other's requests).
JSON numbers are parsed with ``parse_float=Decimal``.

Errors are three classes: :class:`NodeError` (the node answered "no"; final),
:class:`NodeWarmingUp` (-28) and :class:`NodeUnavailable` (refused, reset, timeout, 401, 5xx,
non-JSON). The last two are ``ChainUnavailable`` and may be retried.

Time bounds, which must stay true: a public method wrapped in :func:`bounded` finishes or
raises within ``deadline`` seconds in total, whatever number of node calls it makes; each
socket operation waits at most ``min(timeout, time left)``. With ``retry=False`` (the default,
for API calls) a transient fault raises at once; with ``retry=True`` (the cycle thread) it is
retried with capped exponential backoff 0.25 s -> 4 s until the deadline. ``with_retry``
returns a view sharing connections, caches and health with other settings.

Over 400 lines (~430): the transport, its error taxonomy and its time bounds are one contract
(the deadline rules above hold across all of it).
"""

from __future__ import annotations

import base64
import copy
import functools
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

from pegx.chain.base import ChainRejected, ChainUnavailable

log = logging.getLogger("pegx.chain.bitbayd")  # one logger for the node client

DEFAULT_PORT = 19915
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

    bitbayd prints amounts with 8 decimals (``0.10000000``); more trailing zeros are fine too.
    Above 2^53 sat the printed double is not the exact amount: see :func:`amount_is`.
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
        self.errors = 0  # requests that got no usable answer, since start (for metrics)

    def down(self, exc: Exception) -> None:
        now = time.monotonic()
        with self.lock:
            self.errors += 1
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


class Shared:
    """State every view of one client shares: connections, health, request ids (subclasses
    add their caches, guarded by the same lock)."""

    def __init__(self, where: str) -> None:
        self.lock = threading.Lock()  # guards pool and closed (and a subclass's caches)
        self.pool: list[http.client.HTTPConnection] = []
        self.closed = False
        self.ids = itertools.count(1)
        self.health = _Health(where)
        self.local = threading.local()  # .end: monotonic deadline of the running operation


def bounded(method):
    """Run a public method under one deadline for all the node calls it makes, and turn a
    reply of an unexpected shape (missing key, wrong type) into NodeError: a node version
    mismatch, which no retry fixes."""

    @functools.wraps(method)
    def wrapper(self: JsonRpcClient, *args: Any, **kwargs: Any) -> Any:
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


# a connection the node dropped without a reply: retried once on a fresh connection
_DROPPED = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
            http.client.IncompleteRead, http.client.BadStatusLine)


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


def cache_put(cache: OrderedDict, key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


class JsonRpcClient:
    """The transport: ``_rpc(method, *params)`` under the deadline and retry rules above.

    ``url`` is ``http://[user:password@]host[:port][/path]`` (port 19915 by default);
    credentials go into the Basic auth header and never into ``url`` (safe to log).
    """

    def __init__(self, url: str, *, timeout: float = 10.0, deadline: float = 15.0,
                 retry: bool = False) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"bitbayd URL must be http://[user:password@]host[:port]: {url!r}")
        _check_times(timeout, deadline)
        self._host = parts.hostname
        self._port = parts.port or DEFAULT_PORT
        self._path = parts.path or "/"
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        self.url = f"http://{self._host}:{self._port}{self._path}"  # no credentials: safe to log
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        self.retry = bool(retry)
        self._s = self._new_shared()

    def _new_shared(self) -> Shared:
        return Shared(self.url)

    def with_options(
        self, *, retry: bool | None = None, deadline: float | None = None,
        timeout: float | None = None,
    ) -> JsonRpcClient:
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

    def with_retry(self, deadline: float | None = None) -> JsonRpcClient:
        """The view the cycle thread uses: retry transient faults until ``deadline`` seconds
        (``math.inf``: for ever; each socket wait stays bounded by ``timeout``)."""
        return self.with_options(retry=True, deadline=deadline)

    def rpc_errors(self) -> int:
        """Node requests (of every view) that got no usable answer since start: refused,
        reset, timed out, HTTP 401/5xx, not JSON, warming up. The node's own error replies
        (NodeError) are answers and not counted."""
        return self._s.health.errors

    def close(self) -> None:
        """Close every pooled connection; later calls raise NodeUnavailable."""
        with self._s.lock:
            self._s.closed = True
            pool, self._s.pool = self._s.pool, []
        for conn in pool:
            conn.close()

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
            try:
                status, data = self._post(conn, body, wait, method)
            except _DROPPED as exc:
                if attempt == 1:
                    continue
                raise NodeUnavailable(f"{method}: connection to {self.url} dropped: {exc!r}")
            try:
                reply = json.loads(data, parse_float=Decimal)
            except ValueError:
                reply = None
            if isinstance(reply, dict) and reply.get("id") not in (rid, None):
                raise NodeUnavailable(f"{method}: reply id {reply.get('id')!r} is not {rid}")
            return self._classify(status, reply, method)
        raise AssertionError("unreachable")

    def _post(self, conn: http.client.HTTPConnection, body: str, wait: float,
              method: str) -> tuple[int, bytes]:
        """POST ``body`` on ``conn`` within ``wait`` seconds: (HTTP status, reply bytes). The
        connection goes back to the pool if the node keeps it open, and is closed on any
        failure; a dropped connection raises as it is (the caller retries once), every other
        failure as NodeUnavailable."""
        conn.timeout = wait
        if conn.sock is not None:
            conn.sock.settimeout(wait)
        try:
            conn.request("POST", self._path, body.encode(), self._headers)
            _quickack(conn.sock)
            resp = conn.getresponse()
            data = _read_all(resp, conn)
        except _DROPPED:
            conn.close()  # RemoteDisconnected is both a reset and a bad status line
            raise
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
        return resp.status, data

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
