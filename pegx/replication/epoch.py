"""Epochs: which primary's history a ledger follows, and the fence that stops an old primary.

The ledger keeps one record, ``meta/replication`` (written with an ordinary ``put`` op, so it
is replicated, checkpointed and part of ``Exchange.digest()`` like everything else)::

    {"id": "<random hex: this ledger's lineage>", "epoch": N,
     "history": [[1, first_seq], [2, first_seq], ...]}

A primary with replication on writes epoch 1 the first time it starts (a ledger without the
record is at "epoch 0"); ``pegx promote`` writes epoch N+1 as the promoted standby's first
record, and the history says at which seq each epoch began. So a standby at epoch ``e`` and seq
``S`` holds a prefix of the primary's history exactly when ``S`` is not past the end of epoch
``e`` there (the seq before epoch ``e+1`` began): records after it were written by a primary
that was superseded, and no newer primary has them.

A primary that learns of a higher epoch of its own lineage (a standby that says so, or a
promoted standby's fencer) writes ``<datadir>/fenced.json`` and stops; it refuses to start as
a primary while that file names an epoch above its ledger's. A promoted standby writes
``<datadir>/promoted.json``: started again with its old ``--standby-of`` (a service file not
updated yet) it refuses to start rather than sit as a standby while it is the primary.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pegx.chain.devnet.log import fsync_path

TABLE, KEY = "meta", "replication"
FENCE_FILE = "fenced.json"
PROMOTED_FILE = "promoted.json"  # this datadir was promoted to primary (epoch): not a standby


class Fenced(RuntimeError):
    """This datadir's primary was superseded by a higher epoch: it must not serve."""


def record(ledger) -> dict | None:
    """The ledger's replication record, or None (epoch 0)."""
    rec = ledger.record(TABLE, KEY)
    return rec if isinstance(rec, dict) else None


def epoch_of(rec: dict | None) -> int:
    return int(rec["epoch"]) if rec else 0


def lineage(rec: dict | None) -> str:
    return str(rec["id"]) if rec else ""


def first_record(next_seq: int) -> dict:
    """The record a primary writes when replication is first turned on (at ``next_seq``)."""
    return {"id": os.urandom(16).hex(), "epoch": 1, "history": [[1, next_seq]]}


def promoted(rec: dict | None, next_seq: int) -> dict:
    """The record a promoted standby writes as its first record, at ``next_seq``."""
    base = rec or first_record(1)
    epoch = epoch_of(base) + 1
    return {"id": base["id"], "epoch": epoch, "history": [*base["history"], [epoch, next_seq]]}


def epoch_end(rec: dict | None, epoch: int) -> int | None:
    """The last seq of ``epoch`` in ``rec``'s history (None: ``epoch`` is still current)."""
    for e, first in (rec or {}).get("history", []):
        if e > epoch:
            return int(first) - 1
    return None


def diverged(rec: dict | None, standby_epoch: int, standby_seq: int) -> str:
    """Why a standby at (epoch, seq) does not hold a prefix of ``rec``'s history ('' if it
    does; the caller checks the seq against its own log)."""
    end = epoch_end(rec, standby_epoch)
    if end is not None and standby_seq > end:
        return (f"the standby holds records {end + 1:,d}..{standby_seq:,d} of epoch "
                f"{standby_epoch}, which ended at seq {end:,d} (a superseded primary wrote "
                f"them): re-seed it from a backup of this primary (pegx backup, pegx restore)")
    return ""


# ------------------------------------------------------------------------------- fence file
def read_fence(datadir: Path) -> dict | None:
    """The fence written when this datadir's primary was superseded, or None."""
    path = Path(datadir) / FENCE_FILE
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Fenced(f"{path} cannot be read ({exc}): this datadir may have been superseded; "
                     f"look before removing it") from None
    return value if isinstance(value, dict) else {"epoch": 1 << 62}


def write_fence(datadir: Path, epoch: int, by: str) -> None:
    """Durably note that epoch ``epoch`` (announced by ``by``) supersedes this datadir."""
    path = Path(datadir) / FENCE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"epoch": epoch, "by": by, "at": int(time.time())}) + "\n")
    fsync_path(tmp)
    tmp.replace(path)
    fsync_path(path.parent)


def clear_fence(datadir: Path) -> None:
    path = Path(datadir) / FENCE_FILE
    if path.exists():
        path.unlink()
        fsync_path(path.parent)


def check_not_fenced(datadir: Path, ledger_epoch: int) -> None:
    """Refuse to serve as a primary if a higher epoch superseded this datadir."""
    fence = read_fence(datadir)
    if fence is not None and int(fence.get("epoch", 0)) > ledger_epoch:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(fence.get("at", 0)))
        raise Fenced(
            f"this datadir's primary (epoch {ledger_epoch}) was superseded by epoch "
            f"{fence['epoch']} (told by {fence.get('by', '?')} at {when}); it must not serve "
            f"as a primary. Make it a standby of the new primary (pegx serve --standby-of), "
            f"re-seeded from a backup if it refuses, or remove {Path(datadir) / FENCE_FILE} "
            f"only if you are certain no newer primary exists")


def write_promoted(datadir: Path, epoch: int, was_standby_of: str) -> None:
    """Durably note that this datadir became the primary of ``epoch``."""
    path = Path(datadir) / PROMOTED_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"epoch": epoch, "was_standby_of": was_standby_of,
                               "at": int(time.time())}) + "\n")
    fsync_path(tmp)
    tmp.replace(path)
    fsync_path(path.parent)


def check_not_promoted(datadir: Path, ledger_epoch: int) -> None:
    """Refuse to start as a standby a datadir that was promoted to the primary of the epoch
    its ledger is at."""
    path = Path(datadir) / PROMOTED_FILE
    if not path.exists():
        return
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        note = {"epoch": ledger_epoch}
    if int(note.get("epoch", 0)) >= ledger_epoch:
        raise Fenced(
            f"this datadir was promoted to primary (epoch {note.get('epoch')}, from standby of "
            f"{note.get('was_standby_of', '?')}): start it without --standby-of (it is the "
            f"primary), or give a standby an empty datadir or a restored backup")
