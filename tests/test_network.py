"""The network setting (issue #13 item 3): address versions and the cycle length are the
network's, not mainnet's constants. On the devnet, network = testnet gives testnet keys and
addresses (versions 111/196/239) and 20-block cycles; the bitbayd backend takes the length from
getpeginfo's interval (tests/chain/test_bitbayd_shapes.py::test_testnet_network_client, and the real
node in tests/chain/test_bitbayd_node.py)."""

from __future__ import annotations

import pytest

from harness import assert_returns, wait_until
from harness.daemon import Daemon
from pegx import crypto
from pegx.admin import offline
from pegx.chain.devnet import Devnet
from pegx.chain.devnet.log import DevnetLogError

COMM = {"min": 10**8, "max": 10**9, "percent": "0.001"}


def test_testnet_devnet_end_to_end(tmp_path):
    """Before the network setting the daemon refused --network, and with mainnet constants a
    20-block cycle could not exist: deposit keys were mainnet WIFs ('P...'), withdraw windows
    and the cycle followed 200-block positions."""
    net = crypto.TESTNET
    with Daemon(tmp_path / "d", network=net, extra=["--initial-supply", "50"]) as d:
        x = d.proxy()
        assert x.devnet.info()["network"] == "testnet"
        assert x.pegx.status()["network"] == "testnet"
        key, ok = x.GenerateDepositAddress()
        assert ok is True and key.startswith("c")
        main_payee = crypto.wif_to_address(crypto.generate_deposit_key())
        payee = crypto.wif_to_address(crypto.generate_deposit_key(net), net)
        assert payee[0] in "mn"
        acct0 = x.devnet.new_address()
        assert acct0[0] in "mn"
        assert x.ExchangeSettings([main_payee]).startswith("Exchange account")
        assert x.ExchangeSettings([acct0], crypto.wif_to_address(
            crypto.generate_deposit_key(net), net), COMM) is True
        d.fund("alice", 10**11)
        assert_returns(lambda: x.Withdraw("alice", str(10**9), main_payee),
                       ["Withdraw address not valid", ""])
        # a cycle is 20 blocks: a vote moves the supply 20 blocks on, not 200
        info = x.devnet.info()
        assert info["blocks_to_next_cycle"] == 20 - info["height"] % 20
        cycle = x.GetCycle()
        x.devnet.vote("deflate", 2)
        x.devnet.mine(info["blocks_to_next_cycle"])
        wait_until(lambda: x.GetCycle() == cycle + 1, 20, what="the 20-block cycle change")
        assert x.devnet.info()["supply"] == 52
        assert sum(x.GetBalance("alice").values()) == 10**11
        ok, wid = x.Withdraw("alice", str(10**9), payee)
        assert ok is True
        for _ in range(60):  # the liquid window comes round every 20 blocks
            rec = x.CheckWithdraw(wid)
            if isinstance(rec, dict) and rec["status"] == "Complete":
                break
            h = x.devnet.mine(1)
            wait_until(lambda h=h: x.pegx.status()["height"] >= h, 20, what=f"height {h}")
        else:
            raise AssertionError(f"withdraw {wid} not Complete within 60 blocks: {rec!r}")
        assert x.devnet.balance(payee)["liquid"] == 10**9 - 10**8


def test_devnet_remembers_its_network(tmp_path):
    Devnet(tmp_path, block_seconds=0, network=crypto.TESTNET).close()
    with pytest.raises(DevnetLogError, match="network='testnet', not 'main'"):
        Devnet(tmp_path, block_seconds=0)
    Devnet(tmp_path / "m", block_seconds=0).close()  # main, written with the setting
    with pytest.raises(DevnetLogError, match="network='main', not 'testnet'"):
        Devnet(tmp_path / "m", block_seconds=0, network=crypto.TESTNET)
    # a devnet made before the setting existed (no network in its header) is a mainnet one
    log = tmp_path / "m" / "devnet" / "actions.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace(',"network":"main"', "")
    assert "network" not in lines[0]
    log.write_text("".join(lines))
    Devnet(tmp_path / "m", block_seconds=0).close()
    dn = Devnet(tmp_path, block_seconds=0, network=crypto.TESTNET)
    try:
        dn.mine(45)
        tip = dn.tip()
        assert (tip.cycle, tip.interval) == (2, 20)
        with pytest.raises(Exception, match="invalid private key"):
            dn.import_key(crypto.generate_deposit_key())
    finally:
        dn.close()


def test_offline_tools_open_a_testnet_devnet(tmp_path):
    """`pegx audit --datadir` / verify-backup open the devnet with its own header's network
    (before, a testnet devnet was refused as "created with network='testnet', not 'main'")."""
    dn = Devnet(tmp_path, block_seconds=0, network=crypto.TESTNET)
    dn.mine(21)
    dn.close()
    chain = offline.open_devnet(tmp_path)
    try:
        assert chain.network is crypto.TESTNET and chain.tip().cycle == 1
    finally:
        chain.close()
