"""Upgrading a ledger of an older layout when it is opened (format 1 → 2).

Format 1 kept a ``history`` table of two kinds of record: withdraw id -> master id (a string),
and master id (or an expired withdraw's id) -> {status, txid, ID, block, in0[, txid2]}; the
status and txid2 of a batch lived there and in its ``batches`` record at once. Format 2 keeps
one lifecycle record per batch (``status`` and ``txid2`` in it, ``cleared`` once CheckWithdraw
cleared its master id), ``batch_of`` (withdraw id -> master id) and ``expired`` (withdraw id
-> {block}); see :mod:`pegx.ledger.lifecycle`. CheckWithdraw answers the same for every id.

The upgrade runs on the state in memory after the checkpoint is loaded and the op log
replayed (old operations replay into the old tables), and is written by one checkpoint: one
synced batch that writes the new records, deletes the old ones and the replayed log, and
moves the state record to format 2. A crash before it leaves the old ledger, upgraded again
at the next open.
"""

from __future__ import annotations

from pegx.ledger.lifecycle import ENDINGS
from pegx.ledger.state import State
from pegx.ledger.store import FORMAT_VERSION as FORMAT  # the layout this code writes


def needed(fmt: int | None, state: State) -> bool:
    """Does the state (of on-disk format ``fmt``, None: never checkpointed) need upgrading?"""
    return (fmt is not None and fmt < FORMAT) or bool(state.tables.get("history")) or any(
        "status" not in b for b in state.tables["batches"].values())


def upgrade(state: State) -> dict[str, int]:
    """Move every format-1 record to its format-2 place (marking each change for the next
    checkpoint); returns how many records of each kind moved."""
    counts = {"batch_of": 0, "expired": 0, "batches": 0, "history": 0}
    history = state.tables.get("history", {})
    batches = state.tables["batches"]
    for key, rec in sorted(history.items()):
        if isinstance(rec, str):
            state.put("batch_of", key, rec)
            counts["batch_of"] += 1
        elif rec.get("status") == "Expired" and key not in batches:
            state.put("expired", key, {"block": rec.get("block", 0)})
            counts["expired"] += 1
        else:
            state.put("batches", key, _with_status(batches.get(key), rec))
            counts["batches"] += 1
    for master, b in sorted(batches.items()):
        if "status" not in b:  # its master id was cleared (CheckWithdraw) before the upgrade
            state.put("batches", master, _cleared(b))
            counts["batches"] += 1
    for key in list(history):
        state.put("history", key, None)
        counts["history"] += 1
    state.tables.pop("history", None)
    return counts


def _with_status(batch: dict | None, hist: dict) -> dict:
    """A batch record carrying what its history record said (a history record without a batch,
    written by hand, becomes a batch record of kind ``legacy`` that only CheckWithdraw reads)."""
    if batch is None:
        in0 = hist.get("in0", "")
        batch = {"kind": "legacy", "ids": [], "ins": [in0] if in0 else [],
                 "txid": hist.get("txid", ""), "house_vouts": [], "height": hist.get("block", 0),
                 "state": ENDINGS.get(hist.get("status"), "legacy")}
    rec = {**batch, "status": hist.get("status", "unconfirmed")}
    if "txid2" in hist:
        rec["txid2"] = hist["txid2"]
    return rec


def _cleared(batch: dict) -> dict:
    """A batch whose history record was gone: finished ones were cleared by CheckWithdraw; one
    still in flight shows its state's status again."""
    done = {v: k for k, v in ENDINGS.items()}.get(batch.get("state"))
    if done is not None:
        return {**batch, "status": done, "cleared": 1}
    return {**batch, "status": "unconfirmed"}
