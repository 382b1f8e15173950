"""PegAPI end to end: a real `pegx serve` subprocess driven only with stock xmlrpc.client.

Every documented call, every documented return string, in the original's check order
(ORIGINAL §1.3), plus the fixes a client can see (PegAPI.md "Differences"). Daemons are
module-scoped where tests only add to the state, and per test where a test restarts or stops
the daemon. Blocks are mined on demand (block_seconds=0).
"""

from __future__ import annotations

import base64
import json
import os
import re
import xmlrpc.client
from pathlib import Path

import pytest

from harness import assert_returns, fault_of, new_address, wait_until
from harness.daemon import Daemon
from pegx import crypto
from pegx.ledger import schema
from pegx.ledger.store import Store

BAY = 100_000_000
STOPPED = "Exchange is stopped."
NOT_LOADED = "Exchange is not loaded yet."
WRONG = "Incorrect Password"
RESERVED = "Name reserved for exchange operations. Please use different name."
SHORT = "Name is too short in length."
POOL_MSG = "Insufficient funds in {} pool. Please make the debit before the credit."
ACCOUNTS_MSG = ("Exchange accounts must be a list and must contain all accounts used by the "
                "exchange for receiving change.")
MIN_COMMISSION_MSG = ("Minimum commission should be high enough to cover basic fees and "
                      "maintenance.")
LIQUID_LIMIT_MSG = "Withdraw limit reached, please wait until transactions clear."
RESERVE_LIMIT_MSG = "Reserve withdraw limit reached, please wait until transactions clear."
CALLS = ("SetPassword", "StartExchange", "ShutDown", "ExchangePassword",
         "GenerateDepositAddress", "GetSpendable", "Deposit", "GetDeposits", "GetBalance",
         "Trade", "ExchangeSettings", "Withdraw", "CheckWithdraw", "GetCycle", "API")
SUPPLY = 40  # devnet supply index: steps below it are reserve, so every deposit has both

# The operator key for the signed API(command) call (a fixed test key, never a real one).
EXEC_PRIV = bytes.fromhex("1f" * 32)


def exec_daemon(datadir: Path, **kw) -> Daemon:
    """A Daemon with the signed API(command) call enabled for EXEC_PRIV."""
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pub = crypto.public_key(EXEC_PRIV, compressed=False).hex()
    (datadir / "api_public_key").write_text(pub + "\n")
    extra = ["--allow-exec", *kw.pop("extra", [])]
    return Daemon(datadir, extra=extra, **kw)


def signed(code: str) -> dict:
    """An API(command) struct: code with a fresh nonce line, signed as PegAPI.txt shows."""
    code = f"nonce = '{os.urandom(8).hex()}'\n{code}"
    sig = crypto.sign_message(crypto.txhash(code), EXEC_PRIV)
    return {"sig": base64.b64encode(sig).decode(), "exec": code}


def run_exec(x, code: str, passw: str = ""):
    """Run operator code in the daemon (the `ledger` global is the engine); returns `result`."""
    return x.API(signed(code))


def settings_of(x) -> dict:
    return run_exec(x, "result = ledger.exchange_settings()")


def op_seq(x, passw: str = "") -> int:
    return x.pegx.status(passw)["op_seq"]


def total(bal: dict) -> int:
    return bal["liquid"] + bal["reserve"]


def pass_barrier(x, passw: str = "") -> None:
    """Return only after the cycle thread finished a whole pass that began after this call.

    Each deposit key is imported at the start of a pass; three keys imported one after the
    other span a pass that started after the call and ran to its end (no sleeps).
    """
    for _ in range(3):
        key, ok = x.GenerateDepositAddress(passw)
        assert ok is True, key
        address = crypto.wif_to_address(key)
        wait_until(lambda a=address: a in x.devnet.info()["wallet_addresses"], 10,
                   what="a deposit key import")


def send_deposit(x, amount: int, passw: str = "") -> tuple[str, str]:
    """A new deposit address and an outside payment to it (unconfirmed): (address, outpoint)."""
    key, ok = x.GenerateDepositAddress(passw)
    assert ok is True
    address = crypto.wif_to_address(key)
    wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 10, what="key import")
    return address, x.devnet.send(address, str(amount))


# --------------------------------------------------------------------------- main daemon
MAIN = {"extra": ["--initial-supply", str(SUPPLY)]}


@pytest.fixture(scope="module")
def main_datadir(tmp_path_factory):
    """A stopped exchange: alice 2,000 BAY, bobby 500 BAY, at supply 40."""
    d = Daemon(tmp_path_factory.mktemp("api") / "main", **MAIN)
    with d:
        d.fund("alice", 2000 * BAY)
        d.fund("bobby", 500 * BAY)
    return d.datadir


