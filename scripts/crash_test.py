#!/usr/bin/env python3
"""Crash-injection test (STYLE 12, in the spirit of Bitcoin Core's feature_dbcrash): the command
line over the tests' harness (tests/harness/crash/), which does the run.

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

    python scripts/crash_test.py --kills 30 --clients 3 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness.crash import run


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 0 only if every check passed and all kills happened."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=30, help="SIGKILLs to inject (default 30)")
    ap.add_argument("--clients", type=int, default=3, help="client processes (default 3)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the datadir and client logs")
    ap.add_argument("--quiet", action="store_true", help="only print the summary")
    ap.add_argument("--workdir", help="where to run (default: a new temp dir)")
    args = ap.parse_args(argv)
    summary = run(args.workdir, kills=args.kills, clients=args.clients, seed=args.seed,
                  keep=args.keep, quiet=args.quiet)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
