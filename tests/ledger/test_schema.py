"""The LevelDB key schema (pegx.ledger.schema): every pack has its unpack, keys sort as their
subjects do, and a key of one kind is never taken for another."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pegx.ledger import schema

SEQS = st.integers(0, 2**64 - 1)
NAMES = st.text(min_size=0, max_size=40)
TABLES = st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=20)


@given(SEQS)
def test_seq_round_trip(seq):
    assert schema.unpack_seq(schema.pack_seq(seq)) == seq


@given(st.lists(SEQS, min_size=2, max_size=20, unique=True))
def test_op_log_keys_sort_in_seq_order(seqs):
    """Replay reads the op log in key order: that must be seq order."""
    assert sorted(seqs, key=schema.pack_seq) == sorted(seqs)


@given(NAMES)
def test_account_and_balance_round_trip(name):
    assert schema.unpack_account(schema.pack_account(name)) == name
    assert schema.unpack_balance(schema.pack_balance(name)) == name
    assert schema.pack_account(name) != schema.pack_balance(name)


@given(TABLES, NAMES)
def test_record_and_vector_round_trip(table, key):
    assert schema.unpack_record(schema.pack_record(table, key)) == (table, key)
    assert schema.unpack_vector(schema.pack_vector(table, key)) == (table, key)
    assert schema.pack_record(table, key).startswith(schema.table_prefix(schema.TABLE, table))
    assert schema.pack_vector(table, key).startswith(schema.table_prefix(schema.VECTOR, table))


@given(TABLES, TABLES, NAMES)
def test_a_table_prefix_holds_only_its_own_records(a, b, key):
    """Scanning table ``a`` never yields a record of another table ``b`` (the NUL ends it)."""
    if a != b:
        assert not schema.pack_record(b, key).startswith(schema.table_prefix(schema.TABLE, a))


@pytest.mark.parametrize(("unpack", "key"), [
    (schema.unpack_seq, schema.pack_account("x")),
    (schema.unpack_seq, schema.OPLOG + b"\x00" * 7),
    (schema.unpack_account, schema.pack_balance("x")),
    (schema.unpack_balance, schema.pack_account("x")),
    (schema.unpack_record, schema.pack_vector("t", "k")),
    (schema.unpack_vector, schema.pack_record("t", "k")),
    (schema.unpack_record, schema.TABLE + b"no-separator"),
])
def test_a_key_of_another_kind_is_refused(unpack, key):
    with pytest.raises(ValueError):
        unpack(key)


@pytest.mark.parametrize("table", ["a\x00b", "tablé"])
def test_bad_table_names_are_refused(table):
    with pytest.raises(ValueError):
        schema.pack_record(table, "k")
