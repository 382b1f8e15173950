"""The real bitbayd for tests: find (or build) the binary, make a private regtest chain with the
kit's run_regtest.sh, talk to it with a plain JSON-RPC client, encrypt its wallet, stop it.

The kit is ``../shared/bitbayd/`` from the project root (CI: a clone with shared/ beside it; a
developer's worktree under wt/ finds it one level further up), or ``$PEGX_BITBAYD_KIT``. The
binary is ``$PEGX_BITBAYD`` if set, else the last line of the kit's build.sh, which builds once
(~6 min on 2 cores, apt packages included) and answers from its cache afterwards (0.05 s).
:func:`binary` says why when there is none, so a test can skip (or fail under CI=true) with
the reason.

Every wait here fails with a message at its deadline; none returns quietly.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from harness import ROOT, wait_until

BUILD_TIMEOUT = 3600  # a cold build on a loaded 2-core machine, apt downloads included
START_TIMEOUT = 300  # run_regtest.sh: 7-15 s here; generous for a loaded machine
STOP_TIMEOUT = 120  # the node's shutdown waits for keep-alive clients: stop them first
BURN = "B4T5ciTCkWauSqVAcVKy88ofjcSasUkSYU"  # hash160 of 20 zero bytes: nobody's key


class RpcError(Exception):
    """The node answered a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code, self.message = code, message


def find_kit() -> Path | None:
    """The folder with build.sh and run_regtest.sh, or None."""
    env = os.environ.get("PEGX_BITBAYD_KIT")
    candidates = [Path(env)] if env else [ROOT.parent / "shared" / "bitbayd",
                                          ROOT.parent.parent / "shared" / "bitbayd"]
    for kit in candidates:
        if (kit / "build.sh").is_file() and (kit / "run_regtest.sh").is_file():
            return kit
    return None


_BINARY: tuple[str | None, str] | None = None


def binary() -> tuple[str | None, str]:
    """(path of a bitbayd binary, "") or (None, why there is none). Built at most once."""
    global _BINARY
    if _BINARY is None:
        _BINARY = _find_binary()
    return _BINARY


def binary_or_skip() -> str:
    """The regtest bitbayd (:func:`binary`), or the test is skipped with the reason; under
    ``CI=true`` it fails instead (CI must run the real-node tests)."""
    path, why = binary()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the real bitbayd for this module: {why}")
        pytest.skip(why)
    return path


