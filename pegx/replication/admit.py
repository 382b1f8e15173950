"""Who may follow this primary: the checks a standby's START message must pass.

A standby says what it holds: its epoch and lineage, its last seq, its chain and network, and
with the devnet the length of its devnet log with hashes of that log's first line and of its
last TAIL_BYTES. It may follow only if what it holds is a prefix of what this primary holds
(see pegx.replication.epoch), and this primary still has every op-log record after it. (A
standby of a newer epoch is the primary's own business: it fences itself, pegx.replication.
primary.)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pegx.replication import epoch

TAIL_BYTES = 4096  # devnet bytes before a standby's end compared by hash at its start


def file_hashes(fd: int, end: int) -> tuple[str, str]:
    """sha256 of a devnet log's first line and of its last TAIL_BYTES before ``end``."""
    head = os.pread(fd, min(end, 1 << 20), 0)
    head = head[:head.find(b"\n") + 1]
    lo = max(0, end - TAIL_BYTES)
    tail = os.pread(fd, end - lo, lo)
    return hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest()


def check(start: dict, *, rec: dict | None, identity: dict, local_seq: int, deleted_seq: int,
          devnet: tuple[Path, int] | None) -> str:
    """Why the standby that sent ``start`` cannot follow ('' if it can). ``rec`` is this
    primary's replication record, ``deleted_seq`` the last op-log record it no longer has,
    ``devnet`` its devnet log's (path, end) or None."""
    if start.get("id") and start["id"] != epoch.lineage(rec):
        return (f"the standby's ledger is not a copy of this one (lineage {start['id']}, ours "
                f"{epoch.lineage(rec)}): give it an empty datadir or a backup of this primary")
    for name, value in identity.items():
        if start.get(name) != value:
            return (f"the standby runs {name} {start.get(name)!r}, this primary {value!r}: "
                    f"start it with the same setting")
    seq, theirs = int(start["seq"]), int(start["epoch"])
    if theirs < epoch.epoch_of(rec):
        why = epoch.diverged(rec, theirs, seq)
        if why:
            return why
    if seq > local_seq:
        return (f"the standby holds seq {seq:,d}, beyond this primary's {local_seq:,d}: the two "
                f"diverged (was this primary restored from a backup?); re-seed the standby "
                f"from a backup of this primary")
    if seq < deleted_seq:
        return (f"this primary no longer keeps op-log records {seq + 1:,d}..{deleted_seq:,d} "
                f"(checkpointed while no standby held them): re-seed the standby from a new "
                f"backup of this primary")
    return _check_devnet(start, *devnet) if devnet is not None else ""


def _check_devnet(start: dict, path: Path, end: int) -> str:
    theirs = start.get("devnet")
    if not isinstance(theirs, int) or theirs < 0:
        return "the standby sent no devnet position"
    if theirs > end:
        return (f"the standby's devnet log ({theirs:,d} bytes) is longer than this primary's "
                f"({end:,d}): they diverged; re-seed the standby")
    if theirs == 0:
        return ""
    fd = os.open(path, os.O_RDONLY)
    try:
        head, tail = file_hashes(fd, theirs)
    finally:
        os.close(fd)
    if head != start.get("devnet_head"):
        return "the standby's devnet is another chain (its first line differs)"
    if tail != start.get("devnet_tail"):
        return (f"the standby's devnet log differs from this primary's before byte "
                f"{theirs:,d}: they diverged; re-seed the standby from a backup")
    return ""
