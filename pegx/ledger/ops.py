"""The op-log format: every operation the ledger logs, and the only place they are built.

An operation is a JSON dict ``{"op": kind, ...}``; a log record is a list of them, applied in
order by :mod:`pegx.ledger.state` (deterministically, on start-up too) after
:mod:`pegx.ledger.checks` accepted them. Fraction vectors travel as base64 of little-endian
int64 (:func:`encode_vec`). Operations logged by older releases stay readable: the apply
functions keep every field they ever had optional where it was added later.
"""

from __future__ import annotations

import base64

import numpy as np

from pegx import peg

# each has a check in pegx.ledger.checks and an apply function in pegx.ledger.state
KINDS = ("trade", "withdraw", "refund", "burn", "credit", "spend", "recompute", "adjust", "drift",
         "claim", "batch", "batch_update", "batch_end", "expire", "forget", "wait", "put")


def encode_vec(vec: np.ndarray) -> str:
    """A fraction vector as base64 of little-endian int64 (for op-log JSON)."""
    return base64.b64encode(np.ascontiguousarray(vec, dtype="<i8").tobytes()).decode()


def decode_vec(text: str) -> np.ndarray:
    """Inverse of encode_vec."""
    return np.frombuffer(base64.b64decode(text), dtype="<i8").astype(np.int64)


def trade(u1: str, u2: str, amount: int, style: str) -> dict:
    """Move ``amount`` of ``style`` from account u1 to u2 (the steps a deduction takes)."""
    return {"op": "trade", "u1": u1, "u2": u2, "amount": int(amount), "style": style}


def withdraw(wid: str, user: str, amount: int, style: str, address: str, cycle: int) -> dict:
    """Move ``amount`` from ``user`` to the withdraws account under withdraw id ``wid`` (the
    caller adds ``commission`` and ``time`` once it has checked them)."""
    return {"op": "withdraw", "id": wid, "user": user, "amount": int(amount), "style": style,
            "address": address, "cycle": int(cycle)}


def refund(wid: str) -> dict:
    """Give a pending withdraw back to its user, exactly the steps it gave."""
    return {"op": "refund", "id": wid}


def burn(wids: list[str]) -> dict:
    """Pending withdraws whose transaction confirmed leave the ledger."""
    return {"op": "burn", "ids": list(wids)}


def credit(key: str, value: int, vector: np.ndarray, *, owner: str | None, address: str = "",
           change: bool = False, frozen_until: int = 0, height: int = 0) -> dict:
    """Register an input (crediting ``owner``'s row with its fractions; None: no owner)."""
    return {"op": "credit", "key": key, "value": int(value), "address": address,
            "owner": owner, "change": int(bool(change)), "frozen_until": int(frozen_until),
            "height": int(height), "vec": encode_vec(np.asarray(vector, dtype=np.int64))}


def spend(keys: list[str]) -> dict:
    """Registered inputs spent on chain by the exchange leave the input set."""
    return {"op": "spend", "keys": list(keys)}


def recompute(supply: int, totals: dict, cycle: int | None) -> dict:
    """Every balance rederived at ``supply`` from the exchange ``totals`` of its inputs."""
    return {"op": "recompute", "supply": supply, "totals": totals, "cycle": cycle}


def adjust(name: str, vector: np.ndarray, style: str = peg.LIQUID) -> dict:
    """Add a signed vector to an account (the house's fee income or costs)."""
    return {"op": "adjust", "name": name, "style": style,
            "vec": encode_vec(np.asarray(vector, dtype=np.int64))}


def drift(vector: np.ndarray) -> dict:
    """Add a signed vector to the per-step drift (registered inputs − accounts)."""
    return {"op": "drift", "vec": encode_vec(np.asarray(vector, dtype=np.int64))}


def claim(key: str, name: str) -> dict:
    """Claim the output ``key`` ("txid:vout") for ``name``: the credit that registers it
    credits ``name`` (first claim wins)."""
    return {"op": "claim", "key": key, "name": name}


def batch(master: str, record: dict) -> dict:
    """A batch about to be broadcast: its lifecycle record (pegx.ledger.lifecycle), its
    withdraws and inputs marked as in it, each withdraw id mapped to ``master``."""
    return {"op": "batch", "id": master, "batch": record}


def batch_update(master: str, changes: dict, unset: list[str] = ()) -> dict:
    """Fields of an in-flight batch that change as it is tracked (lifecycle.UPDATES), and the
    ones it loses (lifecycle.REMOVABLE)."""
    op = {"op": "batch_update", "id": master, "set": changes}
    if unset:
        op["unset"] = list(unset)
    return op


def batch_end(master: str, status: str, fields: dict) -> dict:
    """Batch ``master`` ends with ``status`` (Complete or Failed/Declined); the inputs it
    still marks are free again; a declined batch's raw transaction is dropped."""
    return {"op": "batch_end", "id": master, "status": status, "set": fields}


def expire(wid: str, block: int) -> dict:
    """A pending withdraw no batch took in time is refunded, recorded as Expired at ``block``."""
    return {"op": "expire", "id": wid, "block": int(block)}


def wait(reasons: dict[str, str], block: int) -> dict:
    """Pending withdraws a batch task at ``block`` left out, each with why it waits (what
    CheckWithdraw shows until a batch takes it or it expires)."""
    return {"op": "wait", "ids": dict(reasons), "block": int(block)}


def forget(ident: str) -> dict:
    """CheckWithdraw(clear=1): the finished record of ``ident`` is no longer shown."""
    return {"op": "forget", "id": ident}


def put(table: str, key: str, value) -> dict:
    """Set (or, with None, delete) a record of a table the ledger keeps for others."""
    return {"op": "put", "table": table, "key": str(key), "value": value}
