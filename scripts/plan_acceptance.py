#!/usr/bin/env python3
"""How many of the withdraw planner's batches would a BitBay node accept?

Generates random exchange states (many deposit addresses, each holding a few coins of mixed
liquid/reserve, some states with the reserve just covering the withdraws, supply 0..1198),
runs the current planner (``pegx.exchange.planner.plan_batch``) on pending withdraws of both
styles and checks every plan it builds with the node-exact rule (``pegx.chain.pegstd``).
Prints the share accepted per style, per number of input addresses and per state kind, and the
most common reasons for refusal. Deterministic for a given ``--seed``.

    .venv/bin/python scripts/plan_acceptance.py [--states 400] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter

import numpy as np

from pegx import crypto, peg
from pegx.chain import pegstd
from pegx.exchange.planner import Plan, plan_batch

COMM = {"min": 2 * 10**6, "max": 10**8, "percent": "0.002"}


def address(rng: random.Random) -> str:
    """A real BitBay P2PKH address from a seeded key (so runs repeat)."""
    priv = rng.randrange(1, crypto.CURVE.order).to_bytes(32, "big")
    return crypto.pubkey_to_address(crypto.public_key(priv, True))


def coin(rng: random.Random, value: int) -> np.ndarray:
    """A coin's fractions: fresh STD, or shifted up (moved coins hold more liquidity)."""
    vec = peg.std_spread(value)
    if rng.random() < 0.5:
        vec = np.roll(vec, rng.randint(1, 900))
    return vec


def state(rng: random.Random, n: int):
    """One exchange: (supply, candidates, acct0, fee account, kind)."""
    supply = rng.choice([rng.randint(0, 1198), rng.randint(1, 300), rng.randint(800, 1198)])
    n_addr = rng.choice([2, 3, 5, 10, 30])
    deposits = [address(rng) for _ in range(n_addr)]
    acct0, fee = address(rng), address(rng)
    cands = []
    for i in range(rng.randint(2, 3 * n_addr)):
        cands.append((f"{n:08x}{i:056x}:0", rng.choice(deposits + [acct0]),
                      coin(rng, rng.randint(10**9, 10**12))))
    return supply, cands, acct0, fee


def withdraws(rng: random.Random, style: str, cands, supply: int, tight: bool):
    """Pending withdraws of ``style``; ``tight`` sizes them to use up nearly all the reserve."""
    part = peg.reserve_of if style == peg.RESERVE else peg.liquid_of
    have = sum(part(v, supply) for _, _, v in cands)
    n = rng.randint(1, 6)
    payees = [address(rng) for _ in range(rng.randint(1, n))]
    if tight:
        share = have * rng.uniform(0.9, 0.999) / n
    else:
        share = have * rng.uniform(0.02, 0.4) / n
    share = max(int(share), 2 * 10**7)
    return [(f"w{i}", {"address": rng.choice(payees), "amount": share}) for i in range(n)]


def reason(detail: str) -> str:
    """A refusal's detail without its numbers and addresses, for counting."""
    text = re.sub(r"\bB[1-9A-HJ-NP-Za-km-z]{25,34}\b", "<addr>", detail)
    return re.sub(r"\d[\d,]*", "N", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--states", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tally: Counter = Counter()
    reasons: Counter = Counter()
    for n in range(args.states):
        supply, cands, acct0, fee = state(rng, n)
        by_key = {k: (a, v) for k, a, v in cands}
        for style in peg.STYLES:
            for tight in (False, True):
                wds = withdraws(rng, style, cands, supply, tight)
                plan = plan_batch(style, wds, cands, supply, acct0, fee, COMM, "ab" * 16)
                if not isinstance(plan, Plan):
                    tally[(style, "no plan")] += 1
                    continue
                ins = [by_key[k] for k in plan.inputs]
                n_addr = len({a for a, _ in ins})
                ok = pegstd.verdict(supply, ins, plan.outputs)
                kind = "tight" if tight else "normal"
                addrs = "1 address" if n_addr == 1 else "2+ addresses"
                for key in [(style,), (style, addrs), (style, kind), (style, addrs, kind)]:
                    tally[key + ("plans",)] += 1
                    tally[key + ("accepted",)] += ok.ok
                if not ok.ok:
                    reasons[(style, reason(ok.detail))] += 1
    print(f"pegx withdraw planner vs the node's rule: {args.states} random exchange states, "
          f"seed {args.seed}")
    rows = sorted({k[:-1] for k in tally if k[-1] == "plans"}, key=lambda k: (k[0], len(k), k))
    for key in rows:
        plans, acc = tally[key + ("plans",)], tally[key + ("accepted",)]
        print(f"  {' / '.join(key):42s} {acc:5,d} of {plans:5,d} accepted ({acc / plans:6.1%})")
    for style in peg.STYLES:
        print(f"  {style} states with no plan (not enough funds/fees): {tally[(style, 'no plan')]:,d}")
    print("most common refusals:")
    for (style, why), count in reasons.most_common(8):
        print(f"  {count:5,d}  {style}: {why}")


if __name__ == "__main__":
    main()
