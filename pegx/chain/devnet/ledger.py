"""The devnet's deterministic state machine: blocks, supply, transactions, mempool, wallet.

No locks, no I/O, no clock: :class:`Ledger` is changed only through its ``apply_*`` methods,
each a deterministic function of the current state and its arguments, so replaying the same
actions reaches the same chain. ``devnet.py`` adds the lock, the log and the API around it.

Blocks: height 0 is an empty genesis; block h has time ``GENESIS_TIME + 64 * h``. Block hashes
chain from the genesis hash (which the Devnet derives from its random id): block h's hash is
SHA-256 of block h-1's hash, h and the txids mined in it, so two devnets never share a block
hash and a replay reproduces every one. After a reorganisation (:meth:`Ledger.apply_reorg`)
every new block's digest also covers the branch number, so a replaced block never gets its old
hash back, even when the new branch holds the same transactions. The supply index of cycle c
(= h // 200, or h // 20 on testnet: ``cycle_blocks``) is fixed when block 200·c is mined, from
the vote registered during cycle c-1, else (with ``walk_seed``) a seeded random vote, else
unchanged. Keys and addresses use the versions of ``net``.

Over 400 lines (~410): one deterministic state machine; its reorganisation, mining and
mempool steps share the same state.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass

import numpy as np

from pegx import crypto
from pegx.chain.base import ChainRejected, TxOut, cycle_of, outpoint, split_outpoint
from pegx.chain.devnet import tx as dtx
from pegx.chain.devnet.peg import FREEZE_SECONDS, apply_peg_rules
from pegx.peg import MAX_SUPPLY_INDEX, PEG_SIZE, std_spread

log = logging.getLogger(__name__)

GENESIS_TIME = 1_600_000_000
BLOCK_TIME = 64  # seconds of block time per block (BitBay protocol v2 target)
DIRECTIONS = ("inflate", "deflate", "nochange")
_MALLEATED = b"malleated".hex()


def block_time(height: int) -> int:
    """The (deterministic) time of block ``height``."""
    return GENESIS_TIME + BLOCK_TIME * height


@dataclass
class LedgerTx:
    """A transaction the devnet knows: mined (height > 0) or in the mempool (height 0)."""

    txid: str
    raw: str
    inputs: list[str]
    outputs: list[TxOut]
    fractions: list[np.ndarray]
    frozen_until: list[int]
    height: int = 0
    outside: bool = False


class Ledger:
    """Chain state. Not thread-safe on its own: the Devnet holds one lock around it."""

    def __init__(self, seed: int, initial_supply: int, walk_seed: int | None,
                 genesis: bytes = bytes(32), net: crypto.Network = crypto.MAIN) -> None:
        self.net = net
        self.cycle_blocks = net.cycle_blocks
        self.seed = seed
        self.walk_seed = walk_seed
        self.height = 0
        # 32 bytes per block, height order (a bytearray: ~32 MB per million blocks)
        self.hashes = bytearray(genesis)
        self.supplies = [initial_supply]  # supply index per cycle, index = cycle
        self.votes: dict[int, tuple[str, int]] = {}  # cycle it applies to -> (direction, steps)
        self.txs: dict[str, LedgerTx] = {}  # mined and mempool transactions by txid
        self.mempool: list[str] = []  # arrival order
        self.spent: dict[str, str] = {}  # outpoint -> txid of the mined/mempool spender
        # address -> outpoints of live txs paying it (a dict as an ordered set: O(1) removal)
        self.by_address: dict[str, dict[str, None]] = {}
        self.dropped: set[str] = set()
        self.wallet: dict[str, tuple[bytes, bool]] = {}  # address -> (private key, compressed)
        self.malleate = False
        self.reject_reason: str | None = None
        self.sends = 0
        self.new_keys = 0
        self.branch = 0  # reorganisations so far; salts the hashes of every later block
        self.applied: dict[int, tuple[str, int]] = {}  # cycle -> the vote its boundary used
        # raw of spends the chain saw but does not hold: refused by the reject lever, or left
        # out of a new branch; a reorganisation may mine them (``apply_reorg(spends=...)``)
        self.seen: dict[str, str] = {}

    # ------------------------------------------------------------------ supply

    def vote_for(self, cycle: int) -> tuple[str, int]:
        """The vote that moves the supply at the start of ``cycle``."""
        if cycle in self.votes:
            return self.votes[cycle]
        if self.walk_seed is None:
            return ("nochange", 1)
        # seeded per cycle, not a running RNG: the walk does not depend on other actions
        digest = hashlib.sha256(f"pegx-devnet-walk:{self.walk_seed}:{cycle}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        return (rng.choice(DIRECTIONS), rng.randint(1, 3))

    def supply_at(self, height: int) -> int:
        """Supply index in force for a block at ``height`` (at most one cycle ahead)."""
        cycle = cycle_of(height, self.cycle_blocks)
        if cycle < len(self.supplies):
            return self.supplies[cycle]
        direction, steps = self.vote_for(cycle)
        delta = {"deflate": steps, "inflate": -steps, "nochange": 0}[direction]
        return min(MAX_SUPPLY_INDEX, max(0, self.supplies[-1] + delta))

    # ------------------------------------------------------------------ lookups

    def find(self, key: str) -> tuple[LedgerTx, int] | None:
        """The live transaction and vout of an outpoint, or None."""
        try:
            txid, vout = split_outpoint(key)
        except ValueError:
            return None
        tx = self.txs.get(txid)
        if tx is None or vout >= len(tx.outputs):
            return None
        return tx, vout

    def balance(self, address: str, supply: int, now: int) -> dict:
        """{amount, liquid, reserve, frozen} of the unspent mined outputs paying ``address``."""
        total = np.zeros(PEG_SIZE, dtype=np.int64)
        frozen = 0
        for key in self.by_address.get(address, ()):
            txid, vout = split_outpoint(key)
            tx = self.txs[txid]
            if key in self.spent or not tx.height:
                continue
            total += tx.fractions[vout]
            if tx.frozen_until[vout] > now:
                frozen += tx.outputs[vout].value
        reserve, liquid = int(total[:supply].sum()), int(total[supply:].sum())
        return {"amount": liquid + reserve, "liquid": liquid, "reserve": reserve, "frozen": frozen}

    def block_hash(self, height: int) -> str | None:
        """The hash of block ``height`` (hex), or None above the tip."""
        if not 0 <= height <= self.height:
            return None
        return bytes(self.hashes[32 * height:32 * height + 32]).hex()

    def confirmations(self, tx: LedgerTx) -> int:
        return self.height - tx.height + 1 if tx.height else 0

    # ------------------------------------------------------------------ keys

    def add_key(self, priv: bytes, compressed: bool) -> str:
        address = crypto.pubkey_to_address(crypto.public_key(priv, compressed), net=self.net)
        self.wallet.setdefault(address, (priv, compressed))
        return address

    def apply_import(self, wif: str) -> str:
        return self.add_key(*crypto.wif_to_private_key(wif, self.net))

    def apply_new_key(self) -> str:
        """The next wallet key of this seed: derived, so a replay finds the same keys."""
        self.new_keys += 1
        digest = hashlib.sha256(f"pegx-devnet-key:{self.seed}:{self.new_keys}".encode()).digest()
        order = crypto.CURVE.order
        priv = (int.from_bytes(digest, "big") % (order - 1) + 1).to_bytes(32, "big")
        return self.add_key(priv, True)

    # ------------------------------------------------------------------ spends

    def evaluate(self, raw: str, check_signatures: bool, height: int | None = None):
        """Check a spend for inclusion at ``height`` (default: the next block).

        Returns (inputs, outputs, fractions, frozen_until); raises ChainRejected with a reason.
        """
        inputs, outputs, outs_json, sigs = dtx.decode_spend(raw)
        if len(set(inputs)) != len(inputs):
            raise ChainRejected("the same input is listed twice")
        height = self.height + 1 if height is None else height
        now = block_time(self.height)
        message = dtx.sighash(inputs, outs_json) if check_signatures else ""
        spends = []
        for n, key in enumerate(inputs):
            found = self.find(key)
            if found is None or found[0].outputs[found[1]].address is None:
                raise ChainRejected(f"input {n} ({key}) is unknown or not spendable")
            tx, vout = found
            if key in self.spent:
                raise ChainRejected(f"input {n} ({key}) is already spent by {self.spent[key]}")
            if tx.frozen_until[vout] > now:
                raise ChainRejected(f"input {n} ({key}) is frozen until {tx.frozen_until[vout]}")
            address = str(tx.outputs[vout].address)
            if check_signatures:
                dtx.check_signature(n, key, address, sigs[n], message, self.net)
            spends.append((address, tx.fractions[vout]))
        for n, out in enumerate(outputs):
            if out.address is not None and out.value <= 0:
                raise ChainRejected(f"output {n} pays {out.value} sat to an address")
        total_in = sum(int(v.sum()) for _, v in spends)
        total_out = sum(o.value for o in outputs)
        if total_out > total_in:
            raise ChainRejected(f"outputs ({total_out:,d} sat) exceed inputs ({total_in:,d} sat)")
        result = apply_peg_rules(spends, outputs, self.supply_at(height))
        frozen = [block_time(height) + FREEZE_SECONDS if f else 0 for f in result.frozen]
        return inputs, outputs, result.fractions, frozen

    def apply_tx(self, raw: str, check_signatures: bool) -> str:
        """Accept a spend into the mempool (fractions provisional until mined)."""
        inputs, outputs, fractions, frozen = self.evaluate(raw, check_signatures)
        txid = dtx.txid_of(raw)
        self._connect(LedgerTx(txid, raw, inputs, outputs, fractions, frozen))
        return txid

    def apply_send(self, address: str, amount: int, fractions: list[int] | None) -> str:
        """An outside payment (no inputs) into the mempool; returns its txid."""
        self.sends += 1
        raw = dtx.encode(
            {
                "v": 1,
                "outside": self.sends,
                "seed": self.seed,
                "address": address,
                "amount": amount,
                "fractions": fractions,
            }
        )
        vec = std_spread(amount) if fractions is None else np.array(fractions, dtype=np.int64)
        txid = dtx.txid_of(raw)
        self._connect(
            LedgerTx(txid, raw, [], [TxOut(amount, address=address)], [vec], [0], outside=True)
        )
        return txid

    def apply_drop(self, txid: str) -> None:
        """Remove a mempool tx and every mempool tx spending its outputs, for ever."""
        doomed = {txid}
        for t in self.mempool:  # arrival order: children come after their parents
            if any(split_outpoint(k)[0] in doomed for k in self.txs[t].inputs):
                doomed.add(t)
        for t in doomed:
            self._disconnect(self.txs[t])
        self.mempool = [t for t in self.mempool if t not in doomed]
        self.dropped |= doomed

    def _connect(self, tx: LedgerTx) -> None:
        """Index a transaction's spends and outputs; a height-0 one joins the mempool."""
        self.txs[tx.txid] = tx
        for key in tx.inputs:
            self.spent[key] = tx.txid
        for vout, out in enumerate(tx.outputs):
            if out.address is not None:
                self.by_address.setdefault(out.address, {})[outpoint(tx.txid, vout)] = None
        if not tx.height:
            self.mempool.append(tx.txid)

    def _disconnect(self, tx: LedgerTx) -> None:
        del self.txs[tx.txid]
        for key in tx.inputs:
            if self.spent.get(key) == tx.txid:
                del self.spent[key]
        for vout, out in enumerate(tx.outputs):
            if out.address is not None:
                del self.by_address[out.address][outpoint(tx.txid, vout)]

    # ------------------------------------------------------------------ mining

    def apply_mine(self, n: int) -> None:
        for _ in range(n):
            self._mine_block()

    def _mine_block(self, pending: list[LedgerTx] | None = None) -> dict[str, str]:
        """One block: move the supply at a cycle boundary, include the mempool in order (or
        exactly ``pending``, a reorganisation's block: the mempool and the malleate lever are
        left alone). Returns the transactions evicted {txid: reason}."""
        height = self.height + 1
        if height % self.cycle_blocks == 0:
            cycle = cycle_of(height, self.cycle_blocks)
            self.applied[cycle] = self.vote_for(cycle)
            self.supplies.append(self.supply_at(height))
            self.votes.pop(cycle, None)
        malleable = pending is None
        if pending is None:
            pending = [self.txs[t] for t in self.mempool]
            self.mempool = []
            for tx in reversed(pending):
                self._disconnect(tx)
        mined: list[str] = []
        evicted: dict[str, str] = {}
        for tx in pending:
            # re-check every spend at this block's supply (a boundary may have moved it);
            # what is invalid now is evicted for good
            fractions, frozen = tx.fractions, tx.frozen_until
            if not tx.outside:
                try:
                    _, _, fractions, frozen = self.evaluate(tx.raw, False, height)
                except ChainRejected as exc:
                    log.warning("devnet: evicting %s at height %d: %s", tx.txid, height, exc)
                    evicted[tx.txid] = str(exc)
                    continue
            txid = tx.txid
            if self.malleate and malleable:
                self.malleate = False
                txid = dtx.txid_of(tx.raw + _MALLEATED)
                log.info("devnet: %s mined malleated as %s", tx.txid, txid)
            self._connect(
                LedgerTx(txid, tx.raw, tx.inputs, tx.outputs, fractions, frozen, height, tx.outside)
            )
            mined.append(txid)
        digest = hashlib.sha256(self.hashes[-32:] + height.to_bytes(8, "big"))
        if self.branch:
            digest.update(b"branch" + self.branch.to_bytes(8, "big"))
        for txid in mined:
            digest.update(bytes.fromhex(txid))
        self.hashes += digest.digest()
        self.height = height
        return evicted

    # ------------------------------------------------------------------ reorganisation

    def apply_reorg(self, depth: int, keep: bool, vote: tuple[str, int] | None,
                    spends: list[str]) -> dict:
        """Replace the last ``depth`` blocks with as many new ones (the caller checked
        1 <= depth <= height).

        The new branch's first block mines ``spends`` (raw spends, in order) first; with
        ``keep`` each replaced transaction is mined again in the block at its old offset from
        the fork (so it keeps its confirmations), unless it now conflicts or breaks the peg
        rules; without, the replaced transactions are gone (their raw is kept in ``seen``, a
        later broadcast may bring a spend back). Cycle boundaries inside the new branch use
        ``vote`` if given, else the vote they used before. Mempool transactions stay in the
        mempool when still valid on the new branch. Returns {fork, replaced, mined, evicted}.
        """
        fork = self.height - depth
        replaced, pending = self._unwind(fork, vote)
        evicted: dict[str, str] = {}
        for block in self._new_branch(depth, fork, spends, replaced if keep else []):
            evicted.update(self._mine_block(block))
        self._restore_mempool(pending, evicted)
        self._remember_unmined(replaced, pending, evicted)
        mined = [t.txid for t in self.txs.values() if t.height > fork]
        return {"fork": fork, "replaced": [t.txid for t in replaced], "mined": mined,
                "evicted": evicted}

    def _unwind(self, fork: int, vote: tuple[str, int] | None) -> tuple[list, list]:
        """Take the mempool and every block after ``fork`` off the chain (their cycles' votes
        become ``vote``, or stay what they were); returns (the replaced txs in block order,
        the mempool's)."""
        old_height = self.height
        # stable sort: within a block, dict order is the order the block mined them in
        replaced = sorted((t for t in self.txs.values() if t.height > fork),
                          key=lambda t: t.height)
        pending = [self.txs[t] for t in self.mempool]
        self.mempool = []
        for tx in reversed(pending):
            self._disconnect(tx)
        for tx in reversed(replaced):
            self._disconnect(tx)
        for cycle in range(cycle_of(fork, self.cycle_blocks) + 1,
                           cycle_of(old_height, self.cycle_blocks) + 1):
            self.votes[cycle] = vote if vote is not None else self.applied[cycle]
            del self.applied[cycle]
        del self.supplies[cycle_of(fork, self.cycle_blocks) + 1:]
        del self.hashes[32 * (fork + 1):]
        self.height = fork
        self.branch += 1
        return replaced, pending

    @staticmethod
    def _new_branch(depth: int, fork: int, spends: list[str],
                    kept: list[LedgerTx]) -> list[list[LedgerTx]]:
        """The new branch's ``depth`` blocks: ``spends`` first in the first block, then each
        kept transaction at its old offset from the fork (unless it is one of the spends)."""
        blocks: list[list[LedgerTx]] = [[] for _ in range(depth)]
        for raw in spends:
            inputs, outputs, _, _ = dtx.decode_spend(raw)
            blocks[0].append(LedgerTx(dtx.txid_of(raw), raw, inputs, outputs, [], []))
        first = {tx.txid for tx in blocks[0]}
        for tx in kept:
            if tx.txid not in first:
                blocks[tx.height - fork - 1].append(tx)
        return blocks

    def _restore_mempool(self, pending: list[LedgerTx], evicted: dict[str, str]) -> None:
        """The mempool stays, less what the new branch mined or made invalid (``evicted``)."""
        for tx in pending:
            if tx.txid in self.txs:
                continue  # mined in the new branch
            if not tx.outside:
                try:
                    inputs, outputs, fractions, frozen = self.evaluate(tx.raw, False)
                except ChainRejected as exc:
                    log.warning("devnet: evicting %s from the mempool: %s", tx.txid, exc)
                    evicted[tx.txid] = str(exc)
                    continue
                tx = LedgerTx(tx.txid, tx.raw, inputs, outputs, fractions, frozen)
            self._connect(tx)

    def _remember_unmined(self, replaced: list[LedgerTx], pending: list[LedgerTx],
                          evicted: dict[str, str]) -> None:
        """Spends the new branch does not have are kept in ``seen`` (a later broadcast may
        bring them back); what it has is no longer there."""
        for tx in replaced:
            if tx.txid not in self.txs and not tx.outside:
                self.seen[tx.txid] = tx.raw
        for txid in evicted:
            found = next((t for t in replaced + pending if t.txid == txid), None)
            if found is not None and not found.outside:
                self.seen[txid] = found.raw
        for txid in [t for t in self.seen if t in self.txs]:
            del self.seen[txid]
