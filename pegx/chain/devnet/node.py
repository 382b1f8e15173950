"""The devnet: an embedded, deterministic, simulated BitBay chain (DESIGN §5).

It implements :class:`pegx.chain.base.Chain` so a fresh machine can run the exchange without a
node, and it has levers for tests and demos (mine, outside payments, supply votes, dropping or
malleating transactions, rejecting a broadcast, reorganising the chain), exposed over XML-RPC as
``devnet.*``.

Layout: ``ledger.Ledger`` is the deterministic state machine, ``peg`` the peg rules for
spends, ``tx`` the raw format and signatures, ``log`` the durable action log, ``files`` where
it lives in a datadir (``<datadir>/devnet``). This class adds one RLock, the log and the block
timer.

State is a pure function of (``seed``, ``initial_supply``, ``walk_seed``) and the ordered
actions applied; nothing reads the wall clock. Every state-changing call is validated first,
then appended to the fsynced log, then applied, all under the lock; a restart replays the log
and reproduces the chain exactly (heights, txids, fractions, supply history, wallet, mempool,
levers, block hashes, reorganisations: a ``reorg`` record holds the raw of every conflicting
spend it mined, so its replay needs no wallet lookup). Failed calls change nothing and are not logged, except a broadcast
refused by the reject lever, which uses the lever up.

Identity: a new devnet draws a random id, kept in its log header; ``identity()`` returns it and
the genesis hash derives from it, so a devnet started afresh (its directory deleted) or copied
from another datadir is recognisably another chain, even with the same seed.

Spends are validated for inclusion in the next block (its supply and time); with the next
block inside the same cycle that is the current supply. Votes registered during cycle c set
the supply of cycle c+1; the last vote of a cycle wins.

Waking up on new blocks: ``subscribe(callback)`` registers a function called with the new Tip
after every mining call (from the mining thread, outside the lock; one call per ``mine(n)``);
``wait_for_height(h, timeout)`` blocks until height ``h`` is reached.

The devnet wallet is not encrypted and imported WIF keys are stored in the action log: it is a
simulation, never give it a key that holds real coins.

Over 400 lines (~720): the Chain protocol and the levers on one lock; the state machine, peg
rules, raw format, log and file layout are already modules of their own (above).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pegx import crypto
from pegx.chain.base import (
    Chain,
    ChainRejected,
    ChainUnavailable,
    SignedTx,
    Tip,
    Tx,
    TxOut,
    Utxo,
    cycle_of,
    outpoint,
    split_outpoint,
)
from pegx.chain.devnet import files
from pegx.chain.devnet import tx as dtx
from pegx.chain.devnet.ledger import DIRECTIONS, Ledger, LedgerTx, block_time
from pegx.chain.devnet.log import ActionLog
from pegx.peg import MAX_SUPPLY_INDEX, PEG_SIZE

log = logging.getLogger(__name__)

MAX_MINE = 10_000
MAX_SEND = 10**17  # about all the BAY there is; keeps every pool sum far inside int64
_TXID_RE = re.compile(r"[0-9a-f]{64}")


def chain_id(header: dict) -> str:
    """The id that names a devnet: the random one in its log header, or, for a log written
    before ids existed, one derived from its parameters (such logs share it when they share
    the parameters; block hashes still tell their histories apart)."""
    if isinstance(header.get("id"), str) and header["id"]:
        return header["id"]
    params = json.dumps({k: header.get(k) for k in ("seed", "initial_supply", "walk_seed")},
                        sort_keys=True)
    return "legacy-" + hashlib.sha256(params.encode()).hexdigest()[:32]


def _decodes(raw: object) -> bool:
    try:
        dtx.decode_spend(raw)
    except ChainRejected:
        return False
    return True


REORG_FEE = 10_000  # what the spend reorg() signs for an outpoint pays (one input, one output)
MAX_REORG = 1_000


class Devnet(Chain):
    """The embedded simulated chain; see the module docstring. Thread-safe."""

    name = "devnet"
    real_block_times = False  # a fixed spacing from a fixed genesis

    def __init__(
        self,
        datadir: str | os.PathLike,
        *,
        block_seconds: float = 2.0,
        initial_supply: int = 0,
        walk_seed: int | None = None,
        seed: int = 1,
        network: crypto.Network = crypto.MAIN,
    ) -> None:
        dtx.check_int("initial_supply", initial_supply, 0, MAX_SUPPLY_INDEX)
        if isinstance(block_seconds, bool) or not block_seconds >= 0:
            raise ValueError(f"block_seconds must be a number >= 0, got {block_seconds!r}")
        dtx.check_int("seed", seed, -(2**63), 2**63 - 1)
        if walk_seed is not None:
            dtx.check_int("walk_seed", walk_seed, -(2**63), 2**63 - 1)
            walk_seed = int(walk_seed)
        self.block_seconds = float(block_seconds)
        self._lock = threading.RLock()
        self._height_cond = threading.Condition(self._lock)
        self._subscribers: list[Callable[[Tip], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.network = network
        self.cycle_blocks = network.cycle_blocks  # testnet: 20
        self.seed, self.initial_supply, self.walk_seed = int(seed), int(initial_supply), walk_seed
        self._log: ActionLog | None = ActionLog(
            files.directory(datadir),
            {"seed": self.seed, "initial_supply": self.initial_supply, "walk_seed": walk_seed,
             "network": network.name},
            created={"id": os.urandom(16).hex()},
            defaults={"network": "main"},  # logs written before the setting existed
        )
        try:
            self.id = chain_id(self._log.header)
            genesis = hashlib.sha256(f"pegx-devnet-genesis:{self.id}".encode()).digest()
            self._ledger = Ledger(self.seed, self.initial_supply, walk_seed, genesis, network)
            for rec in self._log.records:
                self._apply(rec, check_signatures=False)
        except Exception:
            self._log.close()
            raise
        self._log.records = []
        tip = self.tip()
        log.info(
            "devnet %s open: height %s, cycle %d, supply %d, %d wallet keys, %d in mempool",
            self.id,
            f"{tip.height:,d}",
            tip.cycle,
            tip.supply,
            len(self._ledger.wallet),
            len(self._ledger.mempool),
        )

    @property
    def reorganises(self) -> bool:
        """Can a block at a height change? Only once the reorg lever was used: until then
        another hash at a height means another history (a devnet log swapped or restored)."""
        return self._ledger.branch > 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background block timer if ``block_seconds`` > 0 (idempotent)."""
        with self._lock:
            if self.block_seconds <= 0 or self._thread is not None or self._log is None:
                return
            self._thread = threading.Thread(
                target=self._run_timer, name="devnet-miner", daemon=True
            )
            self._thread.start()

    def _run_timer(self) -> None:
        while not self._stop.wait(self.block_seconds):
            try:
                self.mine(1)
            except ChainUnavailable:
                return
            except Exception:  # keep mining: one lost block beats a dead chain
                log.exception("devnet: mining a block failed")

    def close(self) -> None:
        """Stop the block timer and close the log (every record is already fsynced)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def subscribe(self, callback: Callable[[Tip], None]) -> None:
        """Call ``callback(tip)`` after each mining call, from the mining thread, unlocked."""
        with self._lock:
            self._subscribers.append(callback)

    def wait_for_height(self, height: int, timeout: float | None = None) -> bool:
        """Block until the tip reaches ``height``; False on timeout."""
        with self._height_cond:
            return self._height_cond.wait_for(lambda: self._ledger.height >= height, timeout)

    # ------------------------------------------------------------------ replication
    # pegx.replication ships the action log to a standby as bytes: the primary reads its file
    # up to log_end() and is told of every append; the standby appends the same bytes and
    # applies them as a replay does, so a promoted standby takes over this very chain.

    def log_file(self) -> tuple[Path, int]:
        """The action log's path and the offset just past its last durable line."""
        with self._lock:
            if self._log is None:
                raise ChainUnavailable("devnet is closed")
            return self._log.path, self._log.end

    def on_log_append(self, callback: Callable[[int], None] | None) -> None:
        """Call ``callback(end_offset)`` after every durable append (under the devnet lock:
        it must only take note and return)."""
        with self._lock:
            if self._log is not None:
                self._log.on_append = callback

    def replicate(self, data: bytes) -> int:
        """Append lines a primary's log holds (complete lines, never the header) and apply
        them in order as a replay does; returns the new end offset. Anything that does not
        parse is refused before a byte is written."""
        lines = data.split(b"\n")
        if lines[-1] != b"":
            raise ValueError("replicated devnet data must end with a complete line")
        recs = []
        for line in lines[:-1]:
            rec = json.loads(line)
            if not isinstance(rec, dict) or rec.get("a") in (None, "header"):
                raise ValueError(f"not a devnet action: {line[:80]!r}")
            recs.append(rec)
        with self._lock:
            if self._log is None:
                raise ChainUnavailable("devnet is closed")
            self._log.append_lines(data)
            for rec in recs:
                self._apply(rec, check_signatures=False)
            self._height_cond.notify_all()
            return self._log.end

    # ------------------------------------------------------------------ action plumbing

    def _record(self, rec: dict) -> object:
        """Persist ``rec`` (fsynced), then apply it. Callers hold the lock and validated it."""
        if self._log is None:
            raise ChainUnavailable("devnet is closed")
        self._log.append(rec)
        return self._apply(rec, check_signatures=False)

    def _apply(self, rec: dict, check_signatures: bool) -> object:
        """Apply one action-log record to the chain's state (live and in a replay alike)."""
        apply = _APPLY.get(rec["a"])
        if apply is None:
            raise ValueError(f"unknown devnet log record {rec['a']!r}")
        return apply(self._ledger, rec, self.cycle_blocks, check_signatures)

    # ------------------------------------------------------------------ Chain protocol

    def identity(self) -> str:
        """The id this devnet was created with (random, in its log header): it names the chain."""
        return self.id

    def block_hash(self, height: int) -> str:
        """The hash of block ``height``; ChainRejected above the tip."""
        with self._lock:
            found = self._ledger.block_hash(int(height))
            if found is None:
                raise ChainRejected(f"no block at height {height} (tip {self._ledger.height})")
            return found

    def tip(self) -> Tip:
        """The best block (height, cycle, supply in force, block time)."""
        with self._lock:
            h = self._ledger.height
            return Tip(h, cycle_of(h, self.cycle_blocks), self._ledger.supply_at(h),
                       block_time(h), self.cycle_blocks)

    def supply_for_cycle(self, cycle: int) -> int:
        """Supply index of any past or current cycle, or of the next one as things stand."""
        with self._lock:
            current = cycle_of(self._ledger.height, self.cycle_blocks)
            if not 0 <= cycle <= current + 1:
                raise ChainRejected(f"no supply known for cycle {cycle} (current cycle {current})")
            return self._ledger.supply_at(cycle * self.cycle_blocks)

    def _utxo(self, tx: LedgerTx, vout: int) -> Utxo:
        return Utxo(
            tx.txid,
            vout,
            str(tx.outputs[vout].address),
            tx.outputs[vout].value,
            tx.fractions[vout].copy(),
            self._ledger.confirmations(tx),
            tx.height,
            tx.frozen_until[vout],
        )

    def list_unspent(self, min_conf: int = 0) -> list[Utxo]:
        """Unspent outputs paying wallet addresses (mempool ones: 0 confirmations, height 0)."""
        with self._lock:
            led, result = self._ledger, []
            for address in led.wallet:
                for key in led.by_address.get(address, ()):
                    if key not in led.spent:
                        txid, vout = split_outpoint(key)
                        utxo = self._utxo(led.txs[txid], vout)
                        if utxo.confirmations >= min_conf:
                            result.append(utxo)
            return result

    def get_fractions(self, key: str) -> np.ndarray:
        """Fraction vector of a known output (mined or mempool, spent or not)."""
        with self._lock:
            found = self._ledger.find(key)
            if found is None:
                raise ChainRejected(f"unknown output {key}")
            return found[0].fractions[found[1]].copy()

    def get_transaction(self, txid: str) -> Tx | None:
        """A mined or mempool transaction; None if unknown, dropped, evicted or malleated away."""
        with self._lock:
            tx = self._ledger.txs.get(txid)
            if tx is None:
                return None
            return Tx(
                tx.txid,
                list(tx.inputs),
                list(tx.outputs),
                tx.height,
                self._ledger.confirmations(tx),
                tx.raw,
            )

    def is_unspent(self, key: str) -> bool:
        """True while the output exists and no mined or mempool transaction spends it."""
        with self._lock:
            found = self._ledger.find(key)
            if found is None or key in self._ledger.spent:
                return False
            return found[0].outputs[found[1]].address is not None

    def spender(self, key: str) -> str | None:
        """Txid of the mined or mempool transaction spending ``key`` (devnet extra)."""
        with self._lock:
            return self._ledger.spent.get(key)

    def spenders(self, key: str) -> list[str]:
        """The one transaction spending ``key``, if any: the devnet indexes every spend."""
        txid = self.spender(key)
        return [] if txid is None else [txid]

    def import_key(self, wif: str, passphrase: str = "") -> str:
        """Add a WIF key to the wallet (no rescan needed: the devnet indexes every address).
        The devnet wallet is not encrypted: ``passphrase`` is ignored."""
        try:
            address = crypto.wif_to_address(wif, self.network)
        except (crypto.CryptoError, TypeError) as exc:
            raise ChainRejected(f"invalid private key: {exc}") from None
        with self._lock:
            if address not in self._ledger.wallet:
                self._record({"a": "import", "wif": wif})
            return address

    def is_mine(self, address: str) -> bool:
        """True if ``address`` is one of the wallet's keys (imported or derived)."""
        with self._lock:
            return isinstance(address, str) and address in self._ledger.wallet

    def create_transaction(
        self, inputs: list[str], outputs: list[TxOut], passphrase: str = ""
    ) -> SignedTx:
        """Sign a spend of unspent wallet ``inputs``; the peg rules are checked at broadcast.

        The devnet wallet is not encrypted, so ``passphrase`` is accepted and ignored.
        """
        inputs = [str(k) for k in inputs]
        if not inputs or not outputs:
            raise ChainRejected("a transaction needs at least one input and one output")
        if len(set(inputs)) != len(inputs):
            raise ChainRejected("the same input is listed twice")
        for out in outputs:
            self._check_output(out)
        outputs = [TxOut(int(o.value), o.address, o.data) for o in outputs]
        outs = [dtx.out_to_json(o) for o in outputs]
        message = dtx.sighash(inputs, outs)
        with self._lock:
            sigs = [self._sign_input(key, message) for key in inputs]
        raw = dtx.encode({"v": 1, "inputs": inputs, "outputs": outs, "sigs": sigs})
        return SignedTx(dtx.txid_of(raw), raw, tuple(inputs))

    def _check_output(self, out: TxOut) -> None:
        """ChainRejected unless ``out`` is a TxOut of int satoshi to a valid address (or data)."""
        if not isinstance(out, TxOut):
            raise ChainRejected(f"outputs must be TxOut, got {type(out).__name__}")
        if isinstance(out.value, bool) or not isinstance(out.value, (int, np.integer)):
            raise ChainRejected(f"output value must be int satoshi, got {out.value!r}")
        if out.address is not None:
            try:
                crypto.validate_address(out.address, self.network)
            except crypto.CryptoError as exc:
                raise ChainRejected(f"bad output address {out.address!r}: {exc}") from None

    def _sign_input(self, key: str, message: str) -> list[str]:
        """The wallet's signature of ``message`` for unspent wallet input ``key`` (under the
        lock); ChainRejected when it is unknown, not the wallet's or spent."""
        led = self._ledger
        found = led.find(key)
        if found is None:
            raise ChainRejected(f"input {key} is unknown")
        address = found[0].outputs[found[1]].address
        if address not in led.wallet:
            raise ChainRejected(f"input {key} pays {address}, which is not in the wallet")
        if key in led.spent:
            raise ChainRejected(f"input {key} is already spent by {led.spent[key]}")
        return dtx.sign(message, *led.wallet[address])

    def broadcast(self, raw: str) -> str:
        """Validate a signed transaction against the peg rules and the mempool; add it.

        Idempotent for a transaction already in the mempool or mined. Raises ChainRejected
        with the reason otherwise (and once when the reject lever is armed).
        """
        with self._lock:
            if self._log is None:
                raise ChainUnavailable("devnet is closed")
            led = self._ledger
            if led.reject_reason is not None:
                reason = led.reject_reason
                # the raw is kept: a reorganisation may mine it (reorg(spend=[txid]))
                self._record({"a": "rejected", "raw": raw if _decodes(raw) else None})
                raise ChainRejected(reason)
            if not isinstance(raw, str) or not raw:
                raise ChainRejected("TX decode failed: empty or not a string")
            txid = dtx.txid_of(raw)
            if txid in led.txs:
                return txid
            if txid in led.dropped:
                raise ChainRejected(f"transaction {txid} was dropped by the devnet lever")
            led.evaluate(raw, check_signatures=True)  # raises with the reason
            self._record({"a": "tx", "raw": raw})
            return txid

    # ------------------------------------------------------------------ levers

    def mine(self, n: int = 1) -> int:
        """Mine ``n`` blocks now (1..10000); returns the new height."""
        n = dtx.check_int("n", n, 1, MAX_MINE)
        with self._lock:
            self._record({"a": "mine", "n": n})
            tip = self.tip()
            self._height_cond.notify_all()
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(tip)
            except Exception:
                log.exception("devnet: block subscriber failed")
        return tip.height

    def send(self, address: str, amount: int, fractions: list[int] | None = None) -> str:
        """An outside payment of ``amount`` (1..1e17 sat) to any address; returns ``"txid:0"``.

        STD spread unless ``fractions`` (1200 non-negative ints summing to ``amount``) is
        given. It waits in the mempool and is mined in the next block.
        """
        address = dtx.check_address(address, self.network)
        amount = dtx.check_int("amount", amount, 1, MAX_SEND)
        if fractions is not None:
            if isinstance(fractions, np.ndarray):
                fractions = fractions.tolist()
            if not isinstance(fractions, (list, tuple)) or len(fractions) != PEG_SIZE:
                raise ValueError(f"fractions must be a list of {PEG_SIZE} ints")
            fractions = [dtx.check_int("every fraction", v, 0, None) for v in fractions]
            if sum(fractions) != amount:
                raise ValueError(f"fractions sum to {sum(fractions):,d}, not amount {amount:,d}")
        with self._lock:
            txid = self._record(
                {"a": "send", "address": address, "amount": amount, "fractions": fractions}
            )
            return outpoint(str(txid), 0)

    def vote(self, direction: str, steps: int = 1) -> bool:
        """Script the supply move at the next cycle boundary (deflate raises the index)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        steps = dtx.check_int("steps", steps, 1, 3)
        with self._lock:
            self._record({"a": "vote", "direction": direction, "steps": steps})
        return True

    def info(self) -> dict:
        """Chain status as plain XML-RPC values."""
        with self._lock:
            led, tip = self._ledger, self.tip()
            direction, steps = led.vote_for(tip.cycle + 1)
            info = {
                "height": tip.height,
                "cycle": tip.cycle,
                "supply": tip.supply,
                "time": tip.time,
                "next_supply": led.supply_at((tip.cycle + 1) * self.cycle_blocks),
                "next_vote": f"{direction}:{steps}",
                "blocks_to_next_cycle": self.cycle_blocks - tip.height % self.cycle_blocks,
                "network": self.network.name,
                "mempool": len(led.mempool),
                "block_seconds": self.block_seconds,
                "wallet_addresses": list(led.wallet),
                "id": self.id,
                "seed": self.seed,
                "initial_supply": self.initial_supply,
                "walk": self.walk_seed is not None,
                "malleate_next": led.malleate,
                "reject_next_broadcast": led.reject_reason is not None,
                "reorgs": led.branch,
            }
            if self.walk_seed is not None:
                info["walk_seed"] = self.walk_seed
            return info

    def balance(self, address: str) -> dict:
        """{amount, liquid, reserve, frozen} of an address's unspent mined outputs, now.

        liquid + reserve == amount, split at the current supply; frozen is the part of amount
        in outputs still frozen.
        """
        address = dtx.check_address(address, self.network)
        with self._lock:
            tip = self.tip()
            return self._ledger.balance(address, tip.supply, tip.time)

    def new_address(self) -> str:
        """A fresh wallet key derived from the seed; returns its address."""
        with self._lock:
            return str(self._record({"a": "newkey"}))

    def drop(self, txid: str) -> bool:
        """Remove a mempool transaction (and mempool spends of its outputs) for ever.

        False if ``txid`` is not in the mempool (unknown or already mined).
        """
        if not isinstance(txid, str) or not _TXID_RE.fullmatch(txid):
            raise ValueError(f"txid must be 64 lowercase hex digits, got {txid!r}")
        with self._lock:
            if txid not in self._ledger.mempool:
                return False
            self._record({"a": "drop", "txid": txid})
            return True

    def malleate_next(self) -> bool:
        """The next transaction mined from the mempool gets a different txid (same content)."""
        with self._lock:
            self._record({"a": "malleate"})
        return True

    def reject_next_broadcast(self, reason: str = "rejected by devnet lever") -> bool:
        """The next broadcast raises ChainRejected(reason), once."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reason must be a non-empty string")
        with self._lock:
            self._record({"a": "arm_reject", "reason": reason})
        return True

    def reorg(self, depth: int, txs: str = "keep", votes: str | None = None,
              spend: list[str] | None = None) -> dict:
        """Replace the last ``depth`` blocks (1..1000, at most the height) with as many new
        blocks, as when a competing branch wins; returns {fork, height, replaced, mined,
        evicted}.

        ``txs="keep"``: the replaced transactions are mined again in the new branch, each at
        its old offset from the fork (same confirmations, new block hashes); ``"drop"``: the
        new branch does not have them (spends can be broadcast again, outside payments are
        gone for good). ``votes`` ("inflate"|"deflate"|"nochange", optionally ":steps") is the
        vote every cycle boundary of the new branch uses instead of its old one, so the
        supply of those cycles changes; it must cross a boundary. ``spend`` lists conflicting
        spends the new branch's first block mines before anything else: a txid the devnet has
        seen (mined, in the mempool, left out by an earlier reorg, or refused by the reject
        lever), or a wallet outpoint ``"txid:vout"``, which the devnet spends back to its own
        address less 10,000 sat (as a cancel does). A replaced transaction that conflicts with
        them is evicted. Mempool transactions stay unless the new branch makes them invalid.
        Every spend must make it into the new branch, else ChainRejected and nothing changes.
        """
        depth, vote, spend = _reorg_args(depth, txs, votes, spend)
        with self._lock:
            led = self._ledger
            if depth > led.height:
                raise ValueError(f"depth {depth} is more than the height {led.height}")
            fork = led.height - depth
            if vote is not None and cycle_of(fork, self.cycle_blocks) == cycle_of(led.height, self.cycle_blocks):
                raise ValueError(f"votes given, but blocks {fork + 1:,d}..{led.height:,d} "
                                 f"cross no cycle boundary")
            raws = [self._conflicting_spend(item) for item in spend]
            rec = {"a": "reorg", "depth": depth, "txs": txs,
                   "vote": list(vote) if vote else None, "spend": raws}
            trial = copy.deepcopy(led)  # validated on a copy: a failed call changes nothing
            result = trial.apply_reorg(depth, txs == "keep", vote, raws)
            for raw in raws:
                txid = dtx.txid_of(raw)
                if txid not in trial.txs or not trial.txs[txid].height:
                    why = result["evicted"].get(txid, "not mined")
                    raise ChainRejected(f"spend {txid} cannot be mined on the new branch: {why}")
            result = self._record(rec)
            tip = self.tip()
            self._height_cond.notify_all()
            subscribers = list(self._subscribers)
        log.warning("devnet: reorganisation: blocks %s..%s replaced (%s), %d transactions "
                    "replaced, %d mined in the new branch, %d evicted", f"{fork + 1:,d}",
                    f"{tip.height:,d}", txs, len(result["replaced"]), len(result["mined"]),
                    len(result["evicted"]))
        for callback in subscribers:
            try:
                callback(tip)
            except Exception:
                log.exception("devnet: block subscriber failed")
        return {**result, "height": tip.height}

    def _conflicting_spend(self, item: object) -> str:
        """The raw a reorg's ``spend`` item names (see :meth:`reorg`); caller holds the lock."""
        led = self._ledger
        if not isinstance(item, str):
            raise ValueError(f"spend items must be strings, got {type(item).__name__}")  # noqa: TRY004
        if _TXID_RE.fullmatch(item):
            tx = led.txs.get(item)
            if tx is not None and not tx.outside:
                return tx.raw
            if item in led.seen:
                return led.seen[item]
            raise ChainRejected(f"the devnet has no spend {item} to mine")
        try:
            split_outpoint(item)
        except ValueError:
            raise ValueError(f"spend items are txids or txid:vout, got {item!r}") from None
        found = led.find(item)
        if found is None or found[0].outputs[found[1]].address not in led.wallet:
            raise ChainRejected(f"{item} is not an output of the devnet wallet")
        tx, vout = found
        address, value = str(tx.outputs[vout].address), tx.outputs[vout].value
        if value <= REORG_FEE:
            raise ChainRejected(f"{item} holds {value:,d} sat, not more than the fee")
        outs = [dtx.out_to_json(TxOut(value - REORG_FEE, address=address))]
        sig = dtx.sign(dtx.sighash([item], outs), *led.wallet[address])
        return dtx.encode({"v": 1, "inputs": [item], "outputs": outs, "sigs": [sig]})


