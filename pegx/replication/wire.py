"""The replication wire: length-prefixed frames over one TCP connection, authenticated.

Frame: ``u32 length | u8 kind | payload | mac`` (big-endian; ``length`` counts kind, payload
and mac). Until the handshake is done frames carry no mac; after it every frame carries
``HMAC-SHA256(session, direction | u64 counter | kind | payload)``, so a network attacker can
neither inject, change, replay, reorder nor reflect a frame: a frame whose mac is wrong closes
the connection.

Handshake (the standby, or a fencer, is the client; the key is never sent):

1. client -> HELLO ``{"proto", "role", "nonce": Nc}``
2. server -> CHALLENGE ``{"proto", "nonce": Ns, "proof": HMAC(key, "primary"|Nc|Ns)}``: the
   server proves it holds the key first, so a standby never takes records from an impostor
3. client -> AUTH ``{"proof": HMAC(key, "standby"|Ns|Nc)}``; a wrong proof gets a plain
   REFUSE and the connection is closed
4. both: ``session = HMAC(key, "session"|Nc|Ns)``; nonces are 32 random bytes per connection

Payloads are JSON for control frames; RECORDS and DEVNET are binary (see pack_records and
pack_devnet) since they carry the op log's and the devnet log's bytes as they are on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import threading

PROTO = 1
MAX_FRAME = 1 << 30  # one op-log record can be large (a credit of many 1200-step vectors)
MAX_PREAUTH = 8 << 10  # before the handshake is done (HELLO, CHALLENGE, AUTH, REFUSE): small
CHUNK = 4 << 20  # records and devnet bytes are shipped in frames of about this size
MAC_BYTES = 32

HELLO, CHALLENGE, AUTH, START, WELCOME, REFUSE = 1, 2, 3, 4, 5, 6
RECORDS, DEVNET, HEARTBEAT, ACK, FENCE, FENCED = 7, 8, 9, 10, 11, 12
NAMES = {HELLO: "HELLO", CHALLENGE: "CHALLENGE", AUTH: "AUTH", START: "START",
         WELCOME: "WELCOME", REFUSE: "REFUSE", RECORDS: "RECORDS", DEVNET: "DEVNET",
         HEARTBEAT: "HEARTBEAT", ACK: "ACK", FENCE: "FENCE", FENCED: "FENCED"}

_HEAD = struct.Struct(">IB")
_REC = struct.Struct(">QI")
_OFF = struct.Struct(">Q")
_CTR = struct.Struct(">Q")


class ProtocolError(ConnectionError):
    """The peer broke the protocol (bad mac, bad frame, unexpected kind): drop the connection."""


class Refused(ConnectionError):
    """The peer refused us with a reason (REFUSE): an operator must usually act."""


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


class Channel:
    """One connection: framed, and after :meth:`authenticate` mac'd in both directions.

    ``send`` may be called from several threads (a lock keeps frames whole); ``recv`` from one.
    """

    def __init__(self, sock: socket.socket, *, server: bool):
        self.sock = sock
        host, port = sock.getpeername()[:2]
        self.peer = f"{host}:{port}"
        self._server = server
        self._session: bytes | None = None
        self._send_ctr = 0
        self._recv_ctr = 0
        self._buf = bytearray()
        self._send_mu = threading.Lock()
        self.closed = False

    # ---------------------------------------------------------------- frames
    def send(self, kind: int, payload: bytes = b"") -> None:
        """Send one frame (mac'd once authenticated)."""
        with self._send_mu:
            mac = b""
            if self._session is not None:
                mac = _mac(self._session, b"S" if self._server else b"C",
                           _CTR.pack(self._send_ctr), bytes([kind]), payload)
                self._send_ctr += 1
            self.sock.sendall(_HEAD.pack(1 + len(payload) + len(mac), kind) + payload + mac)

    def send_json(self, kind: int, value: dict) -> None:
        self.send(kind, json.dumps(value, separators=(",", ":")).encode())

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError(f"{self.peer} closed the connection")
            self._buf += chunk

    def buffered(self) -> bool:
        """Is a whole frame already received (so reading it will not block)?"""
        if len(self._buf) < _HEAD.size:
            return False
        length, _ = _HEAD.unpack_from(self._buf)
        return len(self._buf) >= 4 + length

    def recv(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next frame's (kind, payload); a bad mac or size raises ProtocolError, a silent
        peer past ``timeout`` seconds TimeoutError."""
        self.sock.settimeout(timeout)
        self._fill(_HEAD.size)
        length, kind = _HEAD.unpack_from(self._buf)
        # anyone can connect: no one gets a large buffer before proving they hold the key
        if not 1 <= length <= (MAX_FRAME if self._session is not None else MAX_PREAUTH):
            raise ProtocolError(f"{self.peer}: frame of {length:,d} bytes refused")
        self._fill(4 + length)
        body = bytes(self._buf[_HEAD.size:4 + length])
        del self._buf[:4 + length]
        if self._session is None:
            return kind, body
        if len(body) < MAC_BYTES:
            raise ProtocolError(f"{self.peer}: frame without its mac")
        payload, mac = body[:-MAC_BYTES], body[-MAC_BYTES:]
        want = _mac(self._session, b"C" if self._server else b"S", _CTR.pack(self._recv_ctr),
                    bytes([kind]), payload)
        if not hmac.compare_digest(mac, want):
            raise ProtocolError(f"{self.peer}: a frame failed authentication (wrong key, or "
                                f"the stream was tampered with): connection dropped")
        self._recv_ctr += 1
        return kind, payload

    def recv_json(self, timeout: float | None, *kinds: int) -> tuple[int, dict]:
        """The next frame, which must be one of ``kinds`` (or REFUSE, raised as Refused)."""
        kind, payload = self.recv(timeout)
        if kind == REFUSE:
            raise Refused(parse_json(payload, self.peer).get("reason", "refused"))
        if kind not in kinds:
            raise ProtocolError(f"{self.peer}: expected {'/'.join(NAMES[k] for k in kinds)}, "
                                f"got {NAMES.get(kind, kind)}")
        return kind, parse_json(payload, self.peer)

    def refuse(self, reason: str) -> None:
        """Tell the peer why (best effort) and close."""
        try:
            self.send_json(REFUSE, {"reason": reason})
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        """Close the socket (idempotent; a recv blocked in another thread returns)."""
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    # ---------------------------------------------------------------- handshake
    def client_handshake(self, key: bytes, role: str, timeout: float) -> None:
        """Authenticate as the client (the standby, or a fencer); Refused or ProtocolError."""
        nc = os.urandom(32)
        self.send_json(HELLO, {"proto": PROTO, "role": role, "nonce": nc.hex()})
        _, ch = self.recv_json(timeout, CHALLENGE)
        ns = _nonce(ch, self.peer)
        if not hmac.compare_digest(_hexbytes(ch.get("proof"), self.peer),
                                   _mac(key, b"primary", nc, ns)):
            raise Refused(f"{self.peer} does not hold our replication key: not following it")
        self.send_json(AUTH, {"proof": _mac(key, b"standby", ns, nc).hex()})
        self._session = _mac(key, b"session", nc, ns)

    def server_handshake(self, key: bytes, timeout: float) -> str:
        """Authenticate the client; returns the role it announced. Refuses and raises on a
        wrong proof."""
        _, hello = self.recv_json(timeout, HELLO)
        if hello.get("proto") != PROTO:
            self.refuse(f"replication protocol {hello.get('proto')!r} is not {PROTO}: run the "
                        f"same pegx release on both sides")
            raise ProtocolError(f"{self.peer}: protocol {hello.get('proto')!r}")
        nc, ns = _nonce(hello, self.peer), os.urandom(32)
        self.send_json(CHALLENGE, {"proto": PROTO, "nonce": ns.hex(),
                                   "proof": _mac(key, b"primary", nc, ns).hex()})
        _, auth = self.recv_json(timeout, AUTH)
        if not hmac.compare_digest(_hexbytes(auth.get("proof"), self.peer),
                                   _mac(key, b"standby", ns, nc)):
            self.refuse("authentication failed: the two sides do not hold the same "
                        "replication key")
            raise ProtocolError(f"{self.peer}: authentication failed")
        self._session = _mac(key, b"session", nc, ns)
        return str(hello.get("role", ""))


def parse_json(payload: bytes, peer: str) -> dict:
    try:
        value = json.loads(payload)
    except ValueError:
        raise ProtocolError(f"{peer}: a control frame is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{peer}: a control frame is not a JSON object")
    return value


def _hexbytes(text, peer: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except (TypeError, ValueError):
        raise ProtocolError(f"{peer}: a proof is not hex") from None


def _nonce(msg: dict, peer: str) -> bytes:
    nonce = _hexbytes(msg.get("nonce"), peer)
    if len(nonce) != 32:
        raise ProtocolError(f"{peer}: a nonce is 32 bytes")
    return nonce


def pack_records(records: list[tuple[int, bytes]]) -> bytes:
    """RECORDS payload: ``(u64 seq | u32 len | bytes)*``."""
    return b"".join(_REC.pack(seq, len(data)) + data for seq, data in records)


def unpack_records(payload: bytes) -> list[tuple[int, bytes]]:
    """Inverse of pack_records (ProtocolError on a torn payload)."""
    out, at = [], 0
    while at < len(payload):
        if at + _REC.size > len(payload):
            raise ProtocolError("a RECORDS frame is torn")
        seq, n = _REC.unpack_from(payload, at)
        at += _REC.size
        if at + n > len(payload):
            raise ProtocolError("a RECORDS frame is torn")
        out.append((seq, payload[at:at + n]))
        at += n
    return out


def pack_devnet(offset: int, data: bytes) -> bytes:
    """DEVNET payload: ``u64 offset | bytes`` (whole lines of the devnet action log)."""
    return _OFF.pack(offset) + data


def unpack_devnet(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < _OFF.size:
        raise ProtocolError("a DEVNET frame is torn")
    return _OFF.unpack_from(payload)[0], payload[_OFF.size:]