@pytest.fixture
def main(main_datadir, tmp_path):
    """That exchange running on a copy of its own (each test starts from the same state)."""
    with Daemon.clone(main_datadir, tmp_path / "main", **MAIN) as d:
        yield d


def test_the_15_calls_are_published_and_nothing_of_the_gui(main):
    names = main.proxy().system.listMethods()
    for name in CALLS:
        assert name in names
    for hidden in ("ShowHalo", "ColdStake", "ConfirmColdStake", "MessageStatus"):
        assert hidden not in names
        assert fault_of(lambda h=hidden: getattr(main.proxy(), h)()).faultCode == -32601
    extra = {n for n in names if n not in CALLS}
    assert all(n.split(".")[0] in ("system", "pegx", "devnet") for n in extra), extra


def test_big_balances_are_ints_and_exact(main):
    x = main.proxy()
    alice = x.GetBalance("alice")
    assert set(alice) == {"liquid", "reserve"}
    assert all(type(v) is int for v in alice.values())
    assert total(alice) == 2000 * BAY and alice["liquid"] > 2**31 and alice["reserve"] > 0
    ex = x.GetBalance("exchange")
    assert set(ex) == {"liquid", "reserve", "subpremium", "frozen"}
    assert all(type(v) is int for v in ex.values())
    assert ex["liquid"] + ex["reserve"] + ex["frozen"] == 2500 * BAY
    assert x.GetBalance("EXCHANGE") == ex  # the pseudo-account is case-insensitive
    # 1,000 BAY in one trade: a stock client sends it as a decimal string of satoshi
    assert_returns(lambda: x.Trade("alice", str(1000 * BAY), "carol"), True)
    assert x.GetBalance("carol") == {"liquid": 1000 * BAY, "reserve": 0}
    assert x.GetBalance("alice") == {"liquid": alice["liquid"] - 1000 * BAY,
                                     "reserve": alice["reserve"]}
    # and back as an integral float, which is exact below 2^53
    assert_returns(lambda: x.Trade("carol", float(1000 * BAY), "alice"), True)
    assert x.GetBalance("alice") == alice
    assert x.GetBalance("carol") == {"liquid": 0, "reserve": 0}


def test_trade_checks_in_the_original_order(main):
    x = main.proxy()
    before = (x.GetBalance("alice"), x.GetBalance("bobby"), op_seq(x))
    cases = [
        # names: user1 reserved, then user1 short, then user2 ('x' is reserved, not short)
        (("Pool", "junk", "ab"), RESERVED),
        (("ab", "junk", "pool"), SHORT),
        (("alice", "junk", "withdraws"), RESERVED),
        (("alice", "junk", "X"), RESERVED),
        (("alice", "junk", "Exchange"), RESERVED),
        (("alice", "junk", "ab"), SHORT),
        # then the amount
        (("alice", "junk", "bobby"), None),
        (("alice", 0, "bobby"), "Amount must not be zero."),
        (("alice", 1.5, "bobby"), None),
        (("alice", -1, "bobby"), "Amount can not be negative if both users are known"),
        (("alice", -1, "bobby", "nonsense"), "Amount can not be negative if both users are known"),
        (("alice", 1, "bobby", "nonsense"), "Style must be 'liquid' or 'reserve'."),
        # then the balance
        (("alice", str(2001 * BAY), "bobby"), "Insufficient liquid balance"),
        (("alice", str(2001 * BAY), "bobby", "reserve"), "Insufficient reserve balance"),
        (("nobody", 5, "bobby"), "Unknown user."),
        (("alice", 1, ""), POOL_MSG.format("liquid")),
        (("alice", 1, "", "reserve"), POOL_MSG.format("reserve")),
    ]
    for args, want in cases:
        got = x.Trade(*args)
        assert isinstance(got, str) and got, (args, got)
        if want is not None:
            assert got == want, (args, got)
        else:
            assert "Amount" in got, (args, got)
    assert (x.GetBalance("alice"), x.GetBalance("bobby"), op_seq(x)) == before
    assert x.GetBalance("nobody") is False  # a failed trade creates no account


