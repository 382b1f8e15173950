"""BitBay raw transaction bytes: serialise an unsigned transaction, read one back, hash it.

BitBay inherits the PPCoin layout, which is Bitcoin's with a ``uint32 nTime`` after the
version (all integers little-endian)::

    int32 nVersion (1) | uint32 nTime | varint n_in
      | n_in  x (32-byte prev txid, reversed | uint32 vout | varint len | scriptSig | uint32 nSequence)
    | varint n_out
      | n_out x (int64 value | varint len | scriptPubKey)
    | uint32 nLockTime

An unsigned input carries an empty scriptSig; the node's ``signrawtransaction`` fills it in.
This module is pure (no I/O) so the byte layout can be tested against hand-assembled bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

TX_VERSION = 1
SEQUENCE_FINAL = 0xFFFFFFFF
OP_RETURN = 0x6A
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
MAX_DIRECT_PUSH = 75  # opcodes 0x01..0x4b push that many bytes
MAX_OP_RETURN_DATA = 255  # we only emit OP_PUSHDATA1; longer data is refused
MAX_MONEY_SAT = 2**63 - 1  # int64 field; the node applies its own, lower, money range


class TxFormatError(ValueError):
    """Bytes or arguments that do not make a well-formed BitBay transaction."""


@dataclass(frozen=True)
class TxIn:
    """One input: the outpoint it spends, its scriptSig and sequence."""

    txid: str
    vout: int
    script: bytes = b""
    sequence: int = SEQUENCE_FINAL


@dataclass(frozen=True)
class RawTx:
    """A decoded transaction; ``outputs`` are ``(value in satoshi, scriptPubKey)`` pairs."""

    version: int
    ntime: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[tuple[int, bytes], ...]
    locktime: int


def varint(n: int) -> bytes:
    """Bitcoin CompactSize encoding of a non-negative int."""
    if n < 0:
        raise TxFormatError(f"negative varint {n}")
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def op_return_script(data: bytes) -> bytes:
    """``OP_RETURN <push data>``: a direct push up to 75 bytes, OP_PUSHDATA1 up to 255."""
    data = bytes(data)
    if len(data) <= MAX_DIRECT_PUSH:
        # an empty push is opcode 0x00 (OP_0), which is also "push 0 bytes"
        return bytes([OP_RETURN, len(data)]) + data
    if len(data) <= MAX_OP_RETURN_DATA:
        return bytes([OP_RETURN, OP_PUSHDATA1, len(data)]) + data
    raise TxFormatError(f"OP_RETURN data of {len(data)} bytes is over {MAX_OP_RETURN_DATA}")


def op_return_data(script: bytes) -> bytes | None:
    """The data an ``OP_RETURN`` script carries (all pushes joined), or None if not OP_RETURN.

    A malformed push after OP_RETURN yields the raw bytes after the opcode: such an output is
    still provably unspendable, and callers only compare the data with ids they issued.
    """
    script = bytes(script)
    if not script or script[0] != OP_RETURN:
        return None
    out = bytearray()
    pos = 1
    try:
        while pos < len(script):
            op = script[pos]
            pos += 1
            if op <= MAX_DIRECT_PUSH:
                size = op
            elif op == OP_PUSHDATA1:
                size = script[pos]
                pos += 1
            elif op == OP_PUSHDATA2:
                size = struct.unpack_from("<H", script, pos)[0]
                pos += 2
            elif op == OP_PUSHDATA4:
                size = struct.unpack_from("<I", script, pos)[0]
                pos += 4
            else:
                return script[1:]
            if pos + size > len(script):
                return script[1:]
            out += script[pos : pos + size]
            pos += size
    except (IndexError, struct.error):
        return script[1:]
    return bytes(out)


def _prevout_hash(txid: str) -> bytes:
    try:
        raw = bytes.fromhex(txid)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != 32:
        raise TxFormatError(f"not a 64-hex-digit txid: {txid!r}")
    return raw[::-1]  # txids are displayed byte-reversed


def serialize_tx(
    inputs: Sequence[TxIn | tuple[str, int]],
    outputs: Sequence[tuple[int, bytes]],
    ntime: int,
    *,
    version: int = TX_VERSION,
    locktime: int = 0,
) -> bytes:
    """The raw bytes of a transaction. Inputs given as ``(txid, vout)`` get an empty scriptSig."""
    if not inputs:
        raise TxFormatError("a transaction needs at least one input")
    if not outputs:
        raise TxFormatError("a transaction needs at least one output")
    if not 0 <= ntime <= 0xFFFFFFFF:
        raise TxFormatError(f"nTime {ntime} is not a uint32")
    parts = [struct.pack("<iI", version, ntime), varint(len(inputs))]
    for item in inputs:
        txin = item if isinstance(item, TxIn) else TxIn(item[0], item[1])
        if not 0 <= txin.vout <= 0xFFFFFFFF:
            raise TxFormatError(f"vout {txin.vout} is not a uint32")
        parts += [
            _prevout_hash(txin.txid),
            struct.pack("<I", txin.vout),
            varint(len(txin.script)),
            bytes(txin.script),
            struct.pack("<I", txin.sequence),
        ]
    parts.append(varint(len(outputs)))
    for value, script in outputs:
        if not 0 <= value <= MAX_MONEY_SAT:
            raise TxFormatError(f"output value {value} out of range")
        parts += [struct.pack("<q", value), varint(len(script)), bytes(script)]
    parts.append(struct.pack("<I", locktime))
    return b"".join(parts)


class _Reader:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.raw):
            raise TxFormatError(f"transaction truncated at byte {self.pos}")
        chunk = self.raw[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def varint(self) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        return self.unpack({0xFD: "<H", 0xFE: "<I", 0xFF: "<Q"}[first])


def parse_tx(raw: bytes) -> RawTx:
    """Decode raw transaction bytes (signed or not); TxFormatError on anything malformed."""
    rd = _Reader(bytes(raw))
    version = rd.unpack("<i")
    ntime = rd.unpack("<I")
    inputs = []
    for _ in range(rd.varint()):
        txid = rd.take(32)[::-1].hex()
        vout = rd.unpack("<I")
        script = rd.take(rd.varint())
        inputs.append(TxIn(txid, vout, script, rd.unpack("<I")))
    outputs = []
    for _ in range(rd.varint()):
        value = rd.unpack("<q")
        outputs.append((value, rd.take(rd.varint())))
    locktime = rd.unpack("<I")
    if rd.pos != len(rd.raw):
        raise TxFormatError(f"{len(rd.raw) - rd.pos} trailing bytes after the transaction")
    return RawTx(version, ntime, tuple(inputs), tuple(outputs), locktime)


def txid_of(raw: bytes) -> str:
    """The transaction id: double SHA-256 of the raw bytes, byte-reversed, lowercase hex."""
    return hashlib.sha256(hashlib.sha256(bytes(raw)).digest()).digest()[::-1].hex()
