"""The crash-injection run (STYLE 12, in the spirit of Bitcoin Core's feature_dbcrash), behind
``scripts/crash_test.py`` and ``tests/test_crash.py``.

Runs `pegx serve` on the devnet, drives it with K client processes (stock xmlrpc.client) doing
random deposits, trades, pool moves and withdraws, kills the daemon with SIGKILL at random
moments (and deliberately right after mining across a cycle boundary or into the liquid withdraw
window), restarts it with the same command line and checks after every restart:

* every call that returned True is reflected, and no call that was refused or never sent left
  an effect: every account's total (liquid + reserve, which a recompute never changes) must equal
  a model built from the clients' call logs;
* a call that got no answer (the daemon died under it) happened entirely or not at all: exactly
  one subset of the in-flight calls makes every account match (at most one call per client is
  in flight, so there are at most 2^K candidates);
* ``pegx.audit`` (the ledger's one audit: conservation and every invariant) reports ``ok``;
* the daemon came back by itself within 30 s, with no traceback in its log, and caught up with
  the chain's cycle.

The model is the "run that never crashed": it is what the ledger must hold if every
acknowledged call, and nothing else, took effect.

:mod:`.clients` are the client processes and their transport, :mod:`.model` the model and its
checks, :mod:`.run` the coordinator (the daemon, the kill loop, the verification).
"""

from harness.crash.clients import HOUSE, POOL, WITHDRAWS, proxy
from harness.crash.model import CheckFailed, Model, Summary
from harness.crash.run import Run, run

__all__ = ["HOUSE", "POOL", "WITHDRAWS", "CheckFailed", "Model", "Run", "Summary", "proxy", "run"]
