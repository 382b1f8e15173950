"""Checks of the operations a commit group brings, before they are applied or logged.

:func:`check_op` refuses (EngineError) an op its apply function would fail on, or that would
break an invariant, in the state the ops before it in its group left. Replayed ops are not
checked again: they were checked before they were logged.
"""

from __future__ import annotations

import binascii

import numpy as np

from pegx import peg
from pegx.ledger import lifecycle, ops
from pegx.ledger.rules import (
    HOUSE,
    POOL,
    RESERVED_MSG,
    TAKEN_MSG,
    WITHDRAWS,
    EngineError,
    FundsError,
    NameError_,
    UnknownAccount,
    check_amount,
    check_name,
)
from pegx.ledger.state import LEGACY_TABLES, TABLES, State

# tables the ledger keeps for other components, written with "put" ops; every other table is
# written only by the operations that own its records
OPEN_TABLES = ("settings", "addresses", "exec", "meta")
OWNED = {("meta", "engine")}  # written by recomputes only


def checked(fn, *args):
    """``fn(*args)``, its PegError (bad style, supply) as an EngineError for the caller."""
    try:
        return fn(*args)
    except peg.PegError as exc:
        raise EngineError(str(exc)) from None


def check_funds(state: State, user: str, amount: int, style: str) -> None:
    """Refuse a debit of ``amount`` in ``style`` that ``user`` (or the pool) does not hold."""
    have = state.have(user, style)
    if amount > have:
        if user == POOL:
            raise FundsError(f"Insufficient funds in {style} pool. "
                             "Please make the debit before the credit.")
        if user not in state.index:
            raise UnknownAccount("Unknown user.")
        raise FundsError(f"Insufficient {style} balance")


def check_op(state: State, op) -> None:
    """Refuse an op of a commit group (see the module docstring)."""
    kind = op.get("op") if isinstance(op, dict) else None
    if kind not in ops.KINDS:
        raise EngineError(f"unknown operation {kind!r}")
    try:
        _CHECKS[kind](state, op)
    except EngineError:
        raise
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise EngineError(f"malformed {kind} operation ({type(exc).__name__}: {exc})") from None


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineError(f"{what} must be an integer")
    return value


def _vec(text) -> np.ndarray:
    vec = ops.decode_vec(text) if isinstance(text, str) else None
    if vec is None or vec.shape != (peg.PEG_SIZE,):
        raise EngineError(f"a fraction vector has {peg.PEG_SIZE} steps")
    return vec


def _user(name) -> str:
    name = check_name(name, allow_internal=True)
    if name == WITHDRAWS:  # its rows belong to pending withdraws (refund, burn)
        raise NameError_(RESERVED_MSG)
    return name


def check_pending(state: State, wids) -> None:
    """Every id in ``wids`` (a list without repeats) is a pending withdraw."""
    if not isinstance(wids, list) or len(set(wids)) != len(wids):
        raise EngineError("withdraw ids are a list without repeats")
    for wid in wids:
        if wid not in state.tables["withdraws"]:
            raise EngineError(f"no pending withdraw {wid}")


def _trade(state: State, op: dict) -> None:
    u1 = _user(op["u1"])
    _user(op["u2"])
    amount = check_amount(op["amount"])
    checked(peg.check_style, op["style"])
    check_funds(state, u1, amount, op["style"])


def _withdraw(state: State, op: dict) -> None:
    wid = op["id"]
    if not isinstance(wid, str) or wid in state.tables["withdraws"]:
        raise EngineError(f"withdraw id {wid!r} is taken or not a string")
    user = check_name(op["user"])
    amount = check_amount(op["amount"])
    checked(peg.check_style, op["style"])
    if not isinstance(op["address"], str):
        raise EngineError("a withdraw address is a string")
    _int(op["cycle"], "cycle")
    check_funds(state, user, amount, op["style"])


def _refund(state: State, op: dict) -> None:
    check_pending(state, [op["id"]])


def _burn(state: State, op: dict) -> None:
    check_pending(state, op["ids"])


