"""pegx against the real BitBay node (issue #13): bitbayd from ../shared/bitbayd on a private
regtest chain made by its run_regtest.sh, `pegx serve --chain bitbayd --network regtest` in a
subprocess, driven with stock xmlrpc.client, the node's side checked with its own RPC.

The chain keeps the 1e9 BAY premine in the wallet (KEEP_PREMINE=1), so the wallet holds outputs
above 2^53 sat whose printed amounts are inexact (item 1), and the wallet is encrypted (item 2).
From the fixture on, every block votes deflate, so each cycle boundary moves the peg up.

Runs when the node can be built (build.sh, cached) or PEGX_BITBAYD names a binary; otherwise
it is skipped with the reason, and under CI=true it fails instead. Each test starts its own
pegx (own datadir, own deposit keys) on the module's node and stops it before the node stops:
the node's shutdown waits for clients holding keep-alive connections.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xmlrpc.client
from decimal import Decimal
from pathlib import Path

import base58
import pytest

from harness import free_port, new_address, realnode
from harness.daemon import Daemon
from harness.realnode import RegtestNode, wait_for
from pegx import crypto

COIN = 100_000_000
PW = "api pass 13"
WPASS = "wallet pass 1"
NET = crypto.REGTEST
COMM = {"min": 10**8, "max": 10**9, "percent": "0.001"}  # 1 BAY for a small withdraw
SYNC = 180  # seconds for pegx to process the node's tip (a loaded 2-core machine)
BLOCK_LIMIT = 260  # blocks a window task may take to come round (a cycle and a bit)


@pytest.fixture(scope="module")
def node():
    """The module's node: the kit's chain (peg 3 at 1610, 6 at 1800, 9 at 2000), premine kept,
    wallet encrypted with WPASS and locked, every new block voting deflate."""
    binary = realnode.binary_or_skip()
    n = RegtestNode(binary, Path(tempfile.mkdtemp(prefix="pegx-bitbayd-")), free_port(), {})
    try:
        n.create(KEEP_PREMINE="1")
        n.encrypt(WPASS)
        n.make_payer(50_000_000 * COIN, WPASS)  # 5e15 sat: exact as a double
        n.generate(0, "deflate")
        yield n
    finally:
        n.stop()
        n.remove()


# ---------------------------------------------------------------- helpers


def status(x) -> dict:
    """pegx.status, with the API password where the daemon takes one (issue #10 item 7: a
    daemon without a password set refuses PW, one before that change takes no argument)."""
    try:
        st = x.pegx.status(PW)
    except xmlrpc.client.Fault:
        st = None
    return st if isinstance(st, dict) else x.pegx.status()


def synced(x, node: RegtestNode) -> int:
    """Wait until pegx has fully processed the node's tip (status height is published last in
    a pass, window task included); returns the height."""
    height = int(node.call("getblockcount"))
    wait_for(lambda: status(x)["height"] >= height, SYNC, f"pegx to process block {height:,d}")
    return height


def mine(x, node: RegtestNode, n: int, vote: str = "") -> int:
    node.generate(n, vote)
    return synced(x, node)


def advance(x, node: RegtestNode, pred, what: str, limit: int = BLOCK_LIMIT):
    """Mine one block at a time (each processed by pegx) until ``pred()`` is truthy."""
    for _ in range(limit):
        got = pred()
        if got:
            return got
        mine(x, node, 1)
    raise AssertionError(f"{what}: not reached within {limit} blocks (pegx log has more)")


def to_position(x, node: RegtestNode, pos: int, vote: str = "") -> int:
    """Mine to the next block at position ``pos`` of a 200-block cycle."""
    height = int(node.call("getblockcount"))
    target = height - height % 200 + pos
    if target <= height:
        target += 200
    return mine(x, node, target - height, vote)


def start_pegx(tmp_path: Path, node: RegtestNode, *, autostart: bool = False,
               network: crypto.Network = NET, name: str = "pegx") -> Daemon:
    extra = ["--chain", "bitbayd", "--node-url", node.url, "--network", network.name]
    return Daemon(tmp_path / name, autostart=autostart, extra=extra).start()


def open_exchange(x, node: RegtestNode, *, first: bool = True) -> str:
    """SetPassword (first start), StartExchange, wait until loaded, ExchangePassword; on the
    first start also ExchangeSettings with a fresh wallet address as the exchange account."""
    if first:
        assert x.SetPassword(PW) is True
    assert x.StartExchange(PW, 1) is True
    wait_for(lambda: x.StartExchange(PW, 1, 1) is True, SYNC, "the exchange to load")
    assert x.ExchangePassword(WPASS, PW) is True
    if not first:
        return ""
    node.unlock(WPASS)  # a fresh key from the keypool needs the unlocked wallet
    acct0 = node.call("getnewaddress")
    assert x.ExchangeSettings([acct0], new_address(NET), COMM, 7, PW) is True
    return acct0


def new_deposit_address(x, node: RegtestNode) -> str:
    key, ok = x.GenerateDepositAddress(PW)
    assert ok is True, key
    address = crypto.wif_to_address(key, NET)
    wait_for(lambda: node.call("validateaddress", address).get("ismine"), SYNC,
             f"pegx to import the key of {address} into the wallet")
    return address


def deposit(x, node: RegtestNode, amounts: dict[str, int]) -> dict[str, str]:
    """For each user: a deposit address, a node payment to it, Deposit once it is Spendable,
    and wait until registered. Returns {user: "txid:vout"}."""
    addresses = {user: new_deposit_address(x, node) for user in amounts}
    paid = node.pay_many({addresses[u]: sat for u, sat in amounts.items()}, WPASS)
    ops = {user: paid[addresses[user]] for user in amounts}
    mine(x, node, 1)

    def spendable() -> bool:
        return all(op in x.GetSpendable(addresses[u], PW) for u, op in ops.items())

    advance(x, node, spendable, "the deposits to reach Spendable", limit=30)
    for user, op in ops.items():
        assert x.Deposit(user, [op], PW) is True
    wait_for(lambda: all((x.GetDeposits(op, PW) or {}).get("registered") == 1
                         for op in ops.values()), SYNC, "the deposits to register")
    return ops


def total(x, user: str, pw: str = PW) -> int:
    bal = x.GetBalance(user, pw)
    return int(bal["liquid"]) + int(bal["reserve"])


def withdraw_record(x, wid: str):
    rec = x.CheckWithdraw(wid, 0, PW)
    return rec if isinstance(rec, dict) else None


def withdraw_status(x, wid: str) -> str | None:
    rec = withdraw_record(x, wid)
    return rec["status"] if rec else None


def paid_output(node: RegtestNode, txid: str, address: str) -> dict:
    """The one output of ``txid`` paying ``address``, as the node reports it."""
    tx = node.call("getrawtransaction", txid, 1)
    outs = [v for v in tx["vout"] if address in v["scriptPubKey"].get("addresses", [])]
    assert len(outs) == 1, tx
    return {**outs[0], "txid": txid, "blocktime": tx.get("blocktime", 0)}


def audit_clean(d: Daemon) -> None:
    done = subprocess.run([sys.executable, "-m", "pegx", "audit", "--url", d.url,
                           "--password", PW], check=False, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "audit OK" in done.stdout, done.stdout + done.stderr


# ---------------------------------------------------------------- the flow


def reserve_withdraw_completed(x, node, wid: str) -> tuple[str, set[str]]:
    """Mine into the withdraw window and on until withdraw ``wid`` is Complete; returns its
    transaction's txid and the addresses its inputs came from (as the node reads them)."""
    to_position(x, node, 76)
    advance(x, node, lambda: withdraw_status(x, wid) == "Complete", "the reserve withdraw")
    rec = withdraw_record(x, wid)
    txid = rec.get("txid2") or rec["txid"]
    tx = node.call("getrawtransaction", txid, 1)
    addresses = set()
    for vin in tx["vin"]:
        prev = node.call("getrawtransaction", vin["txid"], 1)["vout"][vin["vout"]]
        addresses.update(prev["scriptPubKey"]["addresses"])
    return txid, addresses


