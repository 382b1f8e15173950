"""secp256k1 keys, WIF, BitBay addresses and message signatures.

Everything here is a pure function of its arguments: no state, no I/O beyond
``os.urandom`` (through ``ecdsa``) for new keys. Elliptic-curve work is done by
the ``ecdsa`` library and base58 by the ``base58`` library; this module only
fixes the BitBay version bytes and the byte layouts around them.

Version bytes depend on the network (:class:`Network`, chosen by the ``network`` setting):
mainnet P2PKH addresses use version 25 (they start with ``B``), script addresses 85 (``b``),
WIF secret keys 153 = 25 + 128 (a compressed WIF starts with ``P``); testnet uses 111 (``m``/
``n``), 196 (``2``) and 239 (``c``). Every function that reads or writes a version takes a
``net`` argument, mainnet by default.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import base58
import ecdsa
from ecdsa.util import sigdecode_der, sigencode_der

__all__ = [
    "ADDRESS_VERSION",
    "MAIN",
    "NETWORKS",
    "REGTEST",
    "SCRIPT_VERSION",
    "TESTNET",
    "WIF_VERSION",
    "CryptoError",
    "Network",
    "address_to_script",
    "generate_deposit_key",
    "hash160",
    "network",
    "new_private_key",
    "parse_public_key",
    "private_key_to_wif",
    "pubkey_to_address",
    "public_key",
    "sign_message",
    "txhash",
    "validate_address",
    "verify_message",
    "wif_to_address",
    "wif_to_private_key",
]

ADDRESS_VERSION = 25
SCRIPT_VERSION = 85
WIF_VERSION = ADDRESS_VERSION + 128  # 153


@dataclass(frozen=True)
class Network:
    """A BitBay network's base58 version bytes, and its nominal peg cycle length.

    ``cycle_blocks`` is the node's nPegInterval there. The devnet uses it; the bitbayd backend
    takes the length from ``getpeginfo``'s ``interval`` instead.
    """

    name: str
    address: int  # P2PKH
    script: int  # P2SH
    wif: int  # secret key (address + 128)
    cycle_blocks: int


MAIN = Network("main", ADDRESS_VERSION, SCRIPT_VERSION, WIF_VERSION, 200)
TESTNET = Network("testnet", 111, 196, 239, 20)
# the regtest node of ../shared/bitbayd (its patch: mainnet versions unless started with
# -regtestaddrprefix=test, and mainnet's 200-block cycle); for a node with testnet versions
# choose "testnet"
REGTEST = Network("regtest", ADDRESS_VERSION, SCRIPT_VERSION, WIF_VERSION, 200)
NETWORKS = {net.name: net for net in (MAIN, TESTNET, REGTEST)}


def network(name: str) -> Network:
    """The Network called ``name`` (main, testnet, regtest); CryptoError otherwise."""
    try:
        return NETWORKS[name]
    except (KeyError, TypeError):
        raise CryptoError(f"unknown network {name!r} (known: {', '.join(NETWORKS)})") from None

CURVE = ecdsa.SECP256k1
_ORDER = CURVE.order
_B58_CHARS = frozenset(base58.BITCOIN_ALPHABET.decode("ascii"))
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")
_HEX_ANY_RE = re.compile(r"[0-9a-fA-F]*")


class CryptoError(ValueError):
    """A key, address or signature is malformed; the message says what is wrong."""


# ---------------------------------------------------------------- hashing


def _ripemd160(data: bytes) -> bytes:
    # OpenSSL 3 moved RIPEMD-160 to the legacy provider, so some builds of
    # hashlib lack it; fall back to our own implementation only then.
    try:
        return hashlib.new("ripemd160", data).digest()
    except ValueError:
        from pegx._ripemd160 import ripemd160

        return ripemd160(data)


def hash160(data: bytes) -> bytes:
    """RIPEMD-160 of SHA-256 of ``data`` (20 bytes), as in Bitcoin addresses."""
    return _ripemd160(hashlib.sha256(data).digest())


def _dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def txhash(data: str) -> str:
    """pybitcointools-style hash: hex-decode ``data`` if it is hex, else UTF-8; double
    SHA-256; byte-reverse; lowercase hex.

    "Hex" means an even number of ``[0-9a-fA-F]`` characters (the empty string
    counts). Unlike pybitcointools this keeps leading zero bytes of hex input.
    """
    if not isinstance(data, str):
        raise CryptoError(f"txhash wants a str, got {type(data).__name__}")
    raw = bytes.fromhex(data) if _HEX_RE.fullmatch(data) else data.encode("utf-8")
    return _dsha256(raw)[::-1].hex()


# ---------------------------------------------------------------- base58check


def _b58check_encode(payload: bytes) -> str:
    return base58.b58encode_check(payload).decode("ascii")


MAX_B58_LEN = 64  # addresses are 34 characters, compressed WIF keys 52


def _b58check_decode(text: object, what: str) -> bytes:
    """Decode base58check strictly, with a message naming ``what`` was being read."""
    if not isinstance(text, str):
        raise CryptoError(f"{what} must be a str, got {type(text).__name__}")
    if not text:
        raise CryptoError(f"empty {what}")
    if len(text) > MAX_B58_LEN:
        # base58 decoding is quadratic: a 100,000-character "address" cost 12-22 s of CPU
        raise CryptoError(f"{what} too long ({len(text):,d} characters; at most {MAX_B58_LEN})")
    bad = sorted(set(text) - _B58_CHARS)
    if bad:
        raise CryptoError(f"invalid base58 character {bad[0]!r} in {what}")
    raw = base58.b58decode(text)
    if len(raw) < 5:
        raise CryptoError(f"{what} too short")
    payload, check = raw[:-4], raw[-4:]
    if _dsha256(payload)[:4] != check:
        raise CryptoError(f"bad base58 checksum in {what}")
    return payload


# ---------------------------------------------------------------- keys


def _check_private_key(priv: bytes) -> None:
    if not isinstance(priv, (bytes, bytearray)) or len(priv) != 32:
        raise CryptoError("a private key must be 32 bytes")
    if not 1 <= int.from_bytes(priv, "big") < _ORDER:
        raise CryptoError("private key out of the secp256k1 range [1, n-1]")


def new_private_key() -> bytes:
    """A fresh random private key (32 bytes, uniform in [1, n-1], from os.urandom)."""
    return ecdsa.SigningKey.generate(curve=CURVE).to_string()


def private_key_to_wif(priv: bytes, compressed: bool = True, net: Network = MAIN) -> str:
    """Encode a 32-byte private key as a BitBay WIF (version 153 on mainnet)."""
    _check_private_key(priv)
    suffix = b"\x01" if compressed else b""
    return _b58check_encode(bytes([net.wif]) + bytes(priv) + suffix)


def wif_to_private_key(wif: str, net: Network = MAIN) -> tuple[bytes, bool]:
    """Decode a BitBay WIF of network ``net`` into ``(private key bytes, compressed)``."""
    payload = _b58check_decode(wif, "WIF key")
    if payload[0] != net.wif:
        raise CryptoError(
            f"wrong version byte 0x{payload[0]:02x} for a BitBay WIF key "
            f"(expected 0x{net.wif:02x} on {net.name})"
        )
    body = payload[1:]
    if len(body) == 33 and body[32] == 1:
        compressed = True
    elif len(body) == 32:
        compressed = False
    else:
        raise CryptoError(f"bad WIF key length: {len(body)} bytes after the version byte")
    priv = body[:32]
    _check_private_key(priv)
    return priv, compressed


def public_key(priv: bytes, compressed: bool = True) -> bytes:
    """The public key of ``priv``: 33 bytes (02/03 || x) or 65 bytes (04 || x || y)."""
    _check_private_key(priv)
    vk = ecdsa.SigningKey.from_string(bytes(priv), curve=CURVE).get_verifying_key()
    return vk.to_string("compressed" if compressed else "uncompressed")


def parse_public_key(pub_hex: str) -> ecdsa.VerifyingKey:
    """Parse a hex public key: ``04``+128 hex, ``02``/``03``+64 hex, or raw x||y (128 hex).

    Raises CryptoError for anything else, including points not on the curve.
    """
    if not isinstance(pub_hex, str):
        raise CryptoError(f"public key must be a hex str, got {type(pub_hex).__name__}")
    text = pub_hex.strip()
    if not _HEX_ANY_RE.fullmatch(text):
        raise CryptoError("public key is not hex")
    ok = (
        (len(text) == 130 and text[:2] == "04")
        or (len(text) == 66 and text[:2] in ("02", "03"))
        or len(text) == 128
    )
    if not ok:
        raise CryptoError(
            f"public key must be 04+128, 02/03+64 or 128 hex digits, got {len(text)} digits"
        )
    try:
        return ecdsa.VerifyingKey.from_string(bytes.fromhex(text), curve=CURVE)
    except (ValueError, ecdsa.errors.MalformedPointError) as exc:
        raise CryptoError(f"public key is not a secp256k1 point: {exc}") from None


# ---------------------------------------------------------------- addresses


def pubkey_to_address(pub: bytes, version: int | None = None, net: Network = MAIN) -> str:
    """Base58check address of ``hash160(pub)`` under ``version`` (default: ``net``'s P2PKH)."""
    if version is None:
        version = net.address
    if not 0 <= version <= 255:
        raise CryptoError(f"address version {version} is not a byte")
    return _b58check_encode(bytes([version]) + hash160(bytes(pub)))


def wif_to_address(wif: str, net: Network = MAIN) -> str:
    """The P2PKH address of a WIF key of ``net``; compressed pubkey if the WIF is."""
    priv, compressed = wif_to_private_key(wif, net)
    return pubkey_to_address(public_key(priv, compressed), net=net)


def generate_deposit_key(net: Network = MAIN) -> str:
    """A new random private key as a compressed WIF of ``net`` (mainnet: starts with 'P')."""
    return private_key_to_wif(new_private_key(), compressed=True, net=net)


def _decode_address(addr: object, net: Network) -> tuple[int, bytes]:
    payload = _b58check_decode(addr, "address")
    if len(payload) != 21:
        raise CryptoError(f"bad address length: {len(payload)} bytes, expected 21")
    version = payload[0]
    if version not in (net.address, net.script):
        raise CryptoError(
            f"unknown address version 0x{version:02x} (BitBay {net.name} uses "
            f"{net.address} and {net.script})"
        )
    return version, payload[1:]


def validate_address(addr: object, net: Network = MAIN) -> int:
    """Return the version byte of an address of ``net`` (mainnet: 25 or 85); CryptoError
    otherwise."""
    return _decode_address(addr, net)[0]


def address_to_script(addr: str, net: Network = MAIN) -> bytes:
    """The output script paying ``addr``: P2PKH for ``net``'s address version, P2SH for its
    script version."""
    version, h160 = _decode_address(addr, net)
    if version == net.address:
        return b"\x76\xa9\x14" + h160 + b"\x88\xac"
    return b"\xa9\x14" + h160 + b"\x87"


# ---------------------------------------------------------------- signatures


def sign_message(message: str, priv: bytes) -> bytes:
    """DER ECDSA signature over SHA-256(message as UTF-8), RFC 6979 deterministic.

    This is what the original's ``highlevelcrypto.sign(msg, privkey)`` produced.
    """
    _check_private_key(priv)
    sk = ecdsa.SigningKey.from_string(bytes(priv), curve=CURVE)
    digest = hashlib.sha256(message.encode("utf-8")).digest()
    return sk.sign_digest_deterministic(digest, hashfunc=hashlib.sha256, sigencode=sigencode_der)


def verify_message(message: str, signature_der: bytes, pub_hex_or_key: object) -> bool:
    """True if ``signature_der`` is a valid DER signature of SHA-256(message) by the key.

    The key is a hex string (see parse_public_key) or an ecdsa.VerifyingKey. Never
    raises: any malformed input is simply "not verified". Both low-S and high-S
    signatures are accepted, as OpenSSL did for the original.
    """
    try:
        if isinstance(pub_hex_or_key, ecdsa.VerifyingKey):
            vk = pub_hex_or_key
            if vk.curve != CURVE:
                return False
        else:
            vk = parse_public_key(pub_hex_or_key)  # type: ignore[arg-type]
        if not isinstance(message, str) or not isinstance(signature_der, (bytes, bytearray)):
            return False
        digest = hashlib.sha256(message.encode("utf-8")).digest()
        return bool(vk.verify_digest(bytes(signature_der), digest, sigdecode=sigdecode_der))
    except Exception:  # noqa: BLE001 - garbage in any shape must read as "not verified"
        return False
