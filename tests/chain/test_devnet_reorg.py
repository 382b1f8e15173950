"""The devnet's reorganisation lever: keep, drop, votes, conflicting spends, replay, wire, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import xmlrpc.client

import pytest

from harness.daemon import Daemon
from pegx.chain.base import CYCLE_BLOCKS, ChainRejected, TxOut
from pegx.chain.devnet import Devnet
from pegx.chain.devnet import tx as dtx
from pegx.chain.devnet.log import LOG_NAME

S = 500
E11 = 100_000_000_000
PAY = 100_000_000  # liquid enough at supply 500 to be paid to another address
FEE = 15_000


@pytest.fixture
def dn(tmp_path):
    chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    yield chain
    chain.close()


def funded(dn: Devnet) -> tuple[str, str]:
    address = dn.new_address()
    key = dn.send(address, E11)
    dn.mine()
    return address, key


def payment(dn: Devnet, key: str, src: str, dst: str) -> str:
    """The raw of a spend of ``key`` paying PAY to ``dst``, the rest back to ``src``."""
    outs = [TxOut(PAY, address=dst), TxOut(E11 - PAY - FEE, address=src)]
    return dn.create_transaction([key], outs).raw


def hashes(dn: Devnet) -> list[str]:
    return [dn.block_hash(h) for h in range(dn.tip().height + 1)]


def state(dn: Devnet) -> dict:
    """What a client can observe of the chain."""
    led = dn._ledger
    return {"tip": dn.tip(), "hashes": hashes(dn), "mempool": list(led.mempool),
            "txs": {t: (tx.height, [int(v.sum()) for v in tx.fractions])
                    for t, tx in led.txs.items()},
            "supplies": list(led.supplies), "info": dn.info(), "seen": dict(led.seen)}


def test_keep_mines_the_same_transactions_at_the_same_depth_in_new_blocks(dn):
    a, key = funded(dn)
    b = dn.new_address()
    txid = dn.broadcast(payment(dn, key, a, b))
    dn.mine(3)
    before, conf = hashes(dn), dn.get_transaction(txid).confirmations
    result = dn.reorg(3, "keep")
    assert result["fork"] == 1 and result["height"] == 4
    assert result["replaced"] == [txid] == result["mined"] and result["evicted"] == {}
    after = hashes(dn)
    assert after[:2] == before[:2]  # below the fork nothing changes
    assert all(x != y for x, y in zip(after[2:], before[2:], strict=True))
    assert dn.get_transaction(txid).confirmations == conf
    assert dn.identity() == dn.info()["id"] and dn.info()["reorgs"] == 1
    assert dn.reorganises


def test_a_second_identical_reorg_still_gives_new_hashes(dn):
    dn.mine(4)  # empty blocks: the hash must not depend on the content alone
    first = hashes(dn)
    dn.reorg(2, "keep")
    second = hashes(dn)
    dn.reorg(2, "keep")
    third = hashes(dn)
    assert len({first[4], second[4], third[4]}) == 3


def test_drop_removes_the_branch_transactions_and_a_spend_can_come_back(dn):
    a, key = funded(dn)
    b = dn.new_address()
    raw = payment(dn, key, a, b)
    txid = dn.broadcast(raw)
    deposit = dn.send(b, 5 * PAY)
    dn.mine(2)
    result = dn.reorg(2, "drop")
    assert sorted(result["replaced"]) == sorted([txid, deposit.split(":")[0]])
    assert result["mined"] == []
    assert dn.get_transaction(txid) is None and dn.get_transaction(deposit.split(":")[0]) is None
    assert dn.is_unspent(key) and dn.balance(b)["amount"] == 0
    assert dn.broadcast(raw) == txid  # a spend can be broadcast again and mined
    dn.mine()
    assert dn.get_transaction(txid).confirmations == 1


def test_mempool_stays_unless_the_new_branch_invalidates_it(dn):
    a, key = funded(dn)
    b = dn.new_address()
    parent = dn.broadcast(payment(dn, key, a, b))
    dn.mine()
    other_a, other_key = funded(dn)
    child = dn.broadcast(dn.create_transaction(
        [f"{parent}:1"], [TxOut(E11 - PAY - 2 * FEE, address=a)]).raw)
    lone = dn.broadcast(payment(dn, other_key, other_a, b))
    result = dn.reorg(2, "drop")  # drops `parent` and the funding of other_key
    assert set(result["evicted"]) == {child, lone}
    assert dn._ledger.mempool == []
    a2, key2 = funded(dn)
    pending = dn.broadcast(payment(dn, key2, a2, b))
    dn.reorg(1, "keep")  # the funding comes back: what spends it stays in the mempool
    assert dn._ledger.mempool == [pending]


def test_an_outpoint_spend_replaces_the_branch_transaction(dn):
    a, key = funded(dn)
    b = dn.new_address()
    txid = dn.broadcast(payment(dn, key, a, b))
    dn.mine()
    result = dn.reorg(1, "keep", spend=[key])
    assert txid in result["evicted"] and "already spent" in result["evicted"][txid]
    cancel = dn.spender(key)
    assert cancel != txid and result["mined"] == [cancel]
    tx = dn.get_transaction(cancel)
    assert tx.confirmations == 1 and tx.outputs == [TxOut(E11 - 10_000, address=a)]
    assert dn.get_transaction(txid) is None
    # the batch-like spend is remembered: a later reorg can mine it instead again
    result = dn.reorg(1, "drop", spend=[txid])
    assert dn.spender(key) == txid and result["mined"] == [txid]


def test_a_spend_refused_by_the_reject_lever_can_be_mined_by_a_reorg(dn):
    a, key = funded(dn)
    b = dn.new_address()
    raw = payment(dn, key, a, b)
    dn.reject_next_broadcast("no")
    with pytest.raises(ChainRejected):
        dn.broadcast(raw)
    cancel = dn.broadcast(dn.create_transaction([key], [TxOut(E11 - 10_000, address=a)]).raw)
    dn.mine()
    assert dn.spender(key) == cancel
    txid = dtx.txid_of(raw)
    dn.reorg(1, "drop", spend=[txid])
    assert dn.spender(key) == txid and dn.get_transaction(cancel) is None


def test_votes_change_the_supply_of_a_replaced_boundary(dn):
    dn.vote("deflate", 1)
    dn.mine(CYCLE_BLOCKS + 2)
    assert dn.supply_for_cycle(1) == S + 1
    dn.reorg(5, "keep")  # no votes: the boundary is mined again with the vote it had
    assert dn.supply_for_cycle(1) == S + 1 and dn.tip().supply == S + 1
    dn.reorg(5, "drop", votes="inflate:3")
    assert dn.supply_for_cycle(1) == S - 3 and dn.tip().supply == S - 3
    with pytest.raises(ValueError, match="cross no cycle boundary"):
        dn.reorg(2, "keep", votes="nochange")  # 200 is the fork's block: no boundary replaced
    dn.reorg(3, "keep", votes="nochange")
    assert dn.supply_for_cycle(1) == S


def test_keep_reevaluates_spends_at_the_new_supply(dn):
    a, key = funded(dn)
    b = dn.new_address()
    dn.mine(CYCLE_BLOCKS - 2)
    big = 650_000_000  # liquid at supply 500 (657,048,351), not at 503 (637,533,360)
    raw = dn.create_transaction([key], [TxOut(big, address=b),
                                        TxOut(E11 - big - FEE, address=a)]).raw
    txid = dn.broadcast(raw)
    dn.mine(2)
    assert dn.get_transaction(txid).height == CYCLE_BLOCKS
    result = dn.reorg(2, "keep", votes="deflate:3")
    assert "short" in result["evicted"][txid] and dn.get_transaction(txid) is None
    assert dn.is_unspent(key) and dn.tip().supply == S + 3
    assert dn._ledger.seen[txid] == raw  # remembered: a later reorg may mine it again


@pytest.mark.parametrize("kwargs, error", [
    ({"depth": 0}, ValueError), ({"depth": 99}, ValueError), ({"depth": True}, ValueError),
    ({"depth": 1, "txs": "some"}, ValueError), ({"depth": 1, "votes": "up"}, ValueError),
    ({"depth": 1, "votes": "deflate:9"}, ValueError),
    ({"depth": 1, "votes": "deflate"}, ValueError),  # no boundary crossed
    ({"depth": 1, "spend": "ab"}, ValueError), ({"depth": 1, "spend": [7]}, ValueError),
    ({"depth": 1, "spend": ["f" * 64]}, ChainRejected),
    ({"depth": 1, "spend": ["nonsense"]}, ValueError),
])
def test_bad_arguments_change_nothing(dn, kwargs, error):
    funded(dn)
    dn.mine(3)
    log = dn._log.path.read_bytes()
    before = state(dn)
    with pytest.raises(error):
        dn.reorg(**kwargs)
    assert state(dn) == before and dn._log.path.read_bytes() == log


def test_a_spend_that_cannot_be_mined_refuses_the_whole_reorg(dn):
    a, key = funded(dn)
    b = dn.new_address()
    txid = dn.broadcast(payment(dn, key, a, b))
    dn.mine(3)  # the spend is 3 deep: replacing 1 block cannot undo it
    log, before = dn._log.path.read_bytes(), state(dn)
    with pytest.raises(ChainRejected, match="cannot be mined on the new branch"):
        dn.reorg(1, "keep", spend=[key])
    with pytest.raises(ChainRejected, match="not an output of the devnet wallet"):
        dn.reorg(1, "keep", spend=[f"{txid}:0".replace(txid, "e" * 64)])
    assert state(dn) == before and dn._log.path.read_bytes() == log


def test_reorgs_replay_exactly_after_a_restart(tmp_path):
    def run(dn: Devnet) -> None:
        a, key = funded(dn)
        b = dn.new_address()
        refused = payment(dn, key, a, b)
        dn.reject_next_broadcast("no")
        with pytest.raises(ChainRejected):
            dn.broadcast(refused)
        txid = dn.broadcast(dn.create_transaction([key], [TxOut(E11 - 10_000, address=a)]).raw)
        dn.mine(CYCLE_BLOCKS)
        dn.reorg(3, "keep")
        dn.reorg(CYCLE_BLOCKS, "drop", votes="deflate:2",
                 spend=[dtx.txid_of(refused)])
        dn.send(b, PAY)
        dn.mine(2)
        dn.reorg(2, "keep", spend=[f"{dn.spender(key)}:1"])
        assert dn.get_transaction(txid) is None

    first = Devnet(tmp_path / "one", block_seconds=0, initial_supply=S)
    run(first)
    want = state(first)
    first.close()
    again = Devnet(tmp_path / "one", block_seconds=0, initial_supply=S)
    try:
        assert state(again) == want
        assert sum(1 for line in (tmp_path / "one" / "devnet" / LOG_NAME).read_text()
                   .splitlines() if '"a":"reorg"' in line) == 3
    finally:
        again.close()


def test_reorg_over_xmlrpc_and_the_cli(tmp_path):
    with Daemon(tmp_path / "d") as d:
        x = d.proxy()
        d.mine(5)
        got = x.devnet.reorg(2, "keep")
        assert got["fork"] == 3 and got["height"] == 5 and got["replaced"] == []
        with pytest.raises(xmlrpc.client.Fault, match="depth must be 1..1000"):
            x.devnet.reorg(0)
        with pytest.raises(xmlrpc.client.Fault, match="no spend"):
            x.devnet.reorg(1, "drop", "", ["a" * 64])
        out = subprocess.run(
            [sys.executable, "-m", "pegx", "devnet", "reorg", "--url", d.url, "1", "--txs",
             "drop"], capture_output=True, text=True, timeout=60, check=True).stdout
        assert json.loads(out)["fork"] == 4
        assert x.devnet.info()["reorgs"] == 2
