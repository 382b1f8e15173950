"""What needs the operator (issue #16 item 4): one list of problems that ``pegx status`` shows
before the figures, ``pegx status --check`` turns into its exit code, the metrics report as
``pegx_up`` / ``pegx_problem`` and the status page puts at the top.

A problem is something the operator has to act on or know now: the node cannot be reached or
answers with an error, the exchange is not running, the wallet is locked, no new block has come
for too long, the cycle thread's passes fail, pending withdraws cannot be batched.

The report must come at once, even when the node is down: it never waits for the cycle
thread's retries. It combines what the cycle thread last saw with a quick probe of the node
(one ``tip()`` on a view of the client that does not retry, bounded by PROBE_DEADLINE seconds;
shared by the callers that arrive while it runs), so a node that went away shows up on the first
``pegx status`` after it did.

"Chain not advancing" is the age of the node's best block beyond a threshold
(:func:`stall_threshold`): ten block intervals (10 x 64 s on bitbayd, 10 x ``block_seconds``
on a timed devnet). A devnet that mines on demand (``block_seconds`` 0) is never stalled: its
blocks come when someone asks. The age is the block's own time on a real node; the devnet's
block times are synthetic (a fixed spacing from a fixed genesis), so there it is the time since
this daemon saw the block arrive (or since start).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pegx.chain.base import Chain, ChainError, ChainUnavailable, Tip
from pegx.config import Config

PROBE_TIMEOUT = 1.0  # seconds one probe request may take
PROBE_DEADLINE = 2.0  # seconds a whole probe (a few node calls) may take
STALL_BLOCKS = 10  # block intervals without a block before the chain counts as stalled
BITBAYD_BLOCK_SECONDS = 64  # the node's block target (BITBAYD: 64 s since protocol v2)
# a reorganisation past the final depth stays a problem this long (nothing acknowledges it;
# pegx status keeps showing the last one first after that, and pegx audit lists them all)
REORG_ALARM_SECONDS = 86_400

# problem kinds, gravest first (the order of Health.problems)
KINDS = ("deep_reorg", "replication", "node_unreachable", "node_error", "cycle_thread_dead", "exchange_stopped",
         "wallet_locked", "chain_stalled", "cycle_failing", "withdraws_not_batchable")


def stall_threshold(cfg: Config) -> float:
    """Seconds without a new block that make the chain "not advancing"; 0: never checked."""
    if cfg.stall_seconds < 0:
        return 0.0
    if cfg.stall_seconds > 0:
        return cfg.stall_seconds
    if cfg.chain == "devnet":
        return STALL_BLOCKS * cfg.block_seconds  # 0 on demand: nothing is overdue
    return float(STALL_BLOCKS * BITBAYD_BLOCK_SECONDS)


def reorg_message(alarm: dict) -> str:
    """The line for a reorganisation that replaced blocks taken as final (follow.py's alarm)."""
    return (f"ALARM reorganisation deeper than the final depth ({alarm['final_depth']}): "
            f"blocks {alarm['fork'] + 1:,d}..{alarm['old_height']:,d} replaced, "
            f"{len(alarm['changed'])} items changed (pegx audit lists them)")


def duration(seconds: float) -> str:
    """A short human duration: '42 s', '5 min 3 s', '3 h 20 min', '2 d 4 h'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400:,d} d {s % 86400 // 3600} h"


@dataclass(frozen=True)
class Probe:
    """One look at the node: its tip, or why there was none."""

    tip: Tip | None
    error: str = ""
    unreachable: bool = False  # the error is ChainUnavailable (down, warming up, timing out)
    at: float = 0.0  # monotonic time of the probe


class Health:
    """The problems of one daemon, from its session, cycle thread, desk and a quick probe of
    the chain (``chain.quick``: for bitbayd a view that fails fast). Block ages come from the
    blocks' own times when the chain's are real (``chain.real_block_times``)."""

    def __init__(self, chain: Chain, session, cycle, *, stall_seconds: float = 0.0,
                 started_at: float | None = None):
        self.session = session
        self.cycle = cycle
        self.stall_seconds = stall_seconds
        self._probe_chain = chain.quick(PROBE_TIMEOUT, PROBE_DEADLINE)
        self._block_clock = block_clock = chain.real_block_times
        self._mu = threading.Lock()  # one probe at a time; later callers reuse its answer
        self._last: Probe | None = None
        # (height, unix time this daemon first saw it): the clock of a chain whose block times
        # are synthetic (the devnet, in-process: its tip costs nothing); the tip at start
        # counts as seen at start
        self._seen: tuple[int, float] = (-1, 0.0)
        if not block_clock:
            self._seen = (chain.tip().height, time.time() if started_at is None else started_at)
        chain.subscribe(self._note)  # the devnet tells about each block

    def _note(self, tip: Tip) -> None:
        if tip.height != self._seen[0]:
            self._seen = (tip.height, time.time())

    def probe(self) -> Probe:
        """The node's tip now. Callers that arrive while a probe runs share its answer: a
        burst of status calls and scrapes asks the node once."""
        arrived = time.monotonic()
        with self._mu:
            last = self._last
            if last is not None and last.at >= arrived:
                return last
            try:
                tip = self._probe_chain.tip()
                found = Probe(tip, at=time.monotonic())
                self._note(tip)
            except ChainUnavailable as exc:
                found = Probe(None, str(exc), unreachable=True, at=time.monotonic())
            except ChainError as exc:
                found = Probe(None, str(exc), at=time.monotonic())
            self._last = found
            return found

    def tip_age(self, probe: Probe) -> float | None:
        """Seconds since the best block (the node's, else the last the cycle thread saw);
        None if no block is known."""
        tip = probe.tip or self.cycle.tip
        if tip is None:
            return None
        if self._block_clock:
            return max(0.0, time.time() - tip.time) if tip.time else None
        return max(0.0, time.time() - self._seen[1])

    def report(self) -> dict:
        """The status fields: problems (gravest first, each {kind, message}), node
        {reachable, height, error}, tip_age (seconds, -1 unknown) and stall_seconds."""
        probe = self.probe()
        age = self.tip_age(probe)
        return {"problems": self.problems(probe, age),
                "node": {"reachable": probe.tip is not None,
                         "height": probe.tip.height if probe.tip else -1,
                         "error": probe.error},
                "tip_age": -1 if age is None else int(age), "stall_seconds": self.stall_seconds}

    def problems(self, probe: Probe, age: float | None) -> list[dict]:
        """Every problem that holds now, gravest first (KINDS order)."""
        found: dict[str, str] = {}
        cycle = self.cycle
        alarm = cycle.follower.last_alarm()
        if alarm and time.time() - alarm.get("time", 0) < REORG_ALARM_SECONDS:
            found["deep_reorg"] = reorg_message(alarm)
        if probe.tip is None and probe.unreachable:
            found["node_unreachable"] = f"node unreachable: {probe.error}"
        elif probe.tip is None:
            found["node_error"] = f"node answers with an error: {probe.error}"
        session = self.session
        if session.started() and not cycle.running:
            found["cycle_thread_dead"] = ("exchange cycle thread is not running although the "
                                          "exchange is started: restart pegx")
        elif not session.started():
            found["exchange_stopped"] = ("exchange not started: nothing is registered or sent "
                                         "until StartExchange(start=1) (or --autostart)")
        if session.wallet_note:  # "wallet locked: call ExchangePassword", set by a failed use
            found["wallet_locked"] = session.wallet_note
        if self.stall_seconds > 0 and age is not None and age > self.stall_seconds:
            tip = probe.tip or cycle.tip
            found["chain_stalled"] = (f"chain not advancing: no new block for {duration(age)} "
                                      f"(height {tip.height:,d}; the alarm is at "
                                      f"{duration(self.stall_seconds)})")
        if cycle.failing():
            ago = duration(time.time() - cycle.last_error_time)
            found["cycle_failing"] = f"exchange cycle pass failed {ago} ago: {cycle.last_error}"
        desk = cycle.desk
        why = desk.not_batchable() if desk is not None else ""
        if why:
            found["withdraws_not_batchable"] = f"withdraws pending but not batchable: {why}"
        return [{"kind": k, "message": found[k]} for k in KINDS if k in found]
