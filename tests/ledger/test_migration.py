"""Opening a ledger written in the old layout (format 1: the history table) upgrades it.

The fixture (tests/data/ledger_v1.json.gz, see tests/data/README.md) is a real ledger and
devnet written by the code before the upgrade existed, killed with a tail in its op log, with
the answers that code gave on it. Today's code must open it, give the same answers, write the
upgrade in one checkpoint, and go on exchanging with it.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import TESTS
from pegx.admin import offline
from pegx.admin.audit import audit
from pegx.chain.devnet import Devnet
from pegx.cli import main
from pegx.exchange.cycle import ExchangeCycle
from pegx.exchange.session import Session
from pegx.exchange.withdraws import WithdrawDesk
from pegx.ledger import schema
from pegx.ledger.engine import Exchange
from pegx.ledger.journal import JournalFailed
from pegx.ledger.store import FORMAT_VERSION, Store

FIXTURE = TESTS / "data" / "ledger_v1.json.gz"
ORDER = ["status", "txid", "ID", "block", "in0"]  # CheckWithdraw's keys, as the original sends


@pytest.fixture
def old(tmp_path):
    """A datadir holding the format-1 ledger and its devnet; (datadir, the old answers)."""
    data = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    datadir = tmp_path / "old"
    with Store(datadir / "ledger") as store, store.batch() as wb:
        for key, value in data["ledger"]:
            wb.put(base64.b64decode(key), base64.b64decode(value))
    (datadir / "devnet").mkdir()
    (datadir / "devnet" / "actions.jsonl").write_text(data["devnet_log"])
    return datadir, data["expected"]


def on_disk(datadir: Path) -> dict:
    """The state record, the history records and the op-log length of a closed ledger."""
    with Store(datadir / "ledger", create=False, read_only=True) as store:
        return {"format": store.state()["format"],
                "history": [k for k, _ in store.scan(schema.table_prefix(schema.TABLE,
                                                                          "history"))],
                "log": len(list(store.scan(schema.OPLOG)))}


def assert_same_answers(ledger: Exchange, chain, want: dict) -> None:
    for ident, answer in want["check_withdraw"].items():
        got = ledger.withdraw_status(ident)
        if answer == "ID not found":
            assert got is None, (ident, got)
            continue
        assert got == answer, ident
        assert list(got) == ORDER + (["txid2"] if "txid2" in answer else []), got
    assert ledger.claims() == want["deposits"]
    assert {u: ledger.balance(u) for u in ledger.users()} == want["balances"]
    assert {u: hashlib.sha256(ledger.row(u).astype("<i8").tobytes()).hexdigest()
            for u in ledger.users()} == want["rows"]
    assert ledger.withdraw_statuses() == want["by_status"]
    assert ledger.records("withdraws") == want["withdraws"]
    assert ledger.records("inputs") == want["inputs"]  # batch marks unchanged
    report = audit(ledger, chain)
    assert report.pop("reorganisations") == []  # a field added after the fixture was written
    assert report == want["audit"]
    desk = WithdrawDesk(ledger, chain)
    assert sorted(desk.active()) == want["active"]
    assert desk.not_batchable() == want["not_batchable"]
    for master, before in want["batches"].items():  # the old record, with its status now
        after = ledger.batch(master)
        assert {k: v for k, v in after.items() if k not in ("status", "cleared")} == before
        hist = want["history"].get(master)
        assert after["status"] == (hist["status"] if hist else
                                   {"done": "Complete", "failed": "Failed/Declined"}[
                                       before["state"]])
        assert bool(after.get("cleared")) == (hist is None)


def assert_upgraded_with_the_same_answers(datadir: Path, want: dict) -> None:
    """Open ``datadir`` (upgrading it), check the old answers, close it: it is of today's
    format."""
    chain = Devnet(datadir, block_seconds=0, initial_supply=100)
    try:
        ledger = Exchange(Store(datadir / "ledger"))
        assert_same_answers(ledger, chain, want)
        ledger.close()
    finally:
        chain.close()
    assert on_disk(datadir)["format"] == FORMAT_VERSION


def test_a_format_1_ledger_opens_upgraded_with_the_same_answers(old):
    datadir, want = old
    kept = on_disk(datadir)["log"]
    assert on_disk(datadir)["format"] == 1 and kept > 0
    chain = Devnet(datadir, block_seconds=0, initial_supply=100)
    try:
        ledger = Exchange(Store(datadir / "ledger"))
        assert ledger.replayed > 0 and ledger.seq == want["seq"]
        assert_same_answers(ledger, chain, want)
        digest = ledger.digest()
        ledger.store.close()  # a crash right after the open: the upgrade is already on disk
        disk = on_disk(datadir)
        # the upgrade's checkpoint deletes no log record (a standby may still need them:
        # tests/ledger/test_open_checkpoint.py); the next regular checkpoint does
        assert disk == {"format": FORMAT_VERSION, "history": [], "log": kept}, disk
        again = Exchange(Store(datadir / "ledger"))
        assert again.replayed == 0 and again.digest() == digest
        again.close()
        assert on_disk(datadir)["log"] == 0  # a regular checkpoint, no standby: all covered
    finally:
        chain.close()


def test_the_upgraded_ledger_goes_on_exchanging(old):
    """The batch in flight is resent and completes, the pending withdraw is batched, and the
    audit holds at every block."""
    datadir, want = old
    chain = Devnet(datadir, block_seconds=0, initial_supply=100)
    ledger = Exchange(Store(datadir / "ledger"))
    try:
        desk = WithdrawDesk(ledger, chain)
        cycle = ExchangeCycle(ledger, chain, Session(ledger, chain), desk=desk)
        pending = ["w5", "w6", "w7"]
        for _ in range(450):
            cycle.step()
            law = ledger.audit()
            assert law["ok"] and law["totals"]["drift"] == 0, law
            if all((ledger.withdraw_status(w) or {}).get("status") == "Complete"
                   for w in pending):
                break
            chain.mine(1)
        else:
            raise AssertionError({w: ledger.withdraw_status(w) for w in pending})
        assert ledger.withdraw_status("w5") == ledger.withdraw_status("w6")  # one batch
        assert ledger.withdraw_status("w5")["ID"] == want["check_withdraw"]["w5"]["ID"]
        assert ledger.withdraw_count() == 0 and not desk.active()
        assert audit(ledger, chain)["ok"]
    finally:
        ledger.close()
        chain.close()


def test_a_read_only_open_upgrades_in_memory_only(old):
    datadir, want = old
    chain = Devnet(datadir, block_seconds=0, initial_supply=100)
    try:
        with offline.opened(datadir, read_only=True) as ledger:
            assert_same_answers(ledger, chain, want)
        with offline.opened(datadir) as ledger:  # pegx audit --datadir: writes nothing either
            assert ledger.withdraw_status("w4")["status"] == "Expired"
    finally:
        chain.close()
    assert on_disk(datadir)["format"] == 1 and on_disk(datadir)["history"]


def test_backup_verify_and_restore_of_a_format_1_datadir(old, tmp_path):
    """A backup copies the old records as they are; verify-backup audits them upgraded in
    memory; the restored datadir is upgraded when it is opened."""
    datadir, want = old
    runner = CliRunner()
    dest = tmp_path / "backup"
    res = runner.invoke(main, ["backup", str(dest), "--datadir", str(datadir)])
    assert res.exit_code == 0, res.output
    assert on_disk(dest)["format"] == 1
    res = runner.invoke(main, ["verify-backup", str(dest)])
    assert res.exit_code == 0 and "audit OK" in res.output, res.output
    assert "format             1" in res.output, res.output
    restored = tmp_path / "restored"
    res = runner.invoke(main, ["restore", str(dest), "--datadir", str(restored)])
    assert res.exit_code == 0, res.output
    shutil.rmtree(datadir)  # the restored copy stands alone
    assert_upgraded_with_the_same_answers(restored, want)


class DiskFullAtState(Store):
    """A real Store whose batches fail as a full disk would when they reach the state record
    (the last write of a checkpoint): LevelDB then writes nothing of the batch."""

    @contextlib.contextmanager
    def batch(self):
        with super().batch() as wb:
            yield _FailAtState(wb)


class _FailAtState:
    def __init__(self, wb):
        self._wb = wb

    def put(self, key: bytes, value: bytes) -> None:
        if key == schema.STATE:
            raise OSError(28, "No space left on device")
        self._wb.put(key, value)

    def delete(self, key: bytes) -> None:
        self._wb.delete(key)


def test_an_upgrade_that_cannot_be_written_leaves_the_old_ledger(old):
    """The upgrade is one batch: if it fails, nothing of it is on disk, the open fails, and
    the next open upgrades the old ledger as if nothing had happened."""
    datadir, want = old
    before = on_disk(datadir)
    store = DiskFullAtState(datadir / "ledger")
    with pytest.raises(JournalFailed, match="No space left"):
        Exchange(store)
    store.close()
    assert on_disk(datadir) == before  # format 1, its history, its op log
    assert_upgraded_with_the_same_answers(datadir, want)
