"""Deposit and Withdraw do not hold the ledger lock while their fsync completes (issue 10 item 13).

The real parts in one process: a real LevelDB ledger, the real ExchangeCycle following a real
devnet chain, the real PegAPI. The only test-made part is the timing: a HoldingStore
(tests/holdstore.py) holds the op-log batch of the Withdraw (or Deposit) before its synced write,
as a very slow disk would. While it is held, GetBalance from another thread must answer; before
the fix it waited for the ledger lock, which the call held across its wait for the disk.
"""

from __future__ import annotations

import threading

import pytest

from harness import wait_until
from harness.holdstore import HoldingStore
from pegx import crypto
from pegx.chain.devnet import Devnet
from pegx.exchange.cycle import ExchangeCycle
from pegx.exchange.session import Session
from pegx.ledger.engine import Exchange
from pegx.rpc.api import PegAPI

BAY = 100_000_000
ANSWER_SECONDS = 30  # GetBalance must answer while the write is held; generous for a busy box


class Stack:
    """Ledger + devnet + cycle + API, as pegx.app wires them."""

    def __init__(self, tmp_path):
        self.store = HoldingStore(tmp_path / "ledger")
        self.ledger = Exchange(self.store)
        self.chain = Devnet(tmp_path, block_seconds=0)
        self.session = Session(self.ledger, self.chain)
        self.cycle = ExchangeCycle(self.ledger, self.chain, self.session, poll_seconds=0.05)
        self.api = PegAPI(self.ledger, self.session, busy_wait=5.0)
        self.session.start()
        wait_until(self.session.loaded, 30, what="the exchange to load")

    def deposit_output(self, amount: int) -> str:
        """A confirmed, spendable payment to a new deposit address; returns its outpoint."""
        key, ok = self.api.GenerateDepositAddress()
        assert ok is True, key
        address = crypto.wif_to_address(key)
        wait_until(lambda: address in self.chain.info()["wallet_addresses"], 30,
                   what="the deposit key import")
        outpoint = self.chain.send(address, amount)
        self.chain.mine(13)
        wait_until(lambda: outpoint in self.api.GetSpendable(address), 30, what="Spendable")
        return outpoint

    def fund(self, user: str, amount: int) -> None:
        outpoint = self.deposit_output(amount)
        assert self.api.Deposit(user, [outpoint]) is True
        wait_until(lambda: (self.api.GetDeposits(outpoint) or {}).get("registered") == 1, 30,
                   what="the deposit to register")

    def settle(self) -> None:
        """Wait until the cycle has processed the chain tip (a new cycle's recompute included:
        GetBalance answers "updating" while one runs)."""
        height = self.chain.tip().height
        wait_until(lambda: self.cycle.tip is not None and self.cycle.tip.height == height, 30,
                   what="the exchange to follow the chain tip")

    def close(self) -> None:
        self.store.release()
        self.cycle.stop(timeout=30)
        self.chain.close()
        self.ledger.close()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.close()


def call_in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    th = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    th.start()
    return th, out


def balance_answers_while_held(stack: Stack, applied) -> None:
    """With a call's log write held and its change ``applied`` in memory, GetBalance answers."""
    stack.store.wait_held()
    # the call's change is in memory (read without the lock: the lock is what is under test)
    wait_until(applied, 30, what="the call's change in memory")
    reader, got = call_in_thread(stack.api.GetBalance, "alice000")
    reader.join(ANSWER_SECONDS)
    answered = not reader.is_alive()
    stack.store.release()
    assert answered, "GetBalance waited behind another call's fsync (the ledger lock was held)"
    assert isinstance(got[0], dict), got


def test_withdraw_does_not_hold_the_lock_during_its_fsync(stack):
    stack.fund("alice000", 100 * BAY)
    address = stack.chain.new_address()
    stack.settle()
    stack.store.hold_next(HoldingStore.log_write)
    writer, result = call_in_thread(stack.api.Withdraw, "alice000", 2 * BAY, address, "reserve")
    balance_answers_while_held(stack, lambda: len(stack.ledger._state.tables["withdraws"]) == 1)
    writer.join(60)
    assert not writer.is_alive()
    ok, wid = result[0]
    assert ok is True and stack.ledger.record("withdraws", wid)["amount"] == 2 * BAY


def test_deposit_does_not_hold_the_lock_during_its_fsync(stack):
    stack.fund("alice000", 100 * BAY)
    outpoint = stack.deposit_output(3 * BAY)
    stack.settle()
    stack.store.hold_next(HoldingStore.log_write)
    writer, result = call_in_thread(stack.api.Deposit, "bobby000", [outpoint])
    balance_answers_while_held(stack, lambda: outpoint in stack.ledger._state.tables["claims"])
    writer.join(60)
    assert not writer.is_alive()
    assert result == [True]
    assert stack.ledger.record("claims", outpoint)["name"] == "bobby000"
