"""The bitbayd client against a fake node replaying BitBay's documented reply shapes."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
from decimal import Decimal
from pathlib import Path

import base58
import numpy as np
import pytest

from harness.fakenode import FakeNode, node_json
from pegx.chain.base import Chain, ChainRejected, ChainUnavailable, Tip, TxOut, WalletLocked
from pegx.chain.bitbayd import (
    Bitbayd,
    NodeError,
    NodeUnavailable,
    NodeWarmingUp,
    backoff_delays,
    btc_to_sat,
)
from pegx.chain.txbuild import (
    TxFormatError,
    op_return_data,
    op_return_script,
    parse_tx,
    serialize_tx,
    txid_of,
)
from pegx.crypto import private_key_to_wif, wif_to_address
from pegx.peg import std_spread

TX_A = hashlib.sha256(b"tx a").hexdigest()
TX_B = hashlib.sha256(b"tx b").hexdigest()
TX_C = hashlib.sha256(b"tx c").hexdigest()
TX_D = hashlib.sha256(b"tx d").hexdigest()
H160 = bytes.fromhex("00112233445566778899aabbccddeeff00112233")
ADDR = base58.b58encode_check(bytes([25]) + H160).decode()
BLOCK_TIME = 1_700_000_000  # 0x6553f100
UNLOCK_AT = 1_702_592_000


def _row(txid: str, vout: int, amount: float, conf: int) -> dict:
    """A wallet-mode listunspent row (BITBAYD §3.3), floats in BAY as the node sends them."""
    return {"txid": txid, "vout": vout, "address": ADDR, "account": "",
            "scriptPubKey": "76a914" + H160.hex() + "88ac", "amount": amount,
            "reserve": amount * 0.9, "liquidity": amount * 0.1, "confirmations": conf,
            "spendable": True}


def _fractions(value: int, lock: int = 0, flags: str = "") -> dict:
    vec = std_spread(value)
    return {"total": value, "reserve": int(vec[:10].sum()), "liquidity": int(vec[10:].sum()),
            "peg": 10, "lock": lock, "flags": flags, "values": [int(v) for v in vec]}


@pytest.fixture
def node():
    fake = FakeNode()
    st = fake.state
    st["blockcount"] = 1005
    st["peginfo"].update(cycle=5, peg=10, pegnext=11, pegnextnext=13)
    st["blockhashes"] = {1005: "b" * 64}
    st["blocks"] = {"b" * 64: {"hash": "b" * 64, "height": 1005, "time": BLOCK_TIME},
                    "c" * 64: {"hash": "c" * 64, "height": 1000, "time": BLOCK_TIME - 320}}
    st["unspent"] = [_row(TX_A, 0, 0.1, 3), _row(TX_B, 1, 0.2, 0)]
    st["frozen"] = [dict(_row(TX_C, 2, 21000000.12345678, 10), unlocktime=UNLOCK_AT)]
    st["fractions"] = {f"{TX_A}:0": _fractions(10_000_000), f"{TX_B}:1": _fractions(20_000_000),
                       f"{TX_C}:2": _fractions(2_100_000_012_345_678, UNLOCK_AT - 5, "F")}
    yield fake
    fake.close()


@pytest.fixture
def chain(node):
    client = Bitbayd(node.url, timeout=2.0, deadline=5.0)
    yield client
    client.close()


# ---------------------------------------------------------------- amounts


def test_btc_to_sat_is_exact():
    parse = lambda text: json.loads(text, parse_float=Decimal)
    assert btc_to_sat(parse("0.1")) + btc_to_sat(parse("0.2")) == 30_000_000
    assert btc_to_sat(parse("0.1000000000000000")) == 10_000_000  # json_spirit style
    assert btc_to_sat(parse("21000000.12345678")) == 2_100_000_012_345_678
    assert btc_to_sat(parse("0.00000001")) == 1
    assert btc_to_sat(7) == 700_000_000
    assert btc_to_sat("1.5") == 150_000_000
    assert btc_to_sat(parse("0")) == 0


@pytest.mark.parametrize("bad", ["0.123456789", "-0.1", "1e-9", "abc", "NaN", "Infinity"])
def test_btc_to_sat_rejects(bad):
    with pytest.raises(ValueError):
        btc_to_sat(Decimal(bad) if bad not in ("abc",) else bad)


def test_btc_to_sat_refuses_floats_and_bools():
    for bad in (0.1, True):
        with pytest.raises(TypeError):
            btc_to_sat(bad)


def test_fake_writes_doubles_like_bitbayd():
    text = node_json({"amount": 0.1, "big": 21000000.12345678, "n": 3, "ok": True})
    assert text == '{"amount":0.10000000,"big":21000000.12345678,"n":3,"ok":true}'


# ---------------------------------------------------------------- txbuild

# one input (TX_A:1), a P2PKH payment and an OP_RETURN "id", nTime = BLOCK_TIME
HAND_UNSIGNED = (
    "01000000"  # int32 version 1
    "00f15365"  # uint32 nTime 1700000000
    "01"  # one input
    + bytes.fromhex(TX_A)[::-1].hex()  # prev txid, little-endian
    + "01000000"  # prev vout 1
    "00"  # empty scriptSig
    "ffffffff"  # sequence
    "02"  # two outputs
    "f0b9f50500000000"  # 99,990,000 sat
    "19" "76a914" + H160.hex() + "88ac"  # P2PKH
    + "c715000000000000"  # 5,575 sat
    "04" "6a02" "6964"  # OP_RETURN push "id"
    "00000000"  # nLockTime
)
HAND_SIGNED = HAND_UNSIGNED.replace("0100000000ffffffff", "0100000004deadbeefffffffff")
HAND_OUTPUTS = [TxOut(99_990_000, address=ADDR), TxOut(5575, data=b"id")]


def test_serialize_matches_hand_assembled_bytes():
    raw = serialize_tx([(TX_A, 1)], [(99_990_000, bytes.fromhex("76a914" + H160.hex() + "88ac")),
                                     (5575, op_return_script(b"id"))], BLOCK_TIME)
    assert raw.hex() == HAND_UNSIGNED
    tx = parse_tx(bytes.fromhex(HAND_SIGNED))
    assert (tx.version, tx.ntime, tx.locktime) == (1, BLOCK_TIME, 0)
    assert [(i.txid, i.vout, i.script) for i in tx.inputs] == [(TX_A, 1, b"\xde\xad\xbe\xef")]
    assert tx.outputs[1] == (5575, b"\x6a\x02id")
    expected = hashlib.sha256(hashlib.sha256(bytes.fromhex(HAND_SIGNED)).digest()).digest()
    assert txid_of(bytes.fromhex(HAND_SIGNED)) == expected[::-1].hex()
    with pytest.raises(TxFormatError):
        parse_tx(bytes.fromhex(HAND_UNSIGNED)[:-1])
    with pytest.raises(TxFormatError):
        serialize_tx([("ab", 0)], [(1, b"")], 0)


def test_op_return_pushes():
    assert op_return_script(b"x" * 75)[:2] == b"\x6a\x4b"
    assert op_return_script(b"x" * 76)[:3] == b"\x6a\x4c\x4c"
    assert op_return_script(b"x" * 255)[:3] == b"\x6a\x4c\xff"
    with pytest.raises(TxFormatError):
        op_return_script(b"x" * 256)
    for data in (b"", b"id", b"x" * 75, b"y" * 76, b"z" * 255):
        assert op_return_data(op_return_script(data)) == data
    assert op_return_data(b"\x6a") == b""
    assert op_return_data(bytes.fromhex("76a914" + H160.hex() + "88ac")) is None


# ---------------------------------------------------------------- Chain mapping


def test_is_a_chain(chain):
    assert isinstance(chain, Chain)
    assert chain.name == "bitbayd"
    assert "s3cret" not in repr(chain) and "s3cret" not in chain.url


def test_tip_and_block_time_cache(chain, node):
    assert chain.tip() == Tip(1005, 5, 10, BLOCK_TIME)
    assert node.calls[:4] == [("getblockcount", []), ("getpeginfo", []),
                              ("getblockhash", [1005]), ("getblock", ["b" * 64])]
    node.calls.clear()
    assert chain.tip().time == BLOCK_TIME
    assert node.methods() == ["getblockcount", "getpeginfo"]


def test_identity_and_block_hash(chain, node):
    genesis = "0000066d" + "e1" * 28
    node.state["blockhashes"][0] = genesis
    assert chain.identity() == genesis
    assert chain.block_hash(1005) == "b" * 64
    assert node.calls[-2:] == [("getblockhash", [0]), ("getblockhash", [1005])]
    with pytest.raises(NodeError) as exc:  # the node's reply, getblockhash_out_of_range.json
        chain.block_hash(999999)
    assert (exc.value.code, exc.value.message) == (-1, "Block number out of range.")
    assert isinstance(exc.value, ChainRejected)
    assert chain.reorganises is True


def test_supply_for_cycle(chain, node):
    assert [chain.supply_for_cycle(c) for c in (5, 6, 7)] == [10, 11, 13]
    node.state["peginfo"].update(cycle=6, peg=11, pegnext=13, pegnextnext=14)
    assert chain.supply_for_cycle(6) == 11
    node.calls.clear()
    assert chain.supply_for_cycle(5) == 10  # remembered, no node call
    assert node.calls == []
    for unknown in (3, 9):
        with pytest.raises(ChainRejected):
            chain.supply_for_cycle(unknown)


def test_list_unspent_amounts_fractions_and_frozen(chain, node):
    utxos = {u.key: u for u in chain.list_unspent(0)}
    a, b, c = utxos[f"{TX_A}:0"], utxos[f"{TX_B}:1"], utxos[f"{TX_C}:2"]
    assert a.value + b.value == 30_000_000  # 0.1 + 0.2 BAY, no float error
    assert c.value == 2_100_000_012_345_678
    for u in (a, b, c):
        assert u.fractions.dtype == np.int64 and int(u.fractions.sum()) == u.value
        assert np.array_equal(u.fractions, std_spread(u.value))
    assert (a.confirmations, a.height, a.frozen_until) == (3, 1003, 0)
    assert (b.confirmations, b.height) == (0, 0)
    assert (c.height, c.frozen_until) == (996, UNLOCK_AT)
    assert ("listunspent", [0, 9999999]) in node.calls and ("listfrozen", [0, 9999999]) in node.calls
    a.fractions[0] = -1  # callers get their own copy of cached vectors
    node.calls.clear()
    again = {u.key: u for u in chain.list_unspent(0)}
    # confirmed outputs' fractions are cached; the unconfirmed one is asked again
    assert [p for m, p in node.calls if m == "getfractions"] == [[f"{TX_B}:1"]]
    assert np.array_equal(again[f"{TX_A}:0"].fractions, std_spread(10_000_000))


def test_list_unspent_frozen_lock_fallback_and_missing_peg_data(chain, node):
    del node.state["frozen"][0]["unlocktime"]
    del node.state["fractions"][f"{TX_B}:1"]  # the node has no peg data for it yet
    utxos = {u.key: u for u in chain.list_unspent(0)}
    assert f"{TX_B}:1" not in utxos
    assert utxos[f"{TX_C}:2"].frozen_until == UNLOCK_AT - 5


def test_list_unspent_skips_fractions_that_do_not_sum(chain, node):
    node.state["fractions"][f"{TX_A}:0"]["values"][7] += 1
    assert {u.key for u in chain.list_unspent(0)} == {f"{TX_B}:1", f"{TX_C}:2"}


def test_listfrozen_errors(chain, node):
    node.state["errors"]["listfrozen"] = (-32601, "Method not found")  # an older node
    assert len(chain.list_unspent(0)) == 2
    node.state["errors"]["listfrozen"] = (-1, "database corrupted")
    with pytest.raises(NodeError) as info:
        chain.list_unspent(0)
    assert (info.value.code, info.value.message) == (-1, "database corrupted")


def test_get_fractions(chain, node):
    vec = chain.get_fractions(f"{TX_A}:0")
    assert np.array_equal(vec, std_spread(10_000_000))
    assert node.calls[-1] == ("getfractions", [f"{TX_A}:0"])
    with pytest.raises(ChainRejected, match="unknown output"):
        chain.get_fractions(f"{TX_D}:0")
    with pytest.raises(ChainRejected):
        chain.get_fractions("not-an-outpoint")


def test_get_transaction(chain, node):
    node.state["txs"][TX_D] = {
        "hex": "00", "txid": TX_D, "version": 1, "time": BLOCK_TIME - 400, "locktime": 0,
        "vin": [{"txid": TX_A, "vout": 0, "scriptSig": {"asm": "", "hex": ""},
                 "sequence": 4294967295},
                {"txid": TX_B, "vout": 3, "scriptSig": {"asm": "", "hex": ""},
                 "sequence": 4294967295}],
        "vout": [{"value": 0.3, "n": 0, "scriptPubKey": {
                     "asm": "", "hex": "76a914" + H160.hex() + "88ac", "reqSigs": 1,
                     "type": "pubkeyhash", "addresses": [ADDR]}},
                 {"value": 5.575e-05, "n": 1, "scriptPubKey": {
                     "asm": "OP_RETURN 6964", "hex": "6a026964", "type": "nulldata"}}],
        "blockhash": "c" * 64, "confirmations": 6,
    }
    tx = chain.get_transaction(TX_D)
    assert tx.inputs == [f"{TX_A}:0", f"{TX_B}:3"]
    assert tx.outputs == [TxOut(30_000_000, address=ADDR), TxOut(5575, data=b"id")]
    assert (tx.op_return, tx.confirmations, tx.height, tx.raw) == (b"id", 6, 1000, "00")
    del node.state["txs"][TX_D]["blockhash"]  # in the mempool
    node.state["txs"][TX_D]["confirmations"] = 0
    tx = chain.get_transaction(TX_D)
    assert (tx.height, tx.confirmations) == (0, 0)
    assert chain.get_transaction(TX_C) is None  # -5: unknown to the node


def test_is_unspent(chain, node):
    node.state["txouts"][f"{TX_A}:0"] = {"bestblock": "b" * 64, "confirmations": 3,
                                         "value": 0.1, "coinbase": False}
    assert chain.is_unspent(f"{TX_A}:0") is True
    assert chain.is_unspent(f"{TX_A}:1") is False
    assert node.calls[-1] == ("gettxout", [TX_A, 1, True])


def test_import_key(chain, node):
    wif = private_key_to_wif(bytes(31) + b"\x07")
    assert chain.import_key(wif) == wif_to_address(wif)
    assert node.state["imported"] == [[wif, "", False]]
    node.calls.clear()
    with pytest.raises(ChainRejected):
        chain.import_key("not a key")
    assert node.calls == []


REPLIES = Path("/work/shared/bitbayd/replies")


def test_is_mine_asks_validateaddress(chain, node):
    """``ismine`` of validateaddress, in the shapes of rpcmisc.cpp: a foreign address gets
    ``ismine: false``, a malformed one only ``isvalid: false``."""
    foreign = base58.b58encode_check(bytes([25]) + bytes(20)).decode()
    node.state["mine"] = {ADDR: "02" + "ab" * 32}
    assert chain.is_mine(ADDR) is True
    assert chain.is_mine(foreign) is False
    assert chain.is_mine("Bnot-an-address") is False
    assert node.calls == [("validateaddress", [ADDR]), ("validateaddress", [foreign]),
                          ("validateaddress", ["Bnot-an-address"])]
    node.state["errors"]["validateaddress"] = (-32601, "Method not found")
    with pytest.raises(NodeError):
        chain.is_mine(ADDR)


def test_fake_validateaddress_answers_like_the_real_node(chain, node):
    recorded = json.loads(REPLIES.joinpath("validateaddress.json").read_text())
    real = json.loads(recorded["raw_reply"])["result"]
    node.state["mine"] = {real["address"]: real["pubkey"]}
    got = chain.validateaddress(real["address"])
    assert list(got.items()) == list(real.items())  # the same keys, in the same order
    assert chain.is_mine(real["address"]) is True


def test_create_transaction_matches_hand_assembled(chain, node):
    node.state["signatures"][HAND_UNSIGNED] = HAND_SIGNED
    node.state["passphrase"] = "wallet pass"
    signed = chain.create_transaction([f"{TX_A}:1"], HAND_OUTPUTS, "wallet pass")
    assert signed.raw == HAND_SIGNED
    assert signed.txid == txid_of(bytes.fromhex(HAND_SIGNED))
    assert signed.inputs == (f"{TX_A}:1",)
    methods = node.methods()
    assert methods.index("walletpassphrase") < methods.index("signrawtransaction")
    assert ("walletpassphrase", ["wallet pass", 60]) in node.calls
    # still unlocked from the first call: no second unlock
    assert chain.create_transaction([f"{TX_A}:1"], HAND_OUTPUTS, "wallet pass").raw == HAND_SIGNED


def test_create_transaction_failures(chain, node):
    node.state["passphrase"] = "wallet pass"
    with pytest.raises(WalletLocked, match="passphrase incorrect"):  # -14
        chain.create_transaction([f"{TX_A}:1"], HAND_OUTPUTS, "wrong")
    with pytest.raises(WalletLocked):  # locked wallet, no passphrase: -13
        chain.create_transaction([f"{TX_A}:1"], HAND_OUTPUTS)
    node.state["signatures"][HAND_UNSIGNED] = HAND_SIGNED.replace("c715", "c815")  # tampered
    with pytest.raises(NodeError, match="differs"):
        chain.create_transaction([f"{TX_A}:1"], HAND_OUTPUTS, "wallet pass")
    node.calls.clear()
    for outputs in ([TxOut(1, data=b"x" * 256)], [TxOut(1, address="nonsense")]):
        with pytest.raises(ChainRejected):
            chain.create_transaction([f"{TX_A}:1"], outputs)
    with pytest.raises(ChainRejected):
        chain.create_transaction([f"{TX_A}:1", f"{TX_A}:1"], HAND_OUTPUTS)
    assert "signrawtransaction" not in node.methods()


def test_broadcast(chain, node):
    assert chain.broadcast(HAND_SIGNED) == txid_of(bytes.fromhex(HAND_SIGNED))
    assert node.state["sent"] == [HAND_SIGNED]
    node.state["errors"]["sendrawtransaction"] = (-22, "TX rejected")
    with pytest.raises(NodeError) as info:
        chain.broadcast(HAND_SIGNED)
    assert (info.value.code, info.value.message) == (-22, "TX rejected")
    # refused because the node already has it (e.g. a resend): that is a success
    txid = txid_of(bytes.fromhex(HAND_SIGNED))
    node.state["txs"][txid] = {"hex": HAND_SIGNED, "txid": txid, "vin": [], "vout": []}
    assert chain.broadcast(HAND_SIGNED) == txid
    with pytest.raises(ChainRejected):
        chain.broadcast("zz")


def test_every_node_call_sends_documented_params(chain, node):
    assert chain.getblockcount() == 1005
    assert chain.getpeginfo()["pegnextnext"] == 13
    assert chain.getblockhash(1005) == "b" * 64
    assert chain.getblock("b" * 64)["time"] == BLOCK_TIME
    assert chain.listunspent()[0]["liquidity"] == Decimal("0.01000000000000000")
    assert chain.listfrozen(5)[0]["unlocktime"] == UNLOCK_AT
    assert chain.getfractions(f"{TX_D}:0") == {}
    assert chain.gettxout(TX_A, 0) is None
    assert node.calls == [
        ("getblockcount", []), ("getpeginfo", []), ("getblockhash", [1005]),
        ("getblock", ["b" * 64]), ("listunspent", [1, 9999999]), ("listfrozen", [5, 9999999]),
        ("getfractions", [f"{TX_D}:0"]), ("gettxout", [TX_A, 0, True]),
    ]


# ---------------------------------------------------------------- transport and taxonomy


def test_keep_alive_and_threads(chain, node):
    for _ in range(5):
        chain.getblockcount()
    assert node.connections == 1
    results: list[int] = []
    workers = [threading.Thread(target=lambda: results.extend(chain.getblockcount()
                                                              for _ in range(10)))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == [1005] * 40


def test_bad_credentials_are_unavailable(node):
    client = Bitbayd(node.url.replace("s3cret", "wrong"), timeout=2, deadline=5)
    with pytest.raises(NodeUnavailable, match="401"):
        client.getblockcount()
    with pytest.raises(NodeUnavailable, match="401"):
        Bitbayd(f"http://127.0.0.1:{node.port}", timeout=2, deadline=5).getblockcount()


@pytest.mark.parametrize("kind,exc", [("warmup", NodeWarmingUp), ("http503", NodeUnavailable),
                                      ("garbage", NodeUnavailable)])
def test_fail_fast_faults(chain, node, kind, exc):
    node.fault(kind)
    with pytest.raises(exc) as info:
        chain.getblockcount()
    assert not isinstance(info.value, ChainRejected)
    assert len(node.calls) == 1  # not retried
    assert chain.getblockcount() == 1005


def test_node_error_is_final(chain, node):
    node.state["errors"]["getpeginfo"] = (-32601, "Method not found")
    with pytest.raises(NodeError) as info:
        chain.with_retry(deadline=5).getpeginfo()
    assert isinstance(info.value, ChainRejected) and info.value.code == -32601
    assert len(node.calls) == 1


def test_dropped_connection_reconnects_once(chain, node):
    chain.getblockcount()
    node.fault("drop")
    assert chain.getblockcount() == 1005
    assert node.methods() == ["getblockcount"] * 3
    node.fault("drop", 2)
    with pytest.raises(NodeUnavailable, match="dropped"):
        chain.getblockcount()


def test_refused_connection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NodeUnavailable):
        Bitbayd(f"http://u:p@127.0.0.1:{port}", timeout=2, deadline=3).getblockcount()


def test_timeout_does_not_wait_for_a_slow_node(node):
    node.fault("hold")
    with pytest.raises(NodeUnavailable, match="no reply"):
        Bitbayd(node.url, timeout=0.2, deadline=5).getblockcount()
    assert node.held == 1  # the node was still sitting on the request when we gave up


def test_deadline_bounds_a_retrying_call(node):
    node.fault("hold")
    client = Bitbayd(node.url, timeout=10, deadline=0.3, retry=True)
    with pytest.raises(ChainUnavailable):
        client.tip()
    assert node.held == 1  # the 0.3 s deadline, not the 10 s timeout, ended the wait


def test_deadline_covers_all_calls_of_one_operation(node):
    """list_unspent makes several node calls; together they get one deadline (2 s). The first
    call takes 1.2 s, the second would take 1.6 s: within a per-call deadline, over the
    operation's."""
    node.fault("hold", seconds=1.2)
    node.fault("hold", seconds=1.6)
    client = Bitbayd(node.url, timeout=10, deadline=2.0)
    with pytest.raises(NodeUnavailable):
        client.list_unspent(0)
    assert node.methods() == ["getblockcount", "listunspent"]
    assert node.held == 1  # given up before the node answered the second call


