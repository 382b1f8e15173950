"""Test helpers: a real `pegx serve` subprocess on a free port, driven with stock xmlrpc.client.

    with Daemon(tmp_path) as d:           # devnet, blocks on demand, exchange autostarted
        x = d.proxy()                     # xmlrpc.client.ServerProxy
        d.fund("alice", 10**11)           # deposit address + outside payment + claim + registered
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Self

from pegx.crypto import MAIN, Network, wif_to_address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = ""):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def assert_returns(call, expected):
    """Call and compare the exact original return value (type included)."""
    got = call()
    assert got == expected and type(got) is type(expected), f"got {got!r}, want {expected!r}"
    return got


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
        x = self.proxy()
        key, ok = x.GenerateDepositAddress()
        assert ok is True, key
        address = wif_to_address(key, self.net)
        wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 10,
                   what="the deposit key import")
        if fractions is None:
            outpoint = x.devnet.send(address, str(amount))
        else:
            # devnet.send takes the steps as ints (each must fit XML-RPC's 32-bit <int>)
            outpoint = x.devnet.send(address, str(amount), [int(f) for f in fractions])
        x.devnet.mine(13)  # 12 confirmations are enough even next to a cycle boundary
        wait_until(lambda: outpoint in x.GetSpendable(address), 10, what="Spendable")
        assert x.Deposit(user, [outpoint]) is True
        self.wait_registered(outpoint)
        return outpoint