def test_exchange_flow_on_the_real_node(node, tmp_path):
    """SetPassword, StartExchange, ExchangePassword (encrypted wallet), ExchangeSettings;
    deposits for four users; trades in both styles and through the pool; a cycle change with
    the peg moving; a liquid withdraw to Complete across a SIGKILL of pegx; audit clean."""
    d = start_pegx(tmp_path, node)
    try:
        x = d.proxy()
        open_exchange(x, node)
        amounts = {"alice": 5000 * COIN, "bobby": 3000 * COIN, "carol": 2000 * COIN,
                   "dave": 1000 * COIN}
        ops = deposit(x, node, amounts)
        assert {u: total(x, u) for u in amounts} == amounts

        # item 1: the wallet really holds outputs whose printed amount is not their value
        # (the premine's change, ~1e17 sat), and pegx's passes go on regardless
        inexact = []
        for row in node.call("listunspent", 0):
            fr = node.call("getfractions", f"{row['txid']}:{row['vout']}")
            if fr and Decimal(row["amount"]) * COIN != fr["total"]:
                inexact.append((row["amount"], fr["total"]))
        assert inexact, "expected wallet outputs above 2^53 sat (KEEP_PREMINE=1)"
        assert status(x)["last_error"] == ""

        # trades: liquid, reserve, and through the pool (debit first, then credit)
        assert x.Trade("alice", str(400 * COIN), "bobby", "liquid", PW) is True
        assert x.Trade("bobby", str(1 * COIN), "carol", "reserve", PW) is True
        assert x.Trade("dave", str(-150 * COIN), "", "liquid", PW) is True
        assert x.Trade("carol", str(150 * COIN), "", "liquid", PW) is True
        after_trades = {u: total(x, u) for u in amounts}
        assert after_trades == {"alice": 4600 * COIN, "bobby": 3399 * COIN,
                                "carol": 2151 * COIN, "dave": 850 * COIN}

        # a cycle change with the peg moving: balances recomputed, every total unchanged
        peg_before = node.call("getpeginfo")["peg"]
        cycle = x.GetCycle(PW)
        reserve_before = sum(int(x.GetBalance(u, PW)["reserve"]) for u in amounts)
        to_position(x, node, 1, "deflate")
        wait_for(lambda: x.GetCycle(PW) == cycle + 1, SYNC, "GetCycle to move")
        assert node.call("getpeginfo")["peg"] > peg_before
        assert status(x)["supply"] == node.call("getpeginfo")["peg"]
        assert {u: total(x, u) for u in amounts} == after_trades
        assert sum(int(x.GetBalance(u, PW)["reserve"]) for u in amounts) > reserve_before
        assert x.Trade("carol", str(2 * COIN), "alice", "reserve", PW) is True

        # a liquid withdraw, pegx killed (SIGKILL) once its transaction is out
        payee = new_address(NET)
        ok, wid = x.Withdraw("alice", str(200 * COIN), payee, "liquid", PW)
        assert ok is True, wid
        to_position(x, node, 12)
        advance(x, node, lambda: withdraw_status(x, wid) is not None, "the liquid batch")
        sent = withdraw_record(x, wid)
        d.kill()
        mine_height = node.generate(1)
        d.start(wait_loaded=False)
        x = d.proxy()
        open_exchange(x, node, first=False)
        assert synced(x, node) >= mine_height
        advance(x, node, lambda: withdraw_status(x, wid) == "Complete", "Complete", limit=20)
        rec = withdraw_record(x, wid)
        txid = rec.get("txid2") or rec["txid"]
        assert txid in (sent["txid"], sent.get("txid2"))  # the transaction sent before the kill
        out = paid_output(node, txid, payee)
        assert Decimal(out["value"]) * COIN == 199 * COIN  # 200 BAY less 1 BAY commission
        assert node.call("gettxout", txid, out["n"], True) is not None
        assert total(x, "alice") == after_trades["alice"] + 2 * COIN - 200 * COIN
        assert status(x)["last_error"] == ""
        audit_clean(d)
        assert ops  # (the deposits stay registered inputs or were spent by the withdraw)
    finally:
        d.stop()


