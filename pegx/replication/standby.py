"""The standby's side: follow a primary, apply what it ships, acknowledge what is on disk.

:class:`Receiver` connects to the primary's replication address, authenticates both ways, says
what it holds (epoch, seq, devnet bytes with hashes of the devnet log's head and tail) and then
applies frames in the order they come:

* RECORDS: op-log records, applied by ``Exchange.apply_replicated`` (the replay path, logged
  under the same seq as the same bytes, fsynced) — consecutive frames already received are
  applied together, one fsync for all;
* DEVNET: devnet action-log lines, appended as the same bytes and applied (``Devnet.replicate``);
* HEARTBEAT: the primary's seq and time (the lag).

Each applied group is acknowledged with the seq and devnet bytes now on disk here; a
synchronous primary acknowledges its callers only then. The connection is retried with capped
backoff (0.25 s to 4 s); a refusal (diverged, superseded, wrong key...) is logged with its
reason, shown in pegx.status, and retried every REFUSED_RETRY seconds, since an operator must
act first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

from pegx.config import parse_address
from pegx.replication import epoch, wire
from pegx.replication.admit import file_hashes

log = logging.getLogger(__name__)

CONNECT_SECONDS = 10.0
REFUSED_RETRY = 5.0


class Receiver:
    """Follows one primary (see the module docstring)."""

    def __init__(self, *, key: bytes, primary: str, ledger, identity: dict,
                 devnet=None, timeout: float = 10.0):
        self.key = key
        self.address = parse_address(primary)
        self.primary = primary
        self.ledger = ledger
        self.identity = identity
        self.devnet = devnet
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._chan: wire.Channel | None = None
        self._mu = threading.Lock()
        self.connected = False
        self.connected_since = 0.0
        self.primary_seq = ledger.seq
        self.primary_epoch = 0
        self.behind_since: float | None = None
        self.last_error = ""
        self.refused = ""
        self.applied_records = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="repl-standby", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Disconnect and wait until nothing more is applied (promotion needs that)."""
        self._stop.set()
        with self._mu:
            chan = self._chan
        if chan is not None:
            chan.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("the replication receiver did not stop")

    def _run(self) -> None:
        backoff, last_logged = 0.25, ""
        while not self._stop.is_set():
            try:
                self._session()
                backoff = 0.25
            except wire.Refused as exc:
                self.refused = self.last_error = f"refused by the primary: {exc}"
                if str(exc) != last_logged:
                    log.error("replication: %s %s", self.primary, self.refused)
                    last_logged = str(exc)
                self._stop.wait(REFUSED_RETRY)
            except (OSError, wire.ProtocolError, ValueError, KeyError, RuntimeError) as exc:
                if self._stop.is_set():
                    break
                if self.ledger.failed is not None:  # the daemon shuts down
                    log.critical("replication: stopped following %s: %s", self.primary, exc)
                    self.last_error = f"stopped: {exc}"
                    return
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.last_error != last_logged:
                    log.warning("replication: primary %s: %s (retrying)", self.primary,
                                self.last_error)
                    last_logged = self.last_error
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 4.0)

    # ---------------------------------------------------------------- one session
    def _connect(self) -> wire.Channel:
        sock = socket.create_connection(self.address, timeout=CONNECT_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chan = wire.Channel(sock, server=False)
        with self._mu:
            if self._stop.is_set():
                chan.close()
                raise ConnectionError("stopping")
            self._chan = chan
        chan.client_handshake(self.key, "standby", CONNECT_SECONDS)
        return chan

    def _hello(self, *, bootstrap: bool = False) -> dict:
        rec = epoch.record(self.ledger)
        msg = {"epoch": epoch.epoch_of(rec), "id": epoch.lineage(rec), "seq": self.ledger.seq,
               **self.identity}
        if self.devnet is not None or bootstrap:
            end = 0 if bootstrap else self.devnet.log_file()[1]
            msg["devnet"] = end
            if end:
                path = self.devnet.log_file()[0]
                fd = os.open(path, os.O_RDONLY)
                try:
                    msg["devnet_head"], msg["devnet_tail"] = file_hashes(fd, end)
                finally:
                    os.close(fd)
        if bootstrap:
            msg["bootstrap"] = True
        return msg

    def _session(self) -> None:
        chan = self._connect()
        try:
            hello = self._hello()
            chan.send_json(wire.START, hello)
            _, welcome = chan.recv_json(CONNECT_SECONDS, wire.WELCOME)
            if int(welcome.get("epoch", 0)) < hello["epoch"]:
                raise wire.Refused(f"the primary is at epoch {welcome.get('epoch')}, this "
                                   f"standby at {hello['epoch']}: not following an older primary")
            self.primary_epoch = int(welcome.get("epoch", 0))
            self._note_primary(int(welcome["seq"]))
            self.connected, self.connected_since = True, time.time()
            self.refused = self.last_error = ""
            log.info("replication: following primary %s (epoch %d) from seq %s; it is at %s",
                     self.primary, self.primary_epoch, f"{self.ledger.seq:,d}",
                     f"{int(welcome['seq']):,d}")
            self._follow(chan)
        finally:
            chan.close()
            with self._mu:
                self._chan = None
            if self.connected:
                self.connected = False
                log.warning("replication: disconnected from primary %s at seq %s",
                            self.primary, f"{self.ledger.seq:,d}")

    def _follow(self, chan: wire.Channel) -> None:
        while not self._stop.is_set():
            frame = chan.recv(self.timeout)
            records: list[tuple[int, bytes]] = []
            while True:  # what has arrived, in order; consecutive records under one fsync
                kind, payload = frame
                if kind == wire.RECORDS:
                    records += wire.unpack_records(payload)
                else:
                    if records:
                        self._apply_records(records)
                        records = []
                    self._handle(chan, kind, payload)
                if not chan.buffered() or self._stop.is_set():
                    break
                frame = chan.recv(self.timeout)
            if records:
                self._apply_records(records)
            chan.send_json(wire.ACK, {"seq": self.ledger.seq,
                                      "devnet": self.devnet.log_file()[1] if self.devnet else None})

    def _apply_records(self, records: list[tuple[int, bytes]]) -> None:
        self.ledger.apply_replicated(records)
        self.applied_records += len(records)
        self._note_primary(self.primary_seq)

    def _handle(self, chan: wire.Channel, kind: int, payload: bytes) -> None:
        if kind == wire.DEVNET:
            self._apply_devnet(*wire.unpack_devnet(payload))
        elif kind == wire.HEARTBEAT:
            self._note_primary(int(wire.parse_json(payload, chan.peer)["seq"]))
        elif kind == wire.REFUSE:
            raise wire.Refused(wire.parse_json(payload, chan.peer).get("reason", "refused"))
        else:
            raise wire.ProtocolError(f"unexpected {wire.NAMES.get(kind, kind)} frame")

    def _apply_devnet(self, offset: int, data: bytes) -> None:
        if self.devnet is None:
            raise wire.ProtocolError("the primary sends devnet data; this standby has no devnet")
        end = self.devnet.log_file()[1]
        if offset != end:
            raise wire.ProtocolError(f"devnet data at byte {offset:,d}, this log ends at {end:,d}")
        self.devnet.replicate(data)

    def _note_primary(self, seq: int) -> None:
        self.primary_seq = max(seq, self.ledger.seq)
        if self.ledger.seq >= self.primary_seq:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = time.time()

    # ---------------------------------------------------------------- bootstrap
    def fetch_devnet_header(self, path: Path) -> None:
        """A new standby's devnet starts as its primary's: fetch the log's first line (the
        header: parameters and the chain's random id) and write it to ``path``; retried until
        the primary answers (logged), or raises Refused."""
        backoff = 0.25
        while True:
            try:
                chan = self._connect()
                try:
                    chan.send_json(wire.START, self._hello(bootstrap=True))
                    chan.recv_json(CONNECT_SECONDS, wire.WELCOME)
                    kind, payload = chan.recv(CONNECT_SECONDS)
                    if kind != wire.DEVNET:
                        raise wire.ProtocolError("expected the devnet header")
                    offset, data = wire.unpack_devnet(payload)
                    if offset != 0 or not data.endswith(b"\n"):
                        raise wire.ProtocolError("the devnet header is torn")
                finally:
                    chan.close()
                break
            except wire.Refused:
                raise
            except (OSError, wire.ProtocolError) as exc:
                log.warning("replication: waiting for primary %s to send its devnet header "
                            "(%s)", self.primary, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 4.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data[:data.find(b"\n") + 1])
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("replication: devnet header %s from primary %s written to %s",
                 hashlib.sha256(data).hexdigest()[:12], self.primary, path)

    # ---------------------------------------------------------------- status
    def status(self) -> dict:
        """What pegx.status shows of a standby (see README)."""
        seq = self.ledger.seq
        lag = max(0, self.primary_seq - seq)
        behind = self.behind_since
        if self.refused:
            problem = f"standby cannot follow {self.primary}: {self.refused}"
        elif not self.connected:
            problem = (f"standby not connected to primary {self.primary}"
                       + (f": {self.last_error}" if self.last_error else ""))
        else:
            problem = ""
        return {"role": "standby", "state": "following" if self.connected else "disconnected",
                "problem": problem, "primary": self.primary, "connected": self.connected,
                "connected_since": int(self.connected_since) if self.connected else 0,
                "primary_epoch": self.primary_epoch, "seq": seq,
                "primary_seq": self.primary_seq, "lag_records": lag,
                "lag_seconds": round(time.time() - behind, 3) if behind and lag else 0.0,
                "devnet_bytes": self.devnet.log_file()[1] if self.devnet else None,
                "applied_records": self.applied_records, "last_error": self.last_error}
