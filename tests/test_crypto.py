"""Tests for pegx.crypto (keys, WIF, addresses, txhash, signatures) and pegx._ripemd160."""

from __future__ import annotations

import hashlib

import base58
import ecdsa
import pytest
from ecdsa.util import sigdecode_der, sigencode_der
from hypothesis import given, settings
from hypothesis import strategies as st

from pegx import crypto
from pegx._ripemd160 import ripemd160
from pegx.crypto import (
    ADDRESS_VERSION,
    MAIN,
    NETWORKS,
    SCRIPT_VERSION,
    TESTNET,
    WIF_VERSION,
    CryptoError,
    address_to_script,
    generate_deposit_key,
    hash160,
    network,
    new_private_key,
    parse_public_key,
    private_key_to_wif,
    pubkey_to_address,
    public_key,
    sign_message,
    txhash,
    validate_address,
    verify_message,
    wif_to_address,
    wif_to_private_key,
)

N = ecdsa.SECP256k1.order
KEY_ONES = bytes([1]) * 32
KEY_ONE = (1).to_bytes(32, "big")
# The generator point G: the public key of private key 1 (SEC 2).
G_X = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
G_Y = "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"

HAS_HASHLIB_RIPEMD = "ripemd160" in hashlib.algorithms_available


# ---------------------------------------------------------------- helpers computed by hand


