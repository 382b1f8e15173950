"""The crash run's model: what the ledger must hold if every acknowledged call, and nothing
else, took effect; and the checks of a daemon's snapshot against it."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from itertools import product

from harness.crash.clients import HOUSE, WITHDRAWS

REFUNDED = ("Failed/Declined", "Expired")


def effect(fx: dict) -> Counter:
    """The balance effect of a call that took effect, per account."""
    c: Counter = Counter()
    if fx["kind"] == "move":
        c[fx["src"]] -= fx["amount"]
        c[fx["dst"]] += fx["amount"]
    elif fx["kind"] == "withdraw":
        c[fx["user"]] -= fx["amount"]
        c[WITHDRAWS] += fx["amount"]
    return c


@dataclass
class Summary:
    """What a run did and found."""

    kills_intended: int
    kills: int = 0
    labels: Counter = field(default_factory=Counter)
    kills_in_flight: int = 0
    outcomes: Counter = field(default_factory=Counter)
    unknown_applied: int = 0
    unknown_not_applied: int = 0
    claims_applied: int = 0
    claims_not_applied: int = 0
    restarts: list[float] = field(default_factory=list)
    conservation: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Passed: every intended kill happened and no check failed."""
        return self.kills >= self.kills_intended and not self.failures

    def lines(self) -> list[str]:
        """The printed summary."""
        r = sorted(self.restarts) or [0.0]
        return [
            (f"kills: {self.kills} of {self.kills_intended} intended "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.labels.items()))}); "
            f"{self.kills_in_flight} with calls in flight"),
            "calls: " + ", ".join(f"{k} {v:,d}" for k, v in sorted(self.outcomes.items())),
            (f"unknown calls resolved: {self.unknown_applied} applied, "
            f"{self.unknown_not_applied} not applied; unknown claims: {self.claims_applied} "
            f"applied, {self.claims_not_applied} not"),
            f"restart: min {r[0]:.2f} s, median {statistics.median(r):.2f} s, max {r[-1]:.2f} s",
            "conservation checks: " + (", ".join(f"{k} {v}" for k, v in
                                                 sorted(self.conservation.items())) or "none"),
            f"result: {'PASS' if self.ok else 'FAIL'}"
            + "".join(f"\n  failure: {f}" for f in self.failures),
        ]


class CheckFailed(AssertionError):
    """A crash check failed; the message says which and how."""


