"""The Store (pegx.ledger.store), the only plyvel user: all-or-nothing batches, ordered scans,
snapshots, the ledger lock, read-only handles and consistent copies, on a real LevelDB."""

from __future__ import annotations

import pytest

from pegx.ledger.store import LedgerLocked, Store, StoreError


class Boom(Exception):
    pass


def test_a_batch_is_all_or_nothing(tmp_path):
    with Store(tmp_path / "l") as s:
        with s.batch() as wb:
            wb.put(b"Ta\x00one", b"1")
        with pytest.raises(Boom), s.batch() as wb:
            wb.put(b"Ta\x00two", b"2")
            wb.delete(b"Ta\x00one")
            raise Boom
        assert s.get(b"Ta\x00one") == b"1"
        assert s.get(b"Ta\x00two") is None


def test_what_a_batch_wrote_is_there_after_reopening(tmp_path):
    with Store(tmp_path / "l") as s, s.batch() as wb:
        wb.put(b"Ta\x00k", b"v")
    with Store(tmp_path / "l") as s:
        assert s.get(b"Ta\x00k") == b"v"


def test_scan_is_in_key_order_within_the_prefix_and_from_start(tmp_path):
    with Store(tmp_path / "l") as s:
        with s.batch() as wb:
            for k in (b"Tb\x00z", b"Ta\x003", b"Ta\x001", b"Ta\x002", b"U"):
                wb.put(k, k)
        assert [k for k, _ in s.scan(b"Ta\x00")] == [b"Ta\x001", b"Ta\x002", b"Ta\x003"]
        assert [k for k, _ in s.scan(b"Ta\x00", start=b"Ta\x002")] == [b"Ta\x002", b"Ta\x003"]
        # a start before the prefix begins at the prefix; nothing past it is yielded
        assert [k for k, _ in s.scan(b"Ta\x00", start=b"A")] == [b"Ta\x001", b"Ta\x002",
                                                                 b"Ta\x003"]


def test_a_snapshot_does_not_see_later_writes(tmp_path):
    with Store(tmp_path / "l") as s:
        with s.batch() as wb:
            wb.put(b"Ta\x001", b"old")
        snap = s.snapshot()
        try:
            with s.batch() as wb:
                wb.put(b"Ta\x001", b"new")
                wb.put(b"Ta\x002", b"added")
            assert dict(s.scan(b"Ta\x00", snapshot=snap)) == {b"Ta\x001": b"old"}
            assert dict(s.scan(b"Ta\x00")) == {b"Ta\x001": b"new", b"Ta\x002": b"added"}
        finally:
            snap.close()


def test_a_ledger_is_opened_once(tmp_path):
    with Store(tmp_path / "l"), pytest.raises(LedgerLocked):
        Store(tmp_path / "l")
    Store(tmp_path / "l").close()  # closed: it opens again


def test_a_read_only_store_refuses_writes(tmp_path):
    Store(tmp_path / "l").close()
    with Store(tmp_path / "l", read_only=True) as s, pytest.raises(StoreError), s.batch():
        pass


def test_copy_to_is_a_consistent_copy_and_needs_an_empty_destination(tmp_path):
    with Store(tmp_path / "l") as s:
        with s.batch() as wb:
            for i in range(50):
                wb.put(f"Ta\x00{i:03d}".encode(), b"x" * i)
        assert s.copy_to(tmp_path / "copy") == len(list(s.scan(b"")))
        with pytest.raises(StoreError):
            s.copy_to(tmp_path / "copy")
        original = dict(s.scan(b""))
    with Store(tmp_path / "copy") as c:
        assert dict(c.scan(b"")) == original
