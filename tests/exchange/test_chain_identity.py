"""A ledger serves only on its own chain: another chain, one behind it, or one lacking its
registered inputs is refused at start, with a message and a non-zero exit of `pegx serve`.

Real daemons (`pegx serve` subprocesses) on real datadirs; the bitbayd cases run against
tests/harness/fakenode.py answering in the node's shapes (getblockhash as in
/work/shared/bitbayd/replies/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import free_port, wait_until
from harness.daemon import Daemon
from harness.fakenode import FakeNode
from pegx.cli import main
from pegx.ledger import schema
from pegx.ledger.store import Store

FUND = 10**10
SERVE_TIMEOUT = 120  # a refusal comes before the server starts; generous for a loaded machine


def serve(datadir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pegx serve` that is expected to refuse: it must exit on its own, never answer calls."""
    port = free_port()
    args = [sys.executable, "-m", "pegx", "serve", "--datadir", str(datadir), "--port",
            str(port), "--block-seconds", "0", "--autostart", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}")

    def outcome() -> bool:
        if proc.poll() is not None:
            return True
        try:
            proxy.pegx.noop()
        except OSError:
            return False
        proc.kill()
        err = proc.communicate()[1]
        raise AssertionError(f"pegx serve answered calls instead of refusing:\n{err}")

    try:
        wait_until(outcome, SERVE_TIMEOUT, 0.1, what="pegx serve to refuse and exit")
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def refused(res: subprocess.CompletedProcess, *phrases: str) -> str:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "refusing to serve" in out, out
    assert "Traceback" not in out, out
    for phrase in phrases:
        assert phrase in out, out
    return out


@pytest.fixture(scope="module")
def funded(tmp_path_factory):
    """A stopped datadir whose ledger holds alice's registered deposit, plus a copy of its
    devnet taken at a lower height than the ledger reached."""
    root = tmp_path_factory.mktemp("identity")
    datadir = root / "d"
    with Daemon(datadir) as d:
        key = d.fund("alice", FUND)
        shutil.copytree(datadir / "devnet", root / "devnet-early")
        height = d.mine(5)
        x = d.proxy()
        wait_until(lambda: x.pegx.status()["height"] == height, 20, what="the pass at the tip")
    return {"root": root, "datadir": datadir, "key": key, "height": height}


def copy_of(funded, name: str) -> Path:
    target = funded["root"] / name
    shutil.copytree(funded["datadir"], target)
    return target


def balance(datadir: Path) -> dict:
    with Daemon(datadir) as d:
        return d.proxy().GetBalance("alice")


def test_the_original_datadir_serves(funded):
    datadir = copy_of(funded, "same")
    assert sum(int(v) for v in balance(datadir).values()) == FUND


def test_a_deleted_devnet_is_refused_and_not_recreated(funded):
    datadir = copy_of(funded, "deleted")
    shutil.move(datadir / "devnet", funded["root"] / "deleted-devnet")
    out = refused(serve(datadir), "does not exist", "pegx restore")
    assert f"height {funded['height']:,d}" in out
    assert not (datadir / "devnet").exists()  # no new chain was started beside the ledger
    shutil.move(funded["root"] / "deleted-devnet", datadir / "devnet")  # the fix it names
    assert sum(int(v) for v in balance(datadir).values()) == FUND


def test_a_devnet_from_another_datadir_is_refused(funded):
    other = funded["root"] / "other"
    with Daemon(other) as d:  # same seed, same parameters: only its identity differs
        d.mine(funded["height"] + 10)
    datadir = copy_of(funded, "swapped")
    shutil.rmtree(datadir / "devnet")
    shutil.copytree(other / "devnet", datadir / "devnet")
    refused(serve(datadir), "another one", "pegx restore")
    res = CliRunner().invoke(main, ["audit", "--datadir", str(datadir)])
    assert res.exit_code == 1 and "audit FAILED" in res.output, res.output
    assert "but the chain here is another one" in res.output


def test_a_devnet_of_another_seed_is_refused(funded):
    other = funded["root"] / "seed2"
    with Daemon(other, env={"PEGX_DEVNET_SEED": "2"}) as d:
        d.mine(funded["height"] + 10)
    datadir = copy_of(funded, "seeded")
    shutil.rmtree(datadir / "devnet")
    shutil.copytree(other / "devnet", datadir / "devnet")
    refused(serve(datadir, env={"PEGX_DEVNET_SEED": "2"}), "another one")
    res = serve(datadir)  # with the ledger's own seed the devnet's header disagrees
    assert res.returncode != 0 and "seed" in res.stderr and "Traceback" not in res.stderr


