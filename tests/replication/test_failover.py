"""Failover, round after round (issue #17 "Must show"): clients trade, deposit and withdraw
against a primary with a synchronous standby (--sync-standby, strict); the primary is SIGKILLed
and its datadir deleted; the standby is promoted with `pegx promote`. Every call that answered
True must be on the promoted side, `pegx audit` must be clean, and the clients go on against
it. The promoted daemon is the next round's primary: its new standby starts from an online
`pegx backup` of it (restored with `pegx restore`) and catches up from the backup's seq.

How a call is checked on the promoted side:
* trades: each trade client moves 1,000 sat from its own source to its own destination
  account, so the destination's total counts the trades that happened; it must be at least the
  acknowledged ones, and at most one more per client (the call in flight at the kill, whose
  answer never came);
* withdraws: one client withdraws 2 BAY at a time from its own account; the account's total
  counts them the same way (no withdraw can expire or be refunded here: that takes two cycle
  boundaries, 400 blocks, and the test mines fewer — checked);
* deposits: each acknowledged Deposit's claim is read back (GetDeposits); each acknowledged
  GenerateDepositAddress's record is read from the last primary's datadir at the end.

The number of rounds is PEGX_FAILOVER_ROUNDS (20 by default). The figures are printed (run
with -s to see them): rounds, acknowledged calls, lost calls (must be 0).
"""

from __future__ import annotations

import os
import shutil
import threading
import xmlrpc.client

from harness import cli, wait_until
from harness.replica import make_key, primary, standby, status, wait_caught_up, wait_loaded
from pegx import crypto
from pegx.admin.offline import opened
from pegx.rpc.api import BALANCE_UPDATING, BUSY

ROUNDS = int(os.environ.get("PEGX_FAILOVER_ROUNDS", "20"))
BAY = 100_000_000
TRADE = 1_000
WITHDRAW = 2 * BAY
TRADERS = 3
TRADES_PER_ROUND = 4  # each trade client's acknowledged trades before the kill, at least
RETRY = (BUSY, BALANCE_UPDATING, [BUSY, ""])  # a recompute runs: the call did nothing


def total(x, user: str) -> int:
    bal = x.GetBalance(user)
    return 0 if bal is False else bal["liquid"] + bal["reserve"]


class Client(threading.Thread):
    """Calls ``step(proxy)`` until halted or the daemon goes away. ``step`` returns True for
    an acknowledged call, None for a refusal that changed nothing (busy), anything else is a
    failure of the test. A call that raised (the kill) is the one in flight: unknown."""

    def __init__(self, url: str, step, pause: float = 0.0):
        super().__init__(daemon=True)
        self.proxy = xmlrpc.client.ServerProxy(url, allow_none=True)
        self.step, self.pause = step, pause
        self.acked = 0
        self.in_flight = 0
        self.failure = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                got = self.step(self.proxy, self)
            except Exception:  # noqa: BLE001 - the primary was killed under this call
                self.in_flight = 1
                return
            if got is True:
                self.acked += 1
            elif got is not None:
                self.failure = got
                return
            if self.pause:
                self.halt.wait(self.pause)


def trader(src: str, dst: str):
    def step(x, _):
        got = x.Trade(src, TRADE, dst)
        return None if got in RETRY else got
    return step


def withdrawer(user: str, ids: list[str]):
    address = crypto.wif_to_address(crypto.generate_deposit_key())

    def step(x, _):
        got = x.Withdraw(user, str(WITHDRAW), address)
        if got in RETRY:
            return None
        ok, wid = got
        if ok is True:
            ids.append(wid)
            return True
        return got
    return step


def depositor(user: str, claims: list[str], addresses: list[str]):
    """One deposit per round: a new address (acknowledged), an outside payment, 13 blocks,
    the claim (acknowledged); then it waits for the round to end."""
    def step(x, client):
        if client.acked >= 2:  # this round's address and claim are done
            client.halt.wait(0.05)
            return None
        key, ok = x.GenerateDepositAddress()
        if ok is not True:
            return [key, ok]
        address = crypto.wif_to_address(key)
        addresses.append(address)
        client.acked += 1
        wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 60,
                   what="the deposit key import")
        outpoint = x.devnet.send(address, str(10 * BAY))
        x.devnet.mine(13)
        wait_until(lambda: outpoint in x.GetSpendable(address), 60, what="Spendable")
        got = x.Deposit(user, [outpoint])
        if got is True:
            claims.append(outpoint)
        return got
    return step