def _reorg_args(depth, txs, votes, spend) -> tuple[int, tuple[str, int] | None, list]:
    """devnet.reorg's arguments checked in order (ValueError, the one error kind of every bad
    lever argument): (depth, the vote or None, the spends)."""
    depth = dtx.check_int("depth", depth, 1, MAX_REORG)
    if txs not in ("keep", "drop"):
        raise ValueError(f"txs must be 'keep' or 'drop', got {txs!r}")
    vote = None
    if votes is not None:
        direction, _, steps = str(votes).partition(":")
        if direction not in DIRECTIONS or (steps and not steps.isdigit()):
            raise ValueError(f"votes must be inflate|deflate|nochange[:steps], got {votes!r}")
        vote = (direction, dtx.check_int("steps", int(steps or 1), 1, 3))
    if spend is None:
        spend = []
    if isinstance(spend, str) or not isinstance(spend, (list, tuple)):
        raise ValueError("spend must be a list of txids or txid:vout outpoints")  # noqa: TRY004
    return depth, vote, spend


# ---------------------------------------------------------------------- the log's records
# Each applies one kind of action-log record: (ledger, record, cycle_blocks, check_signatures)
# -> what the action returns (None for the levers).
def _vote(led: Ledger, rec: dict, cycle_blocks: int, _check: bool) -> None:
    led.votes[cycle_of(led.height, cycle_blocks) + 1] = (rec["direction"], rec["steps"])


