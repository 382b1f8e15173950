"""The exchange in one process: a real Devnet, a real LevelDB ledger, the real session, cycle
and withdraw desk, stepped block by block (no threads), so every assertion is deterministic.
The ledger's audit is checked after every single pass.

    rig = Rig(tmp_path); rig.setup(); rig.fund("alice", 10**12)
    rig.ledger.request_withdraw("w1", "alice", 10**10, "liquid", new_address(), rig.cycle.cycle())
    rig.until_status("w1", "Complete")
"""

from __future__ import annotations

from pathlib import Path

from harness import COMM, SUPPLY, new_address
from pegx import crypto
from pegx.chain.devnet import Devnet
from pegx.exchange.cycle import ExchangeCycle
from pegx.exchange.session import Session
from pegx.exchange.withdraws import WithdrawDesk
from pegx.ledger import rules
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store


class Rig:
    """Devnet + ledger + cycle + desk in one process; ``step`` checks the law every pass."""

    def __init__(self, path: Path, supply: int = SUPPLY):
        self.path = path
        self.chain = Devnet(path / "chain", block_seconds=0, initial_supply=supply)
        self.open()

    def open(self) -> None:
        self.ledger = Exchange(Store(self.path / "ledger"))
        self.desk = WithdrawDesk(self.ledger, self.chain)
        self.session = Session(self.ledger, self.chain)
        self.cycle = ExchangeCycle(self.ledger, self.chain, self.session, desk=self.desk)
        self.step()

    def close(self) -> None:
        self.ledger.close()

    def step(self) -> dict:
        self.cycle.step()
        law = self.ledger.audit()  # the one audit: conservation, no drift, liquid, invariants
        assert law["ok"] and law["totals"]["drift"] == 0, law
        # the cycle's change flag and the desk's registration agree: change (confirmed long
        # after its batch settled) is the house's; nothing else is
        claims = self.ledger.records("claims")
        for key, entry in self.session.spendable().items():
            house = claims.get(key, {}).get("name") == rules.HOUSE
            assert bool(entry.get("change")) == house, (key, entry, claims.get(key))
        return law

    def mine(self, n: int = 1) -> None:
        for _ in range(n):
            self.chain.mine(1)
            self.step()

    def fund(self, user: str, amount: int) -> str:
        key = crypto.generate_deposit_key()
        address = crypto.wif_to_address(key)
        self.ledger.put("addresses", address, {"wif": key, "imported": 0})
        self.step()
        op = self.chain.send(address, amount)
        self.chain.mine(13)
        self.step()
        self.ledger.claim_deposits(user, [op])
        self.step()
        assert self.ledger.record("claims", op) == {"name": user, "registered": 1}
        return op

    def setup(self, commission: dict = COMM) -> None:
        self.acct0 = self.chain.new_address()
        self.fee = new_address()  # not a wallet key: its balance only grows
        s = self.ledger.exchange_settings()
        s.update(exchangeaccounts=[self.acct0], exchangefeeaccount=self.fee,
                 commission=dict(commission))
        self.ledger.put("settings", "exchange", s)

    def status(self, wid: str):
        return self.ledger.withdraw_status(wid)

    def until(self, pred, limit: int = 450) -> None:
        for _ in range(limit):
            if pred():
                return
            self.mine(1)
        raise AssertionError(f"condition not reached in {limit} blocks")

    def until_status(self, wid: str, status: str, limit: int = 450) -> dict:
        self.until(lambda: (self.status(wid) or {}).get("status") == status, limit)
        return self.status(wid)