def test_reserve_withdraw_from_one_address(node, tmp_path):
    """A reserve withdraw whose inputs all sit at ONE exchange address, to Complete: the payee
    output is frozen (flags F, a lock time) and holds reserve only (inputs at three addresses:
    the next test)."""
    d = start_pegx(tmp_path, node)
    try:
        x = d.proxy()
        open_exchange(x, node)
        (op,) = deposit(x, node, {"erin": 10_000 * COIN}).values()
        txid, vout = op.split(":")
        deposit_address = node.call("getrawtransaction", txid, 1)["vout"][int(vout)][
            "scriptPubKey"]["addresses"][0]
        # the next boundary raises the peg by 3: ~3 % of the deposit becomes chain reserve
        cycle = x.GetCycle(PW)
        to_position(x, node, 1, "deflate")
        wait_for(lambda: x.GetCycle(PW) == cycle + 1, SYNC, "GetCycle to move")
        reserve = int(x.GetBalance("erin", PW)["reserve"])
        assert reserve > 100 * COIN, reserve
        payee = new_address(NET)
        ok, wid = x.Withdraw("erin", str(50 * COIN), payee, "reserve", PW)
        assert ok is True, wid
        txid, addresses = reserve_withdraw_completed(x, node, wid)
        assert addresses == {deposit_address}
        out = paid_output(node, txid, payee)
        assert Decimal(out["value"]) * COIN == 49 * COIN  # 50 BAY less 1 BAY commission
        assert out.get("flags") == "F" and out["lock"] > out["blocktime"]
        assert Decimal(out["reserve"]) == Decimal(out["value"])
        assert Decimal(out["liquidity"]) == 0
        frozen = node.call("getfractions", f"{txid}:{out['n']}")
        assert frozen["flags"] == "F" and frozen["reserve"] == frozen["total"] == 49 * COIN
        assert status(x)["last_error"] == ""
        audit_clean(d)
    finally:
        d.stop()