class Failover:
    """The rounds' state: the current primary and standby, and what is known to be on the
    ledger (see the module docstring)."""

    def __init__(self, root, key):
        self.root, self.key = root, key
        self.srcs = [f"src{i}" for i in range(TRADERS)]
        self.dsts = [f"dst{i}" for i in range(TRADERS)]
        self.p = primary(root / "n0", key, sync=True).start(wait_loaded=False)
        self.s = None
        self.daemons = [self.p]
        self.s = standby(root / "n1", key, self.p, extra=["--sync-standby"]).start()
        self.daemons.append(self.s)
        self.acked = {"trades": 0, "withdraws": 0, "addresses": 0, "deposits": 0, "after": 0}
        self.lost = 0
        self.counted = dict.fromkeys(self.dsts, 0)  # trades known to be on the ledger
        self.addresses: list[str] = []

    def fund(self) -> None:
        wait_loaded(self.p)
        x = self.p.proxy()
        self.p.fund("bankroll", 10**13)
        for u in self.srcs:
            assert x.Trade("bankroll", str(10**11), u) is True
        assert x.Trade("bankroll", str(1_000 * BAY), "wduser") is True
        self.wd_total = total(x, "wduser")

    def round(self, rnd: int) -> None:
        p, s = self.p, self.s
        wait_caught_up(p, s)
        assert status(p)["state"] == "synchronous", status(p)
        traders = [Client(p.url, trader(a, b)) for a, b in zip(self.srcs, self.dsts,
                                                                 strict=True)]
        wd = Client(p.url, withdrawer("wduser", []), pause=0.2)
        claims: list[str] = []
        dep = Client(p.url, depositor("depuser", claims, self.addresses))
        clients = [*traders, wd, dep]
        for c in clients:
            c.start()

        def enough():
            if any(c.failure is not None or not c.is_alive() for c in clients):
                return True
            return (all(c.acked >= TRADES_PER_ROUND for c in traders) and wd.acked >= 1
                    and dep.acked >= 2)
        wait_until(enough, 90, what=f"round {rnd}: the clients' calls")
        assert all(c.failure is None for c in clients), [c.failure for c in clients]
        p.kill()  # SIGKILL while the trade and withdraw clients are calling
        shutil.rmtree(p.datadir)
        for c in clients:
            c.halt.set()
            c.join(60)
        assert all(c.failure is None for c in clients), [c.failure for c in clients]
        assert cli("promote", "--url", s.url)[0] == 0
        self.check(rnd, traders, wd, dep, claims)
        code, out = cli("audit", "--url", s.url)
        assert code == 0 and "audit OK" in out, out
        self.next_standby(rnd)

    def check(self, rnd: int, traders, wd, dep, claims) -> None:
        """Every acknowledged call of the round is on the promoted side."""
        y = self.s.proxy()
        for c, dst in zip(traders, self.dsts, strict=True):
            have = total(y, dst) // TRADE - self.counted[dst]
            self.acked["trades"] += c.acked
            self.lost += max(0, c.acked - have)
            assert c.acked <= have <= c.acked + c.in_flight, (rnd, dst, c.acked, have)
            self.counted[dst] += have
        now = total(y, "wduser")
        have = (self.wd_total - now) // WITHDRAW
        self.acked["withdraws"] += wd.acked
        self.lost += max(0, wd.acked - have)
        assert wd.acked <= have <= wd.acked + wd.in_flight, (rnd, wd.acked, have)
        self.wd_total = now
        self.acked["addresses"] += min(dep.acked, 1)  # read back from disk at the end
        for outpoint in claims:
            self.acked["deposits"] += 1
            found = y.GetDeposits(outpoint)
            if not (isinstance(found, dict) and found.get("name") == "depuser"):
                self.lost += 1
        assert self.lost == 0, f"round {rnd}: {self.lost} acknowledged calls lost"

    def next_standby(self, rnd: int) -> None:
        """The promoted daemon becomes the primary; its standby starts from an online backup
        of it; the clients go on against it (acknowledged once the standby holds them)."""
        s = self.s
        backup = self.root / f"backup{rnd}"
        assert cli("backup", str(backup), "--url", s.url)[0] == 0
        new = self.root / f"n{rnd + 2}"
        assert cli("restore", str(backup), "--datadir", str(new))[0] == 0
        shutil.rmtree(backup)
        n = standby(new, self.key, s, extra=["--sync-standby"]).start()
        self.daemons.append(n)
        y = s.proxy()
        for a, b in zip(self.srcs, self.dsts, strict=True):
            got = y.Trade(a, TRADE, b)
            assert got is True, got
            self.counted[b] += 1
            self.acked["after"] += 1
        wait_until(lambda: status(s)["state"] == "synchronous", 30,
                   what="the new primary's standby to be synchronous")
        self.p, self.s = s, n

    def finish(self) -> int:
        """The last primary's ledger on disk holds every acknowledged deposit address; returns
        the chain height."""
        y = self.p.proxy()
        height = y.devnet.info()["height"]
        assert height < 400, "withdraws could expire and be refunded: mine fewer blocks"
        assert all(total(y, d) // TRADE == self.counted[d] for d in self.dsts)
        wait_caught_up(self.p, self.s)
        self.p.stop()
        with opened(self.p.datadir, read_only=True) as ledger:
            self.lost += sum(1 for a in self.addresses if ledger.record("addresses", a) is None)
        return height


def test_failover_rounds_lose_no_acknowledged_call(tmp_path):
    run = Failover(tmp_path, make_key(tmp_path))
    try:
        run.fund()
        for rnd in range(ROUNDS):
            run.round(rnd)
        height = run.finish()
        acked = run.acked
        print(f"\nfailover: {ROUNDS} rounds, {sum(acked.values()):,d} acknowledged calls "
              f"({acked['trades']:,d} trades, {acked['withdraws']:,d} withdraws, "
              f"{acked['addresses']:,d} deposit addresses, {acked['deposits']:,d} deposit "
              f"claims before the kills; {acked['after']:,d} trades after each promotion), "
              f"{run.lost} lost; chain height {height:,d}")
        assert run.lost == 0
        assert acked["trades"] >= ROUNDS * TRADERS * TRADES_PER_ROUND
        assert acked["deposits"] == acked["addresses"] == ROUNDS
    finally:
        for d in run.daemons:
            d.stop()