class Model:
    """What the ledger must hold: every acknowledged call, and nothing else."""

    def __init__(self, users: list[str]):
        self.users = users
        self.base: Counter = Counter()  # applied moves, withdraws, refunds, burns
        self.withdraws: dict[str, dict] = {}  # known id -> fx, not yet final
        self.orphans: list[dict] = []  # applied withdraws whose id never reached a client
        self.claims: dict[str, dict] = {}  # outpoint -> {user, value, acked, maybe}
        self.unknown: list[dict] = []  # calls of this life without an answer

    def take(self, call: dict, summary: Summary) -> None:
        """Fold one logged call (intent + outcome) into the model."""
        outcome, fx = call.get("o", "unknown"), call["fx"]
        summary.outcomes[outcome] += 1
        if fx["kind"] == "claim":
            c = self.claims.setdefault(fx["outpoint"], {"user": fx["user"], "value": fx["value"],
                                                         "acked": False, "maybe": False})
            c["acked"] |= outcome == "acked"
            c["maybe"] |= outcome in ("unknown", "fault")
        elif outcome == "acked":
            self.base.update(effect(fx))
            if fx["kind"] == "withdraw":
                self.withdraws[call["id"]] = fx
        elif outcome in ("unknown", "fault") and fx["kind"] != "none":
            self.unknown.append(call)

    def expected(self, snap: dict) -> Counter:
        """Account totals implied by the model and the daemon's claim/withdraw statuses."""
        exp = Counter(self.base)
        for outpoint, claim in snap["claims"].items():
            if claim.get("registered") == 1 and claim.get("name") != HOUSE:
                exp[claim["name"]] += self.claims[outpoint]["value"]
        for wid, fx in self.withdraws.items():
            status = snap["status"].get(wid)
            if status in REFUNDED:
                exp[fx["user"]] += fx["amount"]
                exp[WITHDRAWS] -= fx["amount"]
            elif status == "Complete":
                exp[WITHDRAWS] -= fx["amount"]
        return exp

    def check_claims(self, snap: dict, summary: Summary) -> None:
        """Acked claims exist; claims exist only where a Deposit was acked or got no answer."""
        for outpoint, claim in snap["claims"].items():
            if claim.get("name") == HOUSE:
                continue  # the exchange's own change, registered by the cycle or the desk
            mine = self.claims.get(outpoint)
            if mine is None or not (mine["acked"] or mine["maybe"]):
                raise CheckFailed(f"claim {outpoint} -> {claim} exists but no Deposit for it "
                                  "was acknowledged or in flight")
            if claim.get("name") != mine["user"]:
                raise CheckFailed(f"claim {outpoint} names {claim.get('name')!r}, "
                                  f"Deposit was for {mine['user']!r}")
        for outpoint, mine in self.claims.items():
            present = outpoint in snap["claims"]
            if mine["acked"] and not present:
                raise CheckFailed(f"acknowledged Deposit {outpoint} for {mine['user']} is gone")
            if mine["maybe"] and not mine["acked"]:
                summary.claims_applied += present
                summary.claims_not_applied += not present
                mine["acked"], mine["maybe"] = present, False

    def resolve(self, snap: dict, accounts: list[str], summary: Summary) -> str:
        """Find the one combination of unanswered calls (applied or not) and orphan withdraw
        fates (pending, refunded, completed) that fits the daemon's totals; apply it."""
        exp = self.expected(snap)
        choices = [[Counter(), effect(c["fx"])] for c in self.unknown]
        choices += [[Counter(), Counter({o["user"]: o["amount"], WITHDRAWS: -o["amount"]}),
                     Counter({WITHDRAWS: -o["amount"]})] for o in self.orphans]
        fits, best = [], None
        for combo in product(*(range(len(c)) for c in choices)):
            want = Counter(exp)
            for c, pick in zip(choices, combo, strict=True):
                want.update(c[pick])
            bad = {a: (want[a], snap["totals"][a]) for a in accounts
                   if want[a] != snap["totals"][a]}
            if not bad:
                fits.append(combo)
            elif best is None or len(bad) < len(best):
                best = bad
        if len(fits) != 1:
            calls = [f"{c['m']}{c['args']} -> {c.get('o', 'no outcome')}" for c in self.unknown]
            detail = ("no combination fits; closest differs on (model, daemon): "
                      + "; ".join(f"{a}: {w:,d} vs {g:,d} (diff {g - w:+,d})"
                                  for a, (w, g) in sorted(best.items()))
                      if not fits else f"{len(fits)} combinations fit")
            raise CheckFailed(f"ledger does not match the calls: {detail}; unanswered calls: "
                              f"{calls or 'none'}; orphan withdraws: {len(self.orphans)}")
        combo = fits[0]
        for c, pick in zip(choices, combo, strict=True):
            self.base.update(c[pick])
        n = len(self.unknown)
        orphans = [o for o, pick in zip(self.orphans, combo[n:], strict=True) if pick == 0]
        for call, pick in zip(self.unknown, combo[:n], strict=True):
            if pick and call["fx"]["kind"] == "withdraw":
                orphans.append(call["fx"])  # applied, but its id never reached us
            summary.unknown_applied += pick
            summary.unknown_not_applied += not pick
        self.orphans = orphans
        applied = sum(combo[:n])
        settled = sum(1 for pick in combo[n:] if pick)
        for wid, fx in list(self.withdraws.items()):  # final statuses become history
            status = snap["status"].get(wid)
            if status in REFUNDED or status == "Complete":
                if status != "Complete":
                    self.base[fx["user"]] += fx["amount"]
                self.base[WITHDRAWS] -= fx["amount"]
                del self.withdraws[wid]
        self.unknown = []
        return (f"{applied} of {n} unanswered applied"
                + (f", {settled} orphan withdraws settled" if settled else ""))