def test_a_devnet_behind_the_ledger_is_refused(funded):
    datadir = copy_of(funded, "behind")
    shutil.rmtree(datadir / "devnet")
    shutil.copytree(funded["root"] / "devnet-early", datadir / "devnet")
    refused(serve(datadir), "behind the ledger", f"up to height {funded['height']:,d}")


def _forget_chain(datadir: Path) -> None:
    """Make the ledger look written by a pegx from before chain records (a clean stop has
    checkpointed everything, so the record is one key)."""
    with Store(datadir / "ledger", create=False) as store:
        key = schema.pack_record("meta", "chain")
        assert store.get(key) is not None
        with store.batch() as wb:
            wb.delete(key)


def test_an_older_ledger_on_a_new_chain_is_refused_for_its_inputs(funded):
    datadir = copy_of(funded, "legacy-new-chain")
    _forget_chain(datadir)
    fresh = funded["root"] / "fresh"
    with Daemon(fresh) as d:
        d.mine(funded["height"] + 10)
    shutil.rmtree(datadir / "devnet")
    shutil.copytree(fresh / "devnet", datadir / "devnet")
    refused(serve(datadir), "1 of the ledger's registered inputs", funded["key"])


def test_an_older_ledger_on_its_own_chain_adopts_it_with_a_warning(funded):
    datadir = copy_of(funded, "legacy")
    _forget_chain(datadir)
    with Daemon(datadir) as d:
        assert sum(int(v) for v in d.proxy().GetBalance("alice").values()) == FUND
        assert "records no chain" in d.log() and "adopting devnet chain" in d.log()
    shutil.rmtree(datadir / "devnet")  # adopted: the record is back and guards the ledger
    refused(serve(datadir), "does not exist")


# ---------------------------------------------------------------------- bitbayd

GENESIS = "0" * 8 + "a1" * 28
OTHER_GENESIS = "0" * 8 + "b2" * 28


def _chain(node: FakeNode, height: int, genesis: str = GENESIS, salt: str = "c") -> None:
    """A node at ``height`` with block hashes 0..height (getblock gives each its time)."""
    hashes = {0: genesis} | {h: f"{h:08x}" + salt * 56 for h in range(1, height + 1)}
    node.state["blockcount"] = height
    node.state["blockhashes"] = hashes
    node.state["blocks"] = {v: {"hash": v, "height": h, "time": 1_700_000_000 + 64 * h}
                            for h, v in hashes.items()}


def test_bitbayd_another_network_or_a_node_behind_is_refused(tmp_path):
    datadir = tmp_path / "d"
    node = FakeNode()
    try:
        _chain(node, 30)
        extra = ["--chain", "bitbayd", "--node-url", node.url]
        with Daemon(datadir, extra=extra) as d:
            x = d.proxy()
            wait_until(lambda: x.pegx.status()["height"] == 30, 20, what="a pass at height 30")
            _chain(node, 40)
            wait_until(lambda: x.pegx.status()["height"] == 40, 20, what="a pass at height 40")
        assert ("getblockhash", [0]) in node.calls
        _chain(node, 45, genesis=OTHER_GENESIS)
        refused(serve(datadir, *extra), "another one", OTHER_GENESIS, "--node-url")
        _chain(node, 39)  # the same network, re-synced and not there yet
        refused(serve(datadir, *extra), "at height 39, behind the ledger",
                "up to height 40", "syncing")
        _chain(node, 41, salt="d")  # reorganised past the last processed block: warned only
        with Daemon(datadir, extra=extra) as d:
            assert "reorganised past the ledger's last block" in d.log()
    finally:
        node.close()


def test_bitbayd_warming_up_at_start_is_waited_for(tmp_path):
    node = FakeNode()
    try:
        _chain(node, 30)
        node.fault("warmup", 3)  # more than one bounded attempt absorbs (deadline 0.5 s)
        extra = ["--chain", "bitbayd", "--node-url", node.url]
        with Daemon(tmp_path / "d", extra=extra, env={"PEGX_NODE_DEADLINE": "0.5"}) as d:
            x = d.proxy()
            wait_until(lambda: x.pegx.status()["height"] == 30, 60, what="a pass at height 30")
            assert "cannot check the chain yet" in d.log()
            assert "adopting bitbayd chain " + GENESIS in d.log()
    finally:
        node.close()