def test_pool_debit_before_credit(main):
    x = main.proxy()
    alice, bobby = x.GetBalance("alice"), x.GetBalance("bobby")
    pool = x.GetBalance("pool")
    assert_returns(lambda: x.Trade("bobby", 5000, ""), POOL_MSG.format("liquid"))
    assert_returns(lambda: x.Trade("alice", -5000, ""), True)  # debit into the pool
    assert x.GetBalance("pool") == {"liquid": pool["liquid"] + 5000, "reserve": pool["reserve"]}
    assert_returns(lambda: x.Trade("bobby", 5001, ""), POOL_MSG.format("liquid"))
    assert_returns(lambda: x.Trade("bobby", 3000, ""), True)  # credit out of it
    assert_returns(lambda: x.Trade("newcomer", 2000, ""), True)  # a new user, from the pool
    assert x.GetBalance("pool") == pool
    assert x.GetBalance("alice")["liquid"] == alice["liquid"] - 5000
    assert x.GetBalance("bobby")["liquid"] == bobby["liquid"] + 3000
    assert x.GetBalance("newcomer") == {"liquid": 2000, "reserve": 0}
    # the reserve pool works the same way
    assert_returns(lambda: x.Trade("alice", -700, "", "reserve"), True)
    assert_returns(lambda: x.Trade("bobby", 700, "", "reserve"), True)
    assert x.GetBalance("bobby")["reserve"] == bobby["reserve"] + 700
    assert x.GetBalance("pool") == pool


def test_multicall_of_100_trades(main):
    x = main.proxy()
    alice = x.GetBalance("alice")
    batch = xmlrpc.client.MultiCall(x)
    for i in range(1, 101):
        batch.Trade("alice", i, "dave", "liquid" if i % 2 else "reserve")
    results = list(batch())
    assert results == [True] * 100
    odd = sum(range(1, 101, 2))
    even = sum(range(2, 101, 2))
    assert x.GetBalance("dave") == {"liquid": odd, "reserve": even}
    assert x.GetBalance("alice") == {"liquid": alice["liquid"] - odd,
                                     "reserve": alice["reserve"] - even}


def test_get_spendable_amount_is_the_numeric_sum(main):
    x = main.proxy()
    spendable = x.GetSpendable()
    assert len(spendable) >= 2
    for key, entry in spendable.items():
        assert re.fullmatch(r"[0-9a-f]{64}:\d+", key)
        for field in ("amount", "rtotal", "ltotal", "nfreeze", "confirmations"):
            assert isinstance(entry[field], str), (field, entry)
        assert type(entry["supply"]) is int and entry["supply"] == SUPPLY
        assert entry["rtotal"] != "0"  # so concatenation would show
        assert entry["amount"] == str(int(entry["rtotal"]) + int(entry["ltotal"]))
        assert "change" not in entry
    funded = sorted(int(e["amount"]) for e in spendable.values())
    assert 2000 * BAY in funded and 500 * BAY in funded
    one = next(iter(spendable.values()))["address"]
    only = x.GetSpendable(one)
    assert only and all(e["address"] == one for e in only.values())
    assert x.GetSpendable(new_address()) == {}


def test_deposit_young_output_claims_and_registration(main):
    x = main.proxy()
    address, outpoint = send_deposit(x, 12_345_678_901)
    x.devnet.mine(1)
    assert_returns(lambda: x.Deposit("erin", [outpoint]), f"{outpoint} not in Spendable list yet.")
    x.devnet.mine(12)
    wait_until(lambda: outpoint in x.GetSpendable(address), 10, what="Spendable")
    # check order: reserved, short, (stopped, not loaded: see the lifecycle tests), txids
    assert_returns(lambda: x.Deposit("Withdraws", [outpoint]), RESERVED)
    assert_returns(lambda: x.Deposit("eri", [outpoint]), SHORT)
    assert_returns(lambda: x.Deposit("erin", ["f" * 64 + ":7", outpoint]),
                   "f" * 64 + ":7 not in Spendable list yet.")
    # a failed call claims nothing, not even the good txids before the bad one
    assert_returns(lambda: x.Deposit("erin", [outpoint, "nope:0"]),
                   "nope:0 not in Spendable list yet.")
    assert x.GetDeposits(outpoint) is False
    assert_returns(lambda: x.Deposit("erin", [outpoint]), True)
    assert x.GetDeposits(outpoint)["name"] == "erin"
    assert_returns(lambda: x.Deposit("frank", [outpoint]),
                   f"{outpoint} was already deposited for another user.")
    assert_returns(lambda: x.Deposit("erin", [outpoint]), True)  # same user again: fine
    main.wait_registered(outpoint)
    assert x.GetDeposits(outpoint) == {"name": "erin", "registered": 1}
    assert total(x.GetBalance("erin")) == 12_345_678_901
    assert x.GetBalance("frank") is False
    everything = x.GetDeposits()
    assert everything[outpoint] == {"name": "erin", "registered": 1}
    assert {v["name"] for v in everything.values()} >= {"alice", "bobby", "erin"}
    assert x.GetDeposits("f" * 64 + ":0") is False


def test_generate_deposit_address_and_exchange_password(main):
    x = main.proxy()
    key, ok = x.GenerateDepositAddress()
    assert ok is True and key[0] in "PQ"  # a compressed WIF of version 153
    address = crypto.wif_to_address(key)
    wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 10, what="import")
    assert_returns(lambda: x.ExchangePassword("wallet passphrase"), True)
    assert_returns(lambda: x.ExchangePassword(""), True)