def _credit(state: State, op: dict) -> None:
    key = op["key"]
    if not isinstance(key, str) or key in state.tables["inputs"]:
        raise EngineError(f"input {key!r} is already registered or not a string")
    vec = _vec(op["vec"])
    value = _int(op["value"], "value")
    if (vec < 0).any() or int(vec.sum()) != value:
        raise EngineError(f"input {key}: fractions must be >= 0 and sum to its value")
    owner = op["owner"]
    if owner is not None and owner != HOUSE:
        check_name(owner)
    if not isinstance(op["address"], (str, type(None))):
        raise EngineError("an input address is a string")
    for field in ("change", "frozen_until", "height"):
        _int(op[field], field)


def _spend(state: State, op: dict) -> None:
    keys_ = op["keys"]
    if not isinstance(keys_, list) or len(set(keys_)) != len(keys_):
        raise EngineError("spent inputs are a list without repeats")
    missing = [k for k in keys_ if k not in state.tables["inputs"]]
    if missing:
        raise EngineError(f"not registered inputs: {', '.join(map(str, missing))}")


def _recompute(state: State, op: dict) -> None:
    checked(peg.check_supply, op["supply"])
    totals = op["totals"]
    if not isinstance(totals, dict) or set(totals) != {"liquid", "reserve", "subpremium",
                                                       "frozen"}:
        raise EngineError("recompute totals are {liquid, reserve, subpremium, frozen}")
    for field, value in totals.items():
        _int(value, field)
    if op.get("cycle") is not None:
        _int(op["cycle"], "cycle")


def _adjust(state: State, op: dict) -> None:
    name, vec = _user(op["name"]), _vec(op["vec"])
    style = op.get("style", peg.LIQUID)
    checked(peg.check_style, style)
    i = state.index.get(name)
    row = state.matrix[i] if i is not None else np.zeros(peg.PEG_SIZE, dtype=np.int64)
    if (row + vec < 0).any():
        raise FundsError(f"adjusting {name} would leave a step below zero")
    total = int(vec.sum())
    if total < 0 and (i is None or int(state.view[i].sum()) < -total):
        raise FundsError(f"{name} holds less than the {-total:,d} sat to take")


def _drift(state: State, op: dict) -> None:
    _vec(op["vec"])


def check_claim(state: State, key, name) -> None:
    """``key`` may be claimed for ``name``: not claimed by anyone else (first claim wins)."""
    if not isinstance(key, str):
        raise EngineError("a claimed output is a 'txid:vout' string")
    if name != HOUSE:
        check_name(name)
    claim = state.tables["claims"].get(key)
    if claim is not None and claim.get("name") != name:
        raise EngineError(TAKEN_MSG.format(key=key))


def _claim(state: State, op: dict) -> None:
    check_claim(state, op["key"], op["name"])


def _batch(state: State, op: dict) -> None:
    master, rec = op["id"], op["batch"]
    if not isinstance(master, str) or master in state.tables["batches"]:
        raise EngineError(f"batch id {master!r} is taken or not a string")
    if not isinstance(rec, dict) or set(rec) != set(lifecycle.new_record(rec)):
        raise EngineError("a batch record has the fields of lifecycle.new_record")
    if rec["kind"] not in lifecycle.KINDS or rec != lifecycle.new_record(rec):
        raise EngineError(f"batch {master}: kind {rec['kind']!r}, a new batch is 'sent' and "
                          "'unconfirmed'")
    for field in ("fee", "total", "commission", "height"):
        _int(rec[field], field)
    if "outs" in rec and not (
            isinstance(rec["style"], str) and isinstance(rec["payees"], list)
            and all(isinstance(v, int) for v in rec["payees"]) and isinstance(rec["outs"], list)
            and all(isinstance(o, list) and len(o) == 3 and isinstance(o[0], int)
                    for o in rec["outs"])):
        raise EngineError(f"batch {master}: style is a string, payees integers, outs "
                          "[value, address, data] lists")
    if not all(isinstance(rec[f], str) for f in ("txid", "raw")) or \
            not all(isinstance(v, int) for v in rec["house_vouts"]):
        raise EngineError(f"batch {master}: txid and raw are strings, house_vouts integers")
    _free(state, "withdraws", rec["ids"], master)
    if not rec["ins"]:
        raise EngineError(f"batch {master} spends no input")
    _free(state, "inputs", rec["ins"], master)


