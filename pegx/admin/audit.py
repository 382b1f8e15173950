"""``pegx audit``: the ledger's audit (:mod:`pegx.ledger.audit`) checked against its chain.

The ledger checks its own law and invariants; this adds what only the chain can say: that it
is the ledger's chain (the start-up check's verdict, :func:`pegx.exchange.chainguard.compare`),
that every registered input not in flight is unspent on it, that no registered claim's
output is unspent while the ledger lost its input, and which reorganisations replaced blocks
the exchange took as final (:mod:`pegx.exchange.follow`).
"""

from __future__ import annotations

from pegx.chain.base import ChainError
from pegx.exchange import chainguard, follow
from pegx.ledger.audit import Findings, Snapshot
from pegx.ledger.engine import Exchange

NO_RECORD = "the ledger records no chain yet (the next start adopts the chain)"


def audit(ledger: Exchange, chain=None) -> dict:
    """The audit report of ``ledger`` (see :func:`pegx.ledger.audit.report`), its inputs and
    claims checked against ``chain`` when one is given. The ledger lock is held while the
    rows are summed (calls wait, ~1 s per 100,000 accounts); the chain is asked afterwards."""
    if chain is None:
        report = ledger.audit()
    else:
        report = ledger.audit(lambda snap, found: _check_chain(ledger, chain, snap, found))
    return _with_reorganisations(ledger, report)


def _with_reorganisations(ledger: Exchange, report: dict) -> dict:
    """Add the reorganisations that replaced blocks taken as final, each with what it changed
    (what is still wrong after them shows up among the problems, e.g. an input not on chain)."""
    reorgs = list((ledger.record(follow.TABLE, follow.KEY) or {}).get("alarms", []))
    for alarm in reorgs:
        report["notes"].append(f"reorganisation past the final depth ({alarm['final_depth']}): "
                               f"blocks {alarm['fork'] + 1:,d}..{alarm['old_height']:,d} "
                               f"replaced; {len(alarm['changed'])} items changed")
    report["reorganisations"] = reorgs
    return report


def _check_chain(ledger: Exchange, chain, snap: Snapshot, found: Findings) -> None:
    try:
        _chain_record(ledger, chain, found)
        _inputs_on_chain(ledger, chain, snap, found)
        for key, claim in snap.claims.items():
            if claim.get("registered") and key not in snap.inputs and chain.is_unspent(key):
                found.problem("claim", f"claim {key} ({claim.get('name')!r}) is registered, the "
                                       f"output is unspent on chain, but the input is not in "
                                       f"the ledger")
    except ChainError as exc:
        found.problem("chain", f"cannot check inputs against the chain: {exc}")


def _chain_record(ledger: Exchange, chain, found: Findings) -> None:
    rec = chainguard.recorded(ledger)
    if rec is None:
        found.notes.append(NO_RECORD)
        return
    problems, warnings = chainguard.compare(rec, chain)  # another chain, behind, history
    for text in problems:
        found.problem("chain", text)
    found.notes.extend(warnings)


def _inputs_on_chain(ledger: Exchange, chain, snap: Snapshot, found: Findings) -> None:
    gone = [k for k in snap.inputs if k not in snap.in_flight and not chain.is_unspent(k)]
    if gone:  # the desk may have batched them since our view: look again before blaming
        in_flight = ledger.in_flight_inputs()
        gone = [k for k in gone if ledger.is_registered(k) and k not in in_flight]
    for key in gone:
        found.problem("chain", f"input {key} is registered but spent or unknown on chain "
                               f"and not in flight")