def test_unknown_user_and_pseudo_accounts(main):
    x = main.proxy()
    assert x.GetBalance("nobody-at-all") is False
    assert x.GetBalance("Alice") is False  # case-sensitive, as the original
    assert set(x.GetBalance("pool")) == {"liquid", "reserve"}
    assert set(x.GetBalance("withdraws")) == {"liquid", "reserve"}


def test_api_is_off_unless_enabled(main):
    x = main.proxy()
    assert_returns(lambda: x.API(signed("result = 5")), False)
    assert_returns(lambda: x.API({"sig": "", "exec": "result = 5"}), False)


def test_hidden_parameters_are_not_callable(main):
    x = main.proxy()
    seq = op_seq(x)
    f = fault_of(lambda: x.Trade("alice", 1000, "withdraws", "liquid", "", "x", "y"))
    assert f.faultCode == -32602 and "Trade() takes 3 to 5 arguments (7 given)" in f.faultString
    f = fault_of(lambda: x.Trade("alice", 1000, "bobby", "liquid", "", "addr"))
    assert f.faultCode == -32602
    f = fault_of(lambda: x.Deposit("alice", [], "", 1))
    assert f.faultCode == -32602 and "Deposit() takes 2 to 3 arguments (4 given)" in f.faultString
    assert op_seq(x) == seq


def test_get_cycle_moves_after_the_recompute(main):
    """It crosses a cycle boundary with a deflation vote (on its own copy of the exchange)."""
    x = main.proxy()
    assert_returns(lambda: x.GetCycle(), 0)
    before = {u: x.GetBalance(u) for u in ("alice", "bobby", "pool")}
    x.devnet.vote("deflate", 2)
    height = x.devnet.info()["height"]
    x.devnet.mine(200 - height % 200)
    wait_until(lambda: x.GetCycle() == 1, 10, what="GetCycle to move")
    assert x.pegx.status()["supply"] == SUPPLY + 2
    after = {u: x.GetBalance(u) for u in before}
    for user, bal in before.items():
        assert total(after[user]) == total(bal), user  # nothing created or lost
    assert after["alice"]["reserve"] > before["alice"]["reserve"]  # deflation grows reserve


# --------------------------------------------------------------------------- lifecycle
def test_check_order_before_start_and_the_password(tmp_path):
    """A daemon that has not started its exchange, then the password gate and a restart."""
    d = Daemon(tmp_path / "dd", autostart=False)
    with d:
        x = d.proxy()
        assert_returns(lambda: x.StartExchange("", 1, 1), False)
        assert x.pegx.status()["cycle_thread_alive"] is False
        addr = new_address()
        assert_returns(lambda: x.GetBalance("alice"), NOT_LOADED)
        assert_returns(lambda: x.Trade("pool", "junk", "x"), NOT_LOADED)  # before names
        assert_returns(lambda: x.Deposit("pool", []), RESERVED)
        assert_returns(lambda: x.Deposit("abc", []), SHORT)
        assert_returns(lambda: x.Deposit("alice", ["a:0"]), STOPPED)  # stopped before loaded
        assert_returns(lambda: x.GenerateDepositAddress(), [STOPPED, ""])
        assert_returns(lambda: x.ExchangeSettings(), STOPPED)
        assert_returns(lambda: x.Withdraw("alice", 10 * BAY, addr), [NOT_LOADED, ""])
        for call in (x.GetSpendable, x.GetDeposits, x.GetCycle):
            assert_returns(call, NOT_LOADED)
        assert_returns(lambda: x.CheckWithdraw("someid"), NOT_LOADED)
        assert_returns(lambda: x.StartExchange(), True)
        wait_until(lambda: x.StartExchange("", 1, 1) is True, 10, what="loaded")
        assert x.pegx.status()["cycle_thread_alive"] is True
        assert_returns(lambda: x.GetBalance("alice"), False)
        assert_returns(lambda: x.GetCycle(), 0)

        # the password: set, wrong (beats every other check), change
        assert_returns(lambda: x.SetPassword("first pw"), True)
        seq = op_seq(x, "first pw")
        wrong = [
            lambda: x.SetPassword("mine now", "nope"),
            lambda: x.StartExchange("nope", 0),
            lambda: x.StartExchange("", 1, 1),
            lambda: x.ShutDown("nope"),
            lambda: x.ExchangePassword("w", ""),
            lambda: x.GetSpendable("", "nope"),
            lambda: x.Deposit("pool", "x", "nope"),
            lambda: x.GetDeposits("", "nope"),
            lambda: x.GetBalance("exchange", "nope"),
            lambda: x.Trade("pool", "junk", "x", "bad", "nope"),
            lambda: x.ExchangeSettings("bad", "", "", 99, "nope"),
            lambda: x.CheckWithdraw("id", 1, "nope"),
            lambda: x.GetCycle(""),
            lambda: x.GetCycle(["first pw"]),
        ]
        for call in wrong:
            assert_returns(call, WRONG)
        assert_returns(lambda: x.GenerateDepositAddress("nope"), [WRONG, ""])
        assert_returns(lambda: x.Withdraw("pool", 0, "", "bad", "nope"), [WRONG, ""])
        assert op_seq(x, "first pw") == seq  # a wrong password changes nothing
        st = x.pegx.status("first pw")
        assert st["started"] is True and st["cycle_thread_alive"] is True  # not stopped/shut
        assert_returns(lambda: x.GetCycle("first pw"), 0)
        assert_returns(lambda: x.SetPassword("second pw", "first pw"), True)
        assert_returns(lambda: x.GetCycle("first pw"), WRONG)
        assert_returns(lambda: x.GetCycle("second pw"), 0)

    # after a restart the password still applies (it lives in the ledger, hashed)
    with d:
        x = d.proxy()
        for bad in ("", "first pw", "second pw "):
            assert_returns(lambda b=bad: x.GetCycle(b), WRONG)
        assert_returns(lambda: x.SetPassword("", ""), WRONG)
        assert_returns(lambda: x.StartExchange("", 1), WRONG)
        assert_returns(lambda: x.StartExchange("second pw", 1), True)
        wait_until(lambda: x.StartExchange("second pw", 1, 1) is True, 10, what="loaded")
        assert_returns(lambda: x.GetBalance("nobody", "second pw"), False)
        assert_returns(lambda: x.SetPassword("", "second pw"), True)  # blank: no password
        assert_returns(lambda: x.GetCycle("anything"), 0)
    for path in (tmp_path / "dd").rglob("*"):
        if path.is_file():
            assert b"second pw" not in path.read_bytes(), path
    with d:
        assert_returns(lambda: d.proxy().StartExchange(), True)  # blank survives a restart too


