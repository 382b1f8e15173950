"""The controller: builds and wires every part, owns start-up and shutdown order (STYLE §8).

Start-up: check that the port is free and the datadir private (pegx.service; before anything
is written) -> open the ledger (and check it) -> connect the chain and check it is the ledger's
(pegx.exchange.chainguard: another chain, one behind the ledger or one lacking registered
inputs is refused, and `pegx serve` exits non-zero) -> build the cycle thread, API and XML-RPC
server -> accept calls -> (autostart) start the exchange -> READY=1 to systemd; the main loop
then pings its watchdog while the cycle thread makes progress (pegx.service).
Shutdown (ShutDown call, SIGTERM, SIGINT): STOPPING=1, stop taking calls, let in-flight calls
and the cycle thread's current pass finish, close the chain, checkpoint the ledger, exit 0.

Over 400 lines (~425): the controller wires every part and publishes the pegx.* and devnet.*
calls, thin wrappers over the parts it wires.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from pegx import __version__, service
from pegx.admin import audit
from pegx.admin.backup import BackupJobs
from pegx.admin.offline import ToolError
from pegx.chain import factory as chain_factory
from pegx.chain.base import ChainRejected, ChainUnavailable
from pegx.config import Config
from pegx.exchange import chainguard
from pegx.exchange.cycle import ExchangeCycle
from pegx.exchange.pipeline import pipeline
from pegx.exchange.session import Session
from pegx.exchange.withdraws import WithdrawDesk
from pegx.ledger import engine
from pegx.ledger.journal import NotAcknowledged
from pegx.ledger.rules import EngineError, coerce_amount
from pegx.ledger.store import Store
from pegx.ops import health
from pegx.rpc import api
from pegx.rpc.execapi import ExecAPI
from pegx.rpc.server import CallError, RPCServer, check_can_listen

log = logging.getLogger(__name__)

PUBLIC_KEY_FILE = "api_public_key"
CHAIN_RETRY_SECONDS = 2.0  # pause between start-up chain checks while the node is unavailable


def read_public_key(datadir: Path) -> str | None:
    """The exec API public key installed with `pegx api-key install`, or None."""
    path = datadir / PUBLIC_KEY_FILE
    if not path.exists():
        return None
    text = path.read_text().strip()
    return text or None


def _amount(value) -> int:
    return coerce_amount(value)


class App:
    """One daemon: ledger + chain + cycle + API + server."""

    def __init__(self, cfg: Config, notifier: service.Notifier | None = None):
        self.cfg = cfg
        self.started_at = time.time()
        self._shutdown = threading.Event()
        self._closed = False
        self.exit_code = 0
        self.notifier = notifier or service.Notifier()
        # refused before the datadir is touched: a port in use, a datadir others can read
        self._check_ports()
        service.make_datadir(cfg.path)
        self.store = Store(cfg.ledger_path)
        self.chain = None
        self.replication = None
        try:
            self.ledger = engine.Exchange(self.store, checkpoint_ops=cfg.checkpoint_ops,
                                          checkpoint_seconds=cfg.checkpoint_seconds)
            if cfg.replication_key_file:  # a standby, or a primary that takes one
                from pegx.replication.node import Replication

                self.replication = Replication(cfg, self.ledger, on_fenced=self._fenced)
            if cfg.standby_of:  # its chain follows the primary's; checked at promotion
                self.replication.prepare_standby()
            else:
                self._refuse_new_chain()
            self.chain = chain_factory.build(cfg)
            if not cfg.standby_of:
                self._check_chain()
        except BaseException:
            if self.chain is not None:
                self.chain.close()
            self.store.close()
            raise
        self.desk = WithdrawDesk(self.ledger, self.chain)
        self.session = Session(self.ledger, self.chain, on_shutdown=self.request_shutdown)
        self.cycle = ExchangeCycle(self.ledger, self.chain, self.session,
                                   poll_seconds=cfg.poll_seconds, desk=self.desk,
                                   final_depth=cfg.final_depth)
        pub = read_public_key(cfg.path)
        self.exec_api = ExecAPI(pub, cfg.allow_exec,
                                seen=lambda h: self.ledger.record("exec", h) is not None,
                                record=lambda h: self.ledger.put("exec", h, 1),
                                namespace=self._exec_namespace, lock=self.ledger.locked())
        if cfg.allow_exec and pub is None:
            log.warning("--allow-exec is set but no public key is installed "
                        "(pegx api-key install): API() stays disabled")
        control: api.Control = self.session
        if self.replication is not None:
            from pegx.replication import role

            control = role.RoleControl(self.session, self.replication.role,
                                       refresh_spendable=self.cycle.refresh_spendable)
        self.api = api.PegAPI(self.ledger, control, busy_wait=cfg.busy_wait,
                              exec_api=self.exec_api, network=cfg.net)
        self._register_calls()
        if cfg.chain == "devnet":
            self._register_devnet()
        self.health = health.Health(self.chain, self.session, self.cycle,
                                    stall_seconds=health.stall_threshold(cfg),
                                    started_at=self.started_at)
        self.metrics = self._metrics() if cfg.metrics_port else None
        self.watchdog = service.Watchdog(
            self.notifier, service.CycleHealth(self.session, self.cycle, cfg.cycle_stall_seconds))

    def _check_ports(self) -> None:
        """Every port this daemon will listen on is free (ServerError otherwise)."""
        cfg = self.cfg
        check_can_listen(cfg.host, cfg.port)
        check_can_listen(cfg.host, cfg.metrics_port, "metrics_port")
        if cfg.replication_key_file and not cfg.standby_of:
            check_can_listen(cfg.replication_host or cfg.host, cfg.replication_port,
                             "replication_port")

    def _register_calls(self) -> None:
        """The XML-RPC server with the API (role-guarded with replication) and pegx.* calls."""
        cfg = self.cfg
        self.server = RPCServer(cfg.host, cfg.port, request_deadline=cfg.rpc_request_deadline)
        methods = self.api.methods()
        if self.replication is not None:
            from pegx.replication import role

            methods = role.guard_api(methods, self.replication.role, self.api.password.check)
        self.server.register_many(methods)
        self.server.register_many({"pegx.status": self.status, "pegx.noop": self.noop,
                                   "pegx.checkpoint": self.checkpoint,
                                   "pegx.digest": self.digest, "pegx.promote": self.promote})
        self.backups = BackupJobs(self.store, cfg.path)
        self.server.register_many({"pegx.backup": self.backup,
                                   "pegx.backup_progress": self.backup_progress,
                                   "pegx.audit": self.audit})

    def _refuse_new_chain(self) -> None:
        """A new devnet is created only with a new ledger (pegx.exchange.chainguard)."""
        fresh = chain_factory.creates_chain(self.cfg)
        if fresh is not None:
            chainguard.refuse_new_chain(self.ledger, fresh)

    def _check_chain(self) -> None:
        """The chain must be the ledger's before any call is taken (WrongChain otherwise); an
        unavailable node (down, warming up) is waited for, since nothing can be checked."""
        while True:
            try:
                chainguard.check(self.ledger, self.chain)
                return
            except ChainUnavailable as exc:
                log.warning("cannot check the chain yet (%s); no calls are taken until it "
                            "answers, retrying in %.0f s", exc, CHAIN_RETRY_SECONDS)
                time.sleep(CHAIN_RETRY_SECONDS)

    def _metrics(self):
        """The metrics port (--metrics-port): the registry, its hooks, the HTTP server."""
        from pegx.ops.metrics import Metrics, MetricsServer, StateCollector

        m = Metrics()
        names = self.server.method_names()
        m.set_methods(names, refusing=[*self.api.methods(),
                                       *(n for n in names if n.startswith("pegx."))])
        self.server.on_call = m.on_call
        self.ledger.observe(fsync=m.fsync.observe, checkpoint=m.checkpoint.observe)
        self.cycle.on_recompute = m.recompute.observe
        m.registry.register(StateCollector(self.state, self.chain.rpc_errors))
        if not self.cfg.is_loopback:
            log.warning("metrics port listening on %r, not loopback: anyone who can reach it "
                        "sees the exchange's totals and state", self.cfg.host)
        return MetricsServer(self.cfg.host, self.cfg.metrics_port, m, self.page)

    def page(self) -> str:
        """The status page (pegx.ops.page) as HTML."""
        from pegx.ops import page

        return page.render(self.state(), self.ledger.holdings(), self.cycle.cycle_history())

    def _exec_namespace(self) -> dict:
        return {"api": self.api, "engine": self.ledger, "ledger": self.ledger,
                "chain": self.chain, "cycle": self.cycle, "session": self.session}

    def _register_devnet(self) -> None:
        d = self.chain

        def mine(n=1):
            """devnet.mine(n=1) -> the new height."""
            return d.mine(n)

        def send(address, amount, fractions=None):
            """devnet.send(address, amount) -> "txid:vout" of an outside payment (STD spread)."""
            return d.send(address, _amount(amount), fractions)

        def vote(direction, steps=1):
            """devnet.vote('inflate'|'deflate'|'nochange', steps=1) -> True."""
            return d.vote(direction, steps)

        def reorg(depth, txs="keep", votes="", spend=None):
            """devnet.reorg(depth, txs='keep'|'drop', votes='', spend=[]) -> {fork, height,
            replaced, mined, evicted}: the last ``depth`` blocks replaced by a new branch."""
            try:
                return d.reorg(depth, txs, votes or None, spend)
            except ChainRejected as exc:  # the lever's arguments name something impossible
                raise ValueError(str(exc)) from None

        methods = {
            "devnet.reorg": reorg, "devnet.mine": mine, "devnet.send": send, "devnet.vote": vote,
            "devnet.info": d.info, "devnet.balance": d.balance,
            "devnet.new_address": d.new_address, "devnet.drop": d.drop,
            "devnet.malleate_next": d.malleate_next,
            "devnet.reject_next_broadcast": d.reject_next_broadcast,
        }
        if self.replication is not None:  # a standby's devnet only follows the primary's
            from pegx.replication import role

            methods = role.guard_devnet(methods, self.replication.role)
        self.server.register_many(methods)

    # ---------------------------------------------------------------- pegx.* calls
    # Every pegx.* call but noop takes the API password as its trailing passw argument, as the
    # API calls do: status names the datadir, pid, totals and the last error, and checkpoint
    # and backups cost I/O, so none of it is for anyone who can reach the port. noop stays open
    # (a liveness probe that tells nothing); devnet.* is the simulated chain's own control.
    def noop(self) -> bool:
        """pegx.noop() -> True (a liveness probe and a baseline for benchmarks; no password)."""
        return True

    def checkpoint(self, passw=""):
        """pegx.checkpoint(passw='') -> the op seq now covered by a checkpoint (waits for one
        already being written; refused while the daemon shuts down)."""
        if not self.api.password.check(passw):
            return api.WRONG_PASSWORD
        try:
            return self.ledger.checkpoint()
        except EngineError as exc:
            raise CallError(str(exc)) from None

    def digest(self, passw=""):
        """pegx.digest(passw='') -> {seq, digest}: the SHA-256 of the whole ledger state at op
        seq (equal on a primary and a standby that hold the same records)."""
        if not self.api.password.check(passw):
            return api.WRONG_PASSWORD
        seq, digest = self.ledger.digest_at()
        return {"seq": seq, "digest": digest}

    def promote(self, passw=""):
        """pegx.promote(passw='') -> {epoch, seq}: make this standby the primary (a new epoch
        that fences the old primary); the exchange starts."""
        if not self.api.password.check(passw):
            return api.WRONG_PASSWORD
        if self.replication is None:
            raise CallError("this pegx has no replication configured: it is not a standby")
        from pegx.replication.node import PromoteError

        try:
            return self.replication.promote(self._check_chain_once, self._activate)
        except PromoteError as exc:
            raise CallError(str(exc)) from None

    def _check_chain_once(self) -> None:
        self._refuse_new_chain()
        chainguard.check(self.ledger, self.chain)

    def _activate(self) -> None:
        """A promoted standby takes over: its chain and the exchange start."""
        self.chain.start()
        self.session.start()

    def _fenced(self, reason: str) -> None:
        """A newer primary exists: stop the exchange (no withdraw may go out from here) and
        shut down; the datadir refuses to serve as a primary from now on."""
        self.exit_code = 3
        threading.Thread(target=self.session.stop, name="fenced-stop", daemon=True).start()
        self.request_shutdown()

    def backup(self, dest, passw=""):
        """pegx.backup(dest, passw='') -> {id, dest, total}: start an online backup of the
        ledger (from a snapshot) and devnet into the empty directory ``dest`` (an absolute path
        on this machine); poll pegx.backup_progress(id)."""
        if not self.api.password.check(passw):
            return api.WRONG_PASSWORD
        try:
            return self.backups.start(dest)
        except ToolError as exc:
            raise CallError(str(exc)) from None

    def backup_progress(self, job_id, passw=""):
        """pegx.backup_progress(id, passw='') -> {id, dest, copied, total, done, error,
        result}."""
        if not self.api.password.check(passw):
            return api.WRONG_PASSWORD
        try:
            return self.backups.progress(job_id)
        except ToolError as exc:
            raise CallError(str(exc)) from None

    def audit(self, passw=""):
        """pegx.audit(passw='') -> the audit report (conservation and every ledger invariant
        checked against the chain; see pegx.admin.audit)."""
        if not self.api.password.check(passw):
            return api.WRONG_PASSWORD
        return audit.audit(self.ledger, self.chain)

    def status(self, passw=""):
        """pegx.status(passw='') -> what an operator needs at a glance."""
        if not self.api.password.check(passw):
            return api.WRONG_PASSWORD
        return self.state()

    def state(self) -> dict:
        """The status report (pegx.status without the password check; the metrics port):
        the problems first (pegx.ops.health), then the figures."""
        tip = self.cycle.tip
        pipe = pipeline(self.ledger, time.time())  # one pass under the lock, little copied
        follower = self.cycle.follower.state()
        session = self.session
        report = {
            # the last reorganisation that replaced a final block ({}: never), shown first
            "reorg_alarm": follower["alarms"][-1] if follower.get("alarms") else {},
            "reorgs": int(follower.get("reorgs", 0)),
            "final_depth": self.cycle.final_depth(),
            # why pending withdraws cannot go out ('' if nothing stands in their way)
            "withdraws_not_batchable": self.desk.not_batchable(),
            "version": __version__, "pid": os.getpid(), "chain": self.cfg.chain,
            "network": self.cfg.network, "wallet": session.wallet_note,
            "datadir": str(self.cfg.path), "running": True, "started": session.started(),
            "loaded": session.loaded(), "cycle_thread_alive": self.cycle.running,
            "cycle": self.cycle.cycle(), "height": tip.height if tip else -1,
            "chain_cycle": tip.cycle if tip else -1, "supply": self.ledger.supply,
            "exchange": self.ledger.exchange_balance(), "users": len(self.ledger.users()),
            "inputs": self.ledger.input_count(), "withdraws": pipe.pop("by_status"),
            "last_error": self.cycle.last_error, "ledger_bytes": self.store.approximate_size(),
            "op_seq": self.ledger.seq, "checkpoint_seq": self.ledger.ckpt_seq,
            "uptime": int(time.time() - self.started_at),
            "calls_served": self.server.calls_served, "exec_enabled": self.exec_api.active,
            "pipeline": pipe,
            **self.health.report(),  # problems, node, tip_age, stall_seconds
            "replication": {"role": "primary", "state": "off", "problem": ""},
        }
        if self.replication is not None:  # its problem (and a standby's exchange is idle)
            report["replication"] = self.replication.status()
            report["problems"] = self.replication.problems(report["problems"],
                                                           report["replication"])
        return report

    # ---------------------------------------------------------------- lifecycle
    def request_shutdown(self) -> None:
        """Ask the main thread to shut down (after the current call has answered)."""
        self._shutdown.set()

    def serve(self) -> int:
        """Run in the foreground until ShutDown / SIGTERM / SIGINT; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._shutdown.set())
        standby = self.replication is not None and self.replication.standby
        if self.replication is not None:  # before any call: a sync standby sees every record
            self.replication.start(self.chain)
        if not standby:
            self.chain.start()
        self.server.serve_in_thread()
        if self.metrics is not None:
            self.metrics.start()
        host, port = self.server.address
        log.info("pegx %s serving on http://%s:%d (chain %s, datadir %s%s)", __version__, host,
                 port, self.cfg.chain, self.cfg.path,
                 f", standby of {self.cfg.standby_of}" if standby else "")
        if self.cfg.autostart and not standby:
            self.session.start()
        self.watchdog.status = f"serving on http://{host}:{port} (chain {self.cfg.chain})"
        self.notifier.notify("READY=1", f"STATUS={self.watchdog.status}")
        while not self._shutdown.wait(self.watchdog.tick_seconds):
            if self.ledger.failed is not None:
                log.critical("ledger writes failed: shutting down to protect balances")
                break
            self.watchdog.tick()
        self.close()
        return self.exit_code if self.ledger.failed is None else 1

    def close(self) -> None:
        """Stop taking calls, finish in-flight work, checkpoint, close (idempotent)."""
        if self._closed:
            return
        self._closed = True
        log.info("shutting down: no new calls")
        self.notifier.notify("STOPPING=1", "STATUS=shutting down")
        time.sleep(0.1)  # let the ShutDown reply leave
        if self.metrics is not None:
            self.metrics.stop()
        self.server.stop()
        self.server.wait_idle(5.0)
        self.cycle.stop(timeout=5.0)
        if self.replication is not None:  # before the ledger closes: it reads the op log
            self.replication.close()
        self.backups.wait(60.0)  # a backup reads the ledger's snapshot until it is done
        try:
            self.chain.close()
        finally:
            try:
                self.ledger.close()
            except NotAcknowledged as exc:  # strict sync standby gone: the log keeps them
                log.warning("ledger closed without its last checkpoint (%s); the next start "
                            "replays the op log", exc)
            self.notifier.close()
        log.info("ledger checkpointed and closed; bye")
