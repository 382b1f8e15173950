#!/usr/bin/env python3
"""The original APIdemo flow, modernised, end to end against a devnet pegx daemon.

    python scripts/demo_exchange.py              # starts its own daemon (temp datadir)
    python scripts/demo_exchange.py --url http://127.0.0.1:55779 --password secret

Steps: set the password, start, settings, deposit addresses for 5 users, outside deposits,
claims and registration, trades both ways and through the pool, a deflation cycle, balances
before/after, a liquid and a reserve withdraw to completion, exchange totals. Uses only stock
xmlrpc.client plus the devnet.* calls (blocks are mined on demand with devnet.mine).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

from pegx.crypto import generate_deposit_key, wif_to_address

USERS = ["alice", "bobby", "carol", "dave", "erin"]
COMMISSION = {"min": 10**8, "max": 10**9, "percent": "0.001"}


def bay(n: int) -> str:
    return f"{n / 1e8:,.8f} BAY ({n:,d} sat)"


def say(title: str) -> None:
    print(f"\n== {title}")


def wait(pred, timeout: float = 20.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_daemon(datadir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(datadir / "daemon.log", "ab")  # noqa: SIM115 (lives as long as the daemon)
    proc = subprocess.Popen([sys.executable, "-m", "pegx", "serve", "--datadir", str(datadir),
                             "--port", str(port), "--block-seconds", "0", "--initial-supply",
                             "100", "--log-level", "INFO"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"pegx serve exited; see {datadir / 'daemon.log'}")
        try:
            return xmlrpc.client.ServerProxy(url).pegx.noop()
        except OSError:
            return False

    wait(answers, 20, "the daemon")
    return proc, url


class Demo:
    def __init__(self, url: str, password: str):
        self.x = xmlrpc.client.ServerProxy(url, allow_none=True)
        self.pw = password

    def mine(self, n: int = 1) -> int:
        """Mine n blocks and wait until the exchange has processed them."""
        h = self.x.devnet.mine(n)
        wait(lambda: self.x.pegx.status(self.pw)["height"] >= h, 20, f"the pass at height {h}")
        return h

    def balances(self, title: str) -> dict:
        say(title)
        out = {}
        for u in USERS + ["pool"]:
            b = self.x.GetBalance(u, self.pw)
            if isinstance(b, dict):
                out[u] = b
                print(f"  {u:>6}: liquid {bay(b['liquid']):>40}   reserve {bay(b['reserve'])}")
        return out

    def status(self, wid: str):
        rec = self.x.CheckWithdraw(wid, 0, self.pw)
        return rec if isinstance(rec, dict) else None

    def run(self) -> None:  # noqa: C901, PLR0915 (a script's straight-line story)
        x, pw = self.x, self.pw
        say("password and start")
        print("  SetPassword ->", x.SetPassword(pw, ""))
        print("  StartExchange ->", x.StartExchange(pw))
        wait(lambda: x.StartExchange(pw, 1, 1) is True, 20, "the exchange to load")
        print("  loaded; cycle", x.GetCycle(pw), "| chain", x.devnet.info()["height"],
              "blocks, supply", x.devnet.info()["supply"])

        say("settings")
        acct0 = x.devnet.new_address()
        fee = wif_to_address(generate_deposit_key())  # the operator's fee wallet (not ours)
        print(f"  exchange account {acct0}, fee account {fee}")
        print("  ExchangeSettings ->", x.ExchangeSettings([acct0], fee, COMMISSION, 7, pw))

        say("deposit addresses and outside deposits")
        deposits = {}
        for n, user in enumerate(USERS):
            key, ok = x.GenerateDepositAddress(pw)
            address = wif_to_address(key)
            wait(lambda a=address: a in x.devnet.info()["wallet_addresses"], 20, "key import")
            amount = (n + 1) * 2 * 10**10
            deposits[user] = (address, x.devnet.send(address, str(amount)))
            print(f"  {user}: {address} <- {bay(amount)} ({deposits[user][1][:16]}...)")
        self.mine(13)
        for user, (address, op) in deposits.items():
            entry = x.GetSpendable(address, pw)[op]
            print(f"  {user}: spendable, {entry['confirmations']} confirmations, liquid "
                  f"{bay(int(entry['ltotal']))}; Deposit -> {x.Deposit(user, [op], pw)}")
        wait(lambda: all(x.GetDeposits(op, pw).get("registered") for _, op in deposits.values()),
             20, "registration")
        self.balances("registered balances")

        say("trades")
        # amounts above 2^31 travel as decimal strings: a stock client cannot send such ints
        for u1, amount, u2, style in (("alice", 5 * 10**9, "bobby", "liquid"),
                                      ("carol", 10**10, "dave", "reserve"),
                                      ("erin", -3 * 10**9, "", "liquid"),
                                      ("alice", 3 * 10**9, "", "liquid")):
            what = f"{u1} -> {u2 or 'pool'}" if amount < 0 or u2 else f"pool -> {u1}"
            res = x.Trade(u1, str(amount), u2, style, pw)
            print(f"  Trade {what}: {bay(abs(amount))} {style} -> {res}")
        traded = self.balances("after trades")

        say("deflation cycle")
        info = x.devnet.info()
        x.devnet.vote("deflate", 2)
        cycle = x.GetCycle(pw)
        self.mine(info["blocks_to_next_cycle"])
        wait(lambda: x.GetCycle(pw) == cycle + 1, 20, "the new cycle")
        print(f"  supply {info['supply']} -> {x.devnet.info()['supply']}, cycle {cycle + 1}")
        after = self.balances("after the deflation (liquid moved to reserve)")
        for u in USERS:
            d = after[u]["liquid"] - traded[u]["liquid"]
            print(f"  {u:>6}: liquid {d:+,d} sat, total unchanged: "
                  f"{sum(after[u].values()) == sum(traded[u].values())}")

        say("withdraws")
        payee_l, payee_r = (wif_to_address(generate_deposit_key()) for _ in range(2))
        ok, wl = x.Withdraw("bobby", str(10**10), payee_l, "liquid", pw)
        print(f"  liquid 100 BAY bobby -> {payee_l}: {ok} {wl}")
        # at most 200 BAY, or half of dave's reserve on a chain whose supply moved less
        amount = min(2 * 10**10, x.GetBalance("dave", pw)["reserve"] // 2)
        ok, wr = x.Withdraw("dave", str(amount), payee_r, "reserve", pw)
        print(f"  reserve {bay(amount)} dave -> {payee_r}: {ok} {wr}")
        wanted = [("liquid", wl)] + ([("reserve", wr)] if ok is True else [])
        seen: dict[str, str] = {}
        for _ in range(400):
            for name, wid in wanted:
                rec = self.status(wid)
                st = rec["status"] if rec else "pending"
                if seen.get(name) != st:
                    seen[name] = st
                    print(f"  block {x.pegx.status(pw)['height']:>4}: {name} withdraw {st}"
                          + (f" (tx {rec['txid'][:16]}...)" if rec else ""))
            if all(seen.get(name) == "Complete" for name, _ in wanted):
                break
            self.mine(1)
        for who, addr in (("liquid payee", payee_l), ("reserve payee", payee_r),
                          ("fee account", fee)):
            b = x.devnet.balance(addr)
            print(f"  {who:>13}: {bay(b['amount'])} (frozen {bay(b['frozen'])})")

        self.balances("final balances")
        say("exchange totals")
        for k, v in x.GetBalance("exchange", pw).items():
            print(f"  {k:>10}: {bay(v)}")
        st = x.pegx.status(pw)
        print(f"  height {st['height']}, cycle {st['cycle']}, supply {st['supply']}, "
              f"{st['inputs']} inputs, withdraws {st['withdraws']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running devnet pegx daemon (default: start one)")
    ap.add_argument("--password", default="demo-password")
    args = ap.parse_args()
    proc = None
    with tempfile.TemporaryDirectory(prefix="pegx-demo-") as tmp:
        url = args.url
        if url is None:
            proc, url = start_daemon(Path(tmp))
            print(f"started pegx on {url} (datadir {tmp})")
        try:
            Demo(url, args.password).run()
        finally:
            if proc is not None:
                xmlrpc.client.ServerProxy(url).ShutDown(args.password)
                proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
