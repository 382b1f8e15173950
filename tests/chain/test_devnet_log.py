"""The devnet's action log under a failing disk: a refused append leaves nothing behind.

The "disk full" is real: the daemon's file size limit (RLIMIT_FSIZE, set on the running
process with prlimit) makes the kernel refuse writes past a size with EFBIG, as a full disk
refuses them with ENOSPC. Python ignores SIGXFSZ, so the write fails instead of killing it.
"""

from __future__ import annotations

import resource
import xmlrpc.client
from pathlib import Path

import pytest

from harness import wait_until
from harness.daemon import Daemon
from pegx.chain.devnet.log import LOG_NAME
from pegx.peg import PEG_SIZE

AMOUNT = 10**9
UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


def _largest_other_file(datadir: Path, log_path: Path, devnet_log: Path) -> int:
    sizes = [p.stat().st_size for p in datadir.rglob("*") if p.is_file() and p != devnet_log]
    return max(sizes + [log_path.stat().st_size])


def test_an_append_refused_for_lack_of_space_is_not_replayed(tmp_path):
    datadir = tmp_path / "d"
    devnet_log = datadir / "devnet" / LOG_NAME
    d = Daemon(datadir, autostart=False)
    with d:
        x = d.proxy()
        refused, kept = x.devnet.new_address(), x.devnet.new_address()
        # big outside payments (explicit fraction vectors: ~8 kB a line) make the devnet log
        # the largest file the daemon writes, so the limit below only bites the devnet log
        spread = [AMOUNT // PEG_SIZE] * (PEG_SIZE - 1)
        spread.append(AMOUNT - (AMOUNT // PEG_SIZE) * (PEG_SIZE - 1))
        filler = x.devnet.new_address()
        while devnet_log.stat().st_size < _largest_other_file(datadir, d.log_path,
                                                              devnet_log) + 64_000:
            x.devnet.send(filler, str(AMOUNT), spread)
        size = devnet_log.stat().st_size
        # room for 40 more bytes: a payment's line (~200 bytes) is cut short mid-line
        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
        try:
            with pytest.raises(xmlrpc.client.Fault) as fault:
                x.devnet.send(refused, str(AMOUNT))
            assert "internal error" in fault.value.faultString
            assert devnet_log.stat().st_size == size  # the torn part was cut away
            mempool = x.devnet.info()["mempool"]
        finally:
            resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, UNLIMITED)
        # space is back: the next action succeeds, and carries nothing of the refused one
        x.devnet.send(kept, str(AMOUNT))
        assert x.devnet.info()["mempool"] == mempool + 1
        wait_until(lambda: "No space" in d.log() or "File too large" in d.log(), 10,
                   what="the refused append in the daemon log")
    with Daemon(datadir, autostart=False) as d:
        x = d.proxy()
        x.devnet.mine(1)
        assert x.devnet.balance(refused)["amount"] == 0  # answered a Fault: never happened
        assert x.devnet.balance(kept)["amount"] == AMOUNT
        x.devnet.send(refused, "5")  # the log goes on appending cleanly after the restart
        x.devnet.mine(1)
        assert x.devnet.balance(refused)["amount"] == 5
