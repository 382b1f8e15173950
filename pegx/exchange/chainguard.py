"""The chain a ledger belongs to: recorded as the exchange follows it, checked at every start.

A ledger's registered inputs, claims and withdraws only mean something on the chain they were
seen on. The ledger keeps, in its ``meta`` table under ``chain``::

    {"chain": "devnet" | "bitbayd", "id": <chain.identity()>, "height": h, "hash": <block h>}

where ``h`` is the last block a cycle pass fully processed (:func:`note`, called after every
pass; one ledger record per new block). At start-up, before any call is taken, :func:`check`
refuses a chain that

1. is another chain (another backend, another identity: a devnet started afresh or copied
   from another datadir, a node of another network);
2. is behind the ledger (a devnet log older than the ledger, a node still syncing or re-synced
   from scratch);
3. has another block at the recorded height: for the devnet, which never reorganises, another
   history; a real node is only warned about (a reorganisation past the last processed block)
   and left to step 4;
4. lacks a registered input: every input not in a withdraw batch in flight must be unspent
   (an input in flight may be spent by its own batch; the desk settles those). One
   ``list_unspent`` answers for all of them (the cycle's first pass makes the same call);
   only the inputs it does not list are asked about one by one.

A fresh ledger adopts the chain it meets; a ledger from before chains were recorded adopts it
with a warning, after step 4 has passed. Nothing is written when a check refuses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pegx.chain.base import Chain, ChainRejected, Tip
from pegx.ledger import engine

log = logging.getLogger(__name__)

TABLE, KEY = "meta", "chain"
MAX_LISTED = 5  # missing inputs named in the refusal (pegx audit lists them all)
MAX_CHECKED = 20  # missing inputs confirmed one by one before the refusal says "at least"

ADVICE = {
    "devnet": {
        "other": "the devnet directory is not the one this ledger was used with: put that one "
                 "back (restore ledger and devnet together from one backup with `pegx "
                 "restore`), or start a new exchange in another --datadir",
        "behind": "the devnet log is older than the ledger (restored from an older backup?): "
                  "restore ledger and devnet together from one backup with `pegx restore`",
        "missing": "restore ledger and devnet together from one backup with `pegx restore`",
    },
    "bitbayd": {
        "other": "--node-url reaches a node of another network: point it at a node of the "
                 "network this ledger was used with",
        "behind": "the node is still syncing (or was re-synced from scratch): start pegx "
                  "again once the node is past that height",
        "missing": "the node is not the one this ledger was used with, or is not synced, or "
                   "the wallet lost these keys or spent the coins outside pegx",
    },
}


class WrongChain(Exception):
    """The configured chain is not the ledger's (or lacks its coins): refuse to serve."""


def recorded(ledger: engine.Exchange) -> dict | None:
    """The ledger's chain record, or None (a fresh ledger, or one from before records)."""
    return ledger.record(TABLE, KEY)


def is_fresh(ledger: engine.Exchange) -> bool:
    """No record that only makes sense on a particular chain (deposit keys, claims, inputs,
    withdraws, their history)."""
    return ledger.is_fresh()


def record_for(chain: Chain, tip: Tip) -> dict:
    """The chain record for ``tip`` of ``chain`` (asks the chain for the tip's hash)."""
    return {"chain": chain.name, "id": chain.identity(), "height": tip.height,
            "hash": chain.block_hash(tip.height)}


def _advice(name: str, kind: str) -> str:
    return ADVICE.get(name, ADVICE["bitbayd"])[kind]


def refuse_new_chain(ledger: engine.Exchange, where: Path) -> None:
    """Before a new devnet is created in ``where`` (:func:`pegx.chain.factory.creates_chain`):
    refuse it beside a ledger that already follows a chain (the devnet's directory was
    deleted, or a restore was cut short)."""
    rec = recorded(ledger)
    if rec is None and is_fresh(ledger):
        return  # a new exchange: the devnet is created with it
    what = (f"devnet chain {rec['id']} up to height {rec['height']:,d}" if rec is not None
            and rec.get("chain") == "devnet" else "a chain (it holds deposits and inputs)")
    raise WrongChain(f"the ledger follows {what}, but {where} does not exist: pegx will "
                     f"not start a new chain beside it. {_advice('devnet', 'missing')}; "
                     f"or start a new exchange in another --datadir")