def test_reserve_withdraw_from_three_addresses(node, tmp_path):
    """A reserve withdraw bigger than the reserve of any two of the exchange's addresses, so
    its inputs sit at three (issue #12: the builder's one shared `**F**` notary, payee first):
    the real node accepts it, and the payee output is frozen and holds exactly the amount less
    the commission, all reserve. (The builder before issue #12 put one notary per input ahead
    of the payee; the node refuses that shape for inputs at two or more addresses.)"""
    d = start_pegx(tmp_path, node)
    try:
        x = d.proxy()
        open_exchange(x, node)
        users = ("gina", "hank", "iris")
        ops = deposit(x, node, {u: 10_000 * COIN for u in users})
        cycle = x.GetCycle(PW)
        to_position(x, node, 1, "deflate")  # the boundary raises the peg: reserve appears
        wait_for(lambda: x.GetCycle(PW) == cycle + 1, SYNC, "GetCycle to move")
        chain_reserve = sorted((int(node.call("getfractions", op)["reserve"])
                                for op in ops.values()), reverse=True)
        # hank and iris hand gina all their reserve but 1 BAY
        for user in ("hank", "iris"):
            give = int(x.GetBalance(user, PW)["reserve"]) - COIN
            assert x.Trade(user, str(give), "gina", "reserve", PW) is True
        amount = int(x.GetBalance("gina", PW)["reserve"]) - COIN
        c = 10**9 if amount // 1000 > 10**9 else max(10**8, amount // 1000)
        assert amount - c > chain_reserve[0] + chain_reserve[1], (amount, chain_reserve)
        payee = new_address(NET)
        ok, wid = x.Withdraw("gina", str(amount), payee, "reserve", PW)
        assert ok is True, wid
        txid, addresses = reserve_withdraw_completed(x, node, wid)
        assert len(addresses) >= 3, addresses
        out = paid_output(node, txid, payee)
        frozen = node.call("getfractions", f"{txid}:{out['n']}")
        assert out.get("flags") == "F" and out["lock"] > out["blocktime"]
        assert frozen["flags"] == "F" and frozen["reserve"] == frozen["total"] == amount - c
        assert Decimal(out["liquidity"]) == 0
        assert status(x)["last_error"] == ""
        audit_clean(d)
    finally:
        d.stop()


