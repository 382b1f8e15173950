"""Does a wrong API password take as long as the right one? Measures and prints; never asserts.

    python scripts/timing_password.py            # own devnet daemon, 300 calls per row
    python scripts/timing_password.py --n 2000
    python scripts/timing_password.py --url http://127.0.0.1:55779 --password PW --user alice

For Trade and GetBalance it times N calls with the right password and N with each kind of wrong
one (first character off, last character off, one character short, empty, a non-string), all
interleaved in one shuffled order over one keep-alive connection, and prints the median and p95
per row plus the median's difference to the right password's. The right-password Trade is one
the ledger refuses right after the check ("Insufficient liquid balance"), so both sides do
the same work apart from the password check. A leak shows as a row that differs from "right"
by much more than the rows differ from each other; a few microseconds are noise.

Not measured here: the first check after a start or a password change runs scrypt (~50 ms)
for right and wrong passwords alike, then the salted SHA-256 kept in memory is used.

Without --url the script starts a devnet daemon in a temporary directory (tests/harness/daemon.py),
funds one user, sets a password, and stops the daemon at the end. Exit code 1 if any call
answered something other than what its password deserves (a wrong one must get
"Incorrect Password"); 0 otherwise, whatever the timings.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

WRONG = "Incorrect Password"
DEFAULT_PASSWORD = "correct horse battery staple"
BIG = str(10**16)  # more than anyone holds: the trade is refused after the password check


def wrong_passwords(right: str) -> dict[str, object]:
    """The kinds of wrong password, by name."""
    return {
        "wrong-first": chr(ord(right[0]) ^ 1) + right[1:],
        "wrong-last": right[:-1] + chr(ord(right[-1]) ^ 1),
        "one-short": right[:-1],
        "empty": "",
        "not-a-string": 12345,
    }


def calls_for(user: str, other: str):
    """{method: function of (proxy, password) -> the answer}."""
    return {
        "GetBalance": lambda x, pw: x.GetBalance(user, pw),
        "Trade": lambda x, pw: x.Trade(user, BIG, other, "liquid", pw),
    }


def measure(url: str, password: str, user: str, other: str, n: int, seed: int = 1) -> tuple:
    """Time every (method, password kind) n times in a shuffled order; returns (rows, bad)."""
    kinds = {"right": password, **wrong_passwords(password)}
    calls = calls_for(user, other)
    plan = [(m, k) for m in calls for k in kinds] * n
    random.Random(seed).shuffle(plan)  # drift (caches, other load) spreads over every row
    x = xmlrpc.client.ServerProxy(url, allow_none=True)  # keeps one HTTP/1.1 connection
    for m in calls:  # warm up: connection, code paths, the in-memory password digest
        calls[m](x, password)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in set(plan)}
    bad = []
    for method, kind in plan:
        t0 = time.perf_counter()
        got = calls[method](x, kinds[kind])
        samples[(method, kind)].append(time.perf_counter() - t0)
        refused = got == WRONG
        if refused != (kind != "right"):
            bad.append(f"{method} with {kind} password answered {got!r}")
    rows = []
    for method in calls:
        base = statistics.median(samples[(method, "right")])
        for kind in kinds:
            s = sorted(samples[(method, kind)])
            med = statistics.median(s)
            p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
            rows.append((method, kind, len(s), med * 1e6, p95 * 1e6, (med - base) * 1e6))
    return rows, bad


def print_table(rows: list[tuple]) -> None:
    print(f"{'method':<11} {'password':<13} {'n':>6} {'median us':>10} {'p95 us':>10} "
          f"{'vs right':>9}")
    for method, kind, n, med, p95, diff in rows:
        print(f"{method:<11} {kind:<13} {n:>6d} {med:>10.1f} {p95:>10.1f} {diff:>+9.1f}")


def own_daemon(tmp: Path, password: str):
    """A devnet daemon with a funded user and the password set; returns (daemon, user, other)."""
    from harness.daemon import Daemon

    d = Daemon(tmp / "timing", env={"PEGX_POLL_SECONDS": "0.1"})
    d.start()
    try:
        d.fund("timing_user", 10**10)
        assert d.proxy().SetPassword(password) is True
    except BaseException:
        d.stop()
        raise
    return d, "timing_user", "timing_other"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="calls per row (default 300)")
    ap.add_argument("--url", help="a running daemon (default: start a devnet one)")
    ap.add_argument("--password", default=DEFAULT_PASSWORD,
                    help="the daemon's API password (with --url)")
    ap.add_argument("--user", default="alice", help="an existing user (with --url)")
    ap.add_argument("--other", default="bobby", help="a second user name (with --url)")
    args = ap.parse_args(argv)
    if args.n < 1 or len(args.password) < 2:
        ap.error("--n must be >= 1 and the password at least 2 characters")
    if args.url:
        rows, bad = measure(args.url, args.password, args.user, args.other, args.n)
    else:
        with tempfile.TemporaryDirectory(prefix="pegx-timing-") as tmp:
            d, user, other = own_daemon(Path(tmp), args.password)
            try:
                rows, bad = measure(d.url, args.password, user, other, args.n)
            finally:
                d.stop()
    print_table(rows)
    print("(the right password's call also does the call's own work after the check: compare "
          "the wrong kinds with each other for a leak in the comparison itself)")
    for line in bad:
        print(f"UNEXPECTED: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