def test_start_exchange_0_halts_the_cycle_thread_and_1_restarts_it(tmp_path):
    d = Daemon(tmp_path / "dd")
    with d:
        x = d.proxy()
        d.fund("alice", 100 * BAY)
        addr = new_address()
        assert_returns(lambda: x.StartExchange("", 0), True)
        st = x.pegx.status()
        assert st["started"] is False and st["cycle_thread_alive"] is False
        height = st["height"]
        x.devnet.mine(3)
        assert x.pegx.status()["height"] == height  # nobody follows the chain any more
        assert_returns(lambda: x.Trade("alice", 1000, "bobby"), STOPPED)
        assert_returns(lambda: x.GetBalance("alice"), STOPPED)
        assert_returns(lambda: x.Deposit("alice", ["a:0"]), STOPPED)
        assert_returns(lambda: x.GenerateDepositAddress(), [STOPPED, ""])
        assert_returns(lambda: x.ExchangeSettings(), STOPPED)
        assert_returns(lambda: x.Withdraw("alice", 10 * BAY, addr), [STOPPED, ""])
        assert_returns(lambda: x.StartExchange("", 1, 1), True)  # still loaded, as original
        assert_returns(lambda: x.GetCycle(), 0)
        assert_returns(lambda: x.StartExchange("", 1), True)
        st = x.pegx.status()
        assert st["started"] is True and st["cycle_thread_alive"] is True
        wait_until(lambda: x.pegx.status()["height"] == height + 3, 10, what="catching up")
        assert_returns(lambda: x.Trade("alice", 1000, "bobby"), True)
        assert x.GetBalance("bobby") == {"liquid": 1000, "reserve": 0}


