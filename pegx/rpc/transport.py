"""The connection layer of the XML-RPC server: one selector thread owns every socket.

Why not a thread per connection (the stdlib's ThreadingMixIn, which pegx used first): a client
that trickles its request holds a thread for as long as it likes, and 130 such clients locked
every other client out (issue 10 item 6). Here a connection costs a buffer until its request is
complete; only a complete request goes to a worker thread, which computes the answer in memory;
the selector thread sends it. What must stay true:

* a request (line, headers and body) must be complete within ``request_deadline`` seconds of
  the connection's accept, or of its first byte on a kept-alive connection; a late one gets a
  408 and the connection is closed, however steadily it trickles;
* a kept-alive connection may wait ``idle_timeout`` for its next request, and idle ones are the
  first closed when ``max_connections`` are open; a new connection is refused with a 503 only
  when no open one can be closed (all of them are running or answering a call);
* the whole body a request announces is read before anything answers it, so an early refusal
  can never leave a body behind to be parsed as the next request (issue 10 item 8); a request
  whose framing cannot be trusted (no or a bad Content-Length, Transfer-Encoding) is answered
  and the connection closed;
* a close after an answer is a lingering close: the write side is shut, then input is read and
  dropped until the client closes (at most ``linger`` seconds), so the answer is not destroyed
  by a TCP reset for unread data.

A connection belongs to one thread at a time: the selector thread, or the worker running its
request. The worker sends the answer itself when the socket takes it at once and then waits
``grace`` seconds for the next request on that connection: a client calling back to back is
served without a thread hand-off (the selector round trip halved single-client throughput).
Anything else (a partial send, a partial or no next request) goes back to the selector, whose
deadlines apply again.

Over 400 lines (~590): one selector thread's state machine over every connection; the
invariants above hold across all of it.
"""

from __future__ import annotations

import collections
import logging
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pegx.rpc.framing import COMPLETE, TOO_LARGE, RequestParser, canned

log = logging.getLogger(__name__)

# what a worker returns for one request: the response bytes and whether to close afterwards
Serve = Callable[[bytes, tuple], tuple[bytes, bool]]


@dataclass(frozen=True)
class Limits:
    """The transport's bounds (seconds, counts, bytes)."""

    max_connections: int = 256
    request_deadline: float = 10.0
    idle_timeout: float = 60.0
    write_deadline: float = 30.0
    max_head: int = 64 * 1024
    max_body: int = 4 * 1024 * 1024
    max_buffered: int = 256 * 1024 * 1024  # request bytes held across all connections
    max_workers: int = 128  # calls running at once; more complete requests wait their turn
    linger: float = 2.0
    grace: float = 0.01  # a worker waits this long for the next request on its connection


_WAITING, _READING, _BUSY, _WRITING, _LINGERING = range(5)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Conn:
    """One client connection, owned by the selector thread or by the worker in its call."""

    def __init__(self, sock: socket.socket, addr: tuple, now: float, limits: Limits):
        self.sock, self.addr = sock, addr
        self.state = _WAITING
        self.fresh = True  # no request yet: the request deadline runs from the accept
        self.since, self.deadline = now, now + limits.request_deadline
        self.buf = bytearray()
        self.parser = RequestParser(limits.max_head, limits.max_body)
        self.continued = False  # "100 Continue" sent for the request being read
        self.out = memoryview(b"")
        self.close_after = self.counted = False
        # its worker has answered and is sending or waiting for the next request (the
        # selector reads it to know that this busy connection is idle in all but name)
        self.waiting = False
        self.events = 0
        self.dropped = 0


class _Workers:
    """Daemon threads (a stuck call must not keep the process alive), started as needed."""

    def __init__(self, limit: int):
        self._limit = limit
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._cv = threading.Condition()
        self._threads = self._idle = 0
        self._closing = False

    def submit(self, job: Callable[[], None] | None) -> None:
        """Run ``job`` in a worker; None tells the workers to end once the queue is empty."""
        with self._cv:
            if job is None:
                self._closing = True
                self._cv.notify_all()
                return
            self._jobs.append(job)
            if len(self._jobs) > self._idle and self._threads < self._limit:
                self._threads += 1
                threading.Thread(target=self._run, name=f"pegx-rpc-{self._threads}",
                                 daemon=True).start()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                self._cv.wait_for(lambda: self._jobs or self._closing)
                self._idle -= 1
                if not self._jobs:
                    self._threads -= 1
                    return
                job = self._jobs.popleft()
            job()


