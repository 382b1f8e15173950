"""The HTTP layer under attack (issue 10, items 6 and 8), with real sockets and stock clients.

* Item 8: every early refusal (404, 411, 400, 413, 415, 501, 431, ...) must leave the connection
  in step: the body it announced is read and dropped, or the connection is closed. Each case
  sends a body that is itself a complete request ("smuggled"); a legitimate call made next on
  the same http.client connection must get its own answer, never the smuggled one's.
* Item 6: connections that trickle a request one byte at a time are cut off at the request
  deadline (with a 408), and while 130 of them (more than the old 128-connection cap) keep
  reconnecting, stock xmlrpc.client calls keep getting their answers.
* A full server answers 503 instead of dropping the connection; idle keep-alive connections
  make room for new ones.
"""

from __future__ import annotations

import gzip
import http.client
import re
import selectors
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import wait_until
from harness.daemon import Daemon
from pegx.rpc.server import MAX_REQUEST_BYTES, RPCServer


def echo(value):
    return value


@pytest.fixture(scope="module")
def server() -> Iterator[RPCServer]:
    srv = RPCServer("127.0.0.1", 0)
    srv.register("echo", echo)
    srv.serve_in_thread()
    yield srv
    srv.stop()


def call_body(name: str, *params) -> bytes:
    return xmlrpc.client.dumps(params, name, allow_none=True).encode()


SMUGGLED_BODY = call_body("echo", "SMUGGLED")
# a whole request, sent as the body of the refused one: a server that parses a refused
# request's body as the next request answers "SMUGGLED" to whoever asks next
SMUGGLED = (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
            + f"Content-Length: {len(SMUGGLED_BODY)}\r\n\r\n".encode() + SMUGGLED_BODY)


def answer(resp: http.client.HTTPResponse):
    (value,), _ = xmlrpc.client.loads(resp.read())
    return value


# (id, verb, path, headers, body) of requests that are refused before any call runs
REFUSALS = [
    ("404-path", "POST", "/admin", {"Content-Length": str(len(SMUGGLED))}, SMUGGLED),
    ("404-subpath", "POST", "/RPC2/x", {"Content-Length": str(len(SMUGGLED))}, SMUGGLED),
    ("411-no-length", "POST", "/RPC2", {}, SMUGGLED),
    ("400-length-not-a-number", "POST", "/RPC2", {"Content-Length": "abc"}, SMUGGLED),
    ("400-length-negative", "POST", "/RPC2", {"Content-Length": "-5"}, SMUGGLED),
    ("400-length-underscore", "POST", "/RPC2", {"Content-Length": "1_0"}, SMUGGLED),
    ("413-too-long", "POST", "/RPC2", {"Content-Length": str(MAX_REQUEST_BYTES + 1)}, SMUGGLED),
    ("415-encoding", "POST", "/RPC2",
     {"Content-Length": str(len(SMUGGLED)), "Content-Encoding": "br"}, SMUGGLED),
    ("400-bad-gzip", "POST", "/RPC2",
     {"Content-Length": str(len(SMUGGLED)), "Content-Encoding": "gzip"}, SMUGGLED),
    ("501-get-with-body", "GET", "/RPC2", {"Content-Length": str(len(SMUGGLED))}, SMUGGLED),
    ("501-put", "PUT", "/RPC2", {"Content-Length": str(len(SMUGGLED))}, SMUGGLED),
    ("501-chunked", "POST", "/RPC2", {"Transfer-Encoding": "chunked",
                                      "Content-Length": str(len(SMUGGLED))}, SMUGGLED),
]


