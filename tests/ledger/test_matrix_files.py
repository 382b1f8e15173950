"""Checkpoint files of rows and balances: a crash at every step of writing them (issue #15).

A checkpoint now writes input vectors in batches, then checkpoint files (tmp, fsync, rename,
fsync of the directory), then its commit batch naming them, then deletes the files it made
obsolete (pegx.ledger.checkpoint). ``tests/harness/ckptwriter.py`` runs in a child process on a real
ledger, makes acknowledged changes and ends itself with ``os._exit`` right after one of those
steps; the test reopens the ledger and finds exactly the state the child acknowledged
(``Exchange.digest()``), the audit clean, no stray file, and a ledger that goes on: a trade,
a checkpoint, a crash, the same digest again. Every step of both kinds of checkpoint is hit
(a delta file with new input vectors; a new base that makes the old files obsolete).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pegx import peg
from pegx.ledger import schema
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

WRITER = Path(__file__).parent.parent / "harness" / "ckptwriter.py"
STEPS = {
    "delta": ["vectors", "vectors", "rows.written", "rows.synced", "rows.renamed", "rows.dir",
              "view.written", "view.synced", "view.renamed", "view.dir", "state",
              "obsolete"],
    "base": ["vectors", "rows.written", "rows.synced", "rows.renamed", "rows.dir",
             "view.written", "view.synced", "view.renamed", "view.dir", "state", "obsolete"],
}


def writer(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WRITER), *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A ledger with a base, a delta and a balances file and a log tail (built once)."""
    path = tmp_path_factory.mktemp("ckpt") / "ledger"
    done = writer(path, "setup")
    assert done.returncode == 0, done.stderr
    return path


def files_named(path: Path) -> list[str]:
    with Store(path, create=False, read_only=True) as store:
        return Store.named_files(store.state())


@pytest.mark.parametrize("name", sorted(STEPS))
def test_the_steps_of_a_checkpoint(prepared, tmp_path, name):
    """The steps the crash test stops at are the ones a checkpoint takes."""
    path = tmp_path / "ledger"
    shutil.copytree(prepared, path)
    out = tmp_path / "steps.json"
    done = writer(path, name, -1, out)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["steps"] == STEPS[name]


CASES = [(name, k) for name in sorted(STEPS) for k in range(len(STEPS[name]) + 1)]


@pytest.mark.parametrize(("name", "crash_at"), CASES,
                         ids=[f"{n}-{STEPS[n][k - 1] if k else 'none'}-{k}" for n, k in CASES])
def test_a_crash_at_any_step_reopens_to_the_acknowledged_state(prepared, tmp_path, name,
                                                              crash_at):
    path = tmp_path / "ledger"
    shutil.copytree(prepared, path)
    before = files_named(path)
    out = tmp_path / "state.json"
    done = writer(path, name, crash_at, out)
    assert done.returncode == (9 if crash_at else 0), done.stderr
    want = json.loads(out.read_text())
    landed = crash_at == 0 or crash_at >= STEPS[name].index("state") + 1

    ex = Exchange(Store(path), file_rows=0)
    assert ex.digest() == want["digest"] and ex.seq == want["seq"]
    assert ex.ckpt_seq == (want["seq"] if landed else want["ckpt_seq"])
    assert ex.replayed == (0 if landed else ex.replayed) and (landed or ex.replayed > 0)
    named = Store.named_files(ex.store.state())
    assert (named != before) == landed
    on_disk = sorted(p.name for p in path.glob("*.pxm*"))
    assert on_disk == sorted(named), on_disk  # strays deleted at open, named files all there
    report = ex.audit()
    assert report["ok"], report["problems"]

    assert ex.trade("user0010", 123, "user0011")  # and it goes on
    ex.checkpoint()
    assert ex.trade("user0012", 45, "user0013")
    digest, seq = ex.digest(), ex.seq
    ex.store.close()
    again = Exchange(Store(path), file_rows=0)
    assert again.digest() == digest and again.seq == seq
    again.close()


