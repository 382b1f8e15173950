"""The exchange-cycle thread: makes the ledger follow the chain (DESIGN §6, ORIGINAL §2.7).

One thread, woken every ``poll_seconds`` and on new blocks. Each pass:

1. imports new deposit keys into the wallet (GenerateDepositAddress only records them);
2. rebuilds the Spendable view: wallet outputs paying exchange addresses that meet the
   confirmation rule (>= exchangeconfirmations, +5 within 7 blocks of a cycle boundary); the
   outputs the exchange's own transactions return to it (the batches' house outputs, see
   :func:`pegx.ledger.lifecycle.house_outpoints`) are flagged ``change``, and only those: a
   payee output paying a watched address is a deposit like any other;
3. registers claimed deposits in the ledger, crediting the claimant with the output's
   fractions, and refreshes balances at once (change is the withdraw desk's to register, in
   the commit that spends its transaction's inputs);
4. on a new cycle, recomputes every balance at the new supply before GetCycle moves;
5. runs the block-window tasks (withdraw batches, maintenance, status checks) via a
   :class:`pegx.exchange.withdraws.WithdrawDesk` when one is attached.

Before all of it, the pass compares the chain's block hashes with those it processed
(:mod:`pegx.exchange.follow`): a reorganisation is logged (at ERROR when it replaced a block
taken as final), what it changed is re-derived, and balances published at a supply the new
chain does not have are republished.

A failing pass is logged and retried with capped backoff; the thread never dies silently
(``last_error`` shows what went wrong). What the API reads (started, loaded, busy, the
Spendable view) is the :class:`pegx.exchange.session.Session`, which this thread writes.

Over 400 lines (~410): the follower thread's one pass (follow, credit, recompute, the desk,
the Spendable view) and its reactions to reorganisations.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pegx import peg
from pegx.chain.base import (
    CYCLE_BLOCKS,
    Chain,
    ChainError,
    ChainRejected,
    Tip,
    Utxo,
    WalletLocked,
)
from pegx.exchange import chainguard, follow
from pegx.exchange.session import Session
from pegx.exchange.withdraws import DeskPass
from pegx.ledger import engine
from pegx.ledger.rules import FROZEN_GRACE

log = logging.getLogger(__name__)

BOUNDARY_BLOCKS = 7  # outputs mined this close to a cycle boundary need 5 more confirmations
BOUNDARY_EXTRA = 5
CYCLES_KEPT = 48  # cycles whose supply and totals meta/cycles keeps (the status page's chart)


def confirmations_needed(height: int, confirmations: int, interval: int = CYCLE_BLOCKS) -> int:
    """The original's rule (ORIGINAL §3.3 step 2), for cycles of ``interval`` blocks (the
    7-block margin stays 7 blocks: it is about reorganisations, not the cycle's length)."""
    pos = height % interval
    if pos < BOUNDARY_BLOCKS or pos > interval - BOUNDARY_BLOCKS:
        return confirmations + BOUNDARY_EXTRA
    return confirmations


def spendable_entry(u: Utxo, supply: int, change: bool) -> dict:
    """The GetSpendable shape (ORIGINAL §1.3), with ``amount`` the numeric sum as a string."""
    liquid, reserve = peg.split(u.fractions, supply)
    entry = {"address": u.address, "amount": str(liquid + reserve), "rtotal": str(reserve),
             "ltotal": str(liquid), "nfreeze": str(peg.nfreeze(u.fractions, supply)),
             "supply": supply, "confirmations": str(u.confirmations)}
    if change:
        entry["change"] = 1
    return entry