def _drop(led: Ledger, rec: dict, _cb: int, _check: bool) -> None:
    led.apply_drop(rec["txid"])


def _malleate(led: Ledger, _rec: dict, _cb: int, _check: bool) -> None:
    led.malleate = True


def _arm_reject(led: Ledger, rec: dict, _cb: int, _check: bool) -> None:
    led.reject_reason = rec["reason"]


def _rejected(led: Ledger, rec: dict, _cb: int, _check: bool) -> None:
    led.reject_reason = None
    if isinstance(rec.get("raw"), str):
        led.seen[dtx.txid_of(rec["raw"])] = rec["raw"]


def _reorg(led: Ledger, rec: dict, _cb: int, _check: bool):
    vote = tuple(rec["vote"]) if rec.get("vote") else None
    return led.apply_reorg(rec["depth"], rec["txs"] == "keep", vote, rec["spend"])


_APPLY: dict[str, Callable[[Ledger, dict, int, bool], object]] = {
    "mine": lambda led, rec, _cb, _check: led.apply_mine(rec["n"]),
    "send": lambda led, rec, _cb, _check: led.apply_send(rec["address"], rec["amount"],
                                                        rec.get("fractions")),
    "tx": lambda led, rec, _cb, check: led.apply_tx(rec["raw"], check),
    "vote": _vote,
    "import": lambda led, rec, _cb, _check: led.apply_import(rec["wif"]),
    "newkey": lambda led, _rec, _cb, _check: led.apply_new_key(),
    "drop": _drop,
    "malleate": _malleate,
    "arm_reject": _arm_reject,
    "rejected": _rejected,
    "reorg": _reorg,
}
