"""`pegx status` shows what needs the operator before the figures, and `pegx status --check`
exits 1 while anything does (issue #16 item 4).

Real daemons: the devnet for the exchange's own problems, the fake node (tests/harness/fakenode.py,
the real node's reply shapes) for a node that goes away, answers with errors or stops making
blocks.
"""

from __future__ import annotations

import time
import xmlrpc.client

from click.testing import CliRunner

from harness import new_address, wait_until
from harness.daemon import Daemon, mine_one
from harness.fakenode import FakeNode
from pegx.cli import main
from pegx.config import load
from pegx.exchange.withdraws import NO_RETURN_ADDRESS
from pegx.ops.health import duration, stall_threshold

BAY = 10**8
GENESIS = "0" * 8 + "a1" * 28


def check(url: str) -> tuple[int, list[str]]:
    """`pegx status --check`: (exit code, lines)."""
    res = CliRunner().invoke(main, ["status", "--check", "--url", url], catch_exceptions=False)
    return res.exit_code, res.output.splitlines()


def kinds(x) -> list[str]:
    return [p["kind"] for p in x.pegx.status()["problems"]]


def slow_proxy(url: str) -> xmlrpc.client.ServerProxy:
    """A client that gives up after 60 s rather than hang the test if status ever blocks."""

    class Transport(xmlrpc.client.Transport):
        def make_connection(self, host):
            conn = super().make_connection(host)
            conn.timeout = 60
            return conn

    return xmlrpc.client.ServerProxy(url, allow_none=True, transport=Transport())


def test_exchange_stopped_and_withdraws_not_batchable_fail_the_check(tmp_path):
    with Daemon(tmp_path / "d", autostart=False) as d:
        x = d.proxy()
        code, lines = check(d.url)
        assert code == 1 and lines[0].startswith("exchange not started"), lines
        assert kinds(x) == ["exchange_stopped"]
        assert x.StartExchange("", 1) is True
        wait_until(lambda: x.StartExchange("", 1, 1) is True, 20, what="the exchange to load")
        assert check(d.url) == (0, ["ok: nothing needs the operator"])
        res = CliRunner().invoke(main, ["status", "--url", d.url], catch_exceptions=False)
        assert res.exit_code == 0 and res.output.startswith("pegx ")  # no problem line
        d.fund("alice", 10**11)
        ok, _ = x.Withdraw("alice", str(10 * BAY), new_address())
        assert ok is True
        for _ in range(450):  # no exchange account: the batch task says why nothing goes
            if x.pegx.status()["withdraws_not_batchable"]:
                break
            mine_one(x)
        st = x.pegx.status()
        assert st["problems"] == [{"kind": "withdraws_not_batchable", "message":
                                   f"withdraws pending but not batchable: {NO_RETURN_ADDRESS}"}]
        assert st["pipeline"]["stages"]["pending"]["count"] == 1
        assert st["pipeline"]["stages"]["pending"]["oldest_age"] >= 0  # the accept time is kept
        code, lines = check(d.url)
        assert (code, lines) == (1, [f"withdraws pending but not batchable: {NO_RETURN_ADDRESS}"])
        # on-demand devnet blocks: a chain that waits for someone to mine is not stalled
        assert st["stall_seconds"] == 0 and st["tip_age"] >= 0
        assert st["node"] == {"reachable": True, "height": st["height"], "error": ""}


def test_devnet_block_age_is_from_when_the_block_came(tmp_path):
    """The devnet's block times are synthetic (2020 and a fixed spacing): its tip age counts
    from when this daemon saw the block. An explicit stall_seconds applies even on demand."""
    with Daemon(tmp_path / "d", env={"PEGX_STALL_SECONDS": "2"}) as d:
        x = d.proxy()
        wait_until(lambda: "chain_stalled" in kinds(x), 60, what="the stall alarm")
        st = x.pegx.status()
        assert st["tip_age"] >= 2 and st["stall_seconds"] == 2
        assert st["problems"][0]["message"].startswith("chain not advancing: no new block for ")
        before = time.time()
        mine_one(x)
        age = x.pegx.status()["tip_age"]
        assert age <= time.time() - before + 1  # counted from the new block, not the old one


def test_a_reorganisation_past_the_final_depth_is_the_first_problem(tmp_path):
    with Daemon(tmp_path / "d", env={"PEGX_FINAL_DEPTH": "3"}) as d:
        x = d.proxy()
        for _ in range(6):
            mine_one(x)
        assert kinds(x) == []
        x.devnet.reorg(4, "keep")  # one block deeper than the final depth
        mine_one(x)
        st = x.pegx.status()
        assert [p["kind"] for p in st["problems"]] == ["deep_reorg"]
        assert st["problems"][0]["message"].startswith(
            "ALARM reorganisation deeper than the final depth (3): blocks ")
        code, lines = check(d.url)
        assert code == 1 and lines == [st["problems"][0]["message"]]
        res = CliRunner().invoke(main, ["status", "--url", d.url], catch_exceptions=False)
        assert res.output.count("ALARM reorganisation") == 1  # once, first


def _chain(node: FakeNode, height: int, tip_time: int) -> None:
    """A node at ``height`` whose blocks are 64 s apart, the best one at ``tip_time``."""
    hashes = {0: GENESIS} | {h: f"{h:08x}" + "c" * 56 for h in range(1, height + 1)}
    node.state["blockcount"] = height
    node.state["blockhashes"] = hashes
    node.state["blocks"] = {v: {"hash": v, "height": h, "time": tip_time - 64 * (height - h)}
                            for h, v in hashes.items()}


