"""Following the best chain by block hash: finality and reorganisations (issue #14).

A BitBay block can be replaced by a competing branch (proof-of-stake: short reorganisations are
routine). pegx therefore never takes a block as final until it is ``final_depth`` deep, and
notices every replaced block by its hash.

Design
------
*Final depth* ``F`` (the ``final_depth`` setting; 0 = the exchange's ``exchangeconfirmations``):
a block with ``F`` confirmations is final. Everything that moves money waits for it:

* a deposit is registered (credited) only once its output has ``max(F, the confirmation rule)``
  confirmations, so no credit ever has to be taken back by a short reorganisation;
* a withdraw batch is ``Processing`` while its transaction is seen (mempool or a block less than
  ``F`` deep; CheckWithdraw shows ``confirmations``) and ``Complete`` at ``F``; its change is
  registered in that commit, so change too is only ever registered from a final block;
* a cancel settles (refunds) only when it is ``F`` deep; a batch is declined because "an input
  was spent by another transaction" only when that spender is ``F`` deep (or, a spender pegx
  cannot see, when the input has been spent for ``F`` blocks pegx processed): no refund while a
  transaction spending the batch's inputs could still confirm on a branch pegx has seen. A
  spend of one batch input whole back to its own address less the cancel fee *is* the batch's
  cancel (it is exactly what the desk would sign), whether the desk sent it or not;
* the signed batch stays in the ledger after ``Complete``, so a deeper reorganisation that
  drops it can be answered by broadcasting the same transaction again (no new payment).

*Tip by hash.* The ``meta/follow`` record keeps the hashes of the last ``F + WINDOW_EXTRA``
processed blocks. Each pass compares the chain's hash at the last processed height with the
recorded one (one ``block_hash`` call); on a difference it walks back to the highest block both
agree on, the fork. ``depth`` = last processed height - fork (a fork older than the window
counts as deeper than it).

*Rewind and re-derive.* What pegx derived from blocks that are not final is re-read from the
chain on every pass anyway (Spendable and deposit confirmations; a batch's transaction, its
height and confirmations; a cancel's), so the rewind is: log the reorganisation, then, per
batch in flight, put a status that the new branch no longer proves back (``Processing`` ->
``unconfirmed`` when the transaction is on neither branch nor mempool; the desk rebroadcasts
it) and log one line per item changed. Finished batches and registered inputs came from final
blocks and are only touched by a reorganisation at least ``F`` deep:

*Alarm* (depth >= F, i.e. a block pegx took as final was replaced): logged at ERROR, kept in
``meta/follow.alarms`` (``pegx status`` shows the last one first; ``pegx audit`` lists each
with what it changed). Nothing moves automatically beyond what the new chain proves: a
Complete batch whose transaction left the chain is broadcast again from its stored raw (the
ledger already paid it; the chain is brought back in line), everything else (a registered
deposit the new chain lacks, a cancelled batch that the new chain mined) is listed for the
operator, and ``pegx audit`` names the inputs that are not on chain.

*Supply.* A reorganisation across a cycle boundary can give the current cycle another supply.
If the published balances were computed at a supply the new chain does not have, they are
recomputed at the new one and republished; GetCycle's answer then moves on as it does for a
new cycle (it is the cycle plus the number of republications so far), so clients re-read
balances.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pegx.chain.base import Chain, ChainRejected, Tip
from pegx.ledger import engine

log = logging.getLogger(__name__)

TABLE, KEY = "meta", "follow"
WINDOW_EXTRA = 10  # hashes kept beyond the final depth: how deep a fork can be located
MAX_ALARMS = 20  # alarms kept in the record (the log has every one)


def final_depth(setting: int, settings: dict) -> int:
    """The depth at which a block is final: the setting, or (0) the exchange's confirmation
    count, at least 1."""
    if setting > 0:
        return int(setting)
    return max(1, int(settings.get("exchangeconfirmations", 1) or 1))


@dataclass
class Reorg:
    """A reorganisation seen between two passes."""

    fork: int  # the highest block both branches share (a lower bound when not ``located``)
    old_height: int  # the last block pegx had processed on the old branch
    depth: int  # old_height - fork
    final: int  # the final depth in force
    located: bool = True  # the fork lies inside the hash window
    items: list[str] = field(default_factory=list)  # one line per item changed

    @property
    def deep(self) -> bool:
        """Did it replace a block pegx took as final?"""
        return self.depth >= self.final or not self.located


def state(ledger: engine.Exchange) -> dict:
    """The ledger's record of the processed tip (``meta/follow``), or an empty one."""
    return ledger.record(TABLE, KEY) or {"height": -1, "hashes": [], "alarms": [],
                                         "republished": 0, "reorgs": 0}