def test_unexpected_reply_shapes_are_node_errors(chain, node):
    node.state["unspent"][0]["amount"] = 0.123456789  # printed 0.12345679: not the fractions
    assert f"{TX_A}:0" not in {u.key for u in chain.list_unspent(0)}
    del node.state["unspent"][0]["amount"]  # a row without an amount: skipped too
    assert f"{TX_A}:0" not in {u.key for u in chain.list_unspent(0)}
    del node.state["peginfo"]["peg"]
    with pytest.raises(NodeError, match="shape"):
        chain.tip()


def test_retry_recovers_and_logs_outage_once(node, caplog):
    node.fault("warmup")
    node.fault("http503")
    client = Bitbayd(node.url, timeout=2, deadline=5).with_retry(deadline=10)
    with caplog.at_level(logging.INFO, logger="pegx.chain.bitbayd"):
        assert client.getblockcount() == 1005
    assert node.methods() == ["getblockcount"] * 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("connection restored" in m for m in messages) == 1


def test_retry_gives_up_at_the_deadline(node):
    node.fault("http503", 100)
    client = Bitbayd(node.url, timeout=2, deadline=0.8, retry=True)
    with pytest.raises(NodeUnavailable):
        client.getblockcount()
    # attempts at 0, >=0.25 and >=0.75 s: backoff spacing allows no more before 0.8 s
    assert 2 <= len(node.calls) <= 3


def test_backoff_delays():
    delays = backoff_delays()
    assert [next(delays) for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_views_share_caches(chain, node):
    chain.supply_for_cycle(5)
    node.calls.clear()
    view = chain.with_retry(deadline=2)
    assert (view.retry, view.deadline, chain.retry) == (True, 2.0, False)
    assert view.supply_for_cycle(5) == 10 and node.calls == []
    chain.close()
    with pytest.raises(NodeUnavailable, match="closed"):
        view.getblockcount()


def test_url_validation():
    with pytest.raises(ValueError):
        Bitbayd("https://127.0.0.1:19915")
    with pytest.raises(ValueError):
        Bitbayd("127.0.0.1:19915")
    assert Bitbayd().url == "http://127.0.0.1:19915/"
