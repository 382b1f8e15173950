"""A process that changes a ledger and dies inside the checkpoint that follows (for
tests/test_matrix_files.py).

    python tests/ckptwriter.py LEDGER SCENARIO CRASH_AT OUT

opens LEDGER (file_rows=0: every checkpoint writes checkpoint files), makes the SCENARIO's
changes (each acknowledged: durable in the op log), writes {digest, seq, ckpt_seq} of the
state to OUT, then takes a checkpoint with pegx.ledger.checkpoint.FAULT set: at the
CRASH_AT-th step (0: none) the process ends on the spot with os._exit, as a SIGKILL would
end it (nothing flushed, no cleanup). With CRASH_AT -1 it lists the steps in OUT instead.
"""

from __future__ import annotations

import json
import os
import sys

from pegx import peg
from pegx.ledger import checkpoint
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

SUPPLY = 500
USERS = [f"user{i:04d}" for i in range(20)]


def credit(ex: Exchange, first: int, n: int, owners: list[str]) -> None:
    for i in range(n):  # as deposits arrive: claimed, then registered
        ex.claim_deposits(owners[i % len(owners)], [f"{first + i:064x}:0"])
    ex.credit_inputs([{"key": f"{first + i:064x}:0", "value": 10**11 + i,
                       "vector": peg.std_spread(10**11 + i), "owner": owners[i % len(owners)]}
                      for i in range(n)], supply=SUPPLY, now=0)


def setup(path: str) -> None:
    """The ledger before a scenario: a base file, a delta file, a balances file."""
    ex = Exchange(Store(path), file_rows=0)
    credit(ex, 0, 20, USERS)
    ex.checkpoint()  # a base of every row, a balances file
    for i in range(3):
        assert ex.trade(USERS[i], 1_000 + i, USERS[i + 1])
    ex.checkpoint()  # a delta of 4 rows, a new balances file
    assert ex.trade(USERS[5], 77, USERS[6])  # in the log only
    ex.store.close()


def scenario(ex: Exchange, name: str) -> None:
    if name == "delta":  # a few rows: a delta file, new input vectors in two batches
        credit(ex, 100, 3, ["newcomer"])
        assert ex.trade(USERS[7], 5_000, USERS[8], "reserve")
    elif name == "base":  # most rows: a new base, the old base and deltas obsolete
        for i in range(15):
            assert ex.trade(USERS[i], 10_000 + i, USERS[i + 4 if i < 16 else 0])
        credit(ex, 200, 1, [USERS[19]])
    else:
        raise SystemExit(f"unknown scenario {name}")


def main(path: str, name: str, crash_at: int, out: str) -> None:
    ex = Exchange(Store(path), file_rows=0)
    checkpoint.BATCH_BYTES = 15_000  # two input vectors per batch: several batches
    scenario(ex, name)
    steps: list[str] = []

    def fault(step: str) -> None:
        steps.append(step)
        if len(steps) == crash_at:
            os._exit(9)

    with open(out, "w") as fh:
        json.dump({"digest": ex.digest(), "seq": ex.seq, "ckpt_seq": ex.ckpt_seq}, fh)
    checkpoint.FAULT = fault
    ex.checkpoint()
    checkpoint.FAULT = None
    if crash_at == -1:
        with open(out, "w") as fh:
            json.dump({"steps": steps}, fh)
    ex.store.close()


if __name__ == "__main__":
    if sys.argv[2] == "setup":
        setup(sys.argv[1])
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
