"""Prometheus metrics on --metrics-port (issue #16 item 5): a real daemon is scraped during a
deposit -> trade -> withdraw flow and the text is parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import xmlrpc.client

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import COMM, ROOT, SUPPLY, free_port, new_address, wait_until
from harness.daemon import Daemon, advance, status_of
from harness.fakenode import FakeNode
from pegx.ops.metrics import Metrics, call_result

# every metric README lists, with its type
EXPECTED = {
    "pegx_calls": "counter", "pegx_call_seconds": "histogram",
    "pegx_oplog_fsync_seconds": "histogram", "pegx_checkpoint_seconds": "histogram",
    "pegx_recompute_seconds": "histogram", "pegx_up": "gauge", "pegx_problem": "gauge",
    "pegx_chain_height": "gauge", "pegx_node_height": "gauge",
    "pegx_chain_tip_age_seconds": "gauge", "pegx_cycle": "gauge", "pegx_supply_index": "gauge",
    "pegx_exchange_sat": "gauge", "pegx_withdraws": "gauge",
    "pegx_oldest_pending_withdraw_seconds": "gauge", "pegx_node_rpc_errors": "counter",
    "pegx_ledger_bytes": "gauge", "pegx_accounts": "gauge", "pegx_op_seq": "gauge",
}


def scrape(port: int) -> dict:
    """{family name: type} and {(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    types, samples = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return {"types": types, "samples": samples}


def value(snap: dict, name: str, **labels) -> float:
    return snap["samples"].get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_during_deposit_trade_withdraw(tmp_path):
    port = free_port()
    extra = ["--initial-supply", str(SUPPLY), "--metrics-port", str(port)]
    with Daemon(tmp_path / "d", extra=extra) as d:
        x = d.proxy()
        first = scrape(port)
        for name, kind in EXPECTED.items():
            assert first["types"].get(name) == kind, (name, first["types"].get(name))
        assert value(first, "pegx_up") == 1
        assert value(first, "pegx_node_rpc_errors_total") == 0  # the devnet has no RPC
        assert value(first, "pegx_supply_index") == SUPPLY

        acct0, fee = x.devnet.new_address(), new_address()
        assert x.ExchangeSettings([acct0], fee, COMM) is True
        d.fund("alice", 10**11)  # deposit
        assert x.Trade("alice", str(10**9), "bobby") is True
        assert x.Trade("alice", str(10**9), "carol") is True
        assert isinstance(x.Trade("nobody", str(10**9), "bobby"), str)  # refused in-band
        with pytest.raises(xmlrpc.client.Fault):
            x.Trade("alice")  # wrong arity: a fault
        with pytest.raises(xmlrpc.client.Fault):
            x.NoSuchCall()
        ok, wid = x.Withdraw("alice", str(10**10), new_address())
        assert ok is True
        assert x.Withdraw("alice", str(10**10), "not-an-address") == [
            "Withdraw address not valid", ""]
        mid = scrape(port)
        assert value(mid, "pegx_calls_total", method="Trade", result="ok") == 2
        assert value(mid, "pegx_calls_total", method="Trade", result="refused") == 1
        assert value(mid, "pegx_calls_total", method="Trade", result="fault") == 1
        assert value(mid, "pegx_call_seconds_count", method="Trade") == 4
        assert value(mid, "pegx_calls_total", method="unknown", result="fault") == 1
        assert value(mid, "pegx_calls_total", method="Withdraw", result="ok") == 1
        assert value(mid, "pegx_calls_total", method="Withdraw", result="refused") == 1
        assert value(mid, "pegx_calls_total", method="Deposit", result="ok") == 1
        assert value(mid, "pegx_withdraws", status="pending") == 1
        assert value(mid, "pegx_oldest_pending_withdraw_seconds") >= 0
        assert value(mid, "pegx_oplog_fsync_seconds_count") >= 5  # settings, claims, trades...
        assert value(mid, "pegx_recompute_seconds_count") >= 1  # at load
        assert value(mid, "pegx_ledger_bytes") > 0
        st = x.pegx.status()
        assert value(mid, "pegx_chain_height") == st["height"]
        assert value(mid, "pegx_exchange_sat", part="liquid") == st["exchange"]["liquid"]
        assert value(mid, "pegx_accounts") == st["users"]

        assert x.pegx.checkpoint() >= 1
        advance(x, lambda: status_of(x, wid) == "Complete")
        end = scrape(port)
        assert value(end, "pegx_withdraws", status="complete") == 1
        assert value(end, "pegx_withdraws", status="pending") == 0
        assert value(end, "pegx_oldest_pending_withdraw_seconds") == 0
        assert value(end, "pegx_checkpoint_seconds_count") >= 1
        assert value(end, "pegx_chain_height") > value(mid, "pegx_chain_height")
        assert value(end, "pegx_cycle") == x.GetCycle()
        assert value(end, "pegx_up") == 1

        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=60)
        assert err.value.code == 404


def test_readme_lists_every_metric(tmp_path):
    readme = (ROOT / "README.md").read_text()
    port = free_port()
    with Daemon(tmp_path / "d", extra=["--metrics-port", str(port)]):
        types = scrape(port)["types"]
    assert set(types) == set(EXPECTED)
    for name, kind in types.items():
        shown = f"{name}_total" if kind == "counter" else name
        assert f"| `{shown}" in readme, f"README's metric table lacks {shown}"


def test_node_rpc_errors_are_counted(tmp_path):
    node = FakeNode()
    try:
        node.state["blockcount"] = 30
        hashes = {h: f"{h:08x}" + "c" * 56 for h in range(31)}
        node.state["blockhashes"] = hashes
        node.state["blocks"] = {v: {"hash": v, "height": h, "time": int(time.time())}
                                for h, v in hashes.items()}
        port = free_port()
        extra = ["--chain", "bitbayd", "--node-url", node.url, "--metrics-port", str(port)]
        with Daemon(tmp_path / "d", extra=extra) as d:
            x = d.proxy()
            wait_until(lambda: x.pegx.status()["height"] == 30, 20, what="a pass at height 30")
            assert value(scrape(port), "pegx_node_rpc_errors_total") == 0
            node.fault("http503", 3)  # three requests answered 503, by whoever asks next
            wait_until(lambda: value(scrape(port), "pegx_node_rpc_errors_total") == 3, 30,
                       what="three node errors counted")
            snap = scrape(port)
            assert value(snap, "pegx_node_height") == 30
    finally:
        node.close()


def test_a_problem_shows_in_pegx_up(tmp_path):
    port = free_port()
    with Daemon(tmp_path / "d", autostart=False, extra=["--metrics-port", str(port)]):
        snap = scrape(port)
        assert value(snap, "pegx_up") == 0
        assert value(snap, "pegx_problem", kind="exchange_stopped") == 1
        assert value(snap, "pegx_problem", kind="node_unreachable") == 0


def test_each_daemon_has_its_own_registry():
    """Two in one process (tests): neither clashes with the other nor with the global
    registry, and each counts only its own calls."""
    a, b = Metrics(), Metrics()
    for m in (a, b):
        m.set_methods(["Trade", "GetBalance"], refusing=["Trade", "GetBalance"])
    a.on_call("Trade", True, 0.001)
    a.on_call("Trade", "Not enough funds", 0.001)
    a.on_call("Launch", xmlrpc.client.Fault(-32601, "no"), 0.001)
    b.on_call("GetBalance", False, 0.002)
    ta, tb = a.text().decode(), b.text().decode()
    assert 'pegx_calls_total{method="Trade",result="ok"} 1.0' in ta
    assert 'pegx_calls_total{method="Trade",result="refused"} 1.0' in ta
    assert 'pegx_calls_total{method="unknown",result="fault"} 1.0' in ta
    assert "GetBalance" not in ta and "Trade" not in tb
    assert 'pegx_calls_total{method="GetBalance",result="refused"} 1.0' in tb


def test_call_results():
    assert call_result(True, True) == "ok"
    assert call_result({"liquid": 1}, True) == "ok"
    assert call_result(("key", True), True) == "ok"  # GenerateDepositAddress
    assert call_result([True, "id"], True) == "ok"  # Withdraw
    assert call_result(False, True) == "refused"
    assert call_result("Incorrect Password", True) == "refused"
    assert call_result(["Withdraw address not valid", ""], True) == "refused"
    assert call_result("txid:0", False) == "ok"  # devnet.send: a string is its answer
    assert call_result(xmlrpc.client.Fault(1, "x"), False) == "fault"


def test_metrics_port_is_off_by_default_and_on_the_bind_address(tmp_path):
    port = free_port()
    with Daemon(tmp_path / "d", extra=["--metrics-port", str(port)]) as d:
        assert f"metrics on http://127.0.0.1:{port}/metrics" in d.log()
    with Daemon(tmp_path / "e") as d:
        assert "metrics on" not in d.log()
        wait_until(lambda: d.proxy().pegx.status()["loaded"], 20, what="loaded")
