"""The XML-RPC transport (DESIGN §4, §7): a threaded stdlib server that publishes named callables.

This is the one boundary where Python exceptions become wire errors (STYLE 6). It knows nothing
of the exchange: the controller registers an explicit list of callables by name
(``"Trade"``, ``"devnet.mine"``, ``"pegx.status"``) and the server calls them.

What it fixes compared to the original (ORIGINAL §1.1, §5 items 1, 2, 4, 50):

* binds ``127.0.0.1`` (port ``DEFAULT_PORT``, the original's) by default and logs a warning for any non-loopback host;
* HTTP/1.1 keep-alive; calls run concurrently in worker threads, and all socket I/O is done by
  one selector thread (:mod:`pegx.rpc.transport`), so a slow call, a silent client or a
  client that trickles its request does not block anyone else: a request must be complete
  within ``REQUEST_DEADLINE`` seconds (else 408), idle connections make room for new ones,
  and a full server answers 503;
* ``allow_none=True``; ints outside ±2^31 go out as ``<i8>`` (stock ``xmlrpc.client`` reads them
  back as int) through a private Marshaller subclass: the global one stays stock, so a client
  in the same process behaves exactly like everyone else's;
* request bodies are capped (``MAX_REQUEST_BYTES``), DTDs are refused, bad XML gets a Fault.

Fault mapping (the wire never carries a traceback):

==========  ========================================================================
code        when
==========  ========================================================================
``e.code``  the method raised :class:`CallError` (default code 1), message as given
``f.code``  the method raised ``xmlrpc.client.Fault`` itself: passed through
1           the method raised a user error (``USER_ERRORS``): ``"ValueError: msg"``
2           any other exception: ``"internal error (see the daemon log)"``; the
            traceback goes to the log with ``logging.exception``
-32700      the request body is not well-formed XML
-32600      well-formed XML that is not an XML-RPC method call (or carries a DTD)
-32601      unknown method: ``"method 'X' is not supported"``
-32602      wrong number of arguments: ``"Trade() takes 3 to 5 arguments (2 given)"``,
            checked with ``inspect.signature(...).bind`` *before* calling, so a
            TypeError raised inside a method is not mistaken for an arity error
-32603      the method's result cannot be marshalled (int beyond ±2^63, non-str
            dict key, unsupported type, a character XML cannot carry)
==========  ========================================================================

HTTP-level refusals: 400 for a bad or conflicting Content-Length, 404 for paths other than
``/RPC2`` and ``/``, 411 without a Content-Length, 413 above ``MAX_REQUEST_BYTES``, 415 for
an unknown Content-Encoding, 501 for other verbs and for Transfer-Encoding; from the transport 408 (request deadline), 431 (head over 64 KiB), 503 (full). The body a
request announces is read whole before any of them is sent, and every one but 404 closes the
connection, so a refused request's body is never parsed as the next request.

Over 400 lines (~635): dispatch, the argument checks and the Faults are the one boundary where
exceptions become wire errors; moving the argument checks out is an open follow-up of #11.
"""

from __future__ import annotations

import errno
import inspect
import io
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar
from xml.parsers.expat import ExpatError
from xmlrpc.client import Fault, Marshaller, gzip_decode, gzip_encode, loads
from xmlrpc.server import SimpleXMLRPCRequestHandler

import numpy as np

from pegx.config import DEFAULT_HOST, DEFAULT_PORT
from pegx.rpc.framing import body_length
from pegx.rpc.transport import Limits, Transport

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # one call never needs more; caps memory per client
REQUEST_DEADLINE = 10.0  # seconds from a request's first byte (or the accept) to its last
IDLE_TIMEOUT = 60.0  # seconds a keep-alive connection may sit silent before we close it
MAX_CONNECTIONS = 256  # open at once; idle ones are closed for new ones, then 503
MAX_FAULT_CHARS = 2000

