"""A standby with `--chain bitbayd`: each daemon talks to its own node (two fake nodes that
answer for the same chain, in the real node's reply shapes). The standby follows the primary's
ledger, answers GetSpendable from its own node, and its promotion checks that node against
the ledger as a start does.
"""

from __future__ import annotations

import hashlib

import pytest

from harness import wait_until
from harness.fakenode import node_at_height, std_fractions, unspent_row
from harness.replica import (
    digest,
    make_key,
    primary,
    promote,
    standby,
    status,
    wait_caught_up,
)
from pegx import crypto


@pytest.fixture
def nodes():
    a, b = node_at_height(), node_at_height()
    yield a, b
    a.close()
    b.close()


def test_bitbayd_standby_follows_with_its_own_node_and_takes_over(tmp_path, nodes):
    node_p, node_s = nodes
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key, extra=["--chain", "bitbayd", "--node-url", node_p.url])
    s = standby(tmp_path / "s", key, p,
                extra=["--chain", "bitbayd", "--node-url", node_s.url])
    p.start()
    s.start()
    try:
        x = p.proxy()
        wif, ok = x.GenerateDepositAddress()
        assert ok is True
        address = crypto.wif_to_address(wif)
        wait_until(lambda: [wif, "", False] in node_p.state["imported"], 20,
                   what="the deposit key import on the primary's node")
        dep = hashlib.sha256(b"deposit").hexdigest()
        for node in nodes:  # the deposit is on the chain both nodes follow
            node.state["unspent"].append(unspent_row(dep, 0, address, 10**11, 7))
            node.state["fractions"][f"{dep}:0"] = std_fractions(10**11)
        outpoint = f"{dep}:0"
        wait_until(lambda: outpoint in x.GetSpendable(address), 20, what="Spendable")
        assert x.Deposit("alice", [outpoint]) is True
        p.wait_registered(outpoint, 20)
        assert x.Trade("alice", 10**9, "bobby") is True
        wait_caught_up(p, s)
        assert digest(p) == digest(s)
        sx = s.proxy()
        assert sx.GetSpendable(address) == x.GetSpendable(address)  # from the standby's node
        assert sx.GetBalance("bobby") == x.GetBalance("bobby")
        assert not (tmp_path / "s" / "devnet").exists()
        assert not any(m == "importprivkey" for m, _ in node_s.calls)  # a standby writes nothing
        p.kill()
        st = promote(s)
        assert st["role"] == "primary" and st["epoch"] == 2
        assert "chain check passed" in s.log()
        assert sx.Trade("bobby", 1000, "alice") is True
        assert status(s)["seq"] == digest(s)["seq"]
    finally:
        s.stop()
        p.stop()