class Transport:
    """Serves HTTP/1.1 on a listening socket; ``serve(request, address)`` answers each request."""

    def __init__(self, listener: socket.socket, serve: Serve, limits: Limits):
        self.limits = limits
        self._listener = listener
        self._serve = serve
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns: dict[socket.socket, _Conn] = {}
        # connections a worker hands back: (conn, "write" | "linger" | "read" | "close", out)
        self._back: collections.deque[tuple[_Conn, str, memoryview | None]] = collections.deque()
        self._workers = _Workers(limits.max_workers)
        self._idle = threading.Condition()
        self._in_flight = 0  # requests being run by a worker
        self._unsent = 0  # answers computed and not yet fully sent
        self._mu = threading.Lock()
        self._buffered = 0  # under _mu: workers add what they read during their grace
        self._stopping = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: collections.Counter[str] = collections.Counter()
        self._refused_logged = time.monotonic()

    # ----------------------------------------------------------------- control (any thread)
    @property
    def in_flight(self) -> int:
        """Requests being run by a worker (their answers may still be on their way)."""
        return self._in_flight

    @property
    def open_connections(self) -> int:
        """Connections open right now, whatever their state."""
        return len(self._conns)

    def start(self) -> threading.Thread:
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, name="pegx-rpc", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection not in a call; calls in flight still get
        their answer (then their connection closes). Returns once the listener is closed; from
        then on no call starts, so ``wait_idle`` afterwards means every call is over."""
        with self._idle:  # atomic with _begin_call: no call starts after stop() returns
            self._stopping = True
        if self._thread is None:
            self._listener.close()
            return
        self._wake()
        self._stopped.wait(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is running and every answer is sent; True if so."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == self._unsent == 0, timeout)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # a wake-up is already pending, or the loop has ended
            pass

    def _held(self, delta: int) -> int:
        with self._mu:
            self._buffered += delta
            return self._buffered

    def _begin_call(self) -> bool:
        with self._idle:
            if self._stopping:
                return False
            self._in_flight += 1
            return True

    def _answered(self, conn: _Conn) -> None:
        """The call has its answer; it counts as unsent until _end_call."""
        conn.counted = True
        with self._idle:
            self._in_flight -= 1
            self._unsent += 1

    def _end_call(self, conn: _Conn) -> None:
        if conn.counted:
            conn.counted = False
            with self._idle:
                self._unsent -= 1
                self._idle.notify_all()

    def _take(self, conn: _Conn) -> tuple[bytes, bool] | None:
        """Cut the complete request off the buffer (by its owner); it is in flight now.
        None once stopping: the request is not run."""
        if not self._begin_call():
            return None
        need = conn.parser.need
        request = bytes(conn.buf[:need])
        del conn.buf[:need]
        self._held(-need)
        framed = conn.parser.framed
        conn.parser.reset()
        conn.continued = False
        conn.fresh = False
        conn.state = _BUSY
        conn.waiting = False
        return request, framed

    # ----------------------------------------------------------------- worker threads
    def _work(self, conn: _Conn, request: bytes, framed: bool) -> None:
        """Answer requests on ``conn`` while they come back to back, then hand it back."""
        while True:
            try:
                response, close = self._serve(request, conn.addr)
            except Exception:  # a bug in the handler must not lose the connection's slot
                log.exception("XML-RPC: serving a request from %s failed", conn.addr[0])
                response, close = canned(500, "Internal Server Error",
                                         "internal error (see the daemon log)"), True
            close = close or not framed or self._stopping
            conn.waiting = True  # the call is over: the connection is as good as idle
            self._answered(conn)
            try:
                sent = conn.sock.send(response)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return self._hand_back(conn, "close")
            if sent < len(response):  # the client reads slowly: the selector sends the rest
                conn.close_after = close
                return self._hand_back(conn, "write", memoryview(response)[sent:])
            self._end_call(conn)
            if close:
                return self._hand_back(conn, "linger")
            nxt = self._next_request(conn)
            if nxt is None:
                return None
            request, framed = nxt

    def _next_request(self, conn: _Conn) -> tuple[bytes, bool] | None:
        """The next request if it is complete within ``grace`` seconds (in total, however it
        trickles), else None with the connection handed back to the selector."""
        end = time.monotonic() + self.limits.grace
        poll: select.poll | None = None
        while conn.parser.feed(conn.buf) != COMPLETE:
            left = end - time.monotonic()
            if left <= 0 or self._stopping or len(conn.buf) > self.limits.max_head:
                self._hand_back(conn, "read")  # the selector applies the deadlines
                return None
            if poll is None:
                poll = select.poll()  # select.select cannot take fds above 1023
                poll.register(conn.sock, select.POLLIN)
            if not poll.poll(left * 1000):
                continue
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._hand_back(conn, "close")
                return None
            conn.buf += data
            self._held(len(data))
        taken = self._take(conn)
        if taken is None:  # stopping
            self._hand_back(conn, "close")
        return taken

    def _hand_back(self, conn: _Conn, kind: str, out: memoryview | None = None) -> None:
        self._back.append((conn, kind, out))
        self._wake()

    # ----------------------------------------------------------------- the selector thread
    def _loop(self) -> None:
        last_expiry = time.monotonic()
        while True:
            events_ready = self._sel.select(timeout=0.1)
            # connections given back first: one a worker just released must not look busy
            # to an accept handled in the same turn
            self._take_back()
            for key, events in events_ready:
                self._on_ready(key, events)
            self._take_back()
            now = time.monotonic()
            if now - last_expiry >= 0.1:
                last_expiry = now
                self._expire(now)
            if self._stopping:
                if not self._stopped.is_set():
                    self._close_listener()
                if not self._conns:
                    break
        self._workers.submit(None)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _take_back(self) -> None:
        """The connections the workers gave back, with their answers."""
        while self._back:
            conn, kind, out = self._back.popleft()
            self._guarded(self._returned, conn, kind, out)

    def _on_ready(self, key: selectors.SelectorKey, events: int) -> None:
        """One ready socket: the listener (accept), the wake-up pipe (drain) or a connection."""
        if key.fileobj is self._listener:
            try:
                self._accept()
            except Exception:  # never let one accept end the server
                log.exception("XML-RPC: accepting connections failed")
        elif key.fileobj is self._wake_r:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        else:
            conn = self._conns.get(key.fileobj)
            if conn is not None:
                self._guarded(self._on_event, conn, events)

    def _guarded(self, step: Callable[..., None], conn: _Conn, *args: object) -> None:
        # this thread serves every connection: a bug met on one must cost only that one
        try:
            step(conn, *args)
        except Exception:
            log.exception("XML-RPC: connection from %s failed; closing it", conn.addr[0])
            if conn.state == _BUSY:  # a worker may own it: leave it to the worker
                return
            try:
                self._close(conn)
            except Exception:  # noqa: BLE001 - already logged; the socket is dropped
                self._conns.pop(conn.sock, None)

    def _on_event(self, conn: _Conn, events: int) -> None:
        if events & selectors.EVENT_READ:
            self._on_read(conn)
        if events & selectors.EVENT_WRITE and conn.sock in self._conns:
            self._write(conn)

    def _returned(self, conn: _Conn, kind: str, out: memoryview | None) -> None:
        """A worker gave ``conn`` back."""
        conn.waiting = False
        now = time.monotonic()
        if kind == "write":
            conn.state = _WRITING
            conn.out = out
            conn.deadline = now + self.limits.write_deadline
            self._write(conn)
        elif kind == "linger":
            self._linger(conn)
        elif kind == "close" or self._stopping:
            self._close(conn)
        else:
            self._resume(conn, now)

    def _resume(self, conn: _Conn, now: float) -> None:
        """Back to reading: the next request, or the rest of one already begun."""
        conn.since = now
        if conn.buf:
            conn.state = _READING
            conn.deadline = now + self.limits.request_deadline
        else:
            conn.state = _WAITING
            conn.deadline = now + self.limits.idle_timeout
        self._watch(conn, selectors.EVENT_READ)
        if conn.buf:
            self._advance(conn)

    def _close_listener(self) -> None:
        self._sel.unregister(self._listener)
        self._listener.close()
        for conn in list(self._conns.values()):
            if conn.state not in (_BUSY, _WRITING):
                self._close(conn)
        self._stopped.set()

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events)
        conn.events = events

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: try again on the next event
                log.warning("XML-RPC: cannot accept a connection: %s", exc)
                return
            sock.setblocking(False)
            conn = _Conn(sock, addr, time.monotonic(), self.limits)
            if len(self._conns) >= self.limits.max_connections and not self._make_room():
                if len(self._conns) >= 2 * self.limits.max_connections:
                    sock.close()  # not even room to say so; the answers must drain first
                    self._count("dropped (no room even for a 503)")
                    continue
                self._conns[sock] = conn
                if not any(c.waiting for c in self._conns.values()):
                    self._count("503 (every connection is in a call)")
                    self._refuse(conn, 503, "Service Unavailable",
                                 f"server busy: {len(self._conns) - 1:,d} connections are in "
                                 f"calls; retry shortly")
                    continue
                # a connection whose worker waits for its next request is idle in all but
                # name and back within ``grace``: let the newcomer in over the limit instead
            self._conns[sock] = conn
            self._watch(conn, selectors.EVENT_READ)

    def _make_room(self) -> bool:
        """Close one connection that is not in a call: lingering first, then the longest
        idle, then the oldest unfinished request. False if every connection is in a call."""
        for state in (_LINGERING, _WAITING, _READING):
            victims = [c for c in self._conns.values() if c.state == state]
            if victims:
                victim = min(victims, key=lambda c: c.since)
                if state == _READING:
                    self._count("503 (an unfinished request closed to make room)")
                    try:
                        victim.sock.send(canned(503, "Service Unavailable", "server busy"))
                    except OSError:
                        pass
                self._close(victim)
                return True
        return False

    def _on_read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed (or reset) its side
            self._close(conn)
            return
        if conn.state == _LINGERING:
            conn.dropped += len(data)
            if conn.dropped > self.limits.max_body:
                self._close(conn)
            return
        if conn.state == _WAITING:
            conn.state = _READING
            if not conn.fresh:
                conn.since = time.monotonic()
                conn.deadline = conn.since + self.limits.request_deadline
        conn.buf += data
        if self._held(len(data)) > self.limits.max_buffered:
            self._count("503 (request bytes held over the memory budget)")
            self._refuse(conn, 503, "Service Unavailable", "server busy: too much request data "
                         "is waiting; retry shortly")
            return
        self._advance(conn)

    def _advance(self, conn: _Conn) -> None:
        """Hand the request to a worker once it is complete."""
        status = conn.parser.feed(conn.buf)
        if status == TOO_LARGE:
            self._count("431 (request head too large)")
            self._refuse(conn, 431, "Request Header Fields Too Large",
                         f"request line and headers larger than {self.limits.max_head:,d} bytes")
        elif status != COMPLETE:
            if conn.parser.expect and not conn.continued:
                conn.continued = True
                try:
                    sent = conn.sock.send(_CONTINUE)
                except OSError:
                    sent = 0
                if sent != len(_CONTINUE):  # a client that reads nothing we send
                    self._close(conn)
        else:
            taken = self._take(conn)
            if taken is None:  # stopping
                self._close(conn)
                return
            request, framed = taken
            self._watch(conn, 0)  # nothing more is read until this request is answered
            self._workers.submit(lambda: self._work(conn, request, framed))

    def _refuse(self, conn: _Conn, status: int, reason: str, text: str) -> None:
        """Answer without running a call, then close (the framing is not trusted any more)."""
        self._held(-len(conn.buf))
        conn.buf = bytearray()
        conn.state = _WRITING
        conn.out = memoryview(canned(status, reason, text))
        conn.close_after = True
        conn.deadline = time.monotonic() + self.limits.write_deadline
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        self._end_call(conn)
        if conn.close_after or self._stopping:
            self._linger(conn)
        else:
            self._resume(conn, time.monotonic())

    def _linger(self, conn: _Conn) -> None:
        self._held(-len(conn.buf))
        conn.buf = bytearray()
        conn.state = _LINGERING
        conn.since = time.monotonic()
        conn.deadline = conn.since + self.limits.linger
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self._watch(conn, selectors.EVENT_READ)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        self._watch(conn, 0)
        self._held(-len(conn.buf))
        conn.buf = bytearray()
        self._end_call(conn)
        conn.sock.close()

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self._guarded(self._expired, conn)
        if self._refused and now - self._refused_logged >= 60:
            shown = ", ".join(f"{n:,d} x {what}" for what, n in self._refused.most_common())
            log.warning("XML-RPC: in the last %d s: %s", now - self._refused_logged, shown)
            self._refused.clear()
            self._refused_logged = now

    def _expired(self, conn: _Conn) -> None:
        if conn.state == _READING or (conn.state == _WAITING and conn.fresh):
            self._count(f"408 (request not complete within {self.limits.request_deadline:g} s)")
            self._refuse(conn, 408, "Request Timeout",
                         f"request not complete within {self.limits.request_deadline:g} s")
        elif conn.state != _BUSY:  # idle, an answer nobody reads, or a finished linger
            self._close(conn)

    def _count(self, what: str) -> None:
        if not self._refused:  # the first of a series is logged at once, the rest once a minute
            log.warning("XML-RPC: %s from a client", what)
            self._refused_logged = time.monotonic()
        self._refused[what] += 1