FAULT_USER = 1
FAULT_INTERNAL = 2
FAULT_PARSE = -32700
FAULT_INVALID_REQUEST = -32600
FAULT_NO_METHOD = -32601
FAULT_BAD_PARAMS = -32602
FAULT_BAD_RESULT = -32603

# Exceptions a method raises for a bad argument: the caller sees "Type: message", no log noise.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Characters XML 1.0 cannot carry at all: a string holding one would make the client's
# parser fail with an ExpatError instead of seeing a value, so refuse it when marshalling.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# XML-RPC never needs a DTD; refusing one rules out entity-expansion tricks outright.
_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_HEADER = "<?xml version='1.0'?>\n"


class CallError(Exception):
    """Raise from a published method to return ``Fault(code, message)`` exactly as given."""

    def __init__(self, message: str, code: int = FAULT_USER) -> None:
        super().__init__(message)
        self.code = code


def _integer_types(base: type) -> list[type]:
    """All concrete numpy integer scalar types (int8..uint64, intc, longlong, ...)."""
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_integer_types(sub))
    return found


class _Marshaller(Marshaller):
    """The stock Marshaller plus ``<i8>``, numpy integers and a check for XML-illegal text.

    Private on purpose: ``xmlrpc.client.Marshaller`` is left untouched, so a stock client in
    this process still refuses to *send* ints beyond ±2^31, like every other client does.
    """

    dispatch: ClassVar[dict[Any, Callable[..., None]]] = dict(Marshaller.dispatch)

    def dump_long(self, value: Any, write: Callable[[str], Any]) -> None:
        value = int(value)  # numpy integers arrive here too
        if INT32_MIN <= value <= INT32_MAX:
            tag = "int"
        elif INT64_MIN <= value <= INT64_MAX:
            tag = "i8"
        else:
            shown = str(value) if value.bit_length() <= 256 else f"of {value.bit_length()} bits"
            raise OverflowError(f"int {shown} is outside the XML-RPC <i8> range [-2^63, 2^63-1]")
        write(f"<value><{tag}>{value}</{tag}></value>\n")

    def dump_unicode(self, value: str, write: Callable[[str], Any], escape: Any = None) -> None:
        if _XML_INVALID.search(value):
            raise ValueError("a string holds a character that XML 1.0 cannot carry")
        super().dump_unicode(value, write)

    dispatch[int] = dump_long
    dispatch[str] = dump_unicode
    for _t in _integer_types(np.integer):
        dispatch[_t] = dump_long
    dispatch[np.bool_] = Marshaller.dump_bool
    del _t


MAX_DEPTH = 64  # no call takes anything nested this deep; repr() of deeper values recurses


def _check_params(params: tuple) -> str:
    """Why the parameters cannot reach a method ('' if they can).

    Refused before dispatch: values nested deeper than MAX_DEPTH (any repr() of them in an
    error message would raise RecursionError) and <bigdecimal> values (no call takes a decimal:
    amounts are int or a string of satoshi; a Decimal sNaN even raises on comparison).
    """
    stack = [(p, 1) for p in params]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"parameters are nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, Decimal):
            return ("decimal values are not accepted: send amounts as an int or a decimal "
                    "string of satoshi")
        if isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
    return ""


def _clean_text(text: str) -> str:
    """A fault string that always marshals: XML-illegal characters replaced, length capped."""
    text = _XML_INVALID.sub("?", str(text))
    return text if len(text) <= MAX_FAULT_CHARS else text[: MAX_FAULT_CHARS - 3] + "..."


def _fault_struct(fault: Fault) -> dict[str, Any]:
    code = fault.faultCode
    if not isinstance(code, int) or isinstance(code, bool) or not INT32_MIN <= code <= INT32_MAX:
        code = FAULT_INTERNAL
    return {"faultCode": code, "faultString": _clean_text(fault.faultString)}


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "" (every interface) or a host name we will not resolve here
        return False


