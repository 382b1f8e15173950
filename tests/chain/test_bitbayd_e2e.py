"""`pegx serve --chain bitbayd` against the fake node (real reply shapes), driven with stock
xmlrpc.client: the two stalls of issue #13 through the public surface.

1. one wallet output the exchange cannot reconcile (its amount printed inexactly, at an address
   pegx does not even watch) must not stop deposits from registering;
2. an encrypted, locked wallet: without ExchangePassword the deposit keys stay pending and
   `pegx status` says "wallet locked: call ExchangePassword"; after it, they are imported.

The same two run against the real node in tests/chain/test_bitbayd_node.py.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from harness import wait_until
from harness.daemon import Daemon
from harness.fakenode import HEIGHT, node_at_height, std_fractions, unspent_row
from pegx import crypto

BIG_SAT = 99_999_899_999_985_000  # prints as 999998999.99984992 BAY
FOREIGN = "BPx4QUkBhxNQkH2hpQACcoPzuF6EpLNkgT"  # the node's own change address in replies/
PASS = "wallet pass 1"


@pytest.fixture
def node():
    fake = node_at_height()
    yield fake
    fake.close()


def _daemon(tmp_path, node) -> Daemon:
    return Daemon(tmp_path / "d", extra=["--chain", "bitbayd", "--node-url", node.url])


def _deposit_address(x, node) -> tuple[str, str]:
    key, ok = x.GenerateDepositAddress()
    assert ok is True, key
    address = crypto.wif_to_address(key)
    wait_until(lambda: [key, "", False] in node.state["imported"], 20,
               what="the deposit key import")
    return key, address


def test_unreconcilable_output_does_not_stall_deposits(tmp_path, node):
    """Before the fix every cycle pass failed at list_unspent ("fractions sum to
    99,999,899,999,985,000 sat, not 99,999,899,999,984,992 sat") and the deposit never reached
    GetSpendable."""
    big = hashlib.sha256(b"premine change").hexdigest()
    node.state["unspent"] = [unspent_row(big, 1, FOREIGN, BIG_SAT, 7)]
    node.state["fractions"][f"{big}:1"] = std_fractions(BIG_SAT)
    with _daemon(tmp_path, node) as d:
        x = d.proxy()
        _, address = _deposit_address(x, node)
        dep = hashlib.sha256(b"deposit").hexdigest()
        node.state["unspent"].append(unspent_row(dep, 0, address, 10**11, 7))
        node.state["fractions"][f"{dep}:0"] = std_fractions(10**11)
        key = f"{dep}:0"
        wait_until(lambda: key in x.GetSpendable(address), 20, what="the deposit in Spendable")
        assert x.Deposit("alice", [key]) is True
        d.wait_registered(key, 20)
        assert sum(x.GetBalance("alice").values()) == 10**11
        # the odd output is exact now (getfractions' total), and not the exchange's anyway
        assert f"{big}:1" not in x.GetSpendable()
        assert x.pegx.status()["last_error"] == ""
        # an output that really cannot be reconciled: skipped, logged once, passes go on
        odd = hashlib.sha256(b"odd").hexdigest()
        node.state["unspent"].append(unspent_row(odd, 0, FOREIGN, 10**8, 7))
        node.state["fractions"][f"{odd}:0"] = std_fractions(10**8)
        node.state["fractions"][f"{odd}:0"]["values"][5] += 1
        passes = x.pegx.status()["height"]
        node.state["blockcount"] = HEIGHT + 1
        node.state["blockhashes"][HEIGHT + 1] = "b" * 64
        node.state["blocks"]["b" * 64] = {"hash": "b" * 64, "height": HEIGHT + 1,
                                          "time": 1_796_115_273}
        wait_until(lambda: x.pegx.status()["height"] == passes + 1, 20, what="the next pass")
        assert x.pegx.status()["last_error"] == ""
        assert sum(x.GetBalance("alice").values()) == 10**11
    assert d.log().count(f"wallet output {odd}:0 skipped") == 1
    assert f"{big}:1 skipped" not in d.log()


def test_locked_wallet_waits_for_exchange_password(tmp_path, node):
    """Before the fix the cycle imported without the passphrase: the node's -4 failed every
    pass ("Error adding key to wallet") and nothing said what to do."""
    node.state["passphrase"] = PASS
    with _daemon(tmp_path, node) as d:
        x = d.proxy()
        key, ok = x.GenerateDepositAddress()
        assert ok is True
        locked = "wallet locked: call ExchangePassword"
        wait_until(lambda: x.pegx.status()["wallet"] == locked, 20, what="the locked note")
        assert node.state["imported"] == []
        assert x.pegx.status()["last_error"] == ""  # the pass goes on without the imports
        out = subprocess.run([sys.executable, "-m", "pegx", "status", "--url", d.url],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert locked in out
        assert x.ExchangePassword("wrong") is True
        wrong = "wallet passphrase incorrect: call ExchangePassword"
        wait_until(lambda: x.pegx.status()["wallet"] == wrong, 20, what="the wrong passphrase")
        assert node.state["imported"] == [] and x.pegx.status()["last_error"] == ""
        assert x.ExchangePassword(PASS) is True
        wait_until(lambda: [key, "", False] in node.state["imported"], 20, what="the import")
        assert ("walletpassphrase", [PASS, 60]) in node.calls
        wait_until(lambda: x.pegx.status()["wallet"] == "", 20, what="the note to clear")
        # locked again behind pegx's back (the operator, or the node's timer): unlocked again
        node.state["unlocked"] = False
        key2, ok = x.GenerateDepositAddress()
        wait_until(lambda: [key2, "", False] in node.state["imported"], 20, what="import 2")
        assert node.state["unlocked"] is True