def _dsha(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _b58check(payload: bytes) -> str:
    return base58.b58encode(payload + _dsha(payload)[:4]).decode()


def _hand_hash160(data: bytes) -> bytes:
    if not HAS_HASHLIB_RIPEMD:
        pytest.skip("hashlib has no ripemd160 here")
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def _hand_pubkey(priv: bytes, compressed: bool) -> bytes:
    point = ecdsa.SigningKey.from_string(priv, curve=ecdsa.SECP256k1).privkey.public_key.point
    x, y = point.x(), point.y()
    if compressed:
        return bytes([2 + (y & 1)]) + x.to_bytes(32, "big")
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


# ---------------------------------------------------------------- RIPEMD-160

# The official test vectors from the RIPEMD-160 page (Bosselaers).
RIPEMD_VECTORS = [
    (b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
    (b"a", "0bdc9d2d256b3ee9daae347be6f4dc835a467ffe"),
    (b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
    (b"message digest", "5d0689ef49d2fae572b881b123a85ffa21595f36"),
    (b"abcdefghijklmnopqrstuvwxyz", "f71c27109c692c1b56bbdceb5b9d2865b3708dbc"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "12a053384a9c0c88e405a06c27dcf49ada62eb2b",
    ),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "b0e20b6e3116640286ed3a87a5713079b21f5189",
    ),
    (b"1234567890" * 8, "9b752e45573d4b39f4dbd3323cab82bf63326bfb"),
]


@pytest.mark.parametrize(("data", "digest"), RIPEMD_VECTORS)
def test_ripemd160_official_vectors(data: bytes, digest: str) -> None:
    assert ripemd160(data).hex() == digest


@pytest.mark.skipif(not HAS_HASHLIB_RIPEMD, reason="hashlib has no ripemd160 here")
def test_ripemd160_matches_hashlib_around_padding_boundaries() -> None:
    # Lengths 54..57 and 118..121 straddle the one-block / two-block padding split.
    for n in [*range(50, 70), *range(115, 130), 1000]:
        data = bytes((i * 7 + n) & 0xFF for i in range(n))
        assert ripemd160(data) == hashlib.new("ripemd160", data).digest(), n


def test_hash160_falls_back_when_hashlib_lacks_ripemd160(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")  # hash160(compressed G)
    pub = bytes.fromhex("02" + G_X)
    assert hash160(pub) == expected
    real_new = hashlib.new

    def new_without_ripemd(name: str, *args: object, **kwargs: object) -> object:
        # What OpenSSL 3 without the legacy provider does.
        if name.lower() == "ripemd160":
            raise ValueError("unsupported hash type ripemd160")
        return real_new(name, *args, **kwargs)

    monkeypatch.setattr(crypto.hashlib, "new", new_without_ripemd)
    with pytest.raises(ValueError):
        hashlib.new("ripemd160", b"")
    assert hash160(pub) == expected


# ---------------------------------------------------------------- keys and WIF


def test_versions() -> None:
    assert (ADDRESS_VERSION, SCRIPT_VERSION, WIF_VERSION) == (25, 85, 153)
    nets = {name: (n.address, n.script, n.wif, n.cycle_blocks) for name, n in NETWORKS.items()}
    assert nets == {"main": (25, 85, 153, 200), "testnet": (111, 196, 239, 20),
                    "regtest": (25, 85, 153, 200)}
    assert network("testnet") is TESTNET and network("main") is MAIN
    with pytest.raises(CryptoError, match="unknown network"):
        network("mainnet")


def test_testnet_keys_and_addresses() -> None:
    """Testnet versions 111/196/239 (chainparams.cpp's testnet base58Prefixes): the addresses
    the node printed with testnet versions (replies/getnewaddress_testnet_prefix) validate under
    TESTNET only, and a key round-trips only under its own network."""
    node_address = "n2cuAitcqMtN3XSLsCVQm3RxAD1qWHmqmp"
    assert validate_address(node_address, TESTNET) == 111
    with pytest.raises(CryptoError, match="unknown address version"):
        validate_address(node_address)
    wif = generate_deposit_key(TESTNET)
    assert wif.startswith("c") and wif_to_private_key(wif, TESTNET)[1] is True
    address = wif_to_address(wif, TESTNET)
    assert address[0] in "mn" and validate_address(address, TESTNET) == 111
    with pytest.raises(CryptoError, match="wrong version byte"):
        wif_to_address(wif)  # a testnet key is not a mainnet key
    with pytest.raises(CryptoError, match="wrong version byte"):
        wif_to_address(generate_deposit_key(), TESTNET)
    priv = wif_to_private_key(wif, TESTNET)[0]
    assert wif_to_address(private_key_to_wif(priv)) == pubkey_to_address(public_key(priv))
    h = hash160(public_key(priv))
    p2sh = pubkey_to_address(public_key(priv), TESTNET.script)
    assert p2sh.startswith("2") and validate_address(p2sh, TESTNET) == 196
    assert address_to_script(address, TESTNET) == b"\x76\xa9\x14" + h + b"\x88\xac"
    assert address_to_script(p2sh, TESTNET) == b"\xa9\x14" + h + b"\x87"


def test_public_key_of_one_is_the_generator() -> None:
    assert public_key(KEY_ONE, compressed=False).hex() == "04" + G_X + G_Y
    assert public_key(KEY_ONE).hex() == "02" + G_X  # G's y is even


@pytest.mark.parametrize("priv", [KEY_ONES, KEY_ONE, (N - 1).to_bytes(32, "big")])
@pytest.mark.parametrize("compressed", [True, False])
def test_wif_layout_and_round_trip(priv: bytes, compressed: bool) -> None:
    wif = private_key_to_wif(priv, compressed)
    expected_payload = bytes([153]) + priv + (b"\x01" if compressed else b"")
    assert wif == _b58check(expected_payload)
    assert wif_to_private_key(wif) == (priv, compressed)
    assert wif[0] == ("P" if compressed else "6")


def test_wif_payload_matches_bitcoin_wif_except_version() -> None:
    # Bitcoin's well-known WIFs for private key 1 (version 0x80).
    btc_compressed = "KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWn"
    btc_uncompressed = "5HpHagT65TZzG1PH3CSu63k8DbpvD8s5ip4nEB3kEsreAnchuDf"
    for btc, compressed in [(btc_compressed, True), (btc_uncompressed, False)]:
        ours = base58.b58decode_check(private_key_to_wif(KEY_ONE, compressed))
        theirs = base58.b58decode_check(btc)
        assert (ours[0], theirs[0]) == (153, 0x80)
        assert ours[1:] == theirs[1:]


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.integers(min_value=1, max_value=N - 1), st.booleans())
def test_wif_round_trip_property(k: int, compressed: bool) -> None:
    priv = k.to_bytes(32, "big")
    assert wif_to_private_key(private_key_to_wif(priv, compressed)) == (priv, compressed)


def test_new_private_key_is_in_range_and_fresh() -> None:
    keys = {new_private_key() for _ in range(8)}
    assert len(keys) == 8
    for k in keys:
        assert len(k) == 32 and 1 <= int.from_bytes(k, "big") < N


@pytest.mark.parametrize("bad", [b"\x00" * 32, N.to_bytes(32, "big"), b"\x01" * 31, "00" * 32])
def test_private_key_out_of_range_refused(bad: object) -> None:
    with pytest.raises(CryptoError):
        private_key_to_wif(bad)  # type: ignore[arg-type]


def test_wif_refusals_have_clear_messages() -> None:
    good = private_key_to_wif(KEY_ONES)
    with pytest.raises(CryptoError, match="wrong version byte 0x80 for a BitBay WIF key"):
        wif_to_private_key("KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWn")
    tampered = good[:-1] + ("2" if good[-1] != "2" else "3")
    with pytest.raises(CryptoError, match="bad base58 checksum"):
        wif_to_private_key(tampered)
    with pytest.raises(CryptoError, match="bad WIF key length"):
        wif_to_private_key(_b58check(bytes([153]) + KEY_ONES + b"\x01\x01"))
    with pytest.raises(CryptoError, match="bad WIF key length"):
        wif_to_private_key(_b58check(bytes([153]) + KEY_ONES + b"\x02"))  # bad flag byte
    with pytest.raises(CryptoError, match="out of the secp256k1 range"):
        wif_to_private_key(_b58check(bytes([153]) + bytes(32) + b"\x01"))
    with pytest.raises(CryptoError, match="invalid base58 character '0'"):
        wif_to_private_key("0" + good[1:])
    with pytest.raises(CryptoError, match="must be a str"):
        wif_to_private_key(good.encode())  # type: ignore[arg-type]


def test_generate_deposit_key() -> None:
    a, b = generate_deposit_key(), generate_deposit_key()
    assert a != b
    for wif in (a, b):
        assert wif.startswith("P") and len(wif) == 52
        assert wif_to_private_key(wif)[1] is True
        addr = wif_to_address(wif)
        assert addr.startswith("B") and validate_address(addr) == 25


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize("priv", [KEY_ONES, KEY_ONE])
@pytest.mark.parametrize("compressed", [True, False])
def test_address_computed_by_hand(priv: bytes, compressed: bool) -> None:
    pub = _hand_pubkey(priv, compressed)
    assert public_key(priv, compressed) == pub
    expected = _b58check(bytes([25]) + _hand_hash160(pub))
    wif = private_key_to_wif(priv, compressed)
    assert wif_to_address(wif) == expected
    assert pubkey_to_address(pub) == expected
    assert expected.startswith("B")
    script = _b58check(bytes([85]) + _hand_hash160(pub))
    assert pubkey_to_address(pub, SCRIPT_VERSION) == script
    assert script.startswith("b")


def test_address_matches_known_bitcoin_addresses_with_version_zero() -> None:
    # Private key 1 in Bitcoin: a check of hash160 + base58check against public values.
    assert pubkey_to_address(public_key(KEY_ONE), 0) == "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH"
    assert pubkey_to_address(public_key(KEY_ONE, False), 0) == "1EHNa6Q4Jz2uvNExL497mE43ikXhwF6kZm"


def test_validate_address_and_scripts() -> None:
    pub = public_key(KEY_ONES)
    h = hash160(pub)
    p2pkh = pubkey_to_address(pub)
    p2sh = pubkey_to_address(pub, SCRIPT_VERSION)
    assert validate_address(p2pkh) == 25
    assert validate_address(p2sh) == 85
    assert address_to_script(p2pkh) == bytes.fromhex("76a914") + h + bytes.fromhex("88ac")
    assert address_to_script(p2sh) == bytes.fromhex("a914") + h + bytes.fromhex("87")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "must be a str"),
        (12345, "must be a str"),
        (b"BFYWDmPDpzsp4t7Vq56t1ieL48HHdiv3dU", "must be a str"),
        ("", "empty address"),
        ("BFYWDmPDpzsp4t7Vq56t1ieL48HHdiv3dO", "invalid base58 character 'O'"),
        ("BFYWDmPDpzsp4t7Vq56t1ieL48HHdiv3d ", "invalid base58 character ' '"),
        ("BFYWDmPDpzsp4t7Vq56t1ieL48HHdiv3dV", "bad base58 checksum"),
        ("1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH", "unknown address version 0x00"),
        (_b58check(bytes([25]) + bytes(21)), "bad address length: 22 bytes"),
        (_b58check(bytes([25]) + bytes(19)), "bad address length: 20 bytes"),
        ("B", "too short"),
    ],
)
def test_validate_address_refusals(bad: object, message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        validate_address(bad)
    with pytest.raises(CryptoError):
        address_to_script(bad)  # type: ignore[arg-type]


def test_validate_address_good_reference_value() -> None:
    # The address of private key 0x01..01, compressed; used as a reference above.
    assert wif_to_address(private_key_to_wif(KEY_ONES)) == "BFYWDmPDpzsp4t7Vq56t1ieL48HHdiv3dU"


# ---------------------------------------------------------------- txhash


def test_txhash_hex_input_is_decoded() -> None:
    for text in ["abcd", "ABCD", "00ff10", "deadBEEF"]:
        assert txhash(text) == _dsha(bytes.fromhex(text))[::-1].hex()
    assert txhash("abcd") == txhash("ABCD")
    assert txhash("abcd") != _dsha(b"abcd")[::-1].hex()


def test_txhash_non_hex_input_is_utf8() -> None:
    # "abc" is odd-length hex, "nonce=1\n..." is text, "é" is non-ASCII.
    for text in ["abc", "hello", "nonce=1\nresult = 5", "é", "0x12"]:
        assert txhash(text) == _dsha(text.encode("utf-8"))[::-1].hex()


def test_txhash_known_value_and_form() -> None:
    # Double SHA-256 of nothing, byte-reversed.
    empty = "56944c5d3f98413ef45cf54545538103cc9f298e0575820ad3591376e2e0f65d"
    assert txhash("") == empty
    h = txhash("hello")
    assert len(h) == 64 and h == h.lower()
    with pytest.raises(CryptoError):
        txhash(b"abcd")  # type: ignore[arg-type]


# ---------------------------------------------------------------- signatures


def _pub_hexes(priv: bytes) -> list[str]:
    unc = public_key(priv, False).hex()
    return [unc, public_key(priv).hex(), unc[2:]]


def test_parse_public_key_formats() -> None:
    vk = parse_public_key("04" + G_X + G_Y)
    assert vk.to_string("uncompressed").hex() == "04" + G_X + G_Y
    assert parse_public_key("02" + G_X).to_string() == vk.to_string()
    assert parse_public_key(G_X + G_Y).to_string() == vk.to_string()
    assert parse_public_key(("04" + G_X + G_Y).upper()).to_string() == vk.to_string()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "must be a hex str"),
        (b"\x04", "must be a hex str"),
        ("04" + G_X, "got 66 digits"),
        ("05" + G_X + G_Y, "got 130 digits"),
        ("04" + G_X + G_Y + "00", "got 132 digits"),
        ("zz" + G_X, "not hex"),
        ("04" + G_X + "00" * 32, "not a secp256k1 point"),
    ],
)
def test_parse_public_key_refusals(bad: object, message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        parse_public_key(bad)  # type: ignore[arg-type]


def test_sign_verify_round_trip_all_key_forms() -> None:
    msg = txhash("nonce=1\nresult = 5")
    sig = sign_message(msg, KEY_ONES)
    assert sig == sign_message(msg, KEY_ONES)  # RFC 6979: deterministic
    for pub_hex in _pub_hexes(KEY_ONES):
        assert verify_message(msg, sig, pub_hex) is True
    assert verify_message(msg, sig, parse_public_key(_pub_hexes(KEY_ONES)[0])) is True
    # It is a plain DER ECDSA over SHA-256(message): ecdsa verifies it directly.
    vk = ecdsa.VerifyingKey.from_string(public_key(KEY_ONES), curve=ecdsa.SECP256k1)
    assert vk.verify(sig, msg.encode(), hashfunc=hashlib.sha256, sigdecode=sigdecode_der)


def test_verify_accepts_high_s() -> None:
    msg = "high s"
    r, s = sigdecode_der(sign_message(msg, KEY_ONES), N)
    high = sigencode_der(r, N - s, N)
    assert high != sign_message(msg, KEY_ONES)
    assert verify_message(msg, high, public_key(KEY_ONES).hex()) is True


def test_verify_refuses_without_raising() -> None:
    msg = "pay 5 to bob"
    sig = sign_message(msg, KEY_ONES)
    pub = public_key(KEY_ONES, False).hex()
    other = public_key(KEY_ONE, False).hex()
    assert verify_message(msg, sig, pub) is True
    assert verify_message("pay 6 to bob", sig, pub) is False  # tampered message
    assert verify_message(msg, sig, other) is False  # wrong key
    assert verify_message(msg, sig[:-1], pub) is False  # truncated
    assert verify_message(msg, sig + b"\x00", pub) is False  # trailing junk
    assert verify_message(msg, b"", pub) is False
    assert verify_message(msg, b"\x30\x02\x02\x00", pub) is False  # garbage DER
    assert verify_message(msg, bytes(72), pub) is False
    assert verify_message(msg, "not bytes", pub) is False  # type: ignore[arg-type]
    assert verify_message(msg, sig, "04abcd") is False  # bad key
    assert verify_message(msg, sig, None) is False
    assert verify_message(msg, sig, 12345) is False
    assert verify_message(None, sig, pub) is False  # type: ignore[arg-type]
    nist = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).get_verifying_key()
    assert verify_message(msg, sig, nist) is False  # wrong curve


def test_overlong_base58_is_refused_before_decoding():
    """Decoding is quadratic in the length: a long string must be refused up front."""
    with pytest.raises(crypto.CryptoError, match="too long"):
        crypto.validate_address("1" * 100_000)
    with pytest.raises(crypto.CryptoError, match="too long"):
        crypto.wif_to_private_key("P" * 65)