class ListenError(OSError):
    """The server cannot listen on its address; ``str()`` is the whole message."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _listen(host: str, port: int, setting: str = "port") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            option = "--" + setting.replace("_", "-")
            why += (f" (another pegx, or another program, listens there: `pegx status --port "
                    f"{port}` tells whether it is a pegx); choose another port with {option} "
                    f"or {setting} = ... in pegx.toml")
        raise ListenError(exc.errno, f"cannot listen on {host}:{port}: {why}") from exc


def check_can_listen(host: str, port: int, setting: str = "port") -> None:
    """Raise the OSError a server would raise for ``host``:``port`` (in use, no such address),
    naming the ``setting`` to change, before the daemon touches its datadir. The port is free
    again when this returns; port 0 (any free port, or off) is not checked."""
    if port != 0:
        _listen(host, port, setting).close()


def _plural(n: int) -> str:
    return f"{n} argument" if n == 1 else f"{n} arguments"


def _arity_message(name: str, sig: inspect.Signature, given: int, exc: TypeError) -> str:
    """Python-2 style "f() takes 3 to 5 arguments (2 given)", from the signature."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in kinds]
    low = sum(1 for p in positional if p.default is inspect.Parameter.empty)
    high = None
    if not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        high = len(positional)
    if given >= low and (high is None or given <= high):
        # the count is fine but the signature cannot be met positionally (keyword-only)
        return f"{name}() cannot be called over XML-RPC: {exc}"
    if high is None:
        return f"{name}() takes at least {_plural(low)} ({given} given)"
    if low == high:
        return f"{name}() takes exactly {_plural(low)} ({given} given)"
    return f"{name}() takes {low} to {high} arguments ({given} given)"


@dataclass(frozen=True)
class _Method:
    func: Callable[..., Any]
    signature: inspect.Signature | None  # None: not introspectable, arity left to the call
    help: str


class _MulticallResult(list):
    """Outcomes of a multicall: each a value or a Fault, marshalled one by one."""