def test_a_node_that_goes_away_is_reported_at_once(tmp_path):
    """The cycle thread retries the node for up to node_deadline (here 10 min) before it
    records an error; status must not wait for that: its own quick probe finds the node gone
    on the first call."""
    node = FakeNode()
    try:
        _chain(node, 30, int(time.time()))
        extra = ["--chain", "bitbayd", "--node-url", node.url]
        with Daemon(tmp_path / "d", extra=extra, env={"PEGX_NODE_DEADLINE": "600"}) as d:
            x = slow_proxy(d.url)
            wait_until(lambda: x.pegx.status()["height"] == 30, 20, what="a pass at height 30")
            assert check(d.url) == (0, ["ok: nothing needs the operator"])
            node.fault("drop", 10**6)  # kept-alive connections get no reply ...
            node.close()  # ... and new ones are refused: the node is gone
            st = x.pegx.status()
            assert st["problems"][0]["kind"] == "node_unreachable", st["problems"]
            assert st["problems"][0]["message"].startswith("node unreachable: ")
            assert st["node"]["reachable"] is False and st["node"]["height"] == -1
            assert st["height"] == 30 and st["last_error"] == ""  # the thread still retries
            code, lines = check(d.url)
            assert code == 1 and lines[0].startswith("node unreachable: "), lines
            res = CliRunner().invoke(main, ["status", "--url", d.url], catch_exceptions=False)
            assert res.output.startswith("node unreachable: ")  # before the figures
    finally:
        node.close()


def test_a_stalled_chain_and_failing_passes(tmp_path):
    node = FakeNode()
    try:
        old = int(time.time()) - 3600
        _chain(node, 30, old)  # the node's best block is an hour old
        extra = ["--chain", "bitbayd", "--node-url", node.url]
        with Daemon(tmp_path / "d", extra=extra, env={"PEGX_STALL_SECONDS": "600"}) as d:
            x = d.proxy()
            wait_until(lambda: x.pegx.status()["height"] == 30, 20, what="a pass at height 30")
            st = x.pegx.status()
            assert [p["kind"] for p in st["problems"]] == ["chain_stalled"]
            assert st["problems"][0]["message"].startswith(
                "chain not advancing: no new block for ")
            assert "(height 30; the alarm is at 10 min 0 s)" in st["problems"][0]["message"]
            assert st["tip_age"] >= 3600 and st["stall_seconds"] == 600
            assert check(d.url)[0] == 1
            _chain(node, 31, int(time.time()))  # a new block, just made
            wait_until(lambda: x.pegx.status()["height"] == 31, 20, what="a pass at height 31")
            assert kinds(x) == []
            node.state["errors"]["listunspent"] = (-1, "listunspent exploded")
            wait_until(lambda: "cycle_failing" in kinds(x), 30, what="a failed pass")
            st = x.pegx.status()
            assert st["node"]["reachable"] is True  # the node answers: only the passes fail
            msg = st["problems"][0]["message"]
            assert msg.startswith("exchange cycle pass failed ") and "listunspent exploded" in msg
            code, lines = check(d.url)
            assert code == 1 and len(lines) == 1, lines
            assert lines[0].startswith("exchange cycle pass failed ") and msg.endswith(
                lines[0].split(" ago", 1)[1])
            del node.state["errors"]["listunspent"]
            wait_until(lambda: kinds(x) == [], 60, what="a pass that goes through")
            assert check(d.url)[0] == 0
            assert x.pegx.status()["last_error"]  # the last error stays among the figures
    finally:
        node.close()


def test_a_locked_wallet_is_a_problem_until_exchange_password(tmp_path):
    node = FakeNode()
    try:
        _chain(node, 30, int(time.time()))
        node.state["passphrase"] = "wallet pass 1"  # encrypted and locked
        extra = ["--chain", "bitbayd", "--node-url", node.url]
        with Daemon(tmp_path / "d", extra=extra) as d:
            x = d.proxy()
            key, ok = x.GenerateDepositAddress()  # a key to import: the wallet is needed
            assert ok is True
            wait_until(lambda: "wallet_locked" in kinds(x), 20, what="the locked wallet")
            assert kinds(x) == ["wallet_locked"]
            assert check(d.url) == (1, ["wallet locked: call ExchangePassword"])
            assert x.ExchangePassword("wallet pass 1") is True
            wait_until(lambda: [key, "", False] in node.state["imported"], 20, what="the import")
            wait_until(lambda: kinds(x) == [], 20, what="the problem to clear")
            assert check(d.url) == (0, ["ok: nothing needs the operator"])
    finally:
        node.close()


def test_stall_threshold_and_durations(tmp_path):
    devnet = {"chain": "devnet", "datadir": str(tmp_path)}
    assert stall_threshold(load({**devnet, "block_seconds": 0}, environ={})) == 0
    assert stall_threshold(load({**devnet, "block_seconds": 2}, environ={})) == 20
    assert stall_threshold(load({**devnet, "chain": "bitbayd"}, environ={})) == 640
    assert stall_threshold(load({**devnet, "chain": "bitbayd", "stall_seconds": 90},
                                          environ={})) == 90
    assert stall_threshold(load({**devnet, "chain": "bitbayd", "stall_seconds": -1},
                                          environ={})) == 0
    assert [duration(s) for s in (0, 59, 61, 3600, 90061)] == [
        "0 s", "59 s", "1 min 1 s", "1 h 0 min", "1 d 1 h"]
