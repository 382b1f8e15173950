"""Running as a service (issue 16 item 6): the sd_notify protocol against a fake NOTIFY_SOCKET
(a real AF_UNIX datagram socket), the watchdog that stops when the cycle thread stalls, JSON
logs, the datadir's permissions, the systemd unit."""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Self

import pytest
from click.testing import CliRunner

from harness import free_port, wait_until
from harness.daemon import Daemon
from harness.fakenode import FakeNode
from pegx.cli import main
from pegx.service import Notifier

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "pegx.service"
GENESIS = "0a" * 32


class FakeSystemd:
    """The service manager's end of $NOTIFY_SOCKET: a bound AF_UNIX datagram socket, at a
    path or (``abstract``) in the abstract namespace (``@name``)."""

    def __init__(self, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = None
        if abstract:
            name = f"pegx-test-{os.getpid()}-{secrets.token_hex(4)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:  # a short path: AF_UNIX paths are limited to 107 bytes
            self.dir = tempfile.mkdtemp(prefix="pegx-notify-", dir="/tmp")
            self.address = os.path.join(self.dir, "notify")
            self.sock.bind(self.address)
        self.received: list[list[str]] = []

    def env(self, watchdog_usec: int = 1_000_000) -> dict:
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": str(watchdog_usec)}

    def next(self, timeout: float) -> list[str] | None:
        """The next datagram's lines, or None if none came within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        lines = data.decode().split("\n")
        self.received.append(lines)
        return lines

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "") -> list[list[str]]:
        """Datagrams up to and including the first one ``predicate`` accepts; fails the test
        at the deadline."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            lines = self.next(max(left, 0.01)) if left > 0 else None
            if lines is None:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"got {seen}")
            seen.append(lines)
            if predicate(lines):
                return seen

    def close(self) -> None:
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pings(datagrams: list[list[str]]) -> int:
    return sum("WATCHDOG=1" in lines for lines in datagrams)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_ready_once_serving_watchdog_pings_stopping_at_shutdown(tmp_path, abstract):
    with FakeSystemd(abstract) as sd:
        d = Daemon(tmp_path / "d", env=sd.env()).start(wait_serving=False)
        try:
            first = sd.next(60)
            assert first is not None, f"no datagram from the daemon:\n{d.log()}"
            assert first[0] == "READY=1", first  # nothing comes before it
            assert any(line.startswith("STATUS=serving on http://") for line in first)
            assert xmlrpc.client.ServerProxy(d.url).pegx.noop() is True  # it serves: no retry
            sd.wait_for(lambda _: pings(sd.received) >= 3, what="3 WATCHDOG=1 pings")
            res = CliRunner().invoke(main, ["stop", "--url", d.url])
            assert "shutting down" in res.output, res.output
            sd.wait_for(lambda lines: "STOPPING=1" in lines, what="STOPPING=1")
            wait_until(lambda: d.proc.poll() is not None, 20, what="exit after pegx stop")
            assert d.proc.returncode == 0
        finally:
            d.stop()


def _chain(node: FakeNode, height: int) -> None:
    """A fake node at ``height`` (block hashes 0..height, each with its time)."""
    hashes = {0: GENESIS} | {h: f"{h:08x}" + "c" * 56 for h in range(1, height + 1)}
    node.state["blockcount"] = height
    node.state["blockhashes"] = hashes
    node.state["blocks"] = {v: {"hash": v, "height": h, "time": 1_700_000_000 + 64 * h}
                            for h, v in hashes.items()}


def test_a_stalled_cycle_thread_stops_the_watchdog_pings(tmp_path):
    """Healthy = the exchange is stopped, or its cycle thread finished a pass within
    cycle_stall_seconds. A node request that never returns stalls the thread: the pings stop (and
    say why in STATUS=); once it returns they resume."""
    node = FakeNode()
    try:
        _chain(node, 30)
        with FakeSystemd() as sd:
            env = {**sd.env(1_000_000), "PEGX_CYCLE_STALL_SECONDS": "5",
                   "PEGX_NODE_TIMEOUT": "600", "PEGX_NODE_DEADLINE": "600"}
            with Daemon(tmp_path / "d", env=env,
                        extra=["--chain", "bitbayd", "--node-url", node.url]) as d:
                sd.wait_for(lambda _: pings(sd.received) >= 3, what="3 pings while healthy")
                node.fault("hold", 1, seconds=600)  # the cycle thread's next request hangs
                wait_until(lambda: node.held == 1, 60, what="the cycle thread to hang")
                sd.wait_for(lambda lines: any(line.startswith("STATUS=stalled: the exchange "
                                                              "cycle thread is running and "
                                                              "has finished no pass")
                                              for line in lines), what="STATUS=stalled")
                after = len(sd.received)
                quiet_until = time.monotonic() + 3.0  # the daemon runs on: 9 ping periods
                while (left := quiet_until - time.monotonic()) > 0:
                    sd.next(left)
                assert pings(sd.received[after:]) == 0, sd.received[after:]
                assert "WATCHDOG=1 pings stop" in d.log()
                node.release()
                sd.wait_for(lambda lines: "WATCHDOG=1" in lines, what="the pings to resume")
                assert "WATCHDOG=1 pings resume" in d.log()
    finally:
        node.close()