def compare(rec: dict, chain: Chain) -> tuple[list[str], list[str]]:
    """(problems, warnings) of ``chain`` against the ledger's record: steps 1-3."""
    name, kind = chain.name, rec.get("chain")
    if kind != name:
        problem = (f"the ledger belongs to a {kind} chain (id {rec.get('id')}), not to the "
                   f"configured {name}: start it with --chain {kind}")
        return [problem], []
    ident = chain.identity()
    if ident != rec.get("id"):
        problem = (f"the ledger belongs to {name} chain {rec.get('id')}, processed up to "
                   f"height {rec['height']:,d}, but the chain here is another one ({ident}): "
                   f"{_advice(name, 'other')}")
        return [problem], []
    height = chain.tip().height
    if height < rec["height"]:
        problem = (f"the {name} chain is at height {height:,d}, behind the ledger, which "
                   f"processed it up to height {rec['height']:,d}: {_advice(name, 'behind')}")
        return [problem], []
    there = chain.block_hash(rec["height"])
    if there == rec.get("hash"):
        return [], []
    text = (f"the {name} chain's block at height {rec['height']:,d} is {there}, the ledger "
            f"processed {rec.get('hash')}")
    if not chain.reorganises:
        problem = (f"{text}: the devnet has another history than the one this ledger "
                   f"followed; {_advice(name, 'missing')}")
        return [problem], []
    warning = (f"{text}: the node reorganised past the ledger's last block; checking that "
               f"every registered input is still there")
    return [], [warning]


def missing_inputs(ledger: engine.Exchange, chain: Chain) -> list[str]:
    """Registered inputs outside any withdraw batch that the chain does not have unspent
    (step 4); stops after MAX_CHECKED."""
    keys = ledger.unbatched_inputs()
    if not keys:
        return []
    unspent = {u.key for u in chain.list_unspent()}
    missing = []
    for key in keys:
        if key not in unspent and not chain.is_unspent(key):
            missing.append(key)
            if len(missing) >= MAX_CHECKED:
                break
    return missing


def check(ledger: engine.Exchange, chain: Chain) -> dict:
    """Refuse (WrongChain) a chain that is not the ledger's; adopt one for a fresh or older
    ledger; returns the chain record in force. ChainUnavailable passes through (retry)."""
    try:
        rec = recorded(ledger)
        if rec is not None:
            problems, warnings = compare(rec, chain)
            if problems:
                raise WrongChain(problems[0])
            for text in warnings:
                log.warning(text)
        missing = missing_inputs(ledger, chain)
        if missing:
            count = (f"at least {len(missing)}" if len(missing) >= MAX_CHECKED
                     else f"{len(missing)}")
            shown = ", ".join(missing[:MAX_LISTED]) + (", ..." if len(missing) > MAX_LISTED
                                                       else "")
            raise WrongChain(
                f"{count} of the ledger's registered inputs (the exchange's coins) are not "
                f"unspent on this {chain.name} chain and not in a withdraw in flight ({shown}): "
                f"{_advice(chain.name, 'missing')}. Nothing was changed; `pegx audit` lists "
                f"every problem")
        if rec is None:
            fresh = is_fresh(ledger)
            rec = record_for(chain, chain.tip())
            ledger.put(TABLE, KEY, rec)
            say = log.info if fresh else log.warning
            say("%s: adopting %s chain %s at height %s", "new ledger" if fresh else
                "the ledger records no chain (written by an older pegx); every registered input "
                "is on this one", chain.name, rec["id"], f"{rec['height']:,d}")
        else:
            log.info("chain check passed: %s chain %s, ledger processed it up to height %s",
                     chain.name, rec["id"], f"{rec['height']:,d}")
        return rec
    except ChainRejected as exc:
        raise WrongChain(f"cannot check the {chain.name} chain against the ledger: {exc}") \
            from None


def note(ledger: engine.Exchange, chain: Chain, tip: Tip) -> None:
    """After a cycle pass: record ``tip`` as the last processed block (once per new block).

    A chain whose identity changed under the running daemon is not recorded over the ledger's
    own (the next start refuses it); it is logged.
    """
    rec = recorded(ledger)
    if rec is not None and rec.get("height") == tip.height:
        return
    new = record_for(chain, tip)
    if rec is not None and (rec.get("chain"), rec.get("id")) != (new["chain"], new["id"]):
        log.error("the %s chain changed under the running pegx (it is %s, the ledger follows "
                  "%s): not recording it; stop pegx, the next start checks it", chain.name,
                  new["id"], rec.get("id"))
        return
    ledger.put(TABLE, KEY, new)
