"""The primary's side: listen for a standby, ship what is durable, count its acknowledgements.

:class:`Replicator` is the journal's sink (pegx.ledger.journal.Sink) and the devnet log's
append listener; it knows nothing else of the ledger's inside. One standby at a time: a newer
authenticated standby replaces the current one (a restarted standby reconnects at once, without
waiting for the dead connection to time out).

What is shipped is what is durable here, read back from disk: op-log records (from LevelDB) and
devnet action-log lines (from the file), devnet first. A record is shipped only after its local
fsync, so a standby never holds a record this primary could lose in a crash, and catching up
(after a restart, from a backup) and streaming live are the same loop. Devnet lines go before
the ledger records that were durable when they were read: the ledger never references chain
data the standby lacks (the chain may be ahead, as after a crash).

Synchronous mode (``--sync-standby``): ``committed(seq)`` returns only once the standby has
acknowledged ``seq`` (it acks after its own fsync). Meanwhile the journal's next group gathers,
so concurrent calls share round trips. Without a standby, ``strict`` (the default) waits (no
call is acknowledged; pegx.status says so), ``async`` acknowledges alone and says so loudly.

Retention: checkpoints delete op-log records only up to what the standby acknowledged (the last
one known, kept after it disconnects; until one ever connects after a start, nothing more is
deleted), and never keep more than ``retain`` records beyond the checkpoint.

Over 400 lines (~530): one Replicator; the listener, the shipping loop and the acknowledgement
count share its state (the admission checks are pegx.replication.admit).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pegx.ledger.journal import NotAcknowledged
from pegx.replication import admit, epoch, wire

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 10.0
HEARTBEAT_SECONDS = 1.0
WARN_EVERY = 10.0
ACCEPT_RETRY = 0.5  # seconds between accept() attempts while it fails


class _AckBeyond(wire.ProtocolError):
    """A standby acknowledged a seq it was never sent."""


class _Session:
    """One attached standby."""

    def __init__(self, chan: wire.Channel, seq: int, devnet: int | None):
        self.chan = chan
        self.peer = chan.peer
        self.acked = seq  # what it holds on disk (it said so at START)
        self.sent = seq  # the highest seq shipped to it (or about to be): no ACK goes beyond
        self.devnet_acked = devnet
        self.start_seq, self.start_devnet = seq, devnet
        self.alive = True
        self.in_sync = False  # caught up at least once (async fallback waits only then)
        self.since = time.time()
        self.last_ack = time.monotonic()


class Replicator:
    """The primary's replication endpoint and journal sink (see the module docstring)."""

    def __init__(self, *, key: bytes, host: str, port: int, ledger, devnet, datadir: Path,  # noqa: PLR0913 (the replicator's collaborators and settings, by keyword)
                 identity: dict, sync: bool = False, fallback: str = "strict",
                 timeout: float = 10.0, retain: int = 2_000_000,
                 on_fenced: Callable[[str], None] | None = None):
        self.key = key
        self.host, self.port = host, port
        self.ledger = ledger
        self.devnet = devnet
        self.datadir = Path(datadir)
        self.identity = identity  # {"chain", "network"}: a standby must match
        self.sync = sync
        self.fallback = fallback
        self.timeout = timeout
        self.retain = retain
        self.on_fenced = on_fenced
        self._cond = threading.Condition()
        self.local_seq = ledger.log_bounds()[0]
        self.devnet_path: Path | None = None
        self.devnet_end: int | None = None
        if devnet is not None:
            self.devnet_path, self.devnet_end = devnet.log_file()
        self._session: _Session | None = None
        self.last_acked: int | None = None  # the last standby's, kept after it goes
        self.behind_since: float | None = None  # first record the standby lacks: committed at
        self.degraded = ""  # async fallback in force: why
        self.degraded_since = 0.0
        self.blocked_since: float | None = None  # strict: acknowledgements waiting since
        self.fenced: dict | None = None
        self._closed = False
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- lifecycle
    def listen(self) -> None:
        """Bind the replication port (OSError if it cannot be had); nothing else yet."""
        if self._sock is None:
            self._sock = socket.create_server((self.host, self.port))
            self.port = self._sock.getsockname()[1]

    def start(self) -> None:
        """Listen (if ``listen`` did not), and become the journal's sink and the devnet log's
        listener, from what is durable now (a promotion writes its epoch in between)."""
        self.listen()
        with self._cond:
            self.local_seq = max(self.local_seq, self.ledger.log_bounds()[0])
            if self.devnet is not None:
                self.devnet_path, self.devnet_end = self.devnet.log_file()
        self.ledger.replicate_to(self)
        if self.devnet is not None:
            self.devnet.on_log_append(self._devnet_appended)
        self._spawn(self._accept, "repl-accept")
        log.info("replication: listening on %s:%d for a standby (%s)", self.host, self.port,
                 "synchronous, " + self.fallback if self.sync else "asynchronous")

    def _spawn(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def close(self) -> None:
        """Stop listening and drop the standby; waiting acknowledgements fail (not acked)."""
        with self._cond:
            self._closed = True
            session = self._session
            self._cond.notify_all()
        if self._sock is not None:
            try:  # wakes the accept() in progress (close alone does not, on Linux)
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if session is not None:
            session.chan.close()
        if self.devnet is not None:
            self.devnet.on_log_append(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5.0)

    # ---------------------------------------------------------------- the journal's sink
    def committed(self, seq: int) -> None:
        """Records up to ``seq`` are fsynced here: ship them; in sync mode, return once the
        standby holds them (see the module docstring for the fallbacks)."""
        with self._cond:
            self._note_local(seq)
            if not self.sync:
                return
            started = time.monotonic()
            warned = started  # a standby that answers within WARN_EVERY s is no incident
            while True:
                self._check_acknowledging()
                s = self._session
                if s is not None and s.alive and s.acked >= seq:
                    self._confirmed(s)
                    return
                if self.fallback == "async":
                    why = self._async_fallback(s, started)
                    if why:
                        return self._degrade(why)
                elif time.monotonic() - warned > WARN_EVERY:
                    warned = self._warn_blocked(seq, s, started)
                self._cond.wait(0.5)

    def _note_local(self, seq: int) -> None:
        """Records up to ``seq`` are on this disk: the shipping loop is woken (under _cond)."""
        if seq > self.local_seq:
            if self.behind_since is None and self._acked() >= self.local_seq:
                self.behind_since = time.time()
            self.local_seq = seq
            self._cond.notify_all()

    def _check_acknowledging(self) -> None:
        """NotAcknowledged once this primary is fenced or shutting down."""
        if self.fenced is not None:
            raise NotAcknowledged(f"this primary was superseded by epoch "
                                  f"{self.fenced['epoch']}: not acknowledged")
        if self._closed:
            raise NotAcknowledged("shutting down before the standby confirmed the "
                                  "record: not acknowledged")

    def _confirmed(self, s) -> None:
        """The standby holds the record: leave the blocked or degraded state (logged)."""
        if self.blocked_since is not None:
            log.warning("replication: standby %s holds seq %s: acknowledging "
                        "again", s.peer, f"{s.acked:,d}")
        self.blocked_since = None
        if self.degraded:
            log.warning("replication: standby %s caught up: synchronous again",
                        s.peer)
            self.degraded = ""

    def _async_fallback(self, s, started: float) -> str:
        """With ``--standby-fallback async``: why to stop waiting for the standby ('' to wait
        on)."""
        if s is None or not s.alive:
            return "no standby is connected"
        if not s.in_sync:
            return f"standby {s.peer} is catching up"
        if time.monotonic() - started > self.timeout:
            s.in_sync = False
            return f"standby {s.peer} did not confirm within {self.timeout:g} s"
        return ""

    def _warn_blocked(self, seq: int, s, started: float) -> float:
        """Strict sync: say (after WARN_EVERY s of waiting, then every WARN_EVERY s) that
        ``seq`` is not acknowledged, and count as blocked from then; returns when it was said."""
        if self.blocked_since is None:  # since this call began waiting
            self.blocked_since = time.time() - (time.monotonic() - started)
        warned = time.monotonic()
        log.error("replication: NOT ACKNOWLEDGING: seq %s waits for the standby "
                  "(%s; --sync-standby, strict) for %.0f s", f"{seq:,d}",
                  "none connected" if s is None or not s.alive
                  else f"{s.peer} holds {s.acked:,d}",
                  time.time() - self.blocked_since)
        return warned

    def _degrade(self, reason: str) -> None:
        if not self.degraded:
            self.degraded_since = time.time()
            log.error("replication: DEGRADED: acknowledging calls without the standby "
                      "(--standby-fallback async): %s", reason)
        self.degraded = reason

    def floor(self, seq: int) -> int:
        """How far a checkpoint at ``seq`` may delete the op log (see the module docstring)."""
        with self._cond:
            s = self._session
            acked = s.acked if s is not None and s.alive else self.last_acked
            keep = self.ledger.log_bounds()[1] if acked is None else acked
            if self.retain:
                keep = max(keep, self.local_seq - self.retain)
            return min(seq, keep)

    def _acked(self) -> int:
        s = self._session
        if s is not None and s.alive:
            return s.acked
        return -1 if self.last_acked is None else self.last_acked

    def _devnet_appended(self, end: int) -> None:
        with self._cond:  # called under the devnet lock: take note and return
            self.devnet_end = end
            self._cond.notify_all()

    # ---------------------------------------------------------------- connections
    def _accept(self) -> None:
        failing = ""
        while not self._closed:
            try:
                sock, _ = self._sock.accept()
            except OSError as exc:
                if self._closed:
                    return
                if not failing:  # e.g. out of file descriptors: the listener lives on
                    log.error("replication: cannot accept a standby's connection on %s:%d: "
                              "%s (retrying)", self.host, self.port, exc)
                failing = str(exc)
                time.sleep(ACCEPT_RETRY)
                continue
            if failing:
                log.warning("replication: accepting connections again on %s:%d", self.host,
                            self.port)
                failing = ""
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve, "repl-session", sock)

    def _serve(self, sock: socket.socket) -> None:
        chan = wire.Channel(sock, server=True)
        session = None
        try:
            start = self._standby_start(chan)
            if start is None:
                return
            welcome = {"epoch": epoch.epoch_of(epoch.record(self.ledger)),
                       "seq": self.local_seq, "devnet": self.devnet_end, **self.identity}
            if start.get("bootstrap"):  # a new standby fetching the devnet's first line only
                chan.send_json(wire.WELCOME, welcome)
                return self._ship_devnet(chan, 0, self._first_line_end())
            session = _Session(chan, int(start["seq"]), start.get("devnet"))
            self._attach(session, welcome)
            self._spawn(self._read_acks, "repl-acks", session)
            self._send_loop(session)
        except (OSError, wire.ProtocolError, wire.Refused, ValueError, KeyError) as exc:
            if not self._closed:
                log.warning("replication: standby connection %s ended: %s", chan.peer, exc)
        except Exception:  # a bug: the standby reconnects; the primary must live on
            log.exception("replication: standby connection %s failed", chan.peer)
        finally:
            chan.close()
            if session is not None:
                self._detach(session)

    def _standby_start(self, chan: wire.Channel) -> dict | None:
        """The handshake: the START of a standby that passes the checks, or None (refused,
        or a fencer's request served)."""
        role = chan.server_handshake(self.key, HANDSHAKE_SECONDS)
        if self.fenced is not None or self._closed:
            chan.refuse("this primary was superseded or is shutting down")
            return None
        if role == "fencer":
            self._fence_request(chan)
            return None
        if role != "standby":
            chan.refuse(f"unknown role {role!r}")
            return None
        _, start = chan.recv_json(HANDSHAKE_SECONDS, wire.START)
        problem = self._check_standby(start, chan.peer)
        if problem:
            log.error("replication: standby %s refused: %s", chan.peer, problem)
            chan.refuse(problem)
            return None
        return start

    def _attach(self, session: _Session, welcome: dict) -> None:
        """``session``'s standby becomes the one (a previous one is cut off) and is welcomed."""
        chan = session.chan
        with self._cond:
            old, self._session = self._session, session
            self.last_acked = session.acked
            self._cond.notify_all()
        if old is not None:
            log.warning("replication: standby %s replaces %s", chan.peer, old.peer)
            old.chan.close()
        chan.send_json(wire.WELCOME, welcome)
        log.info("replication: standby %s attached at seq %s (this primary: %s)",
                 chan.peer, f"{session.acked:,d}", f"{self.local_seq:,d}")

    def _detach(self, session: _Session) -> None:
        with self._cond:
            session.alive = False
            if self._session is session:
                self._session = None
                log.warning("replication: standby %s detached at seq %s", session.peer,
                            f"{session.acked:,d}")
            self._cond.notify_all()

    def _check_standby(self, start: dict, peer: str) -> str:
        """Why this standby cannot follow us ('' if it can); fences us if it is newer."""
        rec = epoch.record(self.ledger)
        mine, theirs = epoch.epoch_of(rec), int(start["epoch"])
        if theirs > mine and (not start.get("id") or start["id"] == epoch.lineage(rec)):
            self._fence(theirs, f"standby {peer}")
            return (f"this primary is at epoch {mine} and the standby at {theirs}: a newer "
                    f"primary exists, this one stops serving")
        return admit.check(start, rec=rec, identity=self.identity, local_seq=self.local_seq,
                           deleted_seq=self.ledger.log_bounds()[1],
                           devnet=(self.devnet_path, self.devnet_end) if self.devnet else None)

    def _first_line_end(self) -> int:
        fd = os.open(self.devnet_path, os.O_RDONLY)
        try:
            head = os.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)
        return head.find(b"\n") + 1

    # ---------------------------------------------------------------- shipping
    def _send_loop(self, session: _Session) -> None:
        chan = session.chan
        sent_seq, sent_dev = session.start_seq, session.start_devnet or 0
        beat = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda s=sent_seq, d=sent_dev: (
                        not session.alive or self._closed or self.local_seq > s
                        or (self.devnet_end or 0) > d),
                    timeout=max(0.0, beat + HEARTBEAT_SECONDS - time.monotonic()))
                if not session.alive or self._closed:
                    return
                top, dev = self.local_seq, self.devnet_end
            if dev is not None and dev > sent_dev:  # the chain first: records may need it
                sent_dev = self._ship_devnet(chan, sent_dev, dev)
            if top > sent_seq:
                with self._cond:  # before the frames go: their ACK may come back at once
                    session.sent = top
                sent_seq = self._ship_records(chan, sent_seq, top)
            if time.monotonic() - beat >= HEARTBEAT_SECONDS:
                chan.send_json(wire.HEARTBEAT, {"seq": top, "devnet": dev, "time": time.time()})
                beat = time.monotonic()

    def _ship_records(self, chan: wire.Channel, after: int, upto: int) -> int:
        batch: list[tuple[int, bytes]] = []
        size, want = 0, after + 1
        for seq, data in self.ledger.log_records(after):
            if seq > upto:
                break
            if seq != want:
                raise RuntimeError(f"op-log record {want:,d} is gone before the standby had it")
            batch.append((seq, data))
            size += len(data) + 12
            want += 1
            if size >= wire.CHUNK:
                chan.send(wire.RECORDS, wire.pack_records(batch))
                batch, size = [], 0
        if batch:
            chan.send(wire.RECORDS, wire.pack_records(batch))
        if want != upto + 1:
            raise RuntimeError(f"op-log record {want:,d} is gone before the standby had it")
        return upto

    def _ship_devnet(self, chan: wire.Channel, frm: int, to: int) -> int:
        fd = os.open(self.devnet_path, os.O_RDONLY)
        try:
            while frm < to:
                data = os.pread(fd, min(wire.CHUNK, to - frm), frm)
                if frm + len(data) < to:  # whole lines only; a line longer than CHUNK whole
                    cut = data.rfind(b"\n") + 1
                    data = data[:cut] if cut else os.pread(fd, to - frm, frm)
                chan.send(wire.DEVNET, wire.pack_devnet(frm, data))
                frm += len(data)
        finally:
            os.close(fd)
        return frm

    def _read_acks(self, session: _Session) -> None:
        chan = session.chan
        try:
            while session.alive:
                kind, payload = chan.recv(self.timeout)
                if kind != wire.ACK:
                    raise wire.ProtocolError(f"expected ACK, got {wire.NAMES.get(kind, kind)}")
                self._take_ack(session, wire.parse_json(payload, chan.peer))
        except TimeoutError:
            log.warning("replication: standby %s sent nothing for %.0f s: dropped", chan.peer,
                        self.timeout)
        except _AckBeyond as exc:
            log.error("replication: standby %s dropped: %s", chan.peer, exc)
        except (OSError, wire.ProtocolError, ValueError, KeyError) as exc:
            if session.alive and not self._closed:
                log.warning("replication: standby %s: %s", chan.peer, exc)
        finally:
            chan.close()
            with self._cond:
                session.alive = False
                self._cond.notify_all()

    def _take_ack(self, session: _Session, msg: dict) -> None:
        """Count the standby's ACK; one beyond what it was sent is a protocol error (a
        standby that wrote on its own ledger): taking it would count records it lacks."""
        seq = int(msg["seq"])
        with self._cond:
            if seq > session.sent:
                raise _AckBeyond(f"it acknowledged seq {seq:,d}, beyond the {session.sent:,d} "
                                 f"it was sent: its ledger diverged (re-seed it from a backup)")
            session.acked = max(session.acked, seq)
            session.devnet_acked = msg.get("devnet")
            session.last_ack = time.monotonic()
            self.last_acked = session.acked
            if session.acked >= self.local_seq:
                self.behind_since = None
                session.in_sync = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- fencing
    def _fence_request(self, chan: wire.Channel) -> None:
        _, msg = chan.recv_json(HANDSHAKE_SECONDS, wire.FENCE)
        rec = epoch.record(self.ledger)
        mine = epoch.epoch_of(rec)
        if msg.get("id") != epoch.lineage(rec):
            return chan.refuse(f"this primary's ledger is lineage {epoch.lineage(rec)}, not "
                               f"{msg.get('id')}: not fenced")
        if int(msg["epoch"]) <= mine:
            return chan.refuse(f"this primary is at epoch {mine}, not older than "
                               f"{msg['epoch']}: not fenced")
        self._fence(int(msg["epoch"]), f"the primary of epoch {msg['epoch']} ({chan.peer})")
        chan.send_json(wire.FENCED, {"epoch": mine})
        chan.close()

    def _fence(self, newer: int, by: str) -> None:
        with self._cond:
            if self.fenced is not None:
                return
            self.fenced = {"epoch": newer, "by": by, "at": time.time()}
            self._cond.notify_all()
        epoch.write_fence(self.datadir, newer, by)
        reason = (f"superseded by epoch {newer} (told by {by}): this primary stops serving")
        log.critical("replication: %s", reason)
        if self.on_fenced is not None:
            self.on_fenced(reason)

    # ---------------------------------------------------------------- status
    def status(self) -> dict:
        """What pegx.status shows of the replication (see README)."""
        with self._cond:
            s = self._session
            connected = s is not None and s.alive
            acked = self._acked()
            lag = max(0, self.local_seq - acked) if acked >= 0 else self.local_seq
            behind = self.behind_since
            if not self.sync:
                state = "asynchronous" if connected else "asynchronous, no standby connected"
                problem = "" if connected else "no standby connected (asynchronous)"
            elif self.degraded:
                state = f"DEGRADED: acknowledging without the standby ({self.degraded})"
                problem = state
            elif not connected:
                state = "BLOCKED: no standby connected: state changes are not acknowledged"
                problem = state
            elif self.blocked_since is not None:
                state = f"BLOCKED: waiting for standby {s.peer}"
                problem = state
            else:
                state = "synchronous"
                problem = ""
            return {
                "role": "fenced" if self.fenced else "primary", "state": state,
                "problem": problem, "sync": self.sync, "fallback": self.fallback,
                "listen": f"{self.host}:{self.port}", "seq": self.local_seq,
                "devnet_bytes": self.devnet_end,
                "standby": s.peer if connected else "",
                "standby_since": int(s.since) if connected else 0,
                "acked_seq": acked, "lag_records": lag,
                "lag_seconds": round(time.time() - behind, 3) if behind and lag else 0.0,
                "retained_from": self.ledger.log_bounds()[1] + 1,
                "fenced": dict(self.fenced) if self.fenced else {},
                "connected": connected,
                "degraded": bool(self.sync and self.degraded),
                "blocked": bool(self.sync and not self.degraded and self.fallback == "strict"
                                and (not connected or self.blocked_since is not None)),
            }