def test_a_stopped_exchange_is_healthy(tmp_path):
    """Without --autostart there is no cycle thread to stall: the pings go on."""
    with FakeSystemd() as sd, Daemon(tmp_path / "d", autostart=False,
                                     env={**sd.env(), "PEGX_CYCLE_STALL_SECONDS": "0.5"}):
        sd.wait_for(lambda _: pings(sd.received) >= 6, what="6 pings, exchange stopped")
        assert not any(line.startswith("STATUS=stalled") for g in sd.received for line in g)


def test_notifier_reads_the_environment_as_systemd_sets_it():
    assert not Notifier.from_environ({}).enabled
    assert Notifier.from_environ({}).notify("READY=1") is False
    assert Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1"}).address is None
    pid = os.getpid()
    on = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000"}
    assert Notifier.from_environ(on).watchdog == 3.0
    assert Notifier.from_environ({**on, "WATCHDOG_PID": str(pid)}).watchdog == 3.0
    assert Notifier.from_environ({**on, "WATCHDOG_PID": str(pid + 1)}).watchdog is None
    assert Notifier.from_environ({**on, "WATCHDOG_USEC": "soon"}).watchdog is None
    assert Notifier.from_environ({"WATCHDOG_USEC": "3000000"}).watchdog is None
    with FakeSystemd(abstract=True) as sd:
        n = Notifier.from_environ(sd.env())
        assert n.notify("STATUS=hello", "READY=1") is True
        assert sd.next(10) == ["STATUS=hello", "READY=1"]
        sd.close()
        assert n.notify("WATCHDOG=1") is False  # the manager went away: False, no exception


def test_log_format_json_is_one_object_a_line(tmp_path):
    with Daemon(tmp_path / "d", extra=["--log-format", "json"]) as d:
        d.fund("alice", 10**9)
    entries = [json.loads(line) for line in d.log().splitlines() if line.strip()]
    assert entries
    assert all({"time", "level", "logger", "message", "thread"} <= set(e) for e in entries)
    messages = [e["message"] for e in entries]
    assert any(m.startswith("pegx 0.1.0 serving on http://127.0.0.1:") for m in messages)
    assert any("1,000,000,000 sat for alice" in m for m in messages)
    assert any(e["level"] == "INFO" and e["logger"] == "pegx.app" for e in entries)


def test_a_datadir_other_users_can_read_is_refused_with_advice():
    """The ledger holds the deposit keys; /tmp is world-searchable, so a 0755 datadir in it
    is open to every user."""
    root = Path(tempfile.mkdtemp(prefix="pegx-open-", dir="/tmp"))
    try:
        root.chmod(0o755)
        proc = subprocess.run([sys.executable, "-m", "pegx", "serve", "--datadir", str(root),
                               "--port", str(free_port())], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 1, proc.stderr
        assert "open to other users (mode 0755)" in proc.stderr
        assert f"chmod o-rwx {root}" in proc.stderr and "Traceback" not in proc.stderr
        assert list(root.iterdir()) == []  # refused before anything was written
    finally:
        shutil.rmtree(root)


def test_a_new_datadir_is_made_private(tmp_path):
    datadir = tmp_path / "new" / "d"
    d = Daemon(datadir)  # its args only: start() would make the datadir itself
    with open(tmp_path / "log", "ab") as log:
        proc = subprocess.Popen(d.args, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _answers(d.url) or proc.poll() is not None, 30,
                       what="pegx serve")
            assert proc.poll() is None, (tmp_path / "log").read_text()
            assert stat.S_IMODE(datadir.stat().st_mode) == 0o700
        finally:
            proc.terminate()
            assert proc.wait(30) == 0


def _answers(url: str) -> bool:
    try:
        return xmlrpc.client.ServerProxy(url).pegx.noop()
    except OSError:
        return False


def test_the_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert int(svc["WatchdogSec"]) > 0 and svc["User"] == "pegx"
    assert svc["StateDirectoryMode"] == "0700" and svc["UMask"] == "0077"
    argv = shlex.split(svc["ExecStart"])
    assert argv[1] == "serve"
    serve_help = CliRunner().invoke(main, ["serve", "--help"]).output
    for arg in argv[2:]:
        if arg.startswith("--"):
            assert arg in serve_help, arg


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_the_systemd_unit_verifies(tmp_path):
    exe = Path(sys.executable).with_name("pegx")
    text = UNIT.read_text().replace("/opt/pegx/bin/pegx", str(exe))
    (tmp_path / "pegx.service").write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "pegx.service")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
