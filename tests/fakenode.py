"""A small fake BitBay node for the bitbayd client tests: data in, documented reply shapes out.

It is not a chain: tests fill ``node.state`` with the rows the real node would report (BITBAYD
§3.3 shapes) and the fake serves them over the node's transport: JSON-RPC 1.0 over HTTP/1.1
keep-alive with Basic auth (401 with realm "jsonrpc" on bad credentials), errors as
``{"result": null, "error": {"code", "message"}, "id"}`` with HTTP 500 (404 for -32601), as
bitcoind 0.8 does. Floats are written the way bitbayd's json_spirit writes doubles: 16
significant digits with the point shown, so 0.1 BAY goes out as ``0.1000000000000000``.

Scripted faults (``node.fault(kind, count)``) apply to the next authenticated requests:
``warmup`` (-28 "Loading block index..."), ``http503`` (plain-text 503), ``drop`` (close the
connection without a reply), ``garbage`` (HTTP 200, not JSON) and ``hold`` (keep the request
until ``node.release()`` or ``hold_seconds``: a node slower than the client's timeout).
Every request received is recorded in ``node.calls`` as ``(method, params)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import base58

WARMUP_MESSAGE = "Loading block index..."


class RpcFault(Exception):
    """Raised by a handler to answer with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def node_json(obj: Any) -> str:
    """JSON as bitbayd's json_spirit writes it (doubles: ``showpoint``, precision 16)."""
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return f"{obj:#.16g}"
    if isinstance(obj, str):
        return json.dumps(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{node_json(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(node_json(v) for v in obj) + "]"
    raise TypeError(f"cannot write {type(obj).__name__} as node JSON")


def _txid(rawhex: str) -> str:
    return hashlib.sha256(hashlib.sha256(bytes.fromhex(rawhex)).digest()).digest()[::-1].hex()


def _validateaddress(address: str, mine: dict[str, str]) -> dict:
    """validateaddress in the node's shape (rpcmisc.cpp; replies/validateaddress.json): only
    ``isvalid`` for a bad address, ``ismine: false`` and nothing more for a foreign one."""
    try:
        raw = base58.b58decode_check(address)
    except ValueError:
        raw = b""
    if len(raw) != 21 or raw[0] != 25:
        return {"isvalid": False}
    if address not in mine:
        return {"isvalid": True, "address": address, "ismine": False}
    return {"isvalid": True, "address": address, "ismine": True, "watchonly": False,
            "isscript": False, "pubkey": mine[address], "iscompressed": True, "account": ""}


class FakeNode:
    """Start with ``FakeNode()``; ``url`` carries the credentials; ``close()`` stops it."""

    def __init__(self, user: str = "bayrpc", password: str = "s3cret pass") -> None:
        self.user, self.password = user, password
        self.state: dict[str, Any] = {
            "blockcount": 0,
            "peginfo": {"steps": 1200, "cycle": 0, "interval": 200, "startingblock": 0,
                        "pegfeeperinput": 5000, "subpremiumrating": 200,
                        "peg": 0, "pegnext": 0, "pegnextnext": 0},
            "blockhashes": {},  # height -> hash
            "blocks": {},  # hash -> getblock result
            "unspent": [],  # listunspent wallet-mode rows
            "frozen": [],  # listfrozen wallet-mode rows
            "fractions": {},  # "txid:vout" -> getfractions result
            "txs": {},  # txid -> getrawtransaction verbose result (with "hex")
            "txouts": {},  # "txid:vout" -> gettxout result
            "signatures": {},  # unsigned hex -> signed hex (else "complete": false)
            "passphrase": None,  # None: unencrypted wallet
            "unlocked": False,
            "errors": {},  # method -> (code, message): that method always fails
            "imported": [],
            "sent": [],
            "mine": {},  # address -> pubkey hex: the wallet's own keys (validateaddress)
        }
        self.calls: list[tuple[str, list]] = []
        self.connections = 0  # TCP connections accepted
        self.hold_seconds = 5.0
        self.held = 0  # requests currently held by a "hold" fault
        self._faults: deque[tuple[str, float | None]] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.user}:{self.password.replace(' ', '%20')}@127.0.0.1:{self.port}"

    def fault(self, kind: str, count: int = 1, seconds: float | None = None) -> None:
        """Script ``count`` faults of ``kind`` for the next requests (``hold`` for ``seconds``,
        default ``hold_seconds``, or until ``release()``)."""
        assert kind in ("warmup", "http503", "drop", "garbage", "hold"), kind
        with self._lock:
            self._faults.extend([(kind, seconds)] * count)

    def release(self) -> None:
        """Let held requests go (they answer normally)."""
        self._release.set()

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ RPC handlers

    def _rpc(self, method: str, params: list) -> Any:
        st = self.state
        if method in st["errors"]:
            raise RpcFault(*st["errors"][method])
        if method == "getblockcount":
            return st["blockcount"]
        if method == "getpeginfo":
            return st["peginfo"]
        if method == "getblockhash":
            if params[0] not in st["blockhashes"]:
                raise RpcFault(-1, "Block number out of range.")  # as the real node
            return st["blockhashes"][params[0]]
        if method == "getblock":
            if params[0] not in st["blocks"]:
                raise RpcFault(-5, "Block not found")
            return st["blocks"][params[0]]
        if method in ("listunspent", "listfrozen"):
            lo, hi = (list(params) + [1, 9999999])[:2]
            rows = st["unspent" if method == "listunspent" else "frozen"]
            return [r for r in rows if lo <= r["confirmations"] <= hi]
        if method == "getfractions":
            return st["fractions"].get(params[0], {})
        if method == "getrawtransaction":
            tx = st["txs"].get(params[0])
            if tx is None:
                raise RpcFault(-5, "No information available about transaction")
            return tx if len(params) > 1 and params[1] else tx["hex"]
        if method == "gettxout":
            return st["txouts"].get(f"{params[0]}:{params[1]}")
        if method == "importprivkey":
            if st["passphrase"] is not None and not st["unlocked"]:
                raise RpcFault(-13, "Error: Please enter the wallet passphrase with "
                               "walletpassphrase first.")
            st["imported"].append(list(params))
            return None
        if method == "walletpassphrase":
            if st["passphrase"] is None:
                raise RpcFault(-15, "Error: running with an unencrypted wallet, but "
                               "walletpassphrase was called.")
            if params[0] != st["passphrase"]:
                raise RpcFault(-14, "Error: The wallet passphrase entered was incorrect.")
            if st["unlocked"]:
                raise RpcFault(-17, "Error: Wallet is already unlocked.")
            st["unlocked"] = True
            return None
        if method == "signrawtransaction":
            signed = st["signatures"].get(params[0])
            locked = st["passphrase"] is not None and not st["unlocked"]
            if signed is None or locked:
                return {"hex": params[0], "complete": False}
            return {"hex": signed, "complete": True}
        if method == "validateaddress":
            return _validateaddress(params[0], st["mine"])
        if method == "sendrawtransaction":
            st["sent"].append(params[0])
            return _txid(params[0])
        raise RpcFault(-32601, "Method not found")

    # ------------------------------------------------------------------ HTTP

    def _next_fault(self) -> tuple[str | None, float | None]:
        with self._lock:
            return self._faults.popleft() if self._faults else (None, None)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the node

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK
                # cost 40 ms per reply
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with node._lock:
                    node.connections += 1

            def log_message(self, fmt: str, *args: Any) -> None:
                pass  # keep pytest output clean

            def _send(self, status: int, body: str, ctype: str = "application/json",
                      extra: dict | None = None) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test): nothing to tell it
                    self.close_connection = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                want = base64.b64encode(f"{node.user}:{node.password}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {want}":
                    self._send(401, "<html><body>401 Unauthorized</body></html>", "text/html",
                               {"WWW-Authenticate": 'Basic realm="jsonrpc"'})
                    return
                req = json.loads(body)
                method, params, rid = req["method"], req.get("params", []), req.get("id")
                with node._lock:
                    node.calls.append((method, params))
                fault, seconds = node._next_fault()
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "http503":
                    self._send(503, "Service Unavailable", "text/plain")
                    return
                if fault == "garbage":
                    self._send(200, "<html>not json</html>", "text/html")
                    return
                if fault == "hold":
                    with node._lock:
                        node.held += 1
                    node._release.wait(node.hold_seconds if seconds is None else seconds)
                    with node._lock:
                        node.held -= 1
                try:
                    if fault == "warmup":
                        raise RpcFault(-28, WARMUP_MESSAGE)
                    result = node._rpc(method, params)
                except RpcFault as exc:
                    err = {"code": exc.code, "message": exc.message}
                    self._send(404 if exc.code == -32601 else 500,
                               node_json({"result": None, "error": err, "id": rid}))
                    return
                self._send(200, node_json({"result": result, "error": None, "id": rid}))

        return Handler