def test_a_damaged_file_is_refused_with_what_to_do(prepared, tmp_path):
    path = tmp_path / "ledger"
    shutil.copytree(prepared, path)
    base = path / files_named(path)[0]
    raw = bytearray(base.read_bytes())
    raw[-200] ^= 0x10  # one bit of the last row's data
    base.write_bytes(bytes(raw))
    with pytest.raises(Exception, match="does not match its per-column checksum"):
        Exchange(Store(path))


def test_rows_move_between_keys_and_files_and_the_newest_wins(tmp_path):
    """A row written as a LevelDB key, then changed and taken into a delta file (which deletes
    the key), written as a key again, taken into a new base: each reopen (a crash: no closing
    checkpoint) reads the newest of each."""
    path = tmp_path / "ledger"
    ex = Exchange(Store(path), file_rows=2)
    users = [f"user{i:04d}" for i in range(12)]
    vec = peg.std_spread(10**12)
    for k, user in enumerate(users):
        ex.claim_deposits(user, [f"{k:064x}:0"])
    ex.credit_inputs([{"key": f"{k:064x}:0", "value": int(vec.sum()), "vector": vec,
                       "owner": user} for k, user in enumerate(users)], supply=500, now=0)
    ex.checkpoint()  # 15 rows: a base file
    rounds = [[(0, 1)], [(1, 2), (3, 4), (5, 6)], [(0, 1)], [(i, i + 1) for i in range(10)],
              [(2, 3)]]
    layouts = []
    for rnd, pairs in enumerate(rounds):
        for a, b in pairs:
            assert ex.trade(users[a], 1_000 + rnd, users[b])
        ex.checkpoint()
        with ex.store.snapshot() as snap:
            keys = sum(1 for _ in snap.iterator(prefix=schema.ACCOUNT))
        layouts.append((len(ex.store.state()["files"]["rows"]), keys))
        digest, seq = ex.digest(), ex.seq
        ex.store.close()
        ex = Exchange(Store(path), file_rows=2)
        assert ex.digest() == digest and ex.seq == seq, rnd
    # keys; a delta took them in; keys again; a new base took everything; keys
    assert layouts == [(1, 2), (2, 0), (2, 2), (1, 0), (1, 2)], layouts
    ex.close()


def test_a_backup_copies_the_files_its_snapshot_names(tmp_path):
    path = tmp_path / "ledger"
    ex = Exchange(Store(path), file_rows=0)
    vec = peg.std_spread(10**12)
    for k in range(5):
        ex.claim_deposits(f"user{k:04d}", [f"{k:064x}:0"])
    ex.credit_inputs([{"key": f"{k:064x}:0", "value": int(vec.sum()), "vector": vec,
                       "owner": f"user{k:04d}"} for k in range(5)], supply=500, now=0)
    ex.checkpoint()
    assert ex.trade("user0001", 5_000, "user0002")  # a log tail after the files
    named = Store.named_files(ex.store.state())
    assert len(named) == 2
    ex.store.copy_to(tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").glob("*.pxm")) == sorted(named)
    with Store(tmp_path / "copy", create=False, read_only=True) as store:
        copy = Exchange(store, write_upgrade=False)
        assert copy.digest() == ex.digest() and copy.audit()["ok"]
    # a file a backup is copying outlives the checkpoint that makes it obsolete
    ex.store._pin(named, 1)  # white-box: what copy_to holds while it copies
    assert ex.trade("user0003", 5_000, "user0004")
    ex.checkpoint()  # 4 of 8 rows changed: a new base, and a new balances file
    assert not set(named) & set(Store.named_files(ex.store.state()))
    assert all((path / name).exists() for name in named)
    ex.store._pin(named, -1)
    assert not any((path / name).exists() for name in named)
    ex.close()