def republished(ledger: engine.Exchange) -> int:
    """Republications after reorganisations so far (GetCycle adds them to the cycle)."""
    return int(state(ledger).get("republished", 0))


class Follower:
    """Tracks the processed tip by hash (``meta/follow``) and detects reorganisations."""

    def __init__(self, ledger: engine.Exchange, chain: Chain):
        self.ledger = ledger
        self.chain = chain

    def state(self) -> dict:
        return state(self.ledger)

    def republished(self) -> int:
        """Republications so far (GetCycle adds them to the cycle)."""
        return republished(self.ledger)

    def last_alarm(self) -> dict | None:
        alarms = self.state().get("alarms", [])
        return alarms[-1] if alarms else None

    def detect(self, tip: Tip, final: int) -> Reorg | None:
        """Compare the chain with the recorded hashes; a Reorg when a processed block changed."""
        rec = self.state()
        hashes, height = rec.get("hashes", []), int(rec.get("height", -1))
        if not hashes or height < 0:
            return None
        first = height - len(hashes) + 1
        top = min(height, tip.height)
        for h in range(top, first - 1, -1):
            if self.chain.block_hash(h) == hashes[h - first]:
                if h == height:
                    return None
                return Reorg(h, height, height - h, final)
        return Reorg(first - 1, height, height - first + 1, final, located=False)

    def note(self, tip: Tip, final: int, reorg: Reorg | None = None,
             republished: bool = False) -> None:
        """Record ``tip`` as processed (its hash and those below, back to the window), and a
        reorganisation's alarm / a republication when given. One ledger record per new block."""
        rec = self.state()
        height = int(rec.get("height", -1))
        if reorg is None and not republished and height == tip.height:
            return
        window = final + WINDOW_EXTRA
        hashes = list(rec.get("hashes", []))
        first = height - len(hashes) + 1
        if reorg is not None:  # keep only what both branches share
            hashes = hashes[:max(0, reorg.fork - first + 1)]
            height = first + len(hashes) - 1
        start = max(height + 1, tip.height - window + 1, 0)
        if start > height + 1:
            hashes = []
        hashes += [self.chain.block_hash(h) for h in range(start, tip.height + 1)]
        hashes = hashes[-window:]
        rec.update(height=tip.height, hashes=hashes)
        if reorg is not None:
            rec["reorgs"] = int(rec.get("reorgs", 0)) + 1
            if reorg.deep:
                alarms = list(rec.get("alarms", []))
                alarms.append({"time": int(time.time()), "fork": reorg.fork,
                               "old_height": reorg.old_height, "depth": reorg.depth,
                               "located": reorg.located, "final_depth": reorg.final,
                               "new_height": tip.height, "changed": list(reorg.items)})
                rec["alarms"] = alarms[-MAX_ALARMS:]
        if republished:
            rec["republished"] = int(rec.get("republished", 0)) + 1
        self.ledger.put(TABLE, KEY, rec)

    def tx_status(self, txid: str | None) -> str:
        """Where a transaction is on the chain now, in words (for log lines and alarms)."""
        if not txid:
            return "unknown"
        try:
            tx = self.chain.get_transaction(txid)
        except ChainRejected:
            tx = None
        if tx is None:
            return "not on the chain"
        if not tx.height:
            return "in the mempool"
        return f"in block {tx.height:,d} ({tx.confirmations:,d} confirmations)"


def describe(reorg: Reorg, tip: Tip) -> str:
    """The reorganisation's log line."""
    span = (f"blocks {reorg.fork + 1:,d}..{reorg.old_height:,d} replaced (depth {reorg.depth:,d})"
            if reorg.located else
            f"every block from {reorg.fork + 1:,d} to {reorg.old_height:,d} replaced (depth "
            f"more than {reorg.depth - 1:,d}, beyond the {reorg.depth:,d} hashes kept)")
    text = (f"chain reorganisation: {span}; new tip {tip.height:,d}; final depth "
            f"{reorg.final:,d}")
    if reorg.deep:
        text += (": a block taken as final was replaced. pegx moves no money beyond what the "
                 "new chain proves; `pegx audit` lists what changed")
    return text