def _free(state: State, table: str, keys, master: str) -> None:
    """``keys`` (a list without repeats) are records of ``table`` in no batch yet."""
    if not isinstance(keys, list) or len(set(keys)) != len(keys):
        raise EngineError(f"batch {master}: its {table} are a list without repeats")
    for key in keys:
        rec = state.tables[table].get(key)
        if rec is None or "batch" in rec:
            raise EngineError(f"batch {master}: {key} is not in {table} or already in a batch")


def _in_flight(state: State, master) -> dict:
    b = state.tables["batches"].get(master) if isinstance(master, str) else None
    if b is None or b["state"] not in lifecycle.IN_FLIGHT:
        raise EngineError(f"no batch {master!r} in flight")
    return b


def _batch_update(state: State, op: dict) -> None:
    b = _in_flight(state, op["id"])
    changes, unset = op["set"], op.get("unset", [])
    if not isinstance(changes, dict) or not isinstance(unset, list) or not (changes or unset):
        raise EngineError("a batch update changes some fields")
    if not set(unset) <= set(lifecycle.REMOVABLE) or set(unset) & set(changes):
        raise EngineError(f"batch {op['id']}: only {', '.join(lifecycle.REMOVABLE)} can be "
                          "removed")
    for field, value in changes.items():
        want = lifecycle.UPDATES.get(field)
        ok = (want is not None and (value in want if isinstance(want, tuple)
                                    else isinstance(value, want) and not isinstance(value, bool)))
        if not ok:
            raise EngineError(f"batch {op['id']}: cannot set {field} to {value!r}")
    cancel = changes.get("cancel")
    if cancel is not None and (cancel.get("in") not in b["ins"]
                               or not isinstance(cancel.get("txid"), str)):
        raise EngineError(f"batch {op['id']}: a cancel spends one of the batch's inputs")


def _batch_end(state: State, op: dict) -> None:
    _in_flight(state, op["id"])
    if op["status"] not in lifecycle.ENDINGS:
        raise EngineError(f"a batch ends {' or '.join(lifecycle.ENDINGS)}")
    if not isinstance(op["set"], dict) or not set(op["set"]) <= set(lifecycle.END_FIELDS):
        raise EngineError(f"a batch's ending sets only {', '.join(lifecycle.END_FIELDS)}")


def _expire(state: State, op: dict) -> None:
    check_pending(state, [op["id"]])
    if "batch" in state.tables["withdraws"][op["id"]]:
        raise EngineError(f"withdraw {op['id']} is in a batch: it ends with its batch")
    _int(op["block"], "block")


MAX_REASON = 1000  # characters of a waiting withdraw's reason


def _wait(state: State, op: dict) -> None:
    reasons = op["ids"]
    if not isinstance(reasons, dict) or not reasons:
        raise EngineError("a wait names some withdraws, each with a reason")
    check_pending(state, list(reasons))
    for wid, why in reasons.items():
        if "batch" in state.tables["withdraws"][wid]:
            raise EngineError(f"withdraw {wid} is in a batch: it waits no more")
        if not isinstance(why, str) or not 0 < len(why) <= MAX_REASON:
            raise EngineError(f"withdraw {wid}: a reason is a string of 1 to {MAX_REASON} "
                              "characters")
    _int(op["block"], "block")


def _forget(state: State, op: dict) -> None:
    rec = lifecycle.status(state.tables, op["id"]) if isinstance(op["id"], str) else None
    if rec is None or rec["status"] not in lifecycle.FINISHED:
        raise EngineError(f"{op['id']!r} has no finished withdraw record")


def _put(state: State, op: dict) -> None:
    table = op["table"]
    if table not in OPEN_TABLES:
        if table in TABLES or table in LEGACY_TABLES:
            raise EngineError(f"table {table!r} is the ledger's own: its records change by its "
                              "operations only")
        raise EngineError(f"unknown table {table!r}")
    if not isinstance(op["key"], str):
        raise EngineError("a record key is a string")
    if (op["table"], op["key"]) in OWNED:
        raise EngineError(f"{op['table']}/{op['key']} is the ledger's own record")


_CHECKS = {"trade": _trade, "withdraw": _withdraw, "refund": _refund, "burn": _burn,
           "credit": _credit, "spend": _spend, "recompute": _recompute, "adjust": _adjust,
           "drift": _drift, "claim": _claim, "batch": _batch, "batch_update": _batch_update,
           "batch_end": _batch_end, "expire": _expire, "forget": _forget, "wait": _wait,
           "put": _put}