def test_shutdown_exits_cleanly_and_the_ledger_reopens(tmp_path):
    d = Daemon(tmp_path / "dd")
    with d:
        x = d.proxy()
        outpoint = d.fund("alice", 3000 * BAY)
        assert x.Trade("alice", str(1500 * BAY), "bobby") is True
        assert x.Trade("bobby", -7777, "") is True
        assert x.ExchangeSettings("", "", {"min": 20000, "max": 30000, "percent": 0}) is True
        assert x.SetPassword("pw") is True
        users = ("alice", "bobby", "pool", "withdraws", "exchange")
        before = {u: x.GetBalance(u, "pw") for u in users}
        deposits, cycle, seq = x.GetDeposits("", "pw"), x.GetCycle("pw"), op_seq(x, "pw")
        assert_returns(lambda: x.ShutDown("wrong"), WRONG)
        assert x.pegx.noop() is True
        assert_returns(lambda: x.ShutDown("pw"), True)
        assert d.proc.wait(timeout=10) == 0
    assert "Traceback" not in d.log()
    d.start(wait_loaded=False)  # Daemon's own wait knows no password
    try:
        x = d.proxy()
        wait_until(lambda: x.StartExchange("pw", 1, 1) is True, 20, what="loaded")
        after = {u: x.GetBalance(u, "pw") for u in users}
        assert after["exchange"] == before["exchange"]
        # every account holds what it held (how it splits into liquid and reserve: see
        # test_a_restart_within_a_cycle_keeps_every_balance)
        assert {u: total(after[u]) for u in users} == {u: total(before[u]) for u in users}
        assert x.GetDeposits("", "pw") == deposits
        assert x.GetDeposits(outpoint, "pw") == {"name": "alice", "registered": 1}
        assert x.GetCycle("pw") == cycle and op_seq(x, "pw") >= seq
        assert x.Withdraw("alice", 30001, new_address(), "liquid", "pw")[0] is True
    finally:
        d.stop()


def test_a_restart_within_a_cycle_keeps_every_balance(tmp_path):
    d = Daemon(tmp_path / "dd")
    with d:
        x = d.proxy()
        d.fund("alice", 3000 * BAY)
        assert x.Trade("alice", str(1500 * BAY), "bobby") is True
        before = {u: x.GetBalance(u) for u in ("alice", "bobby", "exchange")}
        cycle = x.GetCycle()
    with d:
        x = d.proxy()
        assert x.GetCycle() == cycle
        assert {u: x.GetBalance(u) for u in before} == before


def test_exchange_settings_validate_everything_and_persist(tmp_path):
    d = exec_daemon(tmp_path / "dd")
    fee = new_address()  # the fee account need not be the wallet's; exchange accounts must
    commission = {"min": 20000, "max": 50000, "percent": 0.002}
    with d:
        x = d.proxy()
        acct = x.devnet.new_address()
        d.fund("alice", 10 * BAY)  # mines 13 blocks, so the next deposit lands mid-cycle
        defaults = settings_of(x)
        assert defaults == {"exchangeaccounts": [], "exchangefeeaccount": "",
                            "commission": {"min": BAY, "max": 10 * BAY, "percent": "0.001"},
                            "exchangeconfirmations": 7}
        ok = {"commission": {"min": 10000, "max": 10000, "percent": 0.05}}
        invalid = [
            ({"exchangeaccounts": "B-not-a-list"}, ACCOUNTS_MSG),
            ({"exchangeaccounts": {"a": 1}}, ACCOUNTS_MSG),
            ({"exchangeaccounts": []}, ACCOUNTS_MSG),
            ({"commission": {"min": 10000, "max": 20000, "percent": -0.001}}, False),
            ({"commission": {"min": 10000, "max": 20000, "percent": 0.0501}},
             "Commission is too high."),
            ({"commission": {"min": 20000, "max": 10000, "percent": 0}}, False),
            ({"commission": {"min": 9999, "max": 20000, "percent": 0}}, MIN_COMMISSION_MSG),
            ({"commission": {"min": 10000, "percent": 0}},
             "Commission must be a dict with 'min', 'max' and 'percent'."),
            ({"exchangeconfirmations": 6}, "Not enough confirmations"),
            ({"exchangeconfirmations": 16}, "Too many confirmations"),
            # the original's order: accounts before commission before confirmations
            ({"exchangeaccounts": "nope", "exchangeconfirmations": 99}, ACCOUNTS_MSG),
            ({**ok, "commission": {"min": 1, "max": 2, "percent": 0}, "exchangeconfirmations": 99},
             MIN_COMMISSION_MSG),
        ]
        for bad, want in invalid:
            # every other field valid: the original applied those before failing; we do not
            args = {"exchangeaccounts": [acct], "exchangefeeaccount": fee, **ok,
                    "exchangeconfirmations": 12, **bad}
            seq = op_seq(x)
            got = x.ExchangeSettings(args["exchangeaccounts"], args["exchangefeeaccount"],
                                     args["commission"], args["exchangeconfirmations"])
            assert got == want and type(got) is type(want), (bad, got)
            assert op_seq(x) == seq, bad
        bad_fee = x.ExchangeSettings([acct], "Bnot-an-address")
        assert isinstance(bad_fee, str) and bad_fee.startswith("Exchange fee account")
        bad_acct = x.ExchangeSettings([acct, "junk"])
        assert isinstance(bad_acct, str) and bad_acct.startswith("Exchange account 'junk'")
        assert settings_of(x) == defaults
        assert_returns(lambda: x.ExchangeSettings([acct], fee, commission, 15), True)
        # '' leaves a field as it is
        assert_returns(lambda: x.ExchangeSettings("", "", "", ""), True)
    want = {"exchangeaccounts": [acct], "exchangefeeaccount": fee,
            "commission": {"min": 20000, "max": 50000, "percent": "0.002"},
            "exchangeconfirmations": 15}
    with d:
        x = d.proxy()
        assert settings_of(x) == want  # confirmations too (the original forgot them)
        # the commission minimum rules Withdraw's "too low" ...
        assert_returns(lambda: x.Withdraw("alice", 30000, new_address()),
                       ["Withdraw amount is too low", ""])
        assert x.Withdraw("alice", 30001, new_address())[0] is True
        # ... and the cycle thread needs 15 confirmations before a deposit is Spendable
        address, outpoint = send_deposit(x, 5 * BAY)
        x.devnet.mine(14)
        pass_barrier(x)
        assert outpoint not in x.GetSpendable(address)
        x.devnet.mine(1)
        wait_until(lambda: outpoint in x.GetSpendable(address), 10, what="15 confirmations")
        assert x.GetSpendable(address)[outpoint]["confirmations"] == "15"


