"""What the tests share, each once (issue #11): waits, Fault checks, addresses, ports, the CLI.

The modules beside it drive the real parts: :mod:`harness.daemon` (a `pegx serve` subprocess
on a free port), :mod:`harness.fakenode` (a fake bitbayd answering in the real node's shapes,
for faults the real node cannot show), :mod:`harness.realnode` (the kit's regtest bitbayd),
:mod:`harness.holdstore` (a Store whose chosen write waits) and :mod:`harness.crash` (the
crash-injection run behind ``scripts/crash_test.py``). ``tests/conftest.py`` puts ``tests/`` on
``sys.path``; scripts do the same.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pegx import crypto

ROOT = Path(__file__).resolve().parents[2]  # the checkout
TESTS = ROOT / "tests"
SUPPLY = 100  # the supply index of the tests' devnets (steps below it are reserve)
COMM = {"min": 10**8, "max": 10**9, "percent": "0.001"}  # the tests' commission: 1 to 10 BAY


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               what: str = "") -> Any:
    """Poll ``predicate`` until it returns a truthy value and return it; AssertionError naming
    ``what`` at the deadline (a wait never returns quietly when it times out)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                 f"{what or predicate}")
        time.sleep(interval)


def assert_returns(call: Callable[[], Any], expected: Any) -> Any:
    """Call and compare the exact original return value (type included)."""
    got = call()
    assert got == expected and type(got) is type(expected), f"got {got!r}, want {expected!r}"
    return got


def fault_of(call: Callable[[], object]) -> xmlrpc.client.Fault:
    """The Fault ``call`` raises (it must raise one), with no traceback in its text."""
    with pytest.raises(xmlrpc.client.Fault) as info:
        call()
    assert "Traceback" not in info.value.faultString
    return info.value


def new_address(net: crypto.Network = crypto.MAIN) -> str:
    """A valid address whose key nobody holds or imports: what is paid to it stays there."""
    return crypto.wif_to_address(crypto.generate_deposit_key(net), net)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> tuple[int, str]:
    """``pegx ARGS`` in this process (click's runner): (exit code, output)."""
    from click.testing import CliRunner

    from pegx.cli import main

    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return res.exit_code, res.output


def cli_process(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m pegx ARGS`` as a separate process (its own signals, exit code, streams)."""
    return subprocess.run([sys.executable, "-m", "pegx", *args], capture_output=True,
                          text=True, check=False, timeout=timeout)


def std_inputs(n: int, first: int = 0) -> list[dict]:
    """``n`` items for ``Exchange.credit_inputs``: full 1200-step STD spreads (8 distinct
    ones, ~6.4 kB of op each) with owners user<first>..; keys are distinct hex txids."""
    from pegx import peg

    vecs = [peg.std_spread(10**11 + 7919 * k) for k in range(8)]
    return [{"key": f"{i:064x}:0", "value": int(vecs[i % 8].sum()), "vector": vecs[i % 8],
             "owner": f"user{i:05d}", "address": "Bdeposit"} for i in range(first, first + n)]


def oplog_records(store) -> list[tuple[int, bytes]]:
    """Every op-log record in ``store`` (a Store), as (seq, the bytes stored), in seq order."""
    from pegx.ledger import schema

    return [(schema.unpack_seq(k), v) for k, v in store.scan(schema.OPLOG)]
