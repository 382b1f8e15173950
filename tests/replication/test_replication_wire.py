"""The replication wire (pegx.replication.wire): mutual HMAC authentication, a mac on every
frame, nothing a network attacker sends is taken. Real TCP connections on loopback; the
attacker sits in the middle and rewrites bytes, or talks to a real primary without the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import resource
import socket
import struct
import threading

import pytest

from harness import wait_until
from harness.replica import make_key, primary, standby, status, wait_caught_up
from pegx.replication import keys, wire

KEY = os.urandom(32)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


def handshaken(client_key: bytes = KEY, server_key: bytes = KEY):
    """(client, server) Channels after a handshake over a relay: (client, server, c_raw, s_raw)
    where the raw sockets are the attacker's ends (bytes from the client arrive on c_raw and
    go to the server by writing them to s_raw, and the other way round)."""
    c, c_raw = tcp_pair()
    s_raw, s = tcp_pair()
    client, server = wire.Channel(c, server=False), wire.Channel(s, server=True)
    errors: list[BaseException] = []

    def relay(src, dst, n_frames):
        try:
            for _ in range(n_frames):
                dst.sendall(_raw_frame(src))
        except OSError:  # a side gave up (wrong key): the handshake's outcome is the test's
            pass

    def serve():
        try:
            server.server_handshake(server_key, 5)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    r1 = threading.Thread(target=relay, args=(c_raw, s_raw, 2))  # HELLO, AUTH
    r2 = threading.Thread(target=relay, args=(s_raw, c_raw, 1))  # CHALLENGE
    r1.start()
    r2.start()
    try:
        client.client_handshake(client_key, "standby", 5)
    except BaseException:
        for sock in (c, c_raw, s_raw, s):
            sock.close()
        for th in (r1, r2, t):
            th.join(5)
        raise
    r1.join(5)
    r2.join(5)
    t.join(5)
    if errors:
        raise errors[0]
    return client, server, c_raw, s_raw


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _raw_frame(sock: socket.socket) -> bytes:
    head = _read(sock, 5)
    (length,) = struct.unpack(">I", head[:4])
    return head + _read(sock, length - 1)


def test_authenticated_frames_arrive_whole_and_in_order():
    client, server, c_raw, s_raw = handshaken()
    records = [(7, b'[{"op":"put"}]'), (8, b"x" * 100_000)]
    client.send(wire.RECORDS, wire.pack_records(records))
    client.send_json(wire.ACK, {"seq": 8})
    for _ in range(2):
        s_raw.sendall(_raw_frame(c_raw))
    kind, payload = server.recv(5)
    assert kind == wire.RECORDS and wire.unpack_records(payload) == records
    assert server.recv_json(5, wire.ACK) == (wire.ACK, {"seq": 8})


@pytest.mark.parametrize("where", ["kind", "payload", "mac"])
def test_a_changed_byte_is_refused(where):
    client, server, c_raw, s_raw = handshaken()
    client.send(wire.RECORDS, wire.pack_records([(1, b'[{"op":"trade","amount":1}]')]))
    frame = bytearray(_raw_frame(c_raw))
    at = {"kind": 4, "payload": 20, "mac": len(frame) - 1}[where]
    frame[at] ^= 0x01
    s_raw.sendall(bytes(frame))
    with pytest.raises(wire.ProtocolError, match="failed authentication"):
        server.recv(5)


def test_a_replayed_or_reflected_frame_is_refused():
    client, server, c_raw, s_raw = handshaken()
    client.send_json(wire.ACK, {"seq": 1})
    frame = _raw_frame(c_raw)
    s_raw.sendall(frame)
    assert server.recv_json(5, wire.ACK)[1] == {"seq": 1}
    s_raw.sendall(frame)  # the same frame again: its counter is spent
    with pytest.raises(wire.ProtocolError):
        server.recv(5)
    _, server2, _, s_raw2 = handshaken()
    server2.send_json(wire.HEARTBEAT, {"seq": 5})
    s_raw2.sendall(_raw_frame(s_raw2))  # the server's own frame sent back to it
    with pytest.raises(wire.ProtocolError):
        server2.recv(5)


def test_a_frame_injected_without_the_key_is_refused():
    _, server, _, s_raw = handshaken()
    payload = wire.pack_records([(1, b'[{"op":"trade"}]')])
    forged = hmac.new(os.urandom(32), payload, hashlib.sha256).digest()
    s_raw.sendall(struct.pack(">IB", 1 + len(payload) + 32, wire.RECORDS) + payload + forged)
    with pytest.raises(wire.ProtocolError):
        server.recv(5)


def test_a_large_frame_before_the_handshake_is_refused():
    """Anyone can connect to the replication port: before the handshake a frame is small
    (HELLO, CHALLENGE, AUTH, REFUSE), so one announcing 1 MB is refused at its header, not
    buffered (up to MAX_FRAME, 1 GiB, used to be read)."""
    c, s = tcp_pair()
    server = wire.Channel(s, server=True)
    hello = b'{"proto":1,"role":"standby","nonce":"' + b"0" * (1 << 20) + b'"}'
    sender = threading.Thread(target=lambda: _send_quietly(
        c, struct.pack(">IB", 1 + len(hello), wire.HELLO) + hello))
    sender.start()
    try:
        with pytest.raises(wire.ProtocolError, match="refused"):
            server.recv(10)
    finally:
        s.close()
        c.close()
        sender.join(10)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # the server refused and closed: the test's outcome is its recv
        pass


def test_different_keys_never_authenticate():
    with pytest.raises(wire.Refused, match="does not hold our replication key"):
        handshaken(client_key=os.urandom(32))


def test_a_real_primary_refuses_a_client_without_the_key(tmp_path):
    """An attacker that skips checking the primary's proof and sends a made-up one of its
    own gets a refusal, and nothing it sends afterwards is read."""
    key = make_key(tmp_path)
    with primary(tmp_path / "p", key) as p:
        host, port = p.repl.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            chan = wire.Channel(sock, server=False)
            chan.send_json(wire.HELLO, {"proto": wire.PROTO, "role": "standby",
                                        "nonce": os.urandom(32).hex()})
            chan.recv_json(10, wire.CHALLENGE)
            chan.send_json(wire.AUTH, {"proof": os.urandom(32).hex()})
            with pytest.raises(wire.Refused, match="authentication failed"):
                chan.recv_json(10, wire.WELCOME)
            try:  # the primary closed: anything more goes nowhere
                chan.send_json(wire.START, {"epoch": 9, "seq": 0})
                assert sock.recv(1) == b""
            except OSError:
                pass
        assert status(p)["standby"] == "" and status(p)["fenced"] == {}
        assert "authentication failed" in p.log()


def test_a_real_primary_drops_a_standby_that_acknowledges_what_it_was_never_sent(tmp_path):
    """A standby that says it holds a seq beyond what the primary sent it (its own ledger
    moved) is dropped with an ERROR; the primary does not count that seq as acknowledged
    (it used to take it, and then count its next real records as held by the standby)."""
    key = make_key(tmp_path)
    with primary(tmp_path / "p", key) as p:
        p.fund("alice", 10**11)
        st = status(p)
        host, port = p.repl.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            chan = wire.Channel(sock, server=False)
            chan.client_handshake(keys.read(key), "standby", 10)
            chan.send_json(wire.START, {"epoch": st["epoch"], "id": st["lineage"],
                                        "seq": st["seq"], "chain": "devnet", "network": "main",
                                        "devnet": 0})
            _, welcome = chan.recv_json(10, wire.WELCOME)
            assert welcome["seq"] == st["seq"]
            wait_until(lambda: status(p)["standby"], 30, what="the standby to be attached")
            chan.send_json(wire.ACK, {"seq": st["seq"] + 1_000, "devnet": None})
            wait_until(lambda: not status(p)["connected"], 30,
                       what="the primary to drop the standby")
            with pytest.raises((OSError, wire.ProtocolError)):
                while True:  # the devnet it was sent, then the end of the connection
                    chan.recv(10)
        after = status(p)
        assert after["acked_seq"] <= st["seq"] < st["seq"] + 1_000, after
        log = p.log()
        assert "ERROR" in log and f"acknowledged seq {st['seq'] + 1_000:,d}, beyond" in log


def test_the_primary_accepts_again_after_running_out_of_file_descriptors(tmp_path):
    """accept() failing (EMFILE: the daemon's file descriptor limit is reached) is logged
    and retried; once descriptors are free a standby attaches (the listener used to end
    for good at the first failure, silently)."""
    key = make_key(tmp_path)
    with primary(tmp_path / "p", key) as p:
        p.fund("alice", 10**11)
        pid = p.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        used = len(os.listdir(f"/proc/{pid}/fd"))
        host, port = p.repl.split(":")
        conns: list[socket.socket] = []
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 2, hard))
        try:  # the kernel completes these connections; the daemon runs out accepting them
            conns = [socket.create_connection((host, int(port)), timeout=10) for _ in range(6)]
            wait_until(lambda: "cannot accept a standby's connection" in p.log(), 30,
                       what="the primary to fail to accept (out of file descriptors)")
        finally:
            for c in conns:
                c.close()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        with standby(tmp_path / "s", key, p) as s:
            wait_caught_up(p, s)
        assert "accepting connections again" in p.log()


def test_key_files(tmp_path):
    keys.generate(tmp_path / "k")
    key = keys.read(tmp_path / "k")
    assert len(key) == 32
    b64 = tmp_path / "b64"
    b64.write_text(base64.b64encode(key).decode() + "\n")
    os.chmod(b64, 0o600)
    assert keys.read(b64) == key
    short = tmp_path / "short"
    short.write_text("abcd")
    os.chmod(short, 0o600)
    with pytest.raises(keys.KeyError_, match="32-byte"):
        keys.read(short)
    with pytest.raises(keys.KeyError_, match="exists"):
        keys.generate(tmp_path / "k")