def _find_binary() -> tuple[str | None, str]:
    env = os.environ.get("PEGX_BITBAYD")
    if env:
        if os.access(env, os.X_OK):
            return env, ""
        return None, f"PEGX_BITBAYD={env} is not an executable file"
    kit = find_kit()
    if kit is None:
        return None, ("no bitbayd: PEGX_BITBAYD is not set and the kit (build.sh, "
                      f"run_regtest.sh) is not in {ROOT.parent / 'shared/bitbayd'} or "
                      f"{ROOT.parent.parent / 'shared/bitbayd'} (set PEGX_BITBAYD_KIT)")
    try:
        done = subprocess.run(["bash", str(kit / "build.sh")], check=False, text=True,
                              capture_output=True, timeout=BUILD_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"{kit}/build.sh did not finish in {BUILD_TIMEOUT} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return None, f"{kit}/build.sh failed (exit {done.returncode}):\n{tail}"
    return lines[-1], ""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """:func:`harness.wait_until` at the real node's pace (a poll every 0.2 s)."""
    return wait_until(predicate, timeout, interval, what)


@dataclass
class RegtestNode:
    """One bitbayd on a private regtest chain in ``datadir``; RPC on 127.0.0.1:``port``."""

    bin: str
    datadir: Path
    port: int
    env: dict
    info: dict | None = None
    burn: str = BURN  # where mined blocks pay (an address of the node's versions)
    user: str = "bayrpc"
    password: str = "regtestpass"

    @property
    def url(self) -> str:
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return int((self.datadir / "bitbayd.pid").read_text().strip())

    def create(self, **env: str) -> dict:
        """Wipe ``datadir`` and make the kit's default chain (peg active, funded wallet)."""
        kit = find_kit()
        assert kit is not None, "run_regtest.sh needs the kit"
        full = {**os.environ, **self.env, **env, "RPCPORT": str(self.port), "BITBAYD": self.bin,
                "BURN": self.burn}
        done = subprocess.run(["bash", str(kit / "run_regtest.sh"), str(self.datadir)],
                              check=False, capture_output=True, text=True, timeout=START_TIMEOUT, env=full,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"run_regtest.sh failed:\n{done.stderr[-3000:]}"
        self.info = json.loads(done.stdout.strip().splitlines()[-1])
        return self.info

    def call(self, method: str, *params: Any, timeout: float = 600) -> Any:
        """One JSON-RPC call on its own connection (Connection: close, as rpc.py does)."""
        parts = urlsplit(self.url)
        auth = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password)}"
                                .encode()).decode()
        # Decimal amounts go out as JSON numbers (the node wants a number; it rounds to sat)
        body = json.dumps({"jsonrpc": "1.0", "id": 1, "method": method,
                           "params": [float(p) if isinstance(p, Decimal) else p
                                      for p in params]})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/", body, {"Authorization": f"Basic {auth}",
                                             "Content-Type": "application/json",
                                             "Connection": "close"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        reply = json.loads(data, parse_float=Decimal)
        if reply.get("error"):
            raise RpcError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def answers(self) -> bool:
        try:
            self.call("getblockcount", timeout=10)
            return True
        except (OSError, http.client.HTTPException, RpcError, ValueError):
            return False

    def running(self) -> bool:
        try:
            os.kill(self.pid, 0)
            return True
        except (ProcessLookupError, FileNotFoundError, ValueError):
            return False

    def start(self) -> None:
        """Start the node on its existing datadir (after a stop or encryptwallet)."""
        log = open(self.datadir / "stdout.log", "ab")  # noqa: SIM115 (the node inherits it)
        proc = subprocess.Popen([self.bin, f"-datadir={self.datadir}",
                                 f"-conf={self.datadir / 'bitbay.conf'}"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        (self.datadir / "bitbayd.pid").write_text(f"{proc.pid}\n")
        self._proc = proc
        try:
            wait_for(lambda: self._alive_or_raise(proc) and self.answers(), START_TIMEOUT,
                     f"bitbayd to answer on port {self.port} (see {self.datadir}/regtest/"
                     "debug.log)")
        except BaseException:
            proc.kill()  # not left running when it never answered
            proc.wait()
            raise

    def _alive_or_raise(self, proc) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"bitbayd exited with {proc.returncode}; see "
                                 f"{self.datadir}/stdout.log")
        return True

    def wait_exit(self, pid: int) -> None:
        def gone() -> bool:
            proc = getattr(self, "_proc", None)
            if proc is not None and proc.pid == pid:
                return proc.poll() is not None
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, STOP_TIMEOUT, f"bitbayd (pid {pid}) to exit: a client holding a "
                 "keep-alive connection stops its shutdown")

    def encrypt(self, passphrase: str) -> None:
        """encryptwallet (the node stops by design), then start it again: a locked wallet."""
        pid = self.pid
        msg = self.call("encryptwallet", passphrase)
        assert "wallet encrypted" in msg, msg
        self.wait_exit(pid)
        self.start()

    def stop(self) -> None:
        """SIGTERM and wait; stop every keep-alive client (pegx) first."""
        if not self.running():
            return
        pid = self.pid
        os.kill(pid, 15)
        self.wait_exit(pid)

    def generate(self, n: int, vote: str = "", address: str = "") -> int:
        """Mine ``n`` blocks (to BURN: the wallet gets no zero-value coinbases), voting
        ``vote`` from now on ("" keeps the vote; n = 0 only sets it); returns the height."""
        self.call("generate", n, vote, address or self.burn)
        return int(self.call("getblockcount"))

    def unlock(self, passphrase: str, seconds: int = 120) -> None:
        """walletpassphrase; nothing to do for an unencrypted wallet (-15)."""
        try:
            self.call("walletpassphrase", passphrase, seconds)
        except RpcError as exc:
            if exc.code != -15:
                raise

    def make_payer(self, sat: int, passphrase: str = "") -> str:
        """Set ``sat`` of the wallet's coins apart at a fresh address, the payer of
        :meth:`pay_many`. Call it before any exchange key is imported: this is the one
        sendtoaddress, and the node's coin selection may spend any wallet output (deposits at
        imported keys included) and return change to an input's address."""
        if passphrase:
            self.unlock(passphrase)
        self.payer = self.call("getnewaddress")
        self.call("sendtoaddress", self.payer, Decimal(sat) / 100_000_000)
        self.generate(1)
        return self.payer

    def pay_many(self, amounts: dict[str, int], passphrase: str = "") -> dict[str, str]:
        """One transaction from the payer's largest coin to each address (``sat``), change
        back to the payer, fee 5,000 sat per input and output; returns {address: "txid:vout"}.
        Built by hand so that it never spends an exchange output."""
        if passphrase:
            self.unlock(passphrase)
        coins = self.call("listunspent", 0, 9_999_999, [self.payer])
        assert coins, f"the payer {self.payer} has no coins left"
        coin = max(coins, key=lambda c: Decimal(c["amount"]))
        value = int(Decimal(coin["amount"]) * 100_000_000)
        fee = 5000 * (2 + len(amounts))
        change = value - sum(amounts.values()) - fee
        assert change > 0, f"the payer has {value:,d} sat, not enough"
        outs = {addr: Decimal(sat) / 100_000_000 for addr, sat in amounts.items()}
        outs[self.payer] = Decimal(change) / 100_000_000
        raw = self.call("createrawtransaction", [{"txid": coin["txid"], "vout": coin["vout"]}],
                        {k: float(v) for k, v in outs.items()})
        signed = self.call("signrawtransaction", raw)
        assert signed["complete"] is True, signed
        txid = self.call("sendrawtransaction", signed["hex"])
        tx = self.call("getrawtransaction", txid, 1)
        found = {}
        for v in tx["vout"]:
            for addr in (v.get("scriptPubKey") or {}).get("addresses", []):
                if addr in amounts:
                    assert Decimal(v["value"]) * 100_000_000 == amounts[addr], v
                    found[addr] = f"{txid}:{v['n']}"
        assert set(found) == set(amounts), tx
        return found

    def pay(self, address: str, sat: int, passphrase: str = "") -> str:
        """Pay ``sat`` to ``address`` from the payer; returns the "txid:vout"."""
        return self.pay_many({address: sat}, passphrase)[address]

    def remove(self) -> None:
        shutil.rmtree(self.datadir, ignore_errors=True)
