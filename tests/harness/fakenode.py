"""A small fake BitBay node for the bitbayd client tests: data in, documented reply shapes out.

It is not a chain: tests fill ``node.state`` with the rows the real node would report and the
fake serves them over the node's transport: JSON-RPC 1.0 over HTTP/1.1 keep-alive with Basic
auth (401 on bad credentials), errors as ``{"result": null, "error": {"code", "message"}, "id"}``
with HTTP 500 (404 for -32601). The shapes are the real node's (bitbay-core 3d39e0a), as saved in
``tests/bitbayd_replies/`` (a copy of ``../shared/bitbayd/replies/``: request, HTTP status and
raw body of each): amounts are doubles printed with 8 decimals (``0.10000000``, and
``999999799.99984992`` for 99,999,979,999,985,000 sat: inexact above 2^53 sat); an object may
repeat a key (:class:`Pairs`: verbose getrawtransaction has ``time`` twice); the wallet calls
answer as the node does when it is encrypted and locked (importprivkey -4, signrawtransaction
-13), a second walletpassphrase succeeds, getblockhash out of range is -1, importprivkey returns
``{"address"}``, sendrawtransaction returns the txid of a duplicate still in the mempool and -5
"transaction already in block <hash>" for a mined one.

``node.replay(name)`` answers the request saved in ``bitbayd_replies/<name>.json`` (same method
and params, or any params with ``any_params=True``) with its status and body verbatim, only the
``id`` put back to the request's.

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
import re
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import base58

from harness import TESTS
from pegx import crypto
from pegx.peg import std_spread

WARMUP_MESSAGE = "Loading block index..."
REPLIES = TESTS / "bitbayd_replies"
LOCKED_IMPORT = (-4, "Error adding key to wallet")
STAKING_ONLY = (-13, "Wallet is unlocked for staking only.")
LOCKED_SIGN = (-13, "Error: Please enter the wallet passphrase with walletpassphrase first.")


class Pairs(list):
    """A JSON object as a list of (key, value) pairs: keys may repeat, as in the node's output."""


def reply_file(name: str) -> dict:
    """One saved real reply: {"request": {"method", "params"}, "http_status", "raw_reply"}."""
    return json.loads((REPLIES / f"{name}.json").read_text())


