"""Recovery of a lost ledger from the chain's wallet and the operator's balance records.

PegAPI.txt, last paragraph: every confirmed wallet output is registered (known deposits to
their users, the rest to the exchange's own account), then the pool redistributes so that every
user has exactly their recorded liquid and reserve balance; all of it one atomic ledger record,
first checked on a scratch ledger. See :func:`recover`.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pegx import peg
from pegx.admin.offline import LEDGER_DIR, ToolError
from pegx.exchange import chainguard
from pegx.ledger import ops as ledger_ops
from pegx.ledger import rules
from pegx.ledger.engine import Exchange
from pegx.ledger.rules import HOUSE, POOL, WITHDRAWS
from pegx.ledger.state import input_totals
from pegx.ledger.store import Store

log = logging.getLogger(__name__)


def read_balances_csv(path: str | os.PathLike) -> tuple[dict[str, tuple[int, int]],
                                                         dict[str, str]]:
    """Read ``user,liquid,reserve[,deposits]`` (a header row is required; amounts in satoshi;
    deposits = "txid:vout" outpoints separated by spaces or ';'). Returns (targets, owner of
    each deposit)."""
    targets: dict[str, tuple[int, int]] = {}
    owners: dict[str, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"user", "liquid", "reserve"} - set(reader.fieldnames or ())
        if missing:
            raise ToolError(f"{path}: missing column(s) {', '.join(sorted(missing))} "
                            f"(want user,liquid,reserve[,deposits])")
        for line, row in enumerate(reader, start=2):
            user = (row["user"] or "").strip()
            try:
                rules.check_name(user)
                liquid, reserve = int(row["liquid"]), int(row["reserve"])
            except (rules.EngineError, TypeError, ValueError) as exc:
                raise ToolError(f"{path} line {line}: {exc}") from None
            if liquid < 0 or reserve < 0 or user in targets:
                raise ToolError(f"{path} line {line}: negative amount or repeated user {user!r}")
            targets[user] = (liquid, reserve)
            for dep in (row.get("deposits") or "").replace(";", " ").split():
                if owners.setdefault(dep, user) != user:
                    raise ToolError(f"{path} line {line}: deposit {dep} listed for two users")
    return targets, owners


def _base_ops(chain, owners: dict[str, str], now: int) -> tuple[list[dict], dict]:
    """Register every confirmed wallet output (known deposits to their users, the rest to the
    exchange's own account) and recompute at the chain's supply."""
    tip = chain.tip()
    utxos = sorted(chain.list_unspent(min_conf=1), key=lambda u: u.key)
    ops, recs, vecs = [], {}, {}
    for address in sorted({u.address for u in utxos}):
        ops.append(ledger_ops.put("addresses", address, {"imported": 1}))
    for u in utxos:
        owner = owners.get(u.key, HOUSE)
        ops.append(ledger_ops.claim(u.key, owner))  # the credit registers it
        ops.append(ledger_ops.credit(u.key, u.value, u.fractions, owner=owner,
                                      address=u.address, frozen_until=u.frozen_until,
                                      height=u.height))
        recs[u.key] = {"frozen_until": u.frozen_until}
        vecs[("inputs", u.key)] = np.asarray(u.fractions, dtype=np.int64)
    totals = input_totals(recs, vecs, tip.supply, now)
    ops.append(ledger_ops.recompute(tip.supply, totals, tip.cycle))
    # rebuilt from this chain at this tip: the ledger belongs to it from now on
    ops.append(ledger_ops.put(chainguard.TABLE, chainguard.KEY, chainguard.record_for(chain, tip)))
    found = {u.key for u in utxos}
    info = {"height": tip.height, "cycle": tip.cycle, "supply": tip.supply,
            "outputs": len(utxos), "exchange_totals": totals,
            "deposits_missing": sorted(k for k in owners if k not in found)}
    return ops, info


def _plan_trades(scratch: Exchange, targets: dict[str, tuple[int, int]]) -> tuple[list, list]:
    """Pool-based redistribution: the exchange's own funds go to the pool, users holding more
    than their record give the excess to the pool (debits first), then the pool pays every
    user what is missing, in the right style."""
    debits, credits, rows = [], [], []
    house = scratch.balance(HOUSE)
    for s, style in enumerate(peg.STYLES):
        have = house["liquid" if s == 0 else "reserve"]
        if have:
            debits.append(ledger_ops.trade(HOUSE, POOL, have, style))
    pool = [house["liquid"], house["reserve"]]
    for user in sorted(set(targets) | (set(scratch.users()) - {POOL, WITHDRAWS, HOUSE})):
        bal = scratch.balance(user) or {"liquid": 0, "reserve": 0}
        got = [bal["liquid"], bal["reserve"]]
        want = list(targets.get(user, (0, 0)))
        for s, style in enumerate(peg.STYLES):
            d = want[s] - got[s]
            if d < 0:
                debits.append(ledger_ops.trade(user, POOL, -d, style))
            elif d > 0:
                credits.append(ledger_ops.trade(POOL, user, d, style))
            pool[s] -= d
        rows.append({"user": user, "from_deposits": got, "target": want,
                     "moves": [want[0] - got[0], want[1] - got[1]]})
    for s, style in enumerate(peg.STYLES):
        if pool[s] < 0:
            raise ToolError(f"the exchange holds {-pool[s]:,d} sat too little {style} to give "
                            f"every user their recorded balance; check the CSV against the "
                            f"chain (supply moved since it was written?)")
    return debits + credits, rows


def recover(datadir: Path, chain, targets: dict[str, tuple[int, int]], owners: dict[str, str],
            *, dry_run: bool = True, now: int | None = None) -> dict:
    """Rebuild a lost ledger in ``datadir`` (PegAPI.txt's recovery procedure) so that every user
    has exactly their recorded liquid and reserve balance; returns the plan.

    Every confirmed wallet output is registered: known deposits (``owners``) to their users,
    the rest to the exchange's own account, whose balance then goes to the pool; then users
    with more than their record give the excess to the pool and the pool pays out what users
    miss, by style. The plan is first applied to a scratch ledger and checked there; unless
    ``dry_run``, the same operations are then committed to the real (empty) ledger as one
    atomic record. Balances stay exact until the next recompute rederives them from the steps.
    """
    now = int(time.time()) if now is None else now
    ops, info = _base_ops(chain, owners, now)
    with tempfile.TemporaryDirectory(prefix="pegx-recover-") as tmp:
        scratch = Exchange(Store(Path(tmp) / LEDGER_DIR))
        try:
            scratch.commit(ops)
            trades, rows = _plan_trades(scratch, targets)
            scratch.commit(trades)
            _check_targets(scratch, targets)
            pool = scratch.balance(POOL)
            digest = scratch.digest()
        finally:
            scratch.close()
    plan = {**info, "users": rows, "trades": len(trades), "pool_after": pool,
            "dry_run": dry_run, "ops": len(ops) + len(trades)}
    if dry_run:
        return plan
    ledger_path = Path(datadir) / LEDGER_DIR
    store = Store(ledger_path)
    try:
        ledger = Exchange(store)
    except BaseException:
        store.close()
        raise
    try:
        if not ledger.is_empty():
            raise ToolError(f"ledger {ledger_path} is not empty: recover rebuilds a lost ledger; "
                            f"move the old one away first (and keep it)")
        ledger.commit(ops + trades)
        _check_targets(ledger, targets)
        if ledger.digest() != digest:
            raise ToolError("the rebuilt ledger differs from the checked plan")  # cannot happen
    finally:
        ledger.close()
    log.info("ledger rebuilt in %s: %d users, %d inputs", datadir, len(rows), info["outputs"])
    return plan


def _check_targets(ledger: Exchange, targets: dict[str, tuple[int, int]]) -> None:
    for user, (liquid, reserve) in targets.items():
        bal = ledger.balance(user) or {"liquid": 0, "reserve": 0}
        if (bal["liquid"], bal["reserve"]) != (liquid, reserve):
            raise ToolError(f"{user}: the plan gives liquid {bal['liquid']:,d} / reserve "
                            f"{bal['reserve']:,d} sat, the record says {liquid:,d} / "
                            f"{reserve:,d}")
