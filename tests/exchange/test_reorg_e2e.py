"""Reorganisations end to end: a real `pegx serve` on the devnet, stock xmlrpc.client, the CLI.

CheckWithdraw shows the confirmations towards the final depth; a reorganisation past the final
depth is logged at ERROR, shown first by `pegx status` and listed by `pegx audit`; one across a
cycle boundary that moves the supply republishes balances and moves GetCycle on; a restart
replays the devnet's reorganisations and finds nothing new.
"""

from __future__ import annotations

from harness import COMM, SUPPLY, cli_process, new_address, wait_until
from harness.daemon import Daemon, advance_to, check_ledger_and_chain, mine_one, status_of
from pegx.chain.base import CYCLE_BLOCKS

F = 3


def start(tmp_path) -> tuple[Daemon, object]:
    d = Daemon(tmp_path / "d", extra=["--initial-supply", str(SUPPLY)],
               env={"PEGX_FINAL_DEPTH": str(F)}).start()
    x = d.proxy()
    assert x.ExchangeSettings([x.devnet.new_address()], new_address(), COMM) is True
    return d, x


def test_complete_at_the_final_depth_and_a_deep_reorg_is_an_alarm(tmp_path):
    d, x = start(tmp_path)
    try:
        d.fund("alice", 10**11)
        ok, wid = x.Withdraw("alice", str(10**10), new_address())
        assert ok is True
        advance_to(x, wid, "Processing")
        rec = x.CheckWithdraw(wid)
        seen = []
        while rec["status"] == "Processing":
            seen.append(rec["confirmations"])
            mine_one(x)
            rec = x.CheckWithdraw(wid)
        assert rec["status"] == "Complete" and rec["confirmations"] == F
        assert seen[-(F - 1):] == list(range(1, F))  # Processing 1..F-1 confirmations
        assert x.pegx.status()["reorg_alarm"] == {}
        got = x.devnet.reorg(F + 1, "drop")
        assert got["replaced"]
        mine_one(x)
        st = x.pegx.status()
        alarm = st["reorg_alarm"]
        assert alarm["depth"] == F + 1 and alarm["final_depth"] == F and st["reorgs"] == 1
        assert any("broadcast again" in line for line in alarm["changed"])
        out = cli_process("status", "--url", d.url).stdout
        assert out.splitlines()[0].startswith("ALARM reorganisation deeper than the final depth")
        assert "ERROR" in d.log() and "a block taken as final was replaced" in d.log()
        for _ in range(F + 1):
            mine_one(x)  # the batch is mined again: the chain agrees with the ledger
        audit = cli_process("audit", "--url", d.url)
        assert audit.returncode == 0, audit.stdout
        assert "reorganisation at" in audit.stdout and "broadcast again" in audit.stdout
        assert status_of(x, wid) == "Complete"
    finally:
        d.stop()
    check_ledger_and_chain(tmp_path / "d")
    with Daemon(tmp_path / "d", env={"PEGX_FINAL_DEPTH": str(F)},
                extra=["--initial-supply", str(SUPPLY)]) as d2:  # replayed: nothing new
        x = d2.proxy()
        mine_one(x)
        assert x.pegx.status()["reorgs"] == 1 and x.pegx.audit("")["ok"]


def test_a_boundary_reorg_that_moves_the_supply_moves_getcycle_on(tmp_path):
    d, x = start(tmp_path)
    try:
        d.fund("alice", 10**11)
        h = x.devnet.info()["height"]
        x.devnet.mine(CYCLE_BLOCKS - h % CYCLE_BLOCKS + 1)  # one block into the next cycle
        wait_until(lambda: x.pegx.status()["height"] == x.devnet.info()["height"], 30,
                   what="the pass past the boundary")
        cycle, balance = x.GetCycle(), x.GetBalance("alice")
        x.devnet.reorg(3, "drop", "deflate:3")
        wait_until(lambda: x.GetCycle() == cycle + 1, 30, what="GetCycle to move on")
        assert x.pegx.status()["cycle"] == x.devnet.info()["cycle"]  # the chain's cycle
        assert x.pegx.status()["supply"] == x.devnet.info()["supply"] == SUPPLY + 3
        assert x.GetBalance("alice")["liquid"] < balance["liquid"]
        assert "balances republished" in d.log()
        x.devnet.reorg(2, "keep")  # no supply change: no republication
        mine_one(x)
        assert x.GetCycle() == cycle + 1
        assert x.pegx.audit("")["ok"]
    finally:
        d.stop()
