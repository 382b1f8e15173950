#!/usr/bin/env python3
"""Crash-injection test (STYLE 12, in the spirit of Bitcoin Core's feature_dbcrash): the command
line over the tests' harness (tests/harness/crash/), which does the run.

What it runs and checks after every SIGKILL and restart (every acknowledged call and nothing
else took effect, in-flight calls all or nothing, a clean ``pegx.audit``, a restart with no
manual step) is written once, in that package's docstring.

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