def send_refused(conn: http.client.HTTPConnection, verb: str, path: str, headers: dict,
                 body: bytes) -> http.client.HTTPResponse:
    conn.putrequest(verb, path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    conn.send(body)
    return conn.getresponse()


@pytest.mark.parametrize(("verb", "path", "headers", "body"), [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_a_refused_request_body_is_never_read_as_the_next_request(server, verb, path, headers,
                                                                   body):
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=30)
    try:
        resp = send_refused(conn, verb, path, headers, body)
        page = resp.read()
        assert 400 <= resp.status < 600, resp.status
        assert b"Traceback" not in page and b"SMUGGLED" not in page
        # the same connection object: kept alive (the body was read and dropped) or closed by
        # the server (then http.client opens a new one); either way the answer is ours
        conn.request("POST", "/RPC2", call_body("echo", "legit"))
        assert answer(conn.getresponse()) == "legit"
        conn.request("POST", "/RPC2", call_body("echo", "legit again"))
        assert answer(conn.getresponse()) == "legit again"
    finally:
        conn.close()


STATUS_LINE = re.compile(rb"(?:^|\n)HTTP/1\.[01] [0-9]{3} ")


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, then read until the server closes (fails after 30 s of silence)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(("verb", "path", "headers", "body"), [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_a_refusal_is_followed_by_the_next_answer_and_nothing_else(server, verb, path, headers,
                                                                   body):
    """The same on a raw socket, where no client buffer can hide an extra answer: the bytes
    that come back are the refusal, then (if the connection was kept) the next call's answer."""
    legit = call_body("echo", "legit")
    raw = exchange(server.address[1], (
        f"{verb} {path} HTTP/1.1\r\n".encode()
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n" + body
        + b"POST /RPC2 HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (len(legit), legit)))
    statuses = [m.strip().split(b" ")[1] for m in STATUS_LINE.findall(raw)]
    assert b"SMUGGLED" not in raw, raw[:2000]
    assert statuses[:1] != [b"200"] and len(statuses) in (1, 2), raw[:2000]
    if len(statuses) == 2:
        assert statuses[1] == b"200" and b"legit" in raw, raw[:2000]


@pytest.mark.parametrize(("head", "status"), [
    (b"POST /RPC2 HTTP/1.x\r\n", b"400"),
    (b"POST /RPC2 HTTP/2.0\r\n", b"505"),
    (b"POST /RPC2 HTTP/1.1 extra\r\n", b"400"),
    (b"POST /RPC2 HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)), b"431"),
    (b"POST /RPC2 HTTP/1.1\r\nX-Long: " + b"y" * 70_000 + b"\r\n", b"431"),
])
def test_a_request_whose_head_cannot_be_parsed_is_refused_and_closed(server, head, status):
    """Framing unknown: the server answers and closes; the smuggled request behind it is
    never answered."""
    raw = exchange(server.address[1],
                   head + f"Content-Length: {len(SMUGGLED)}\r\n\r\n".encode() + SMUGGLED)
    assert raw.startswith(b"HTTP/1.") and raw.split(b" ", 2)[1] == status, raw[:200]
    assert len(STATUS_LINE.findall(raw)) == 1 and b"SMUGGLED" not in raw, raw[:500]


def test_pipelined_requests_are_answered_in_order(server):
    data = b"".join(b"POST /RPC2 HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                    for b in (call_body("echo", "one"), call_body("echo", "two")))
    data += b"POST /RPC2 HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        len(call_body("echo", "three")), call_body("echo", "three"))
    raw = exchange(server.address[1], data)
    assert len(STATUS_LINE.findall(raw)) == 3 and raw.count(b"HTTP/1.1 200 ") == 3
    assert raw.index(b"one") < raw.index(b"two") < raw.index(b"three")


def test_expect_100_continue_gets_an_interim_answer(server):
    body = call_body("echo", "after continue")
    with socket.create_connection(("127.0.0.1", server.address[1]), timeout=30) as s:
        s.sendall(b"POST /RPC2 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                  % len(body))
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = s.recv(1)
            assert chunk, interim
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        assert resp.status == 200 and answer(resp) == "after continue"


def test_a_gzipped_request_still_works_and_a_bomb_is_refused(server):
    transport = xmlrpc.client.Transport()
    transport.encode_threshold = 0
    c = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.address[1]}/RPC2",
                                  transport=transport)
    assert c.echo("zipped") == "zipped"
    bomb = gzip.compress(b"<methodCall>" + b" " * (64 << 20))
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=30)
    try:
        conn.request("POST", "/RPC2", bomb, {"Content-Encoding": "gzip"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 400
        conn.request("POST", "/RPC2", call_body("echo", "after the bomb"))
        assert answer(conn.getresponse()) == "after the bomb"
    finally:
        conn.close()


# ----------------------------------------------------------------------- item 6: slow clients
def test_full_server_answers_503_and_idle_connections_make_room():
    release = threading.Event()
    srv = RPCServer("127.0.0.1", 0, max_connections=3)
    srv.register("echo", echo)
    srv.register("slow", lambda: release.wait(60) and "done")
    srv.serve_in_thread()
    url = f"http://127.0.0.1:{srv.address[1]}"
    pool = ThreadPoolExecutor(3)
    try:
        # three connections that sent nothing (and a kept-alive idle one) do not lock out
        # a fourth: the oldest idle ones are closed to make room
        idle = [socket.create_connection(("127.0.0.1", srv.address[1])) for _ in range(3)]
        kept = xmlrpc.client.ServerProxy(url)
        assert kept.echo(1) == 1
        for i in range(5):
            assert xmlrpc.client.ServerProxy(url).echo(i) == i
        for s in idle:
            s.close()
        kept("close")()
        wait_until(lambda: srv.connections == 0, 30, what="every connection closed")
        # three calls running: no connection can be closed for a fourth, which gets a 503
        slow = [pool.submit(xmlrpc.client.ServerProxy(url).slow) for _ in range(3)]
        wait_until(lambda: srv.in_flight == 3 and srv.connections == 3, 30,
                   what="three calls in flight and no other connection open")
        conn = http.client.HTTPConnection("127.0.0.1", srv.address[1], timeout=30)
        conn.request("POST", "/RPC2", call_body("echo", "x"))
        resp = conn.getresponse()
        assert resp.status == 503 and resp.will_close
        assert b"busy" in resp.read()
        conn.close()
        release.set()
        assert [f.result(timeout=60) for f in slow] == ["done"] * 3
        assert xmlrpc.client.ServerProxy(url).echo("after") == "after"
        assert kept.echo(2) == 2
    finally:
        release.set()
        pool.shutdown()
        srv.stop()


def test_a_kept_alive_connection_that_trickles_its_next_request_is_cut_off():
    """After a call, the worker waits a moment for the next request on the connection, then
    gives it back to the selector: a trickle there is cut off at the deadline like any."""
    srv = RPCServer("127.0.0.1", 0, request_deadline=1.0)
    srv.register("echo", echo)
    srv.serve_in_thread()
    try:
        with socket.create_connection(("127.0.0.1", srv.address[1]), timeout=30) as s:
            body = call_body("echo", "first")
            s.sendall(b"POST /RPC2 HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            resp = http.client.HTTPResponse(s)
            resp.begin()
            assert answer(resp) == "first" and not resp.will_close
            s.sendall(b"POST /RPC2 HTTP/1.1\r\nX-Slow: ")
            got = b""
            s.settimeout(0.3)
            give_up = time.monotonic() + 60  # far beyond the 1 s deadline: a wait that fails
            while time.monotonic() < give_up:  # a byte every 0.3 s until the server closes
                try:
                    s.sendall(b"y")
                    chunk = s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:  # reset or broken pipe: closed
                    break
                if not chunk:
                    break
                got += chunk
            else:
                pytest.fail("the server never cut the trickling connection off")
            assert got.startswith(b"HTTP/1.1 408 "), got
        assert xmlrpc.client.ServerProxy(f"http://127.0.0.1:{srv.address[1]}").echo(2) == 2
    finally:
        srv.stop()


class Trickle(threading.Thread):
    """``n`` connections that send ``POST /RPC2 HTTP/1.1`` and then one byte every ``every``
    seconds, for ever; each one the server closes is replaced at once, as an attacker would."""

    def __init__(self, port: int, n: int, every: float):
        super().__init__(daemon=True)
        self.port, self.n, self.every = port, n, every
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.opened = 0
        self.closed: list[bytes] = []  # what each connection the server closed received
        self.errors: list[str] = []

    def connect(self) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.sendall(b"POST /RPC2 HTTP/1.1\r\nX-Slow: ")
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, bytearray())
        self.opened += 1

    def drop(self, key) -> None:
        self.sel.unregister(key.fileobj)
        key.fileobj.close()
        self.closed.append(bytes(key.data))
        if not self.stop.is_set():
            self.connect()

    def run(self) -> None:
        try:
            for _ in range(self.n):
                self.connect()
            next_byte = time.monotonic()
            while not self.stop.is_set():
                for key, _ in self.sel.select(timeout=0.1):
                    try:
                        data = key.fileobj.recv(4096)
                    except (ConnectionResetError, BlockingIOError):
                        data = b""
                    if data:
                        key.data.extend(data)
                    else:
                        self.drop(key)
                if time.monotonic() >= next_byte:
                    next_byte = time.monotonic() + self.every
                    for key in list(self.sel.get_map().values()):
                        try:
                            key.fileobj.send(b"y")
                        except OSError:
                            self.drop(key)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
        finally:
            for key in list(self.sel.get_map().values()):
                key.fileobj.close()


def test_trickling_connections_cannot_lock_out_stock_clients(tmp_path):
    """130 connections trickle a request head (the old cap was 128 threads, each read
    waiting up to 60 s, so they held every slot for ever and every call failed). With the
    request deadline at 3 s they are cut off with a 408; stock clients keep being answered
    while the attackers reconnect."""
    with Daemon(tmp_path / "d", env={"PEGX_RPC_REQUEST_DEADLINE": "3"}) as d:
        attack = Trickle(d.port, 130, every=0.5)
        attack.start()
        try:
            wait_until(lambda: attack.opened >= 130 or attack.errors, 60,
                       what="130 trickling connections")
            with ThreadPoolExecutor(1) as pool:
                for _ in range(15):
                    # a fresh connection each time, as a new client would make
                    got = pool.submit(lambda: xmlrpc.client.ServerProxy(d.url).GetCycle())
                    assert got.result(timeout=120) == 0
                    kept = pool.submit(d.proxy().GetCycle)
                    assert kept.result(timeout=120) == 0
            # every one of the first 130 is closed by the server at the deadline, with a 408
            wait_until(lambda: len(attack.closed) >= 130 or attack.errors, 120,
                       what="the server to close the trickling connections")
            assert not attack.errors, attack.errors
            assert all(r.startswith(b"HTTP/1.1 408 ") for r in attack.closed[:130]), \
                {r[:40] for r in attack.closed[:130]}
        finally:
            attack.stop.set()
            attack.join(30)
        assert d.proxy().GetCycle() == 0
        assert "Traceback" not in d.log()


def test_a_refused_post_on_the_daemon_does_not_smuggle_a_call(tmp_path):
    """Item 8 on the real daemon: a POST to /admin carrying a whole request as its body."""
    smuggled_body = call_body("devnet.mine", 5)
    smuggled = (b"POST /RPC2 HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                % (len(smuggled_body), smuggled_body))
    with Daemon(tmp_path / "d") as d:
        height = d.proxy().devnet.info()["height"]
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        try:
            conn.request("POST", "/admin", smuggled)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 404
            conn.request("POST", "/RPC2", call_body("GetCycle"))
            assert answer(conn.getresponse()) == 0
        finally:
            conn.close()
        assert d.proxy().devnet.info()["height"] == height  # the smuggled mine never ran