class _Handler(SimpleXMLRPCRequestHandler):
    """Answers one complete request held in memory: the transport has read all of it (head
    and the announced body) and sends what this writes to ``wfile``. Everything it does not
    like is refused without a body that could leak internals. The stock handler's do_POST is
    replaced, not extended."""

    protocol_version = "HTTP/1.1"
    # a refusal of a request line without a version still starts with a status line
    default_request_version = "HTTP/1.0"
    rpc_paths = ("/RPC2", "/")
    server_version = "pegx"
    sys_version = ""
    server: RPCServer

    def setup(self) -> None:
        self.rfile = io.BytesIO(self.request)
        self.wfile = io.BytesIO()

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        pass  # the transport owns the socket

    def handle_expect_100(self) -> bool:
        return True  # the transport sent "100 Continue" before the body came

    def do_POST(self) -> None:
        # framing first, with the transport's own rule: a request whose body end is not
        # certain is refused (and its connection closed) before anything else is looked at
        length = body_length(self.headers, MAX_REQUEST_BYTES)
        if length is None:
            self.send_error(411, "Content-Length required")
            return
        if isinstance(length, tuple):
            self.send_error(*length)
            return
        if len(self.request) - self.rfile.tell() != length:
            # the transport cut this request off at another length: never keep such a
            # connection open (cannot happen unless the two readings of the head differ)
            self.send_error(400, "request framing mismatch")
            return
        if not self.is_rpc_path_valid():
            self.report_404()  # the body was read whole: the connection stays in step
            return
        data = self.rfile.read(length)
        encoding = self.headers.get("content-encoding", "identity").lower()
        if encoding == "gzip":
            try:
                data = gzip_decode(data, max_decode=MAX_REQUEST_BYTES)
            except ValueError:
                self.send_error(400, "bad or oversized gzip body")
                return
        elif encoding != "identity":
            self.send_error(415, f"Content-Encoding {encoding[:40]!r} not supported")
            return
        # (a request that got here runs even if stop() came meanwhile: the transport starts
        # no call after stop(), and one it started is waited for by wait_idle)
        rpc = self.server
        self._send_xml(rpc._handle(data), closing=rpc._stopping)

    def _send_xml(self, body: bytes, closing: bool) -> None:
        gzipped = False
        if len(body) > self.encode_threshold and self.accept_encodings().get("gzip", 0):
            body, gzipped = gzip_encode(body), True
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        if closing:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.server.log_requests:
            log.info("%s %s %s", self.client_address[0], self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server writes to stderr; route it to logging at a level that cannot flood.
        log.debug("%s: %s", self.client_address[0], format % args)


class RPCServer:
    """A threaded XML-RPC server publishing an explicit set of callables by name.

    Register everything before :meth:`serve_in_thread`; the registry is not locked because
    it is only read once serving starts. Counters (``calls_served``, ``faults``,
    ``in_flight``) are thread-safe: a call is one method invocation, each call inside a
    ``system.multicall`` counting once and the multicall wrapper not at all; ``faults``
    counts every Fault sent, including those for malformed requests.
    """

    def __init__(
        self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, log_requests: bool = False,
        request_deadline: float = REQUEST_DEADLINE, max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Bind (but do not serve yet). Raises OSError naming the address if it is taken.

        ``request_deadline``: seconds a request may take to arrive whole; ``max_connections``:
        connections open at once (see :mod:`pegx.rpc.transport`).
        """
        if not _is_loopback(host):
            log.warning(
                "XML-RPC server listening on %r, not loopback: anyone who can reach this "
                "port can call the API over plain HTTP", host)
        self.log_requests = log_requests
        self._methods: dict[str, _Method] = {}
        self._lock = threading.Lock()
        self._calls = 0
        self._faults = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        # on_call(name, outcome, seconds) after each method call (multicall's parts, not the
        # wrapper), for metrics: called in the worker thread, so it must be quick
        self.on_call: Callable[[str, Any, float], None] | None = None
        sock = _listen(host, port)
        self._address: tuple[str, int] = sock.getsockname()[:2]
        limits = Limits(max_connections=max_connections, request_deadline=request_deadline,
                        idle_timeout=IDLE_TIMEOUT, max_body=MAX_REQUEST_BYTES)
        self._transport = Transport(sock, self._serve, limits)
        self._register_system()

    # ----------------------------------------------------------------- public surface

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 this is the port the OS picked."""
        return self._address

    @property
    def calls_served(self) -> int:
        """Method calls answered (value or Fault) since start."""
        return self._calls

    @property
    def faults(self) -> int:
        """Faults sent since start, for calls and for malformed requests."""
        return self._faults

    @property
    def in_flight(self) -> int:
        """Requests being executed or answered right now."""
        return self._transport.in_flight

    @property
    def connections(self) -> int:
        """Client connections open right now (in a call, idle, or sending a request)."""
        return self._transport.open_connections

    def method_names(self) -> list[str]:
        """Every name published (registered calls and ``system.*``)."""
        return sorted(self._methods)

    def register(self, name: str, func: Callable[..., Any], help: str | None = None) -> None:
        """Publish ``func`` as ``name`` (dots allowed: ``"devnet.mine"``).

        ``help`` (for ``system.methodHelp``) defaults to the function's docstring. Raises
        ValueError for an empty or duplicate name or one in the reserved ``system.`` space.
        """
        if name.startswith("system."):
            raise ValueError(f"{name!r}: the system. namespace is reserved")
        self._add(name, func, help)

    def register_many(self, mapping: dict[str, Callable[..., Any]]) -> None:
        """Register each ``name: func`` of ``mapping`` with its docstring as help."""
        for name, func in mapping.items():
            self.register(name, func)

    def serve_in_thread(self) -> threading.Thread:
        """Start ``serve_forever`` in a daemon thread and return that thread."""
        if self._thread is not None:
            raise RuntimeError("RPCServer is already serving")
        self._thread = self._transport.start()
        host, port = self.address
        log.info("XML-RPC server listening on http://%s:%d/RPC2", host, port)
        return self._thread

    def stop(self) -> None:
        """Stop accepting: close the listening socket and idle keep-alive connections.

        Calls already running finish and get their answer (with ``Connection: close``);
        use :meth:`wait_idle` to wait for them. Safe to call more than once.
        """
        with self._lock:
            already = self._stopping
            self._stopping = True
        if not already:
            self._transport.stop()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no call to be in flight; True if none is."""
        return self._transport.wait_idle(timeout)

    # ----------------------------------------------------------------- registry

    def _add(self, name: str, func: Callable[..., Any], help: str | None) -> None:
        if not isinstance(name, str) or not name or name.strip() != name:
            raise ValueError(f"bad method name {name!r}")
        if name in self._methods:
            raise ValueError(f"method {name!r} is already registered")
        if not callable(func):
            raise TypeError(f"{name!r}: {func!r} is not callable")
        try:
            sig: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have no signature
            sig = None
        text = help if help is not None else (inspect.getdoc(func) or "")
        self._methods[name] = _Method(func, sig, text)

    def _register_system(self) -> None:
        self._add("system.listMethods", self._list_methods, None)
        self._add("system.methodHelp", self._method_help, None)
        self._add("system.methodSignature", self._method_signature, None)
        self._add("system.multicall", self._multicall, None)

    def _list_methods(self) -> list[str]:
        """Names of every method this server publishes."""
        return sorted(self._methods)

    def _method_help(self, name: str) -> str:
        """The help text of a method."""
        method = self._methods.get(name) if isinstance(name, str) else None
        if method is None:
            raise CallError(f"method {str(name)[:100]!r} is not supported", FAULT_NO_METHOD)
        return method.help

    def _method_signature(self, name: str) -> str:
        """Not supported: the XML-RPC types of Python methods are not declared."""
        self._method_help(name)  # same Fault for an unknown name
        return "signatures not supported"

    def _multicall(self, calls: list[Any]) -> _MulticallResult:
        """Run many calls in one request: ``[{'methodName': ..., 'params': [...]}, ...]``.

        Returns one entry per call, in order: ``[result]`` or a fault struct.
        """
        if not isinstance(calls, list):
            raise CallError("system.multicall takes an array of call structs", FAULT_BAD_PARAMS)
        outcomes = _MulticallResult()
        for call in calls:
            name = call.get("methodName") if isinstance(call, dict) else None
            params = call.get("params", []) if isinstance(call, dict) else None
            if not isinstance(name, str) or not isinstance(params, list):
                outcomes.append(self._count_fault(Fault(
                    FAULT_INVALID_REQUEST,
                    "each call must be a struct with 'methodName' (string) and 'params' (array)")))
            elif name == "system.multicall":
                outcomes.append(self._count_fault(Fault(
                    FAULT_INVALID_REQUEST, "system.multicall cannot be nested")))
            else:
                outcomes.append(self._call(name, tuple(params)))
        return outcomes

    # ----------------------------------------------------------------- dispatch

    def _count_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults += 1
        return fault

    def _call(self, name: str, params: tuple[Any, ...]) -> Any:
        """Run one method; returns its result, or a Fault for anything that went wrong."""
        t0 = time.perf_counter()
        outcome = self._invoke(name, params)
        with self._lock:
            if name != "system.multicall":
                self._calls += 1
            if isinstance(outcome, Fault):
                self._faults += 1
        on_call = self.on_call
        if on_call is not None and name != "system.multicall":
            on_call(name, outcome, time.perf_counter() - t0)
        return outcome

    def _invoke(self, name: str, params: tuple[Any, ...]) -> Any:  # noqa: PLR0911 (one ordered list: no method, arity, then the call's errors, each its Fault)
        method = self._methods.get(name)
        if method is None:
            return Fault(FAULT_NO_METHOD, f"method {name[:100]!r} is not supported")
        if method.signature is not None:
            try:
                method.signature.bind(*params)
            except TypeError as exc:
                return Fault(FAULT_BAD_PARAMS,
                             _arity_message(name, method.signature, len(params), exc))
        try:
            return method.func(*params)
        except Fault as fault:
            return fault
        except CallError as exc:
            return Fault(exc.code, str(exc))
        except USER_ERRORS as exc:
            return Fault(FAULT_USER, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("XML-RPC call %s failed", name)
            return Fault(FAULT_INTERNAL, "internal error (see the daemon log)")

    def _handle(self, data: bytes) -> bytes:
        """One request body in, one response body out. Never raises."""
        try:
            if _DTD.search(data):
                outcome: Any = self._count_fault(Fault(
                    FAULT_INVALID_REQUEST, "XML-RPC requests may not carry a DTD or entities"))
            else:
                outcome = self._parse_and_call(data)
            return self._response(outcome)
        except Exception:  # a bug here must still not put a traceback on the wire
            log.exception("XML-RPC request handling failed")
            return self._response(self._count_fault(
                Fault(FAULT_INTERNAL, "internal error (see the daemon log)")))

    def _parse_and_call(self, data: bytes) -> Any:
        try:
            params, name = loads(data, use_builtin_types=True)
        except ExpatError as exc:
            return self._count_fault(Fault(FAULT_PARSE, f"request is not well-formed XML: {exc}"))
        except Exception as exc:  # noqa: BLE001 - ResponseError, bad <int>, odd struct, <fault>
            return self._count_fault(Fault(
                FAULT_INVALID_REQUEST,
                f"request is not an XML-RPC method call ({type(exc).__name__})"))
        if not name:
            return self._count_fault(Fault(FAULT_INVALID_REQUEST, "request has no methodName"))
        problem = _check_params(params)
        if problem:
            return self._count_fault(Fault(FAULT_INVALID_REQUEST, problem))
        return self._call(name, params)

    def _value_fault(self, exc: Exception) -> Fault:
        log.error("XML-RPC result cannot be marshalled: %s", exc)
        return self._count_fault(Fault(
            FAULT_BAD_RESULT, f"the result cannot be sent over XML-RPC: {exc}"))

    def _response(self, outcome: Any) -> bytes:
        """Marshal a result, a Fault or a multicall list into a methodResponse body."""
        if isinstance(outcome, Fault):
            body = _Marshaller("utf-8", True).dumps(Fault(**_fault_struct(outcome)))
        elif isinstance(outcome, _MulticallResult):
            parts = ["<params>\n<param>\n<value><array><data>\n"]
            for item in outcome:
                parts.append(self._multicall_entry(item))
            parts.append("</data></array></value>\n</param>\n</params>\n")
            body = "".join(parts)
        else:
            try:
                body = _Marshaller("utf-8", True).dumps((outcome,))
            except (TypeError, ValueError, OverflowError) as exc:
                return self._response(self._value_fault(exc))
        return f"{_XML_HEADER}<methodResponse>\n{body}</methodResponse>\n".encode()

    def _multicall_entry(self, item: Any) -> str:
        # Each entry is marshalled on its own so one bad result faults in place instead of
        # sinking the other 99; a fresh Marshaller each time since a failed dump leaves memo.
        out: list[str] = []
        if not isinstance(item, Fault):
            try:
                _Marshaller("utf-8", True).dump_array([item], out.append)
                return "".join(out)
            except (TypeError, ValueError, OverflowError) as exc:
                item, out = self._value_fault(exc), []
        _Marshaller("utf-8", True).dump_struct(_fault_struct(item), out.append)
        return "".join(out)

    # ----------------------------------------------------------------- transport

    def _serve(self, request: bytes, client_address: tuple) -> tuple[bytes, bool]:
        """One complete HTTP request in, (the answer, close the connection after it) out."""
        handler = _Handler(request, client_address, self)
        return handler.wfile.getvalue(), handler.close_connection
