#!/usr/bin/env python3
"""How many of the withdraw planner's batches would a BitBay node accept?

Generates random exchange states (many deposit addresses, each holding a few coins of mixed
liquid/reserve, some states with the reserve just covering the withdraws, supply 0..1198),
runs the current planner (``pegx.exchange.planner.plan_batch``) on pending withdraws of both
styles and checks every plan it builds with the node-exact rule (``pegx.chain.pegstd``).
Prints the share accepted per style, per number of input addresses and per state kind, and the
most common reasons for refusal. Deterministic for a given ``--seed``.

A plan counts as accepted when ``pegstd.verdict`` accepts it with the planned miner fee AND
every payee output holds exactly its withdraws' amount − commission in their style only
(reserve: frozen, steps < supply; liquid: steps >= supply), checked here, independently of
the planner's own :func:`check_plan`. A batch the planner itself refused because its check
failed (``the node's rule would refuse``) counts as a refused plan, not as "no plan".

Before issue #12's builder (the planner of main at d4fc811..c194e9e, one ``**F**`` notary per
input, payees after them), seed 1, 400 states: liquid 786 of 786 (100%); reserve 319 of 769
(41.5%): with inputs at 1 address 237 of 237 (100%), at 2+ addresses 82 of 532 (15.4%; the
issue quoted 79 of 497, 15.9%, from an earlier run of this script). That count checked the
node's verdict only, not the payees' style, so it is an upper bound.

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
from pegx.exchange.planner import Plan, accepted_commission, plan_batch

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


def judge(style: str, plan: Plan, ins, supply: int, wds) -> str:
    """'' if the node accepts ``plan`` with its planned fee and every payee output holds exactly
    its amount in ``style`` only; else why not."""
    v = pegstd.verdict(supply, ins, plan.outputs)
    if not v.ok:
        return v.detail
    if v.fee != plan.fee:
        return f"fee {v.fee} is not the planned {plan.fee}"
    want: dict[str, int] = {}
    for wid, rec in wds:
        if wid in plan.ids:
            want[rec["address"]] = want.get(rec["address"], 0) + rec["amount"] - \
                accepted_commission(rec, COMM)
    for i in plan.payees:
        out, got = plan.outputs[i], v.fractions[i]
        if want.pop(out.address, None) != out.value:
            return f"payee output {i} pays {out.value} to the wrong address or amount"
        wrong = got[supply:] if style == peg.RESERVE else got[:supply]
        if int(wrong.sum()) or v.frozen[i] != (style == peg.RESERVE):
            return f"payee output {i} holds N sat of the other style (or the wrong freeze)"
    if want:
        return "a payee is missing"
    return ""


def reason(detail: str) -> str:
    """A refusal's detail without its numbers and addresses, for counting."""
    text = re.sub(r"\bB[1-9A-HJ-NP-Za-km-z]{25,34}\b", "<addr>", detail)
    return re.sub(r"\d(?:[\d,]*\d)?", "N", text)


def main() -> None:  # noqa: C901 (a script's straight-line story)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--states", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tally: Counter = Counter()
    reasons: Counter = Counter()
    no_plan: Counter = Counter()
    for n in range(args.states):
        supply, cands, acct0, fee = state(rng, n)
        by_key = {k: (a, v) for k, a, v in cands}
        for style in peg.STYLES:
            for tight in (False, True):
                wds = withdraws(rng, style, cands, supply, tight)
                plan = plan_batch(style, wds, cands, supply, acct0, fee, COMM, "ab" * 16)
                kind = "tight" if tight else "normal"
                if not isinstance(plan, Plan):
                    if "node's rule would refuse" not in plan.reason:
                        tally[(style, "no plan")] += 1
                        no_plan[(style, reason(plan.reason))] += 1
                        continue
                    why, n_addr = f"planner's own check: {plan.reason}", 0
                else:
                    ins = [by_key[k] for k in plan.inputs]
                    n_addr = len({a for a, _ in ins})
                    why = judge(style, plan, ins, supply, wds)
                addrs = "1 address" if n_addr == 1 else "2+ addresses"
                for key in [(style,), (style, addrs), (style, kind), (style, addrs, kind)]:
                    tally[key + ("plans",)] += 1
                    tally[key + ("accepted",)] += not why
                if why:
                    reasons[(style, reason(why))] += 1
    print(f"pegx withdraw planner vs the node's rule: {args.states} random exchange states, "
          f"seed {args.seed}")
    rows = sorted({k[:-1] for k in tally if k[-1] == "plans"}, key=lambda k: (k[0], len(k), k))
    for key in rows:
        plans, acc = tally[key + ("plans",)], tally[key + ("accepted",)]
        print(f"  {' / '.join(key):42s} {acc:5,d} of {plans:5,d} accepted ({acc / plans:6.1%})")
    for style in peg.STYLES:
        print(f"  {style} states with no plan (not enough funds/fees): {tally[(style, 'no plan')]:,d}")
    print("most common refusals:" + ("" if reasons else " none"))
    for (style, why), count in reasons.most_common(8):
        print(f"  {count:5,d}  {style}: {why}")
    print("why there was no plan:")
    for (style, why), count in no_plan.most_common(8):
        print(f"  {count:5,d}  {style}: {why}")


if __name__ == "__main__":
    main()