class RpcFault(Exception):
    """Raised by a handler to answer with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def node_json(obj: Any) -> str:
    """JSON as bitbayd writes it: doubles with 8 decimals (ValueFromAmount is a double of BAY,
    so an int amount in sat must go through ``sat / 1e8`` first), Pairs as objects."""
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return f"{obj:.8f}"
    if isinstance(obj, str):
        return json.dumps(obj)
    if isinstance(obj, Pairs):
        return "{" + ",".join(f"{json.dumps(str(k))}:{node_json(v)}" for k, v in obj) + "}"
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
            "staking_only": False,  # walletpassphrase ... true
            "network": crypto.MAIN,  # the versions importprivkey accepts and answers with
            "errors": {},  # method -> (code, message): that method always fails
            "imported": [],
            "sent": [],
            "mine": {},  # address -> pubkey hex: the wallet's own keys (validateaddress)
            "mined": {},  # txid -> block hash: sendrawtransaction says "already in block"
        }
        self.replies: dict[str, list[tuple[Any, int, str]]] = {}  # method -> [(params, ...)]
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

    def replay(self, name: str, any_params: bool = False) -> dict:
        """Answer the request of ``bitbayd_replies/<name>.json`` with its saved reply."""
        rec = reply_file(name)
        req = rec["request"]
        params = None if any_params else req["params"]
        self.replies.setdefault(req["method"], []).insert(
            0, (params, rec["http_status"], rec["raw_reply"]))
        return rec

    def _replayed(self, method: str, params: list, rid: Any) -> tuple[int, str] | None:
        for want, status, raw in self.replies.get(method, ()):
            if want is None or want == params:
                # the saved body ends in "id":1; the client checks the id of its request
                return status, re.sub(r'"id":1}\s*$', f'"id":{json.dumps(rid)}}}\n', raw)
        return None

    def locked(self) -> bool:
        st = self.state
        return st["passphrase"] is not None and not st["unlocked"]

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
            height = params[0]
            if height in st["blockhashes"]:
                return st["blockhashes"][height]
            if not 0 <= height <= st["blockcount"]:
                raise RpcFault(-1, "Block number out of range.")  # as the real node
            # a block the test did not name: a node has every block up to its tip
            return hashlib.sha256(f"fakenode-block:{height}".encode()).hexdigest()
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
        if method == "getinfo":
            info = {"version": "v4.0.3.0-gf683bd6", "protocolversion": 60016,
                    "walletversion": 60000, "blocks": st["blockcount"], "testnet": False}
            if st["passphrase"] is not None:
                info["unlocked_until"] = 0 if self.locked() else 1_900_000_000
            return info
        if method == "importprivkey":
            try:
                address = crypto.wif_to_address(params[0], st["network"])
            except crypto.CryptoError:
                raise RpcFault(-5, "Invalid private key") from None
            if st["staking_only"] and not self.locked():
                raise RpcFault(*STAKING_ONLY)
            if self.locked():
                raise RpcFault(*LOCKED_IMPORT)
            st["imported"].append(list(params))
            return {"address": address}
        if method == "walletpassphrase":
            if st["passphrase"] is None:
                raise RpcFault(-15, "Error: running with an unencrypted wallet, but "
                               "walletpassphrase was called.")
            if params[0] != st["passphrase"]:
                raise RpcFault(-14, "Error: The wallet passphrase entered was incorrect.")
            st["unlocked"] = True  # again while unlocked: success too (null)
            st["staking_only"] = len(params) > 2 and bool(params[2])
            return None
        if method == "walletlock":
            st["unlocked"] = False
            return None
        if method == "signrawtransaction":
            if self.locked() or st["staking_only"]:
                raise RpcFault(*LOCKED_SIGN)
            signed = st["signatures"].get(params[0])
            if signed is None:  # a key the wallet does not have
                return {"hex": params[0], "complete": False}
            return {"hex": signed, "complete": True}
        if method == "validateaddress":
            return _validateaddress(params[0], st["mine"])
        if method == "sendrawtransaction":
            txid = _txid(params[0])
            if txid in st["mined"]:
                raise RpcFault(-5, f"transaction already in block {st['mined'][txid]}")
            if params[0] not in st["sent"]:  # a duplicate in the mempool: the txid again
                st["sent"].append(params[0])
            return txid
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
                replayed = None if fault else node._replayed(method, params, rid)
                if replayed is not None:
                    self._send(replayed[0], replayed[1])
                    return
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


# a chain the bitbayd end-to-end tests start from
HEIGHT = 1625  # 25 blocks into cycle 8: 7 confirmations are enough (block 1619)


def std_fractions(value: int) -> dict:
    """The node's getfractions answer for ``value`` satoshi spread at peg 3 (STD)."""
    vec = [int(v) for v in std_spread(value)]
    return {"total": value, "reserve": sum(vec[:3]), "liquidity": sum(vec[3:]), "peg": 3,
            "lock": 0, "flags": "", "values": vec}


def unspent_row(txid: str, vout: int, address: str, sat: int, conf: int) -> dict:
    """A listunspent row of the node for ``sat`` satoshi, all liquid."""
    return {"txid": txid, "vout": vout, "address": address, "account": "",
            "scriptPubKey": "76a914" + "00" * 20 + "88ac", "amount": sat / 1e8,
            "reserve": 0.0, "liquidity": sat / 1e8, "confirmations": conf, "spendable": True}


def node_at_height() -> FakeNode:
    """A fake node whose chain is at HEIGHT, 25 blocks into cycle 8 at peg 3."""
    fake = FakeNode()
    st = fake.state
    st["blockcount"] = HEIGHT
    st["peginfo"].update(cycle=8, peg=3, pegnext=6, pegnextnext=9, startingblock=1000)
    st["blockhashes"] = {HEIGHT: "a" * 64}
    st["blocks"] = {"a" * 64: {"hash": "a" * 64, "height": HEIGHT, "time": 1_796_115_209}}
    return fake
