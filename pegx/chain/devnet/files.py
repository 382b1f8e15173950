"""Where a devnet keeps its files in a datadir, and the operations on them the admin tools need
(backups, restores, audits of a stopped daemon): only this module knows the layout.

A devnet lives in ``<datadir>/devnet/``, all of it in one append-only action log
(:mod:`pegx.chain.devnet.log`) whose first line, the header, holds the chain's parameters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pegx.chain.devnet.log import LOG_NAME

DIR = "devnet"


class NotADevnet(ValueError):
    """A devnet directory whose log does not start with a devnet header."""


def directory(datadir: str | Path) -> Path:
    """The devnet directory of ``datadir``."""
    return Path(datadir) / DIR


def log_path(datadir: str | Path) -> Path | None:
    """The devnet action log of ``datadir``, or None if it has none."""
    path = directory(datadir) / LOG_NAME
    return path if path.is_file() else None


def new_log_path(datadir: str | Path) -> Path:
    """Where the devnet action log of ``datadir`` goes, for a log written from elsewhere (a
    standby's copy of its primary's header)."""
    return directory(datadir) / LOG_NAME


def header(datadir: str | Path) -> dict:
    """The parameters a devnet's log header holds; NotADevnet without one."""
    path = directory(datadir) / LOG_NAME
    with open(path, "rb") as fh:
        head = json.loads(fh.readline() or b"{}")
    if head.get("a") != "header":
        raise NotADevnet(f"{path} has no devnet header")
    return head


def open_existing(datadir: str | Path):
    """The devnet of ``datadir`` with the parameters of its log header and no block timer, or
    None if it has none. Locks the log: no daemon may be running on it."""
    if log_path(datadir) is None:
        return None
    head = header(datadir)
    from pegx import crypto
    from pegx.chain.devnet.node import Devnet

    return Devnet(datadir, block_seconds=0, network=crypto.network(head.get("network", "main")),
                  **{k: head[k] for k in ("seed", "initial_supply", "walk_seed")})


def copy_log(src_datadir: str | Path, dest_datadir: str | Path) -> dict | None:
    """Copy ``src_datadir``'s devnet log to the same place under ``dest_datadir``, cut after
    its last complete line (a torn tail of an append in progress was never acknowledged; the
    devnet drops it on load too). Returns {bytes, lines}, or None when there is no devnet."""
    src = log_path(src_datadir)
    if src is None:
        return None
    data = src.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    dest = directory(dest_datadir)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / LOG_NAME).write_bytes(data)
    return {"bytes": len(data), "lines": data.count(b"\n")}


def copy_tree(src_datadir: str | Path, dest_datadir: str | Path) -> bool:
    """Copy the devnet directory of ``src_datadir`` (a backup's) into ``dest_datadir``, as it
    is; False when there is none."""
    src = directory(src_datadir)
    if not src.is_dir():
        return False
    shutil.copytree(src, directory(dest_datadir))
    return True