class ExchangeCycle:
    """The follower thread: each pass brings the ledger and the :class:`Session` up to the
    chain (see the module docstring). It calls nothing above it: the API reads the session,
    and the withdraw desk is handed a :class:`DeskPass`."""

    def __init__(self, ledger: engine.Exchange, chain: Chain, session: Session, *,
                 poll_seconds: float = 0.5, desk=None, final_depth: int = 0):
        self.ledger = ledger
        self.session = session
        self.final_depth_setting = int(final_depth)
        self.follower = follow.Follower(ledger, chain)
        self.chain = chain
        self.poll_seconds = poll_seconds
        self.desk = desk
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._mu = threading.Lock()
        self.last_error: str = ""
        self.last_error_time = 0.0
        self.last_ok_time = 0.0  # when the last pass finished without error (unix time)
        self.passes = 0
        # seconds each recompute took, for metrics (set by the app)
        self.on_recompute: Callable[[float], None] | None = None
        self.tip: Tip | None = None
        session.attach(self)
        chain.subscribe(lambda tip: self._wake.set())

    # ---------------------------------------------------------------- Runner (the session's)
    def start(self) -> None:
        """Run the thread (again); the session's start (StartExchange(start=1))."""
        with self._mu:
            if self._thread is not None and self._thread.is_alive():
                return
            self._halt.clear()
            self._thread = threading.Thread(target=self._run, name="exchange-cycle",
                                            daemon=True)
            self._thread.start()
        log.info("exchange started")

    def stop(self, timeout: float = 30.0) -> None:
        """Halt the thread after its current pass; the session's stop (StartExchange(0))."""
        with self._mu:
            thread = self._thread
            self._halt.set()
            self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        log.info("exchange stopped")

    def wake(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- state for status
    def cycle(self) -> int:
        return self.ledger.cycle

    def failing(self) -> bool:
        """Did the last pass fail (an error since the last pass that went through)?"""
        return bool(self.last_error) and self.last_error_time >= self.last_ok_time

    def cycle_history(self) -> list[dict]:
        """The last CYCLES_KEPT recomputes: {cycle, supply, height, liquid, reserve, frozen,
        subpremium}, oldest first."""
        return list((self.ledger.record("meta", "cycles") or {}).get("cycles", []))

    def final_depth(self, settings: dict | None = None) -> int:
        """Confirmations that make a block final (``final_depth``, 0 = exchangeconfirmations)."""
        if settings is None:
            settings = self.ledger.exchange_settings()
        return follow.final_depth(self.final_depth_setting, settings)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------- the thread
    def _run(self) -> None:
        backoff = self.poll_seconds
        while not self._halt.is_set():
            try:
                self.step()
                self.passes += 1
                self.last_ok_time = time.time()
                backoff = self.poll_seconds
            except Exception as exc:  # logged; the thread must live on
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.last_error_time = time.time()
                level = logging.WARNING if isinstance(exc, ChainError) else logging.ERROR
                log.log(level, "exchange cycle pass failed (retrying in %.1f s): %s", backoff,
                        self.last_error, exc_info=not isinstance(exc, ChainError))
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def step(self) -> None:
        """One pass (see the module docstring). Safe to call from tests directly."""
        tip = self.chain.tip()
        now = tip.time or int(time.time())
        settings = self.ledger.exchange_settings()
        final = self.final_depth(settings)
        reorg = self.follower.detect(tip, final)
        if reorg is not None:
            self._rewind(reorg, tip)
        self._import_keys()
        self._refresh_spendable(tip, settings, final)
        self._register(tip, now)
        republished = False
        loaded = self.session.loaded()
        if tip.cycle > self.cycle() or (not loaded and self._stale(tip)):
            self._new_cycle(tip, now)
        elif reorg is not None and loaded and self.ledger.supply != tip.supply:
            old = self.ledger.supply
            self._new_cycle(tip, now, cycle=max(tip.cycle, self.cycle()))
            republished = True
            log.warning("cycle %d: the reorganisation moved the supply from %d to %d: balances "
                        "republished (GetCycle moves on to %d)", tip.cycle, old, tip.supply,
                        self.session.published() + 1)
        self.session.mark_loaded()
        if self.desk is not None:
            self._run_desk(tip, now, final)
        self.follower.note(tip, final, reorg, republished)
        if reorg is not None:  # the old branch's hash at this height is not the ledger's any more
            self.ledger.put(chainguard.TABLE, chainguard.KEY, chainguard.record_for(self.chain, tip))
        else:
            chainguard.note(self.ledger, self.chain, tip)  # the ledger's record of its chain
        # published last: `tip` is the block this exchange has fully processed (pegx.status
        # reports it, and tests wait on it to know a pass, window task included, is done)
        self.tip = tip

    def _run_desk(self, tip: Tip, now: int, final: int) -> None:
        """The withdraw desk's pass, handed what it needs; then flag change the outputs it just
        made the house's (a cancel it adopted and settled in this pass, say), so Spendable
        never shows them unflagged."""
        session = self.session
        self.desk.run(tip, now, self.desk_pass(final))
        if self.desk.wallet_locked:  # pegx.status shows it until ExchangePassword
            session.wallet_note = self.desk.wallet_locked
        session.reflag_change(self.house())

    def desk_pass(self, final: int | None = None) -> DeskPass:
        """What the desk is handed for a pass: the final depth, the cycle, the Spendable
        view's outpoints and the wallet passphrase."""
        return DeskPass(final=self.final_depth() if final is None else final,
                        cycle=self.cycle(), spendable=tuple(sorted(self.session.spendable())),
                        passphrase=self.session.passphrase)

    def _rewind(self, reorg: follow.Reorg, tip: Tip) -> None:
        """Log a reorganisation and, when it replaced final blocks, find what it changed among
        the finished batches and registered inputs (in-flight batches are re-derived by the
        desk's tracking, one log line per withdraw changed)."""
        log.log(logging.ERROR if reorg.deep else logging.WARNING, follow.describe(reorg, tip))
        if reorg.deep:
            reorg.items = self._final_items(reorg)
            for line in reorg.items:
                log.error("reorganisation: %s", line)

    def _final_items(self, reorg: follow.Reorg) -> list[str]:
        """What a reorganisation past the final depth changed in what pegx took as final."""
        items = []
        for master, b in sorted(self.ledger.batches(("done", "failed")).items()):
            if b.get("state") == "done":
                items.append(self._completed_item(master, b))
            elif b.get("state") == "failed" and b.get("cancel"):
                items.append(self._refunded_item(master, b))
        items += self._input_items(reorg)
        return [item for item in items if item]

    def _completed_item(self, master: str, b: dict) -> str:
        """A Complete batch whose tx left the chain: broadcast again when it still can (the
        ledger already paid it); '' when it is mined on the new branch too."""
        tx = self.chain.get_transaction(b.get("final_txid") or b["txid"])
        if tx is not None and tx.height:
            return ""  # mined on the new branch too: the payment stands
        where = self.follower.tx_status(b.get("final_txid"))
        line = (f"{b['kind']} batch {master} (withdraws {', '.join(b['ids']) or '-'}) was "
                f"Complete; its tx {b.get('final_txid')} is now {where}")
        why = ""
        if tx is None and b.get("raw") and all(self.chain.is_unspent(k) for k in b["ins"]):
            # checked with the node's rule first, as every broadcast (pegx.exchange.withdraws)
            why = self.desk.check_batch(b) if self.desk is not None else ""
        if why:
            line += f": not broadcast again, the node's rule would refuse it ({why})"
        elif tx is None and b.get("raw") and all(self.chain.is_unspent(k) for k in b["ins"]):
            try:
                self.chain.broadcast(b["raw"])
                line += ": broadcast again (the ledger already paid it)"
            except ChainRejected as exc:
                line += f": broadcasting it again was refused ({exc})"
        elif tx is None:
            line += ": an operator must account for its inputs (pegx audit)"
        return line

    def _refunded_item(self, master: str, b: dict) -> str:
        """A batch refunded after its cancel, whose cancel left the chain ('' if mined)."""
        c, fw = b["cancel"], self.follower
        ctx = self.chain.get_transaction(c.get("txid2") or c["txid"])
        if ctx is not None and ctx.height:
            return ""
        return (f"{b['kind']} batch {master} was refunded after its cancel "
                f"{c.get('txid2') or c['txid']}, which is now "
                f"{fw.tx_status(c.get('txid2') or c['txid'])}; the batch tx "
                f"{b['txid']} is {fw.tx_status(b['txid'])}")

    def _input_items(self, reorg: follow.Reorg) -> list[str]:
        """Registered inputs since the fork whose transactions are no longer mined."""
        items = []
        for key, rec in self.ledger.inputs_since(reorg.fork).items():
            txid = key.rpartition(":")[0]
            tx = self.chain.get_transaction(txid)
            if tx is None or not tx.height:
                items.append(f"registered input {key} ({rec['value']:,d} sat, "
                             f"{'change' if rec.get('change') else rec.get('owner')}) was in "
                             f"block {int(rec.get('height') or 0):,d}; it is now "
                             f"{self.follower.tx_status(txid)}")
        return items

    def _stale(self, tip: Tip) -> bool:
        """At start-up: do the published balances need a recompute? Only if none was ever
        published or the supply moved; a restart within a cycle must not reshuffle anyone's
        liquid and reserve (trades moved them since the last recompute)."""
        return not self.ledger.recomputed or self.ledger.supply != tip.supply

    def _import_keys(self) -> None:
        """Import pending deposit keys, unlocking an encrypted wallet with the ExchangePassword
        passphrase. A locked wallet without one stops the imports, not the pass: the keys stay
        pending and pegx.status says what to do."""
        for address, wif in self.ledger.unimported_keys().items():
            try:
                got = self.chain.import_key(wif, self.session.passphrase)
            except WalletLocked as exc:
                if self.session.wallet_note != str(exc):
                    log.warning("deposit keys not imported: %s", exc)
                self.session.wallet_note = str(exc)
                return
            self.session.wallet_note = ""
            if got != address:
                log.error("wallet imported %s as %s; keeping it pending", address, got)
                continue
            # the client archived the key (GenerateDepositAddress returned it); drop our copy
            self.ledger.put("addresses", address, {"imported": 1})
            log.info("deposit address %s imported into the wallet", address)

    def watched(self, settings: dict) -> set[str]:
        """Addresses whose outputs belong to the exchange."""
        out = self.ledger.deposit_addresses()
        out.update(settings["exchangeaccounts"])
        if settings["exchangefeeaccount"]:
            out.add(settings["exchangefeeaccount"])
        return out

    def house(self) -> set[str]:
        """Every output the exchange's own transactions returned to it (its change), from the
        batch records alone: no chain lookup, nothing cached between passes."""
        return self.ledger.house_outpoints()

    def refresh_spendable(self) -> None:
        """Recompute the Spendable view from the chain now, without a pass and without a
        write (a standby runs no pass but answers GetSpendable from its own chain)."""
        settings = self.ledger.exchange_settings()
        self._refresh_spendable(self.chain.tip(), settings, self.final_depth(settings))

    def _refresh_spendable(self, tip: Tip, settings: dict, final: int) -> None:
        watched = self.watched(settings)
        # an output is spendable (and a deposit is credited) only once its block is final
        conf = max(settings["exchangeconfirmations"], final)
        house = self.house()
        spendable, utxos = {}, {}
        for u in self.chain.list_unspent():
            if u.address not in watched or u.height == 0:
                continue
            if u.frozen_until and u.frozen_until > tip.time - FROZEN_GRACE:
                continue
            if u.confirmations < confirmations_needed(u.height, conf, tip.interval):
                continue
            # change is what the exchange's own transactions sent back to it, not every output
            # of them (a payee may be a deposit address) nor any transaction ending in
            # OP_RETURN (ORIGINAL §5 item 35)
            spendable[u.key] = spendable_entry(u, tip.supply, u.key in house)
            utxos[u.key] = u
        self.session.publish_spendable(spendable, utxos)

    def _register(self, tip: Tip, now: int) -> None:
        """Credit claimed deposits, as one step.

        Change is never registered here: the ledger registers a transaction's house outputs
        in the commit that spends its inputs (``pegx.ledger.lifecycle.settle``), so it never
        counts both, and no coin reaches the house account but by a recorded batch.
        """
        claimed = self.ledger.unregistered_claims(
            [k for k, entry in self.session.spendable().items() if not entry.get("change")])
        items = []
        for key, owner in claimed.items():
            u = self.session.utxo(key)
            items.append({"key": key, "value": u.value, "address": u.address,
                          "vector": u.fractions, "owner": owner, "change": False,
                          "frozen_until": u.frozen_until, "height": u.height})
        if not items:
            return
        self.ledger.credit_inputs(items, supply=self.ledger.supply if self.session.loaded()
                                  else tip.supply, now=now)
        for item in items:
            log.info("registered %s: %s sat for %s", item["key"], f"{item['value']:,d}",
                     item["owner"])

    def _new_cycle(self, tip: Tip, now: int, cycle: int | None = None) -> None:
        """Recompute every balance at the new supply, then publish the new cycle."""
        with self.session.busy():
            t0 = time.monotonic()
            totals = self.ledger.recompute(tip.supply, now=now,
                                           cycle=tip.cycle if cycle is None else cycle)
            took = time.monotonic() - t0
            log.info("cycle %d: supply %d, balances recomputed in %.3f s (liquid %s, "
                     "reserve %s sat)", tip.cycle, tip.supply, took,
                     f"{totals['liquid']:,d}", f"{totals['reserve']:,d}")
        if self.on_recompute is not None:
            self.on_recompute(took)
        self._remember_cycle(tip, totals)

    def _remember_cycle(self, tip: Tip, totals: dict) -> None:
        """Keep the recompute's supply and totals in meta/cycles (for the status page). A
        separate commit after the recompute's: a crash between them loses one point of a
        chart, never money."""
        kept = [c for c in self.cycle_history() if c["cycle"] < tip.cycle]
        kept.append({"cycle": tip.cycle, "supply": tip.supply, "height": tip.height,
                     **{k: int(v) for k, v in totals.items()}})
        self.ledger.put("meta", "cycles", {"cycles": kept[-CYCLES_KEPT:]})
