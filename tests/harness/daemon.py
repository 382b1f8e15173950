"""Test helpers: a real `pegx serve` subprocess on a free port, driven with stock xmlrpc.client.

    with Daemon(tmp_path) as d:           # devnet, blocks on demand, exchange autostarted
        x = d.proxy()                     # xmlrpc.client.ServerProxy
        d.fund("alice", 10**11)           # deposit address + outside payment + claim + registered
        mine_one(x)                       # a block, and the exchange's whole pass over it
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import xmlrpc.client
from pathlib import Path
from typing import Self

from harness import SUPPLY, free_port, wait_until
from pegx.chain.devnet import Devnet
from pegx.crypto import MAIN, Network, wif_to_address
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store


class Daemon:
    """`pegx serve` in a subprocess with a temp datadir; stopped (SIGTERM) on exit."""

    def __init__(self, datadir: str | os.PathLike, *, autostart: bool = True,
                 block_seconds: float = 0, extra: list[str] | None = None,
                 env: dict | None = None, network: Network = MAIN):
        self.datadir = Path(datadir)
        self.net = network
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "pegx", "serve", "--datadir", str(self.datadir),
                     "--port", str(self.port), "--block-seconds", str(block_seconds),
                     "--log-level", "INFO"]
        if autostart:
            self.args.append("--autostart")
        if network is not MAIN:
            self.args += ["--network", network.name]
        self.args += extra or []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.datadir.parent / f"{self.datadir.name}-daemon.log"

    @classmethod
    def clone(cls, template: str | os.PathLike, datadir: str | os.PathLike, **kw) -> Daemon:
        """A daemon on a copy of the stopped datadir ``template``: each test that starts one
        gets the template's state, whatever other tests did to theirs (start it with the
        template's options, ``kw``)."""
        shutil.copytree(template, datadir)
        return cls(datadir, **kw)

    def start(self, wait_loaded: bool = True, wait_serving: bool = True) -> Daemon:
        """Start it; wait until it answers (``wait_serving``) and has loaded (``wait_loaded``,
        with --autostart)."""
        self.datadir.mkdir(mode=0o700, parents=True, exist_ok=True)  # others: refused
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        if not wait_serving:
            return self
        try:
            wait_until(self._answers, 20, what=f"pegx serve on {self.url} (log {self.log_path})")
            if wait_loaded and "--autostart" in self.args:
                wait_until(lambda: self.proxy().StartExchange("", 1, 1) is True, 20,
                           what="the exchange to load")
        except BaseException:
            # `with Daemon(...)` never reaches __exit__ when start fails: stop it here
            self.stop(signal.SIGKILL)
            raise
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"pegx serve exited with {self.proc.returncode}:\n"
                                 f"{self.log()}")
        try:
            self.proxy().pegx.noop()
            return True
        except OSError:
            return False

    def proxy(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(self.url, allow_none=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- devnet conveniences
    def mine(self, n: int = 1) -> int:
        return self.proxy().devnet.mine(n)

    def wait_registered(self, key: str, timeout: float = 10.0) -> None:
        x = self.proxy()
        wait_until(lambda: (x.GetDeposits(key) or {}).get("registered") == 1, timeout,
                   what=f"{key} to register")

    def fund(self, user: str, amount: int, *, fractions: list[int] | None = None) -> str:
        """Give ``user`` a registered deposit of ``amount`` sat; returns its "txid:vout"."""
        return self.fund_many({user: amount}, fractions=fractions)[user]

    def fund_many(self, amounts: dict[str, int], *,
                  fractions: list[int] | None = None) -> dict[str, str]:
        """One registered deposit per user ({user: sat}), all confirmed by the same blocks;
        returns {user: "txid:vout"}."""
        x = self.proxy()
        sent = {}
        for user, amount in amounts.items():
            key, ok = x.GenerateDepositAddress()
            assert ok is True, key
            address = wif_to_address(key, self.net)
            wait_until(lambda a=address: a in x.devnet.info()["wallet_addresses"], 30,
                       what="the deposit key import")
            if fractions is None:
                outpoint = x.devnet.send(address, str(amount))
            else:
                # devnet.send takes the steps as ints (each must fit XML-RPC's 32-bit <int>)
                outpoint = x.devnet.send(address, str(amount), [int(f) for f in fractions])
            sent[user] = (address, outpoint)
        x.devnet.mine(13)  # 12 confirmations are enough even next to a cycle boundary
        for user, (address, outpoint) in sent.items():
            wait_until(lambda a=address, o=outpoint: o in x.GetSpendable(a), 30,
                       what="Spendable")
            assert x.Deposit(user, [outpoint]) is True
        for _, outpoint in sent.values():
            self.wait_registered(outpoint, 30)
        return {user: outpoint for user, (_, outpoint) in sent.items()}


def mine_one(x: xmlrpc.client.ServerProxy, timeout: float = 30.0) -> int:
    """Mine a devnet block and wait until the exchange has fully processed it (its window task
    too: pegx.status's height is published last in a pass)."""
    h = x.devnet.mine(1)
    wait_until(lambda: x.pegx.status()["height"] >= h, timeout, what=f"the pass at height {h}")
    return h


def advance(x: xmlrpc.client.ServerProxy, pred, limit: int = 450):
    """Mine block by block (each one processed) until ``pred()`` is truthy; return it. Fails
    after ``limit`` blocks."""
    for _ in range(limit):
        got = pred()
        if got:
            return got
        mine_one(x)
    raise AssertionError(f"not reached within {limit} blocks")


def advance_to(x: xmlrpc.client.ServerProxy, wid: str, status: str, limit: int = 450) -> int:
    """Mine block by block until withdraw ``wid`` has ``status``; returns the height it was
    seen at."""
    for _ in range(limit):
        if status_of(x, wid) == status:
            return x.pegx.status()["height"]
        mine_one(x)
    raise AssertionError(f"{wid} not {status} within {limit} blocks (now {status_of(x, wid)})")


def status_of(x: xmlrpc.client.ServerProxy, wid: str) -> str | None:
    """CheckWithdraw's status of ``wid`` (None: no record)."""
    rec = x.CheckWithdraw(wid)
    return rec["status"] if isinstance(rec, dict) else None


def total(bal: dict) -> int:
    """liquid + reserve of a GetBalance answer."""
    return bal["liquid"] + bal["reserve"]


def audit_ok(x: xmlrpc.client.ServerProxy) -> dict:
    """pegx.audit of the running daemon, which must be clean."""
    report = x.pegx.audit("")
    assert report["ok"], report["problems"]
    return report


def check_law(datadir: Path) -> dict:
    """Reopen the stopped daemon's ledger: its audit (conservation, no drift, liquid, every
    invariant) holds exactly."""
    ledger = Exchange(Store(datadir / "ledger"))
    try:
        law = ledger.audit()
    finally:
        ledger.close()
    assert law["ok"] and law["totals"]["drift"] == 0, law
    return law


def check_ledger_and_chain(datadir: Path, supply: int = SUPPLY) -> dict:
    """Reopen the stopped daemon's ledger and devnet: the law holds exactly, every registered
    input is unspent on chain, and every unspent output paying a wallet address the exchange
    watches is registered (all deposits of these tests are claimed)."""
    ledger = Exchange(Store(datadir / "ledger"))
    chain = Devnet(datadir, block_seconds=0, initial_supply=supply)
    try:
        law = ledger.audit()  # the one audit: conservation, no drift, liquid, every invariant
        assert law["ok"] and law["totals"]["drift"] == 0, law
        inputs = ledger.records("inputs")
        spent = [k for k in inputs if not chain.is_unspent(k)]
        assert spent == [], f"registered but spent on chain: {spent}"
        settings = ledger.exchange_settings()
        watched = set(ledger.records("addresses")) | set(settings["exchangeaccounts"])
        watched.add(settings["exchangefeeaccount"])
        wallet = {u.key: u for u in chain.list_unspent() if u.address in watched and u.height}
        registered_in_wallet = {k for k, r in inputs.items() if r["address"] in
                                chain.info()["wallet_addresses"]}
        assert set(wallet) == registered_in_wallet, (set(wallet) ^ registered_in_wallet)
        assert all(not b.get("ins") or b["state"] in ("done", "failed")
                   for b in ledger.records("batches").values())
        return law
    finally:
        chain.close()
        ledger.close()