def test_locked_wallet_waits_for_exchange_password(node, tmp_path):
    """Item 2 on the real node: importprivkey on the locked wallet answers -4; pegx keeps the
    key pending, `pegx status` says "wallet locked: call ExchangePassword", and once
    ExchangePassword is called the key is imported (the node unlocked briefly)."""
    node.call("walletlock")
    d = start_pegx(tmp_path, node, autostart=True)
    try:
        x = d.proxy()
        key, ok = x.GenerateDepositAddress()
        assert ok is True
        address = crypto.wif_to_address(key, NET)
        locked = "wallet locked: call ExchangePassword"
        wait_for(lambda: status(x)["wallet"] == locked, SYNC, "the locked-wallet note")
        assert node.call("validateaddress", address)["ismine"] is False
        assert status(x)["last_error"] == ""
        out = subprocess.run([sys.executable, "-m", "pegx", "status", "--url", d.url],
                             check=False, capture_output=True, text=True, timeout=60)
        assert locked in out.stdout, out.stdout + out.stderr
        assert x.ExchangePassword(WPASS) is True
        wait_for(lambda: node.call("validateaddress", address)["ismine"], SYNC, "the import")
        wait_for(lambda: status(x)["wallet"] == "", SYNC, "the note to clear")
        assert int(node.call("getinfo")["unlocked_until"]) > 0  # unlocked for a minute only
    finally:
        d.stop()


def test_cycle_length_comes_from_the_node(node, tmp_path):
    """Item 3: the cycle pegx publishes is the node's (height // getpeginfo interval)."""
    d = start_pegx(tmp_path, node, autostart=True)
    try:
        x = d.proxy()
        height = synced(x, node)
        info = node.call("getpeginfo")
        assert status(x)["chain_cycle"] == info["cycle"] == height // info["interval"]
        assert status(x)["network"] == "regtest"
    finally:
        d.stop()


TESTNET_BURN = base58.b58encode_check(bytes([111]) + bytes(20)).decode()


def test_testnet_versions_on_a_real_node(tmp_path):
    """Item 3 on a node with testnet address versions (the kit's -regtestaddrprefix=test):
    network = main is refused with a message naming the setting; network = testnet deposits."""
    binary = realnode.binary_or_skip()
    wrapper = tmp_path / "bitbayd-testnet-prefix"
    wrapper.write_text(f'#!/bin/sh\nexec "{binary}" -regtestaddrprefix=test "$@"\n')
    wrapper.chmod(0o755)
    n = RegtestNode(str(wrapper), Path(tempfile.mkdtemp(prefix="pegx-bitbayd-t-")),
                    free_port(), {}, burn=TESTNET_BURN)
    try:
        n.create(HEIGHT="1010", VOTE_TO="1005")
        assert n.make_payer(1_000_000 * COIN)[0] in "mn"
        d = start_pegx(tmp_path, n, autostart=True, network=crypto.MAIN, name="main")
        try:
            x = d.proxy()
            assert x.GenerateDepositAddress()[1] is True
            wait_for(lambda: "network = main" in status(x)["last_error"], SYNC,
                     "the network mismatch to show")
        finally:
            d.stop()
        d = start_pegx(tmp_path, n, autostart=True, network=crypto.TESTNET, name="testnet")
        try:
            x = d.proxy()
            key, ok = x.GenerateDepositAddress()
            assert ok is True and key.startswith("c")
            address = crypto.wif_to_address(key, crypto.TESTNET)
            wait_for(lambda: n.call("validateaddress", address).get("ismine"), SYNC, "import")
            op = n.pay(address, 1000 * COIN)
            for _ in range(30):
                if op in x.GetSpendable(address):
                    break
                n.generate(1)
                synced(x, n)
            assert x.Deposit("frank", [op]) is True
            wait_for(lambda: (x.GetDeposits(op) or {}).get("registered") == 1, SYNC,
                     "the deposit to register")
            assert total(x, "frank", "") == 1000 * COIN
        finally:
            d.stop()
    finally:
        n.stop()
        n.remove()