# --------------------------------------------------------------------------- withdraws, API
@pytest.fixture(scope="module")
def wd_datadir(tmp_path_factory):
    """A stopped exchange with the signed API call enabled and alice holding 3,000 BAY, parked
    at block 180 of the cycle, outside every withdraw window, so pending withdraws stay
    pending."""
    d = exec_daemon(tmp_path_factory.mktemp("api") / "wd", extra=["--initial-supply", "60"])
    with d:
        d.fund("alice", 3000 * BAY)
        x = d.proxy()
        x.devnet.mine(180 - x.devnet.info()["height"])
    return d.datadir


@pytest.fixture
def wd(wd_datadir, tmp_path):
    """That exchange running on a copy of its own."""
    with Daemon.clone(wd_datadir, tmp_path / "wd", extra=["--allow-exec", "--initial-supply",
                                                          "60"]) as d:
        yield d


def test_withdraw_immediate_results(wd):
    x = wd.proxy()
    addr = new_address()
    too_low = ["Withdraw amount is too low", ""]
    before, held = x.GetBalance("alice"), x.GetBalance("withdraws")
    cases = [
        (("alice", 2 * BAY, ""), [False, ""]),
        (("alice", 2 * BAY, "Bnot-an-address"), ["Withdraw address not valid", ""]),
        (("alice", 2 * BAY, addr[:-1] + ("1" if addr[-1] != "1" else "2")),
         ["Withdraw address not valid", ""]),
        (("alice", BAY + 10000, addr), too_low),
        (("alice", 0, addr), too_low),
        (("alice", -5 * BAY, addr), too_low),
        (("alice", 2.5, addr), ["Amount must be a whole number of satoshi, got 2.5.", ""]),
        (("alice", 2 * BAY, addr, "frozen"), ["Style must be 'liquid' or 'reserve'.", ""]),
        (("pool", 2 * BAY, addr), [RESERVED, ""]),
        (("abc", 2 * BAY, addr), [SHORT, ""]),
        (("nobody", 2 * BAY, addr), ["Unknown user.", ""]),
        (("alice", str(3001 * BAY), addr), ["Insufficient liquid balance", ""]),
        (("alice", str(3001 * BAY), addr, "reserve"), ["Insufficient reserve balance", ""]),
    ]
    for args, want in cases:
        assert_returns(lambda a=args: x.Withdraw(*a), want)
    assert x.GetBalance("alice") == before and x.GetBalance("withdraws") == held
    ok, wid = x.Withdraw("alice", str(BAY + 10001), addr)
    assert ok is True and re.fullmatch(r"[0-9a-f]{32}", wid)
    ok, rid = x.Withdraw("alice", str(123 * BAY), addr, "reserve")
    assert ok is True and rid != wid
    assert x.GetBalance("alice") == {"liquid": before["liquid"] - BAY - 10001,
                                     "reserve": before["reserve"] - 123 * BAY}
    assert x.GetBalance("withdraws") == {"liquid": held["liquid"] + BAY + 10001,
                                         "reserve": held["reserve"] + 123 * BAY}
    assert_returns(lambda: x.CheckWithdraw(wid), "ID not found")  # pending: not batched yet
    assert_returns(lambda: x.CheckWithdraw(wid, 1), "ID not found")  # and clearing is harmless
    assert x.GetBalance("withdraws")["liquid"] == held["liquid"] + BAY + 10001
    assert x.pegx.status()["cycle_thread_alive"] is True


