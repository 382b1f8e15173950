"""Opening a stopped daemon's datadir: its ledger, its devnet chain or its node.

Used by the ``pegx`` commands that work on a datadir directly (audit, backup, verify-backup,
recover) and by the other admin modules; nothing here writes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pegx.chain import factory
from pegx.chain.devnet import files as devnet_files
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

LEDGER_DIR = "ledger"


class ToolError(ValueError):
    """An operator tool cannot proceed; the message says why and what to do."""


def open_devnet(datadir: Path):
    """The devnet chain of ``datadir`` with the parameters of its log header (no block timer),
    or None if it has none. Locks the log: the daemon must not be running on it."""
    try:
        return devnet_files.open_existing(datadir)
    except devnet_files.NotADevnet as exc:
        raise ToolError(str(exc)) from None


def open_chain(cfg):
    """The chain of a stopped daemon's datadir (devnet: its own log), or None for a devnet
    datadir without chain data (:func:`pegx.chain.factory.open_stopped`)."""
    try:
        return factory.open_stopped(cfg)
    except devnet_files.NotADevnet as exc:
        raise ToolError(str(exc)) from None


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
