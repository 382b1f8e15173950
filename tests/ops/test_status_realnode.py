"""`pegx status` on a real bitbayd that dies (issue #16 item 4): the status says so on its first
call, while the cycle thread is still retrying, and the metrics count the failed requests.

The node is the kit's (tests/harness/realnode.py): skipped with the reason when none can be had, failed
instead under CI=true, as tests/chain/test_bitbayd_node.py does.
"""

from __future__ import annotations

import os
import signal
import urllib.request

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from harness import free_port, realnode
from harness.daemon import Daemon
from harness.realnode import RegtestNode, wait_for
from pegx.cli import main

SYNC = 180  # seconds for pegx to process the node's tip (a loaded 2-core machine)


def _samples(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_a_killed_node_is_reported_at_once(tmp_path):
    node = RegtestNode(realnode.binary_or_skip(), tmp_path / "node", free_port(), {})
    try:
        node.create()
        port = free_port()
        extra = ["--chain", "bitbayd", "--node-url", node.url, "--network", "regtest",
                 "--metrics-port", str(port)]
        # the cycle thread retries for 10 min before it records an error; regtest blocks come
        # on demand, so no stall alarm
        env = {"PEGX_NODE_DEADLINE": "600", "PEGX_STALL_SECONDS": "-1"}
        with Daemon(tmp_path / "pegx", extra=extra, env=env) as d:
            x = d.proxy()
            height = int(node.call("getblockcount"))
            wait_for(lambda: x.pegx.status()["height"] >= height, SYNC,
                     f"pegx to process block {height:,d}")
            assert x.pegx.status()["problems"] == []
            assert _samples(port)[("pegx_up", ())] == 1
            pid = node.pid
            os.kill(pid, signal.SIGKILL)
            node.wait_exit(pid)
            st = x.pegx.status()
            assert st["problems"][0]["kind"] == "node_unreachable", st["problems"]
            assert st["node"] == {"reachable": False, "height": -1,
                                  "error": st["problems"][0]["message"][18:]}
            assert st["last_error"] == "" and st["height"] >= height  # the thread retries on
            res = CliRunner().invoke(main, ["status", "--check", "--url", d.url],
                                     catch_exceptions=False)
            assert res.exit_code == 1 and res.output.startswith("node unreachable: ")
            snap = _samples(port)
            assert snap[("pegx_up", ())] == 0
            assert snap[("pegx_problem", (("kind", "node_unreachable"),))] == 1
            assert snap[("pegx_node_rpc_errors_total", ())] >= 1
            assert snap[("pegx_node_height", ())] == -1
    finally:
        node.stop()
        node.remove()