def test_withdraw_limits_are_300_and_45(wd):
    x = wd.proxy()
    assert x.ExchangeSettings("", "", {"min": 10000, "max": 20000, "percent": 0}) is True
    addr = new_address()
    pending = x.pegx.status()["withdraws"]["pending"]
    have = {"liquid": 0, "reserve": 0}
    for rec in run_exec(x, "result = ledger.records('withdraws')").values():
        have[rec["style"]] += 1
    assert sum(have.values()) == pending
    for style, limit, msg in (("liquid", 300, LIQUID_LIMIT_MSG),
                              ("reserve", 45, RESERVE_LIMIT_MSG)):
        batch = xmlrpc.client.MultiCall(x)
        for _ in range(limit - have[style]):
            batch.Withdraw("alice", 20001, addr, style)
        results = list(batch())
        assert all(r[0] is True for r in results) and len({r[1] for r in results}) == len(results)
        before = x.GetBalance("alice")
        assert_returns(lambda s=style: x.Withdraw("alice", 20001, addr, s), [msg, ""])
        assert x.GetBalance("alice") == before
    assert x.pegx.status()["withdraws"]["pending"] == 345


def write_history_v1(ledger_dir: Path, history: dict) -> None:
    """Write ``history`` records into a stopped daemon's ledger as pegx wrote them before
    ledger format 2 (a history table: withdraw id -> master id, master id -> status record),
    and mark the ledger format 1: the next start upgrades it (pegx.ledger.migrate)."""
    with Store(ledger_dir, create=False) as store:
        state = store.state()
        with store.batch() as wb:
            for key, value in history.items():
                wb.put(schema.pack_record("history", key), json.dumps(value).encode())
            wb.put(schema.STATE, json.dumps({**state, "format": 1}).encode())


def test_check_withdraw_follows_the_master_id_and_clear_is_safe(tmp_path):
    """The records are the old layout's, upgraded at start: CheckWithdraw answers as before."""
    master = {"status": "Complete", "txid": "ab" * 32, "ID": "m" * 32, "block": 170,
              "in0": "cd" * 32 + ":0"}
    processing = {**master, "status": "Processing", "ID": "p" * 32}
    datadir = tmp_path / "d"
    with Daemon(datadir):
        pass  # a ledger and its devnet
    write_history_v1(datadir / "ledger", {"u1": "m" * 32, "m" * 32: master, "u2": "gone",
                                          "u3": "p" * 32, "p" * 32: processing})
    with Daemon(datadir) as d:
        x = d.proxy()
        assert "ledger upgraded from format 1 to 3" in d.log()
        assert_returns(lambda: x.CheckWithdraw("u1"), master)  # user id -> master id -> record
        assert_returns(lambda: x.CheckWithdraw("m" * 32), master)
        assert_returns(lambda: x.CheckWithdraw("u2"), "ID not found")  # master already cleared
        assert_returns(lambda: x.CheckWithdraw("never-seen"), "ID not found")
        # clear=1 on a withdraw still in flight changes nothing
        assert_returns(lambda: x.CheckWithdraw("u3", 1), processing)
        assert_returns(lambda: x.CheckWithdraw("p" * 32, 1), processing)
        assert_returns(lambda: x.CheckWithdraw("u3"), processing)
        # clear=1 on a finished one removes the id asked for (the original's clearID)
        assert_returns(lambda: x.CheckWithdraw("u1", 1), master)
        assert_returns(lambda: x.CheckWithdraw("u1"), "ID not found")
        assert_returns(lambda: x.CheckWithdraw("m" * 32, 1), master)
        assert_returns(lambda: x.CheckWithdraw("m" * 32), "ID not found")
        assert_returns(lambda: x.CheckWithdraw("m" * 32, 1), "ID not found")  # twice: harmless
        assert_returns(lambda: x.CheckWithdraw("unknown", 1), "ID not found")  # killed the original
        assert x.pegx.status()["cycle_thread_alive"] is True
        assert x.pegx.status()["last_error"] == ""


def test_signed_api_command(wd):
    x = wd.proxy()
    cmd = signed("result = {'users': len(ledger.users()), 'cycle': api.GetCycle()}")
    got = x.API(cmd)
    assert isinstance(got, dict) and got["cycle"] == 0 and got["users"] >= 4
    assert_returns(lambda: x.API(cmd), "Command sent previously")
    forged = signed("result = 1")
    forged["exec"] += "\nresult = 2"
    assert_returns(lambda: x.API(forged), "Signature failed")
    honest = {"sig": forged["sig"], "exec": forged["exec"].rsplit("\n", 1)[0]}
    assert_returns(lambda: x.API(honest), 1)  # the forgery did not burn the real command
    for junk in ("text", [1, 2], {"sig": 1, "exec": 2}, {}, None):
        assert_returns(lambda j=junk: x.API(j), "Signature failed")
    failing = x.API(signed("result = 1 // 0"))
    assert "ZeroDivisionError" in failing  # the original returns the code's own error text
