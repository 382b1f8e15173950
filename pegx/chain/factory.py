"""The one place chains are built (issue #11): for the daemon (:func:`build`) and for the
admin tools on a stopped daemon's datadir (:func:`open_stopped`).

``cfg`` is a :class:`pegx.config.Config`; only its chain settings are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pegx.chain.base import Chain

if TYPE_CHECKING:
    from pegx.config import Config


def build(cfg: Config) -> Chain:
    """The configured chain of a serving daemon: the devnet (its files in the datadir, its
    block timer started by ``Chain.start``) or a bitbayd client that retries until its
    deadline."""
    if cfg.chain == "devnet":
        from pegx.chain.devnet import Devnet

        return Devnet(cfg.path, block_seconds=cfg.block_seconds,
                      initial_supply=cfg.initial_supply,
                      walk_seed=None if cfg.devnet_walk < 0 else cfg.devnet_walk,
                      seed=cfg.devnet_seed, network=cfg.net)
    return _bitbayd(cfg)


def open_stopped(cfg: Config) -> Chain | None:
    """The chain of a stopped daemon's datadir: its devnet with the parameters of the devnet's
    own log (no block timer; None when the datadir has none), or its node."""
    if cfg.chain == "devnet":
        from pegx.chain.devnet import files

        return files.open_existing(cfg.path)
    return _bitbayd(cfg)


def creates_chain(cfg: Config) -> Path | None:
    """Where :func:`build` would create a new chain (a devnet datadir without its log), or
    None when it opens an existing one (or a node)."""
    if cfg.chain != "devnet":
        return None
    from pegx.chain.devnet import files

    return files.directory(cfg.path) if files.log_path(cfg.path) is None else None


def _bitbayd(cfg: Config) -> Chain:
    from pegx.chain.bitbayd import Bitbayd

    return Bitbayd(cfg.node_url, timeout=cfg.node_timeout, deadline=cfg.node_deadline,
                   retry=True, network=cfg.net)
