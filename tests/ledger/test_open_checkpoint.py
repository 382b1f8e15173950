"""A checkpoint taken while a ledger opens (the format upgrade) deletes no op-log record.

Records past a checkpoint are kept for a standby that has not acknowledged them (the
replicator's floor). At open no sink is set yet, so before the fix the upgrade's checkpoint
deleted every record up to the current seq, those kept below the old checkpoint included,
and a standby that was behind had to be re-seeded by hand.
"""

from __future__ import annotations

import json

from pegx import peg
from pegx.ledger import schema
from pegx.ledger.engine import Exchange
from pegx.ledger.store import FORMAT_VERSION, Store
from pegx.replication.primary import Replicator

SUPPLY = 500
BANK = "bankroll"


def log_seqs(path) -> list[int]:
    with Store(path, create=False, read_only=True) as store:
        return [schema.unpack_seq(k) for k, _ in store.scan(schema.OPLOG)]


def as_format_2(path) -> None:
    """Turn the state record of a closed ledger into a format-2 one (what an older pegx
    wrote; the layout of this small ledger is otherwise the same)."""
    with Store(path) as store, store.batch() as wb:
        state = store.state()
        state["format"] = 2
        wb.put(schema.STATE, json.dumps(state).encode())


def test_the_upgrade_checkpoint_at_open_keeps_the_records_kept_for_a_standby(tmp_path):
    path = tmp_path / "ledger"
    ex = Exchange(Store(path))
    # a primary whose standby has not acknowledged anything: checkpoints keep the whole log
    ex.replicate_to(Replicator(key=b"k" * 32, host="127.0.0.1", port=0, ledger=ex,
                               devnet=None, datadir=tmp_path,
                               identity={"chain": "devnet", "network": "regtest"}))
    vec = peg.std_spread(10**11)
    ex.credit_inputs([{"key": "f" * 64 + ":0", "value": int(vec.sum()), "vector": vec,
                       "owner": BANK}], supply=SUPPLY, now=0)
    for k in range(3):
        ex.trade(BANK, 1, f"user{k:04d}")
    ex.checkpoint()
    ex.trade(BANK, 1, "user0009")
    seq, want = ex.seq, ex.digest()
    ex.close()  # its last checkpoint keeps the log too
    kept = log_seqs(path)
    assert kept == list(range(1, seq + 1))
    as_format_2(path)

    ex = Exchange(Store(path))  # upgrades: format 2 -> 3, written by a checkpoint
    try:
        assert ex.store.state()["format"] == FORMAT_VERSION
        assert ex.digest() == want
        assert [s for s, _ in ex.log_records(0)] == kept
        assert ex.log_bounds()[1] == 0  # nothing deleted, and the journal knows it
    finally:
        ex.close()  # (no sink now: its checkpoint deletes the log by the normal rules)
