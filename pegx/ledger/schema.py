"""Every LevelDB key prefix of the ledger, with its meaning (STYLE §3).

One byte per prefix; integers in keys are fixed-width big-endian so prefix scans come back in
order. Only pegx.ledger.store and the ledger modules it serves (state, journal, checkpoint)
use these.
"""

from __future__ import annotations

import struct

# Key: b"S" / Value: JSON {"format", "seq", "written"} / "the state record: commit point of a
# checkpoint; seq = the last operation whose effect the checkpoint contains". Written last in
# every checkpoint batch.
STATE = b"S"

# Key: b"L" + seq (u64 BE) / Value: JSON list of operations / "the operation log: one record per
# acknowledged state change, replayed in seq order after the checkpoint on start-up".
OPLOG = b"L"

# Key: b"R" + account name (utf-8) / Value: 1200 x <q step amounts /
# "an account's per-step ledger row".
ACCOUNT = b"R"

# Key: b"B" + account name (utf-8) / Value: <qq liquid, reserve> / "an account's published
# balance; kept apart from the row so a recompute rewrites 16 bytes per account, not 9,600".
BALANCE = b"B"

# Key: b"T" + table name (ascii) + b"\x00" + record key (utf-8) / Value: JSON /
# "small structured state: deposit claims, inputs, withdraws, batches (one lifecycle record per
# withdraw batch), batch_of (withdraw id -> master id), expired, waiting (why a pending
# withdraw waits), settings, addresses, exec
# replay hashes, meta; the table names are pegx.ledger.state.TABLES (format 1 also had
# history, which pegx.ledger.migrate removes)".
TABLE = b"T"

# Key: b"V" + table name + b"\x00" + record key / Value: 1200 x <q / "a fraction vector owned by a
# table record (a registered input's fractions, a pending withdraw's deduction)".
VECTOR = b"V"

SEQ = struct.Struct(">Q")


def pack_seq(seq: int) -> bytes:
    """The op-log key of ``seq``."""
    return OPLOG + SEQ.pack(seq)


def unpack_seq(key: bytes) -> int:
    """Inverse of pack_seq."""
    if key[:1] != OPLOG or len(key) != 1 + SEQ.size:
        raise ValueError(f"not an op-log key: {key!r}")
    return SEQ.unpack(key[1:])[0]


def pack_account(name: str) -> bytes:
    """The key of an account row."""
    return ACCOUNT + name.encode("utf-8")


def unpack_account(key: bytes) -> str:
    """Inverse of pack_account."""
    if key[:1] != ACCOUNT:
        raise ValueError(f"not an account key: {key!r}")
    return key[1:].decode("utf-8")


def pack_balance(name: str) -> bytes:
    """The key of an account's published balance."""
    return BALANCE + name.encode("utf-8")


def unpack_balance(key: bytes) -> str:
    """Inverse of pack_balance."""
    if key[:1] != BALANCE:
        raise ValueError(f"not a balance key: {key!r}")
    return key[1:].decode("utf-8")


def _table_key(prefix: bytes, table: str, key: str) -> bytes:
    if "\x00" in table or not table.isascii():
        raise ValueError(f"bad table name {table!r}")
    return prefix + table.encode("ascii") + b"\x00" + key.encode("utf-8")


def _untable(prefix: bytes, raw: bytes) -> tuple[str, str]:
    if raw[:1] != prefix or b"\x00" not in raw:
        raise ValueError(f"not a {prefix!r} table key: {raw!r}")
    table, _, key = raw[1:].partition(b"\x00")
    return table.decode("ascii"), key.decode("utf-8")


def pack_record(table: str, key: str) -> bytes:
    """The key of a structured record in ``table``."""
    return _table_key(TABLE, table, key)


def unpack_record(raw: bytes) -> tuple[str, str]:
    """Inverse of pack_record: (table, key)."""
    return _untable(TABLE, raw)


def pack_vector(table: str, key: str) -> bytes:
    """The key of the fraction vector owned by record ``key`` of ``table``."""
    return _table_key(VECTOR, table, key)


def unpack_vector(raw: bytes) -> tuple[str, str]:
    """Inverse of pack_vector: (table, key)."""
    return _untable(VECTOR, raw)


def table_prefix(prefix: bytes, table: str) -> bytes:
    """The scan prefix of every record (or vector) of ``table``."""
    return prefix + table.encode("ascii") + b"\x00"
