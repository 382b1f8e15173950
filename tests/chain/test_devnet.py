"""The embedded devnet chain: determinism, persistence, supply votes, peg rules, levers."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from pegx import crypto
from pegx.chain.base import Chain, ChainRejected, TxOut
from pegx.chain.devnet import Devnet
from pegx.chain.devnet.ledger import GENESIS_TIME, block_time
from pegx.chain.devnet.log import LOG_NAME, DevnetLogError
from pegx.chain.devnet.peg import FREEZE_SECONDS
from pegx.peg import PEG_SIZE, std_spread

S = 500  # supply index used by most tests: 1e11 STD -> liquid 657,048,351
E11 = 100_000_000_000
LIQ_E11 = 657_048_351
RES_E11 = E11 - LIQ_E11


@pytest.fixture
def dn(tmp_path):
    chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    yield chain
    chain.close()


def funded(dn: Devnet, amount: int = E11) -> tuple[str, str]:
    """A wallet address holding one mined STD output of ``amount``; returns (address, key)."""
    address = dn.new_address()
    key = dn.send(address, amount)
    dn.mine()
    return address, key


def spend(dn: Devnet, inputs: list[str], outputs: list[TxOut]) -> str:
    return dn.broadcast(dn.create_transaction(inputs, outputs).raw)


def script(dn: Devnet) -> dict:
    """A fixed run of actions touching every kind of record; returns what it produced."""
    a, key = funded(dn)
    b = dn.new_address()
    dn.vote("deflate", 2)
    t1 = spend(
        dn, [key], [TxOut(100_000_000, address=b), TxOut(E11 - 100_000_000 - 15_000, address=a)]
    )
    dn.malleate_next()
    dn.mine(3)
    t2 = dn.send(b, 12_345_678)
    dn.mine(200)
    return {"a": a, "b": b, "t1": t1, "t2": t2}


def snapshot(dn: Devnet, twin: bool = False) -> dict:
    """Everything observable; ``twin``: leave out what names this devnet (its id, hence its
    block hashes), for comparing two devnets fed the same actions."""
    tip = dn.tip()
    info = dn.info()
    if twin:
        info.pop("id")
    return {
        "tip": tip,
        "supplies": [dn.supply_for_cycle(c) for c in range(tip.cycle + 2)],
        "info": info,
        "hashes": [] if twin else [dn.block_hash(h) for h in range(tip.height + 1)],
        "utxos": [
            (
                u.key,
                u.address,
                u.value,
                u.confirmations,
                u.height,
                u.frozen_until,
                u.fractions.tolist(),
            )
            for u in dn.list_unspent()
        ],
    }


# ---------------------------------------------------------------------- basics


def test_implements_chain_protocol_and_genesis(dn):
    assert isinstance(dn, Chain)
    assert dn.name == "devnet"
    tip = dn.tip()
    assert (tip.height, tip.cycle, tip.supply, tip.time) == (0, 0, S, GENESIS_TIME)
    assert dn.mine(5) == 5
    assert dn.tip().time == GENESIS_TIME + 5 * 64


def test_determinism_same_seed_same_chain(tmp_path):
    one = Devnet(tmp_path / "one", block_seconds=0, initial_supply=S, seed=7)
    two = Devnet(tmp_path / "two", block_seconds=0, initial_supply=S, seed=7)
    other = Devnet(tmp_path / "other", block_seconds=0, initial_supply=S, seed=8)
    try:
        r1, r2, r3 = script(one), script(two), script(other)
        assert r1 == r2
        assert snapshot(one, twin=True) == snapshot(two, twin=True)
        assert r3["a"] != r1["a"]  # another seed derives other keys, hence other txids
        assert r3["t2"] != r1["t2"]
    finally:
        for chain in (one, two, other):
            chain.close()


def test_persistence_across_close_and_reopen(tmp_path):
    chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    twin = Devnet(tmp_path / "twin", block_seconds=0, initial_supply=S)
    try:
        for d in (chain, twin):
            script(d)
            d.vote("inflate", 3)
            d.send(d.info()["wallet_addresses"][0], 5_000_000)  # left in the mempool
            d.malleate_next()
            d.reject_next_broadcast("nope")
        before = snapshot(chain)
        chain.close()
        chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
        assert snapshot(chain) == before
        assert chain.info()["mempool"] == 1 and chain.info()["malleate_next"]
        assert chain.supply_for_cycle(1) == S + 2
        with pytest.raises(ChainRejected, match="nope"):
            chain.broadcast("00")
        with pytest.raises(ChainRejected, match="nope"):
            twin.broadcast("00")
        chain.mine(200)
        twin.mine(200)
        # the reopened chain goes on exactly alike
        assert snapshot(chain, twin=True) == snapshot(twin, twin=True)
        assert chain.supply_for_cycle(2) == S + 2 - 3
    finally:
        chain.close()
        twin.close()


def test_identity_and_block_hashes(tmp_path):
    one = Devnet(tmp_path / "one", block_seconds=0, initial_supply=S)
    two = Devnet(tmp_path / "two", block_seconds=0, initial_supply=S)
    try:
        for d in (one, two):
            d.mine(3)
        # same seed, same actions: still two chains, told apart by id and every block hash
        assert one.identity() != two.identity() and len(one.identity()) == 32
        assert one.info()["id"] == one.identity()
        assert all(one.block_hash(h) != two.block_hash(h) for h in range(4))
        hashes = [one.block_hash(h) for h in range(4)]
        assert len(set(hashes)) == 4 and all(len(h) == 64 for h in hashes)
        with pytest.raises(ChainRejected, match="no block at height 4"):
            one.block_hash(4)
        one.send(one.new_address(), 5_000)
        one.mine()
        two.mine()  # the same height with other content: another hash
        assert one.block_hash(4) != two.block_hash(4)
        ident, hashes = one.identity(), [one.block_hash(h) for h in range(5)]
        one.close()
        one = Devnet(tmp_path / "one", block_seconds=0, initial_supply=S)  # replayed alike
        assert one.identity() == ident and [one.block_hash(h) for h in range(5)] == hashes
    finally:
        one.close()
        two.close()


def test_a_log_from_before_ids_gets_an_id_from_its_parameters(tmp_path):
    chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    chain.mine(2)
    chain.close()
    path = tmp_path / "devnet" / LOG_NAME
    lines = path.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    del header["id"]  # as written by a pegx before chain identities
    path.write_bytes(b"\n".join([json.dumps(header).encode(), *lines[1:]]))
    chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    try:
        assert chain.identity().startswith("legacy-") and chain.tip().height == 2
    finally:
        chain.close()


def test_torn_last_line_is_dropped_and_settings_are_checked(tmp_path):
    chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    chain.mine(3)
    with pytest.raises(DevnetLogError, match="in use"):
        Devnet(tmp_path, block_seconds=0, initial_supply=S)
    chain.close()
    path = tmp_path / "devnet" / LOG_NAME
    with open(path, "ab") as f:
        f.write(b'{"a":"mine","n":5')  # a crash in the middle of a write
    chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    assert chain.tip().height == 3
    chain.mine()
    chain.close()
    chain = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    assert chain.tip().height == 4
    chain.close()
    with pytest.raises(DevnetLogError, match="initial_supply"):
        Devnet(tmp_path, block_seconds=0, initial_supply=S + 1)
    lines = path.read_bytes().split(b"\n")
    assert all(json.loads(line) for line in lines[:-1]) and lines[-1] == b""


# ---------------------------------------------------------------------- supply


def test_vote_moves_supply_at_the_boundary_only(dn):
    dn.vote("deflate", 3)
    assert dn.info()["next_supply"] == S + 3
    dn.mine(199)
    assert dn.tip().supply == S
    dn.mine()
    assert (dn.tip().cycle, dn.tip().supply) == (1, S + 3)
    dn.mine(200)  # unscripted: unchanged
    dn.vote("nochange", 1)
    dn.vote("inflate", 2)  # the last vote of a cycle wins
    dn.mine(200)
    assert [dn.supply_for_cycle(c) for c in range(4)] == [S, S + 3, S + 3, S + 1]
    with pytest.raises(ChainRejected):
        dn.supply_for_cycle(9)


def test_supply_clamps_at_both_ends(tmp_path):
    low = Devnet(tmp_path / "low", block_seconds=0, initial_supply=1)
    high = Devnet(tmp_path / "high", block_seconds=0, initial_supply=1197)
    try:
        low.vote("inflate", 3)
        high.vote("deflate", 3)
        low.mine(200)
        high.mine(200)
        assert (low.tip().supply, high.tip().supply) == (0, 1198)
    finally:
        low.close()
        high.close()


def test_walk_seed_moves_supply_deterministically(tmp_path):
    chains = [
        Devnet(tmp_path / str(i), block_seconds=0, initial_supply=S, walk_seed=w)
        for i, w in enumerate((42, 42, 43))
    ]
    try:
        for chain in chains:
            chain.mine(2000)
        history = [[c.supply_for_cycle(k) for k in range(11)] for c in chains]
        assert history[0] == history[1]
        assert len(set(history[0])) > 1  # it does walk
        assert history[0] != history[2]
        steps = np.abs(np.diff(history[0]))
        assert steps.max() <= 3
    finally:
        for chain in chains:
            chain.close()


# ---------------------------------------------------------------------- deposits


def test_outside_deposit_has_the_std_spread(dn):
    address = dn.new_address()
    key = dn.send(address, E11)
    mempool = dn.list_unspent()
    assert [(u.key, u.confirmations, u.height) for u in mempool] == [(key, 0, 0)]
    assert dn.list_unspent(min_conf=1) == []
    assert dn.balance(address)["amount"] == 0  # mempool outputs do not count
    dn.mine(3)
    f = dn.get_fractions(key)
    assert f[:5].tolist() == [1000000000, 990000000, 980100000, 970299000, 960596010]
    assert int(f[-1]) == 584300 and int(f.sum()) == E11 and f.dtype == np.int64
    (utxo,) = dn.list_unspent(min_conf=3)
    assert (utxo.confirmations, utxo.height, utxo.value) == (3, 1, E11)
    assert dn.balance(address) == {
        "amount": E11,
        "liquid": LIQ_E11,
        "reserve": RES_E11,
        "frozen": 0,
    }


def test_given_fraction_vector_is_honoured(dn):
    address = dn.new_address()
    fractions = [0] * PEG_SIZE
    fractions[10], fractions[900] = 7_000, 3_000
    key = dn.send(address, 10_000, fractions)
    dn.mine()
    assert dn.get_fractions(key).tolist() == fractions
    assert dn.balance(address) == {"amount": 10_000, "liquid": 3_000, "reserve": 7_000, "frozen": 0}


def test_imported_key_joins_the_wallet(dn):
    wif = crypto.generate_deposit_key()
    address = dn.import_key(wif)
    assert address == crypto.wif_to_address(wif) == dn.import_key(wif)
    assert address in dn.info()["wallet_addresses"]
    foreign = crypto.pubkey_to_address(crypto.public_key(crypto.new_private_key()))
    dn.send(address, 50_000)
    dn.send(foreign, 60_000)
    dn.mine()
    assert [u.value for u in dn.list_unspent()] == [50_000]  # only wallet outputs
    assert dn.balance(foreign)["amount"] == 60_000  # any address has a balance
    with pytest.raises(ChainRejected, match="invalid private key"):
        dn.import_key("not a key")


# ---------------------------------------------------------------------- peg rules


def test_liquid_send_pays_liquid_only(dn):
    a, key = funded(dn)
    b = dn.new_address()
    change = E11 - 600_000_000 - 15_000
    txid = spend(dn, [key], [TxOut(600_000_000, address=b), TxOut(change, address=a)])
    assert dn.get_transaction(txid).confirmations == 0
    dn.mine()
    tx = dn.get_transaction(txid)
    assert (tx.height, tx.confirmations, tx.inputs) == (2, 1, [key])
    paid = dn.get_fractions(f"{txid}:0")
    assert int(paid[:S].sum()) == 0 and int(paid.sum()) == 600_000_000
    assert dn.balance(b) == {
        "amount": 600_000_000,
        "liquid": 600_000_000,
        "reserve": 0,
        "frozen": 0,
    }
    # the change took all the reserve back plus the rest of the liquidity, minus the fee
    assert dn.balance(a) == {
        "amount": change,
        "liquid": LIQ_E11 - 600_000_000 - 15_000,
        "reserve": RES_E11,
        "frozen": 0,
    }
    assert not dn.is_unspent(key) and dn.is_unspent(f"{txid}:1")


def test_spends_breaking_the_peg_rules_are_rejected(dn):
    a, key = funded(dn)
    b = dn.new_address()
    with pytest.raises(ChainRejected, match=r"output 0 .* short by .*reserve can only return"):
        spend(dn, [key], [TxOut(E11 // 2, address=b), TxOut(E11 // 2 - 20_000, address=a)])
    with pytest.raises(ChainRejected, match="Fees are below the 5000 satoshis"):
        spend(dn, [key], [TxOut(100_000, address=b), TxOut(E11 - 100_000 - 14_999, address=a)])
    with pytest.raises(ChainRejected, match="exceed inputs"):
        spend(dn, [key], [TxOut(E11 + 1, address=a)])
    assert dn.info()["mempool"] == 0 and dn.is_unspent(key)


def test_f_notated_reserve_spend_freezes_the_payee(dn):
    a, key = funded(dn)
    payee, exchange = dn.new_address(), dn.new_address()
    outputs = [
        TxOut(5590, data=b"**F**1:1:1"),  # the notary sits at the index of its input (0)
        TxOut(50_000_000_000, address=payee),
        TxOut(RES_E11 - 50_000_000_000 - 20_000, address=a),  # reserve back home
        TxOut(LIQ_E11 - 30_000, address=exchange),  # liquid to another address
        TxOut(5575, data=b"0123456789abcdef"),
    ]
    txid = spend(dn, [key], outputs)
    dn.mine()
    tx = dn.get_transaction(txid)
    assert tx.op_return == b"0123456789abcdef" and tx.outputs[0].data == b"**F**1:1:1"
    vecs = [dn.get_fractions(f"{txid}:{i}") for i in range(5)]
    assert int(vecs[1][S:].sum()) == 0  # the payee got reserve only
    assert int(vecs[3][:S].sum()) == 0
    assert [int(v.sum()) for v in vecs] == [o.value for o in outputs]
    spent = std_spread(E11)
    assert (np.sum(vecs, axis=0) <= spent).all()  # nothing created at any step
    assert E11 - sum(o.value for o in outputs) == 38_835  # the fee left in the pools
    frozen_until = block_time(2) + FREEZE_SECONDS
    utxo = {u.key: u for u in dn.list_unspent()}
    assert utxo[f"{txid}:1"].frozen_until == frozen_until
    assert utxo[f"{txid}:2"].frozen_until == 0
    assert dn.balance(payee) == {
        "amount": 50_000_000_000,
        "liquid": 0,
        "reserve": 50_000_000_000,
        "frozen": 50_000_000_000,
    }
    with pytest.raises(ChainRejected, match="frozen until"):
        spend(dn, [f"{txid}:1"], [TxOut(49_000_000_000, address=payee)])


def test_f_notation_follows_the_node(dn):
    """The node reads each part of a **F** list with C strtol (pegstd.strtol0) and checks only
    that it is an output index other than the notary's own. (Before pegstd the devnet refused
    **F**1:1 and a **F** notary at an index with no input, and accepted nothing but digits.)"""
    a, key = funded(dn)
    b = dn.new_address()

    def outs(note: bytes) -> list[TxOut]:
        return [TxOut(5590, data=note), TxOut(10**9, address=b), TxOut(E11 - 10**9 - 30_000,
                                                                        address=a)]

    for note, cause in [
        (b"**F**0", "P-I-N-4: Freeze notary: output refers itself"),
        (b"**F**3", "P-I-N-3: Freeze notary: not convertible to output index"),
        (b"**F**x", "P-I-N-3"),
        (b"**F**1:", "P-I-N-3"),
        (b"**F**-1", "P-I-N-3"),
    ]:
        with pytest.raises(ChainRejected, match=cause):
            spend(dn, [key], outs(note))
    assert dn.is_unspent(key) and dn.info()["mempool"] == 0
    for note in (b"**F**0x1", b"**F**1:1", b"**F** +1abc", b"**F**01"):
        a, key = funded(dn)
        txid = spend(dn, [key], outs(note))
        dn.mine()
        frozen = {u.key: u.frozen_until for u in dn.list_unspent()}
        assert frozen[f"{txid}:1"] > 0 and frozen[f"{txid}:2"] == 0, note
        assert dn.get_fractions(f"{txid}:1")[S:].sum() == 0, note  # all reserve
    # a **F** notary with no input at its index is a plain notary: it takes reserve, freezes nothing
    a, key = funded(dn)
    half = RES_E11 // 2
    txid = spend(dn, [key], [TxOut(half, address=a), TxOut(5590, data=b"**F**0"),
                             TxOut(E11 - half - 5590 - 30_000, address=a)])
    dn.mine()
    assert all(u.frozen_until == 0 for u in dn.list_unspent() if u.txid == txid)
    assert int(dn.get_fractions(f"{txid}:1")[:S].sum()) == 5590


def test_shared_freeze_takes_the_last_named_address_first(dn):
    """Two inputs at two addresses, a shared **F**2:2:2 at each input's index: the node fills the
    notaries first (reserve, sorted addresses), then the payee from the address of the *last*
    input naming it, then the other's. So the reserve left over sits at the first input's
    address, whatever the sort order; reserve sent back to the second address must come from
    liquidity and the spend fails. The devnet's old rules (each notary paying its own input's
    reserve before any output) accepted the refused spend below and refused the accepted one."""
    (x, kx), (y, ky) = funded(dn), funded(dn)
    payee, change = dn.new_address(), dn.new_address()
    pay = RES_E11 + RES_E11 // 2
    left = RES_E11 - RES_E11 // 2 - 2 * 5590

    def outs(home: str) -> list[TxOut]:
        return [TxOut(5590, data=b"**F**2:2:2"), TxOut(5590, data=b"**F**2:2:2"),
                TxOut(pay, address=payee), TxOut(left, address=home),
                TxOut(2 * LIQ_E11 - 50_000, address=change), TxOut(5575, data=b"id")]

    with pytest.raises(ChainRejected, match=r"output 3 \(to .*no liquidity left.*\[node: P-G-3"):
        spend(dn, [kx, ky], outs(y))
    txid = spend(dn, [kx, ky], outs(x))
    dn.mine()
    got = dn.get_fractions(f"{txid}:2")
    assert int(got[:S].sum()) == pay and int(got.sum()) == pay
    frozen = {u.key: u.frozen_until for u in dn.list_unspent() if u.txid == txid}
    assert frozen[f"{txid}:2"] > 0 and [frozen[f"{txid}:{i}"] for i in (3, 4)] == [0, 0]
    assert dn.balance(x)["reserve"] == left and dn.balance(y)["amount"] == 0


# ---------------------------------------------------------------------- mempool and levers


def test_double_spend_is_rejected_and_rebroadcast_is_idempotent(dn):
    a, key = funded(dn)
    b = dn.new_address()
    first = dn.create_transaction([key], [TxOut(E11 - 10_000, address=a)])
    second = dn.create_transaction([key], [TxOut(1_000, address=b), TxOut(E11 - 20_000, address=a)])
    assert dn.broadcast(first.raw) == first.txid == dn.broadcast(first.raw)
    with pytest.raises(ChainRejected, match="already spent"):
        dn.broadcast(second.raw)
    with pytest.raises(ChainRejected, match="already spent"):
        dn.create_transaction([key], [TxOut(1_000, address=b)])
    dn.mine()
    assert dn.broadcast(first.raw) == first.txid
    with pytest.raises(ChainRejected, match="already spent"):
        dn.broadcast(second.raw)


def test_tampered_or_foreign_transactions_are_rejected(dn):
    a, key = funded(dn)
    signed = dn.create_transaction([key], [TxOut(E11 - 10_000, address=a)])
    body = json.loads(bytes.fromhex(signed.raw))
    body["outputs"][0]["address"] = dn.new_address()
    with pytest.raises(ChainRejected, match="signature does not match"):
        dn.broadcast(json.dumps(body).encode().hex())
    with pytest.raises(ChainRejected, match="decode failed"):
        dn.broadcast("zz")
    foreign = crypto.pubkey_to_address(crypto.public_key(crypto.new_private_key()))
    other = dn.send(foreign, 10**9)
    with pytest.raises(ChainRejected, match="not in the wallet"):
        dn.create_transaction([other], [TxOut(10**8, address=a)])


def test_mempool_chains_confirm_together_and_die_with_their_parent(dn):
    a, key = funded(dn)
    b = dn.new_address()
    parent = spend(dn, [key], [TxOut(10**8, address=b), TxOut(E11 - 10**8 - 15_000, address=a)])
    child = spend(dn, [f"{parent}:1"], [TxOut(E11 - 10**8 - 25_000, address=a)])
    dn.mine()
    assert dn.get_transaction(parent).height == dn.get_transaction(child).height == 2
    # a malleated parent orphans its mempool child: the child is evicted, never mined
    p2 = spend(dn, [f"{child}:0"], [TxOut(E11 - 10**8 - 35_000, address=a)])
    c2 = spend(dn, [f"{p2}:0"], [TxOut(E11 - 10**8 - 45_000, address=a)])
    dn.malleate_next()
    dn.mine()
    assert dn.get_transaction(p2) is None and dn.get_transaction(c2) is None
    assert [u.value for u in dn.list_unspent() if u.address == a] == [E11 - 10**8 - 35_000]
    # dropping a parent drops its mempool child too
    (home,) = [u.key for u in dn.list_unspent() if u.address == a]
    p3 = spend(dn, [home], [TxOut(E11 - 10**8 - 45_000, address=a)])
    c3 = spend(dn, [f"{p3}:0"], [TxOut(E11 - 10**8 - 55_000, address=a)])
    assert dn.drop(p3) and dn.info()["mempool"] == 0
    assert dn.get_transaction(c3) is None and dn.is_unspent(home)
    with pytest.raises(ChainRejected, match="int satoshi"):
        dn.create_transaction([home], [TxOut(1.5, address=a)])


def test_drop_lever(dn):
    a, key = funded(dn)
    signed = dn.create_transaction([key], [TxOut(E11 - 10_000, address=a)])
    dn.broadcast(signed.raw)
    assert dn.drop(signed.txid) is True
    assert dn.info()["mempool"] == 0 and dn.get_transaction(signed.txid) is None
    dn.mine(3)
    assert dn.get_transaction(signed.txid) is None and dn.is_unspent(key)
    with pytest.raises(ChainRejected, match="dropped"):
        dn.broadcast(signed.raw)
    assert dn.drop(signed.txid) is False
    with pytest.raises(ValueError, match="64 lowercase hex"):
        dn.drop("xyz")


def test_malleate_lever(dn):
    a, key = funded(dn)
    signed = dn.create_transaction([key], [TxOut(E11 - 10_000, address=a)])
    dn.broadcast(signed.raw)
    assert dn.malleate_next() is True
    assert dn.get_transaction(signed.txid) is not None  # still itself in the mempool
    dn.mine()
    new = dn.spender(key)
    assert new is not None and new != signed.txid
    assert dn.get_transaction(signed.txid) is None
    tx = dn.get_transaction(new)
    assert (tx.inputs, tx.outputs, tx.height) == ([key], [TxOut(E11 - 10_000, address=a)], 2)
    assert dn.is_unspent(f"{new}:0") and not dn.is_unspent(f"{signed.txid}:0")
    with pytest.raises(ChainRejected, match="already spent"):  # the original can never confirm
        dn.broadcast(signed.raw)
    assert not dn.info()["malleate_next"]  # one transaction only


def test_reject_lever(dn):
    a, key = funded(dn)
    signed = dn.create_transaction([key], [TxOut(E11 - 10_000, address=a)])
    assert dn.reject_next_broadcast("mempool full") is True
    with pytest.raises(ChainRejected, match="mempool full"):
        dn.broadcast(signed.raw)
    assert dn.info()["mempool"] == 0
    assert dn.broadcast(signed.raw) == signed.txid


def test_levers_validate_their_arguments(dn):
    address = dn.new_address()
    bad = [
        (dn.send, ("not-an-address", 10), "bad address"),
        (dn.send, (address, 0), "amount must be"),
        (dn.send, (address, 10**17 + 1), "amount must be"),
        (dn.send, (address, 1.5), "amount must be an int"),
        (dn.send, (address, True), "amount must be an int"),
        (dn.send, (address, 10, [10]), "list of 1200"),
        (dn.send, (address, 10, [0] * 1199 + [9]), "sum to 9"),
        (dn.send, (address, 10, [-1] * 1199 + [1209]), "every fraction"),
        (dn.vote, ("up", 1), "direction"),
        (dn.vote, ("deflate", 4), "steps"),
        (dn.vote, ("deflate", 0), "steps"),
        (dn.mine, (0,), "n must be"),
        (dn.mine, (10_001,), "n must be"),
        (dn.balance, ("B123",), "bad address"),
        (dn.reject_next_broadcast, ("",), "reason"),
    ]
    for call, args, match in bad:
        with pytest.raises(ValueError, match=match):
            call(*args)
    assert dn.tip().height == 0 and dn.info()["mempool"] == 0


def test_block_timer_and_subscribers(tmp_path):
    chain = Devnet(tmp_path, block_seconds=0.01, initial_supply=S)
    seen: list[int] = []
    done = threading.Event()

    def on_block(tip):
        seen.append(tip.height)
        if tip.height >= 3:
            done.set()

    chain.subscribe(on_block)
    try:
        chain.start()
        assert chain.wait_for_height(3, timeout=30)
        assert done.wait(30)
    finally:
        chain.close()
    assert seen[:3] == [1, 2, 3]
    reopened = Devnet(tmp_path, block_seconds=0, initial_supply=S)
    assert reopened.tip().height >= 3  # timer blocks are logged like any other
    reopened.close()
