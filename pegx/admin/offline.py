"""Opening a stopped daemon's datadir: its ledger, its devnet chain or its node.

Used by the ``pegx`` commands that work on a datadir directly (audit, backup, verify-backup,
recover) and by the other admin modules; nothing here writes.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from pegx.chain.devnet.log import LOG_NAME
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

LEDGER_DIR = "ledger"
DEVNET_DIR = "devnet"


class ToolError(ValueError):
    """An operator tool cannot proceed; the message says why and what to do."""


def devnet_log(datadir: Path) -> Path | None:
    """The devnet action log of ``datadir`` (``<datadir>/devnet/actions.jsonl``), or None."""
    path = Path(datadir) / DEVNET_DIR / LOG_NAME
    return path if path.is_file() else None


def open_devnet(datadir: Path):
    """The devnet chain of ``datadir`` with the parameters of its log header (no block timer),
    or None if it has none. Locks the log: the daemon must not be running on it."""
    path = devnet_log(datadir)
    if path is None:
        return None
    with open(path, "rb") as fh:
        header = json.loads(fh.readline() or b"{}")
    if header.get("a") != "header":
        raise ToolError(f"{path} has no devnet header")
    from pegx import crypto
    from pegx.chain.devnet import Devnet

    return Devnet(path.parent.parent, block_seconds=0,
                  network=crypto.network(header.get("network", "main")),
                  **{k: header[k] for k in ("seed", "initial_supply", "walk_seed")})


def open_chain(cfg):
    """The chain of a stopped daemon's datadir (devnet: its own log), or None for a devnet
    datadir without chain data."""
    if cfg.chain == "devnet":
        return open_devnet(cfg.path)
    from pegx.chain.bitbayd import Bitbayd

    return Bitbayd(cfg.node_url, timeout=cfg.node_timeout, deadline=cfg.node_deadline,
                   retry=True, network=cfg.net)


@contextlib.contextmanager
def opened(datadir: Path, *, read_only: bool = False):
    """An Exchange on ``datadir``'s ledger without writing anything; closes the store only (no
    checkpoint; a ledger of an older format is upgraded in memory only). Takes the ledger lock
    unless ``read_only``, so a running daemon is refused."""
    path = Path(datadir) / LEDGER_DIR
    if not path.is_dir():
        raise ToolError(f"no ledger at {path}")
    store = Store(path, create=False, read_only=read_only)
    try:
        yield Exchange(store, write_upgrade=False)
    finally:
        store.close()


def ledger_state(ledger: Exchange) -> dict:
    """What verify-backup prints about a ledger."""
    return {**ledger.info(), "exchange": ledger.exchange_balance(), "digest": ledger.digest()}
