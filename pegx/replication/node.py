"""Replication in one daemon: its role, the primary's Replicator or the standby's Receiver,
promotion, and the fencer that stops the primary a promotion superseded.

The controller (pegx.app) builds one :class:`Replication` when replication is configured and
calls it at fixed points: ``prepare_standby`` before the chain is opened (a new standby's
devnet must start as its primary's), ``start`` before calls are taken, ``promote`` for
``pegx promote``, ``close`` at shutdown before the ledger closes.

Promotion (in the standby's process, no restart): stop following (nothing is applied after
this), check the chain is the ledger's (as a primary's start does), write the next epoch as the
first record of the new primary, listen for a standby of its own (when ``--sync-standby`` is
set on this daemon, state changes wait for one), start the exchange, and from then on keep
telling the old primary's replication address that it is superseded (the fencer).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from pegx.config import Config, parse_address
from pegx.replication import epoch, keys, role, wire
from pegx.replication.primary import Replicator
from pegx.replication.standby import CONNECT_SECONDS, Receiver

log = logging.getLogger(__name__)

FENCE_RETRY = 3.0  # seconds between the fencer's attempts while the old primary is away
FENCE_DONE_RETRY = 30.0  # ... and once it answered that it stopped
# problems of a primary's exchange that a standby has on purpose (its cycle does not run)
IDLE_ON_STANDBY = ("exchange_stopped", "cycle_thread_dead", "chain_stalled")


class PromoteError(RuntimeError):
    """``pegx promote`` cannot promote this daemon; the message says why."""


class Replication:
    """See the module docstring."""

    def __init__(self, cfg: Config, ledger, *, on_fenced: Callable[[str], None]):
        self.cfg = cfg
        self.ledger = ledger
        self.datadir = Path(cfg.path)
        self.key = keys.read(cfg.replication_key_file)
        self.identity = {"chain": cfg.chain, "network": cfg.network}
        self.role = role.Role(role.STANDBY if cfg.standby_of else role.PRIMARY)
        self.on_fenced = on_fenced
        self.replicator: Replicator | None = None
        self.receiver: Receiver | None = None
        self.fencer: Fencer | None = None
        self.chain = None
        self._promote_mu = threading.Lock()
        ledger_epoch = epoch.epoch_of(epoch.record(ledger))
        if cfg.standby_of:  # a promoted datadir must not come back as a standby
            epoch.check_not_promoted(self.datadir, ledger_epoch)
        else:  # a superseded primary must not come back as one
            epoch.check_not_fenced(self.datadir, ledger_epoch)

    @property
    def standby(self) -> bool:
        return self.role.state == role.STANDBY

    def _devnet(self):
        return self.chain if self.cfg.chain == "devnet" else None

    # ---------------------------------------------------------------- start and stop
    def prepare_standby(self) -> None:
        """A new standby's devnet log starts with its primary's header (the chain's id)."""
        if self.cfg.chain != "devnet":
            return
        from pegx.chain.devnet import files

        if files.log_path(self.cfg.path) is None:
            self._receiver(None).fetch_devnet_header(files.new_log_path(self.cfg.path))

    def _receiver(self, devnet) -> Receiver:
        return Receiver(key=self.key, primary=self.cfg.standby_of, ledger=self.ledger,
                        identity=self.identity, devnet=devnet, timeout=self.cfg.standby_timeout)

    def start(self, chain) -> None:
        """Before calls are taken: follow the primary, or (a primary) write the first epoch
        and become the journal's sink."""
        self.chain = chain
        if self.standby:
            self.receiver = self._receiver(self._devnet())
            self.receiver.start()
        else:
            self._start_primary()

    def _start_primary(self) -> None:
        if epoch.record(self.ledger) is None:  # before the sink: no standby needed to ack it
            self.ledger.put(epoch.TABLE, epoch.KEY, epoch.first_record(self.ledger.seq + 1))
            log.info("replication: this ledger starts epoch 1 (lineage %s)",
                     epoch.lineage(epoch.record(self.ledger)))
        self._replicator().start()

    def _replicator(self) -> Replicator:
        cfg = self.cfg
        self.replicator = Replicator(
            key=self.key, host=cfg.replication_host or cfg.host, port=cfg.replication_port,
            ledger=self.ledger, devnet=self._devnet(), datadir=self.datadir,
            identity=self.identity, sync=cfg.sync_standby, fallback=cfg.standby_fallback,
            timeout=cfg.standby_timeout, retain=cfg.replication_retain,
            on_fenced=self._fenced)
        return self.replicator

    def _fenced(self, reason: str) -> None:
        self.role.reason = reason
        self.role.state = role.FENCED
        self.on_fenced(reason)

    def close(self) -> None:
        """Stop replicating (waiting acknowledgements fail: the calls are not acknowledged)."""
        if self.fencer is not None:
            self.fencer.stop()
        if self.receiver is not None:
            self.receiver.stop(10.0)
        if self.replicator is not None:
            self.replicator.close()

    # ---------------------------------------------------------------- promotion
    def promote(self, check_chain: Callable[[], None], activate: Callable[[], None]) -> dict:
        """Make this standby the primary (see the module docstring); returns {epoch, seq}.

        ``check_chain`` raises if the chain is not the ledger's (nothing changed then: the
        standby follows again); ``activate`` starts the chain and the exchange."""
        with self._promote_mu:
            if not self.standby:
                raise PromoteError(f"this pegx is not a standby (it is {self.role.state})")
            self.receiver.stop()
            seq_before = self.ledger.seq
            try:  # everything that can refuse, before anything is written
                check_chain()
                replicator = self._listening() if self.cfg.replication_key_file else None
            except Exception as exc:
                self.receiver = self._receiver(self._devnet())
                self.receiver.start()
                raise PromoteError(f"not promoted: {exc}") from exc
            new = epoch.promoted(epoch.record(self.ledger), self.ledger.seq + 1)
            self.ledger.put(epoch.TABLE, epoch.KEY, new)
            epoch.write_promoted(self.datadir, new["epoch"], self.cfg.standby_of)
            epoch.clear_fence(self.datadir)
            log.warning("replication: PROMOTED to primary: epoch %d from seq %s (followed %s "
                        "up to seq %s)", new["epoch"], f"{self.ledger.seq:,d}",
                        self.cfg.standby_of, f"{seq_before:,d}")
            if replicator is not None:  # the new epoch is written: no standby acks it
                replicator.start()
            self.fencer = Fencer(self.key, self.cfg.standby_of, new)
            self.fencer.start()
            self.role.promoted = True
            activate()
            self.role.state = role.PRIMARY
            return {"epoch": new["epoch"], "seq": self.ledger.seq}

    def _listening(self) -> Replicator:
        """The promoted primary's Replicator, its port bound (or OSError, nothing kept)."""
        replicator = self._replicator()
        try:
            replicator.listen()
        except OSError as exc:
            self.replicator = None
            raise OSError(f"cannot listen for a standby on {replicator.host}:"
                          f"{replicator.port} (replication_port): {exc.strerror or exc}") from exc
        return replicator

    # ---------------------------------------------------------------- status
    def problems(self, problems: list[dict], status: dict) -> list[dict]:
        """The daemon's problems with replication's: its own first (after a deep reorg); a
        standby runs no exchange on purpose, so that is not one of them."""
        out = [p for p in problems if not (self.standby and p["kind"] in IDLE_ON_STANDBY)]
        if status.get("problem"):
            at = 1 if out and out[0]["kind"] == "deep_reorg" else 0
            out.insert(at, {"kind": "replication", "message": status["problem"]})
        return out

    def status(self) -> dict:
        rec = epoch.record(self.ledger)
        base = {"epoch": epoch.epoch_of(rec), "lineage": epoch.lineage(rec)}
        if self.standby and self.receiver is not None:
            return {**base, **self.receiver.status()}
        out = {**base, **(self.replicator.status() if self.replicator is not None else
                          {"role": self.role.state, "state": "", "problem": ""})}
        if self.role.state == role.FENCED:
            out.update(role="fenced", problem=self.role.reason)
        if self.fencer is not None:
            out["fencing"] = self.fencer.status()
        return out


class Fencer:
    """Tells the superseded primary's replication address, again and again, that a newer
    epoch exists; a primary that hears it (authenticated, same lineage) stops serving."""

    def __init__(self, key: bytes, old_primary: str, rec: dict):
        self.key = key
        self.address = parse_address(old_primary)
        self.old = old_primary
        self.rec = rec
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repl-fencer", daemon=True)
        self.state = "not reached yet"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CONNECT_SECONDS + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = FENCE_RETRY
            try:
                with socket.create_connection(self.address, timeout=CONNECT_SECONDS) as sock:
                    chan = wire.Channel(sock, server=False)
                    chan.client_handshake(self.key, "fencer", CONNECT_SECONDS)
                    chan.send_json(wire.FENCE, {"epoch": self.rec["epoch"],
                                                "id": self.rec["id"]})
                    _, reply = chan.recv_json(CONNECT_SECONDS, wire.FENCED)
                if self.state != "fenced":
                    log.warning("replication: the old primary %s (epoch %s) was told it is "
                                "superseded and stops serving", self.old, reply.get("epoch"))
                self.state, wait = "fenced", FENCE_DONE_RETRY
            except wire.Refused as exc:
                note = f"refused: {exc}"
                if self.state != note:
                    log.warning("replication: fencing %s: %s", self.old, note)
                self.state, wait = note, FENCE_DONE_RETRY
            except (OSError, wire.ProtocolError) as exc:
                self.state = f"unreachable ({type(exc).__name__})"
            self._stop.wait(wait)

    def status(self) -> dict:
        return {"old_primary": self.old, "state": self.state}
