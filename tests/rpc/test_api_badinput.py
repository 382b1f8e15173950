"""Bad input to every PegAPI call: a clear value or a clean Fault, nothing changed, still serving.

One daemon for the whole module (a password is set, so the gate is exercised too). An autouse
fixture snapshots every balance (users, pool, withdraws, exchange) and the ledger's op seq
before each test and checks after it that nothing moved and the server still answers. Calls go
through stock ``xmlrpc.client`` only; ints a stock client cannot send (beyond ±2^31) are sent
as hand-written ``<i8>``/``<int>`` bodies through ``xmlrpc.client.Transport``.
"""

from __future__ import annotations

import math
import re
import xmlrpc.client

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.daemon import Daemon
from pegx import crypto

PW = "bad-input password"
BAY = 100_000_000
USERS = ("alice", "bobby")
WRONG = "Incorrect Password"
TOO_LONG = "Name is too long (at most 256 characters)."
NOT_STR = "Name must be a string, got {}."
WHOLE = "Amount must be a whole number of satoshi, got {}."
AMOUNT_FORMAT = ("Amount must be an integer number of satoshi: an int, a decimal string such "
                 "as '2500000000', or a whole float.")
TOO_LARGE = "Amount is too large (at most 200,000,000,000,000,000 satoshi)."
TXIDS = "txids must be a non-empty list of 'txid:vout' strings."
STYLE = "Style must be 'liquid' or 'reserve'."
NOT_FOUND = "ID not found"
ACCOUNTS_MSG = ("Exchange accounts must be a list and must contain all accounts used by the "
                "exchange for receiving change.")
COMMISSION_SHAPE = "Commission must be a dict with 'min', 'max' and 'percent'."
COMMISSION_VALUES = "Commission min and max must be satoshi amounts and percent a number."
CONFIRMATIONS = "Confirmations must be an integer from 7 to 15."
# (name, required args, max args) of every call
ARITY = {"SetPassword": (0, 2), "StartExchange": (0, 3), "ShutDown": (0, 1),
         "ExchangePassword": (0, 2), "GenerateDepositAddress": (0, 1), "GetSpendable": (0, 2),
         "Deposit": (2, 3), "GetDeposits": (0, 2), "GetBalance": (1, 2), "Trade": (3, 5),
         "ExchangeSettings": (0, 5), "Withdraw": (3, 5), "CheckWithdraw": (1, 3),
         "GetCycle": (0, 1), "API": (1, 1)}
_REQ = object()
# every call's arguments as the tests pass them when a case leaves them out
FULL = {"SetPassword": ["", PW], "StartExchange": [PW, 1, 0], "ShutDown": [PW],
        "ExchangePassword": ["", PW], "GenerateDepositAddress": [PW], "GetSpendable": ["", PW],
        "Deposit": [_REQ, _REQ, PW], "GetDeposits": ["", PW], "GetBalance": [_REQ, PW],
        "Trade": [_REQ, _REQ, _REQ, "liquid", PW], "ExchangeSettings": ["", "", "", "", PW],
        "Withdraw": [_REQ, _REQ, _REQ, "liquid", PW], "CheckWithdraw": [_REQ, 0, PW],
        "GetCycle": [PW], "API": [_REQ]}
ADDR = crypto.wif_to_address(crypto.generate_deposit_key())
OWN = "<an address of the daemon's wallet>"  # replaced by the fixture's (ExchangeSettings)
LONG = "n" * 10_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("bad") / "dd", extra=["--initial-supply", "40"])
    with d:
        d.fund("alice", 1000 * BAY)
        x = d.proxy()
        assert x.Trade("alice", str(100 * BAY), "bobby") is True
        assert x.Trade("alice", str(BAY), "bobby", "reserve") is True
        assert x.SetPassword(PW) is True
        d.own = x.devnet.new_address()
        yield d


def own(value, address: str):
    """``value`` with OWN replaced by the wallet address ``address`` (inside lists too)."""
    if isinstance(value, (list, tuple)):
        return type(value)(own(v, address) for v in value)
    return address if value == OWN else value


def snapshot(x) -> dict:
    """Every balance, the claims, the op seq and liveness, in one multicall request."""
    names = (*USERS, "pool", "withdraws", "exchange")
    batch = xmlrpc.client.MultiCall(x)
    for u in names:
        batch.GetBalance(u, PW)
    batch.GetDeposits("", PW)
    batch.pegx.status(PW)
    batch.GetCycle(PW)
    *balances, deposits, status, cycle = batch()
    assert status["cycle_thread_alive"] is True and cycle == 0
    return {**dict(zip(names, balances, strict=True)), "deposits": deposits,
            "op_seq": status["op_seq"]}


@pytest.fixture(autouse=True)
def unchanged(daemon):
    """Every test here must leave the exchange exactly as it found it, and serving."""
    x = daemon.proxy()
    before = snapshot(x)
    assert before["alice"]["liquid"] > 0 and before["bobby"]["reserve"] > 0
    yield
    assert snapshot(x) == before
    assert x.pegx.noop() is True


def outcome(x, method: str, *args):
    """The call's value, or its Fault; a Fault must be a clean message."""
    try:
        return getattr(x, method)(*args)
    except xmlrpc.client.Fault as fault:
        assert fault.faultString and "Traceback" not in fault.faultString, fault.faultString
        assert "internal error" not in fault.faultString, (method, args, fault.faultString)
        return fault


def raw_call(daemon, method: str, *values: str):
    """Send hand-written XML-RPC <value> bodies (for ints a stock client refuses to send)."""
    params = "".join(f"<param><value>{v}</value></param>" for v in values)
    body = (f"<?xml version='1.0'?><methodCall><methodName>{method}</methodName>"
            f"<params>{params}</params></methodCall>")
    host = daemon.url.split("//", 1)[1]
    try:
        return xmlrpc.client.Transport().request(host, "/RPC2", body.encode())[0]
    except xmlrpc.client.Fault as fault:
        assert "Traceback" not in fault.faultString
        return fault


# --------------------------------------------------------------------------- explicit cases
CASES = [
    # SetPassword / StartExchange / ShutDown / ExchangePassword / GenerateDepositAddress
    ("SetPassword", (123, PW), "The new password must be a string."),
    ("SetPassword", (None, PW), "The new password must be a string."),
    ("SetPassword", ({"pw": 1}, PW), "The new password must be a string."),
    ("SetPassword", ("taken over", None), WRONG),
    ("SetPassword", ("taken over", [PW]), WRONG),
    ("SetPassword", ("taken over", ""), WRONG),
    ("StartExchange", (PW, 2), "start must be 1 (start) or 0 (stop)."),
    ("StartExchange", (PW, "0"), "start must be 1 (start) or 0 (stop)."),
    ("StartExchange", (PW, None), "start must be 1 (start) or 0 (stop)."),
    ("StartExchange", (PW, 0.0), "start must be 1 (start) or 0 (stop)."),
    ("StartExchange", (PW, [0]), "start must be 1 (start) or 0 (stop)."),
    ("StartExchange", (PW, 0, 7), "isrunning must be 0 or 1."),
    ("StartExchange", (PW, 0, "1"), "isrunning must be 0 or 1."),
    ("StartExchange", (None, 0), WRONG),
    ("ShutDown", (None,), WRONG),
    ("ShutDown", ([PW],), WRONG),
    ("ShutDown", (PW + " ",), WRONG),
    ("ShutDown", (LONG,), WRONG),
    ("ExchangePassword", (None, PW), "The wallet passphrase must be a string."),
    ("ExchangePassword", ([1], PW), "The wallet passphrase must be a string."),
    ("GenerateDepositAddress", (None,), [WRONG, ""]),
    ("GenerateDepositAddress", ({},), [WRONG, ""]),
    # GetSpendable / GetDeposits / GetBalance: unknown keys are simply not there
    ("GetSpendable", (None, PW), {}),
    ("GetSpendable", ([ADDR], PW), {}),
    ("GetSpendable", (LONG, PW), {}),
    ("GetDeposits", (None, PW), False),
    ("GetDeposits", ({"txid": 1}, PW), False),
    ("GetDeposits", (LONG, PW), False),
    ("GetBalance", (None, PW), False),
    ("GetBalance", (123, PW), False),
    ("GetBalance", (["alice"], PW), False),
    ("GetBalance", (LONG, PW), False),
    ("GetBalance", ("ålice-ünïcødé-名前", PW), False),
    # Deposit
    ("Deposit", (None, [], PW), NOT_STR.format("NoneType")),
    ("Deposit", (1234, [], PW), NOT_STR.format("int")),
    ("Deposit", (["alice"], [], PW), NOT_STR.format("list")),
    ("Deposit", (LONG, ["a:0"], PW), TOO_LONG),
    ("Deposit", ("Frozen", ["a:0"], PW),
     "Name reserved for exchange operations. Please use different name."),
    ("Deposit", ("alice", "abcd:0", PW), TXIDS),
    ("Deposit", ("alice", None, PW), TXIDS),
    ("Deposit", ("alice", {"abcd:0": 1}, PW), TXIDS),
    ("Deposit", ("alice", [1, 2], PW), TXIDS),
    ("Deposit", ("alice", [["abcd:0"]], PW), TXIDS),
    ("Deposit", ("alice", [], PW), TXIDS),  # was True: a client recorded a deposit that is not
    ("Deposit", ("alice", (), PW), TXIDS),
    ("Deposit", ("pool", [], PW),  # the name checks still come first (ORIGINAL §1.3)
     "Name reserved for exchange operations. Please use different name."),
    ("Deposit", ("alice", ["nope:0"], PW), "nope:0 not in Spendable list yet."),
    ("Deposit", ("ålice-ünïcødé", [LONG], PW), f"{LONG} not in Spendable list yet."),
    # Trade: names, amounts, style
    ("Trade", (None, 5, "bobby"), NOT_STR.format("NoneType")),
    ("Trade", ({"n": 1}, 5, "bobby"), NOT_STR.format("dict")),
    ("Trade", ("alice", 5, None), NOT_STR.format("NoneType")),
    ("Trade", ("alice", 5, ["bobby"]), NOT_STR.format("list")),
    ("Trade", (LONG, 5, "bobby"), TOO_LONG),
    ("Trade", ("alice", 5, LONG), TOO_LONG),
    ("Trade", ("ålice-ünïcødé", 5, "bobby"), "Unknown user."),
    ("Trade", ("ålice-ünïcødé", -5, ""), "Unknown user."),
    ("Trade", ("alice", None, "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", True, "bobby"), "Amount must be a number of satoshi, not a boolean."),
    ("Trade", ("alice", math.nan, "bobby"), WHOLE.format("nan")),
    ("Trade", ("alice", math.inf, "bobby"), WHOLE.format("inf")),
    ("Trade", ("alice", -math.inf, ""), WHOLE.format("-inf")),
    ("Trade", ("alice", 1.5, "bobby"), WHOLE.format("1.5")),
    ("Trade", ("alice", -0.5, ""), WHOLE.format("-0.5")),
    ("Trade", ("alice", float(2**60), "bobby"),
     "Amount is too large to be exact as a float: send it as a decimal string."),
    ("Trade", ("alice", 0, "bobby"), "Amount must not be zero."),
    ("Trade", ("alice", 0.0, ""), "Amount must not be zero."),
    ("Trade", ("alice", "-0", ""), "Amount must not be zero."),
    ("Trade", ("alice", "5.0", "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", "1e3", "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", "", "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", "５", "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", "٣", "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", "9" * 31, "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", "9" * 30, "bobby"), TOO_LARGE),
    ("Trade", ("alice", [5], "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", {"amount": 5}, "bobby"), AMOUNT_FORMAT),
    ("Trade", ("alice", -5, "bobby"), "Amount can not be negative if both users are known"),
    ("Trade", ("alice", 5, "bobby", None), STYLE),
    ("Trade", ("alice", 5, "bobby", "LIQUID"), STYLE),
    ("Trade", ("alice", 5, "bobby", ["liquid"]), STYLE),
    ("Trade", ("alice", 5, "bobby", "liquid", None), WRONG),
    ("Trade", ("bobby", str(1000 * BAY), "alice"), "Insufficient liquid balance"),
    # ExchangeSettings: nothing is applied unless everything is valid
    ("ExchangeSettings", (None,), ACCOUNTS_MSG),
    ("ExchangeSettings", ({"a": ADDR},), ACCOUNTS_MSG),
    ("ExchangeSettings", ([OWN], None), ("Exchange fee account is not a valid address: "
                                         "address must be a str, got NoneType.")),
    ("ExchangeSettings", ([OWN], ADDR, None), COMMISSION_SHAPE),
    ("ExchangeSettings", ([OWN], ADDR, [1, 2, 3]), COMMISSION_SHAPE),
    ("ExchangeSettings", ([OWN, ADDR], ADDR, None),  # the accounts first, as the original
     (f"Exchange account '{ADDR}' is not an address of the exchange's wallet: the wallet "
      "could not spend the change sent to it.")),
    ("ExchangeSettings", ("", "", {"min": "x", "max": BAY, "percent": 0}), COMMISSION_VALUES),
    ("ExchangeSettings", ("", "", {"min": BAY, "max": BAY, "percent": math.nan}),
     COMMISSION_VALUES),
    ("ExchangeSettings", ("", "", {"min": BAY, "max": BAY, "percent": math.inf}),
     COMMISSION_VALUES),
    ("ExchangeSettings", ("", "", {"min": BAY, "max": BAY, "percent": "abc"}),
     COMMISSION_VALUES),
    ("ExchangeSettings", ("", "", {"min": BAY, "max": BAY, "percent": True}),
     COMMISSION_VALUES),
    ("ExchangeSettings", ("", "", {"min": BAY, "max": BAY, "percent": [0]}),
     COMMISSION_VALUES),
    ("ExchangeSettings", ("", "", {"min": 1.5, "max": BAY, "percent": 0}), COMMISSION_VALUES),
    ("ExchangeSettings", ("", "", {"min": BAY, "max": BAY, "percent": "1e999999"}),
     "Commission is too high."),
    ("ExchangeSettings", ("", "", "", None), CONFIRMATIONS),
    ("ExchangeSettings", ("", "", "", 7.0), CONFIRMATIONS),
    ("ExchangeSettings", ("", "", "", "7"), CONFIRMATIONS),
    ("ExchangeSettings", ("", "", "", True), CONFIRMATIONS),
    ("ExchangeSettings", ("", "", "", -1), "Not enough confirmations"),
    ("ExchangeSettings", ([OWN], ADDR, {"min": BAY, "max": BAY, "percent": 0}, 2**31 - 1),
     "Too many confirmations"),
    ("ExchangeSettings", ("", "", "", 10, None), WRONG),
    # Withdraw: always a 2-tuple
    ("Withdraw", ("alice", str(2 * BAY), None), ["Withdraw address not valid", ""]),
    ("Withdraw", ("alice", str(2 * BAY), [ADDR]), ["Withdraw address not valid", ""]),
    ("Withdraw", ("alice", str(2 * BAY), ADDR + "x"), ["Withdraw address not valid", ""]),
    ("Withdraw", ("alice", str(2 * BAY), LONG), ["Withdraw address not valid", ""]),
    ("Withdraw", ("alice", None, ADDR), [AMOUNT_FORMAT, ""]),
    ("Withdraw", ("alice", math.nan, ADDR), [WHOLE.format("nan"), ""]),
    ("Withdraw", ("alice", "-" + str(2 * BAY), ADDR), ["Withdraw amount is too low", ""]),
    ("Withdraw", ("alice", 0, ADDR), ["Withdraw amount is too low", ""]),
    ("Withdraw", ("alice", "9" * 30, ADDR), [TOO_LARGE, ""]),
    ("Withdraw", (None, str(2 * BAY), ADDR), [NOT_STR.format("NoneType"), ""]),
    ("Withdraw", (LONG, str(2 * BAY), ADDR), [TOO_LONG, ""]),
    ("Withdraw", ("alice", str(2 * BAY), ADDR, None), [STYLE, ""]),
    ("Withdraw", ("alice", str(2 * BAY), ADDR, "liquid", None), [WRONG, ""]),
    ("Withdraw", ("bobby", str(1000 * BAY), ADDR), ["Insufficient liquid balance", ""]),
    # CheckWithdraw / GetCycle / API
    ("CheckWithdraw", (None,), NOT_FOUND),
    ("CheckWithdraw", ([1],), NOT_FOUND),
    ("CheckWithdraw", (LONG, 1), NOT_FOUND),
    ("CheckWithdraw", ("id", None), NOT_FOUND),
    ("CheckWithdraw", ("id", "1"), NOT_FOUND),
    ("CheckWithdraw", ("id", 1.0), NOT_FOUND),
    ("CheckWithdraw", ("id", 1, None), WRONG),
    ("GetCycle", (None,), WRONG),
    ("GetCycle", (12345,), WRONG),
    ("API", (None,), False),
    ("API", ({"sig": 1, "exec": ["x"]},), False),
]


@pytest.mark.parametrize(("method", "args", "want"), CASES,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_bad_argument_gets_a_clear_answer(daemon, method, args, want):
    args = own((*args, *FULL[method][len(args):]), daemon.own)  # defaults, right password
    got = outcome(daemon.proxy(), method, *args)
    assert got == want and type(got) is type(want), f"{method}{args!r:.200}: {got!r:.300}"


@pytest.mark.parametrize("method", sorted(ARITY))
def test_wrong_number_of_arguments_is_a_clean_fault(daemon, method):
    x = daemon.proxy()
    low, high = ARITY[method]
    counts = [high + 1, high + 3] + ([low - 1] if low else [])
    for n in counts:
        got = outcome(x, method, *["alice"] * n)
        assert isinstance(got, xmlrpc.client.Fault), (method, n, got)
        assert got.faultCode == -32602
        assert f"({n} given)" in got.faultString and method in got.faultString


def test_unknown_and_gui_methods_are_faults(daemon):
    x = daemon.proxy()
    for name in ("ShowHalo", "ColdStake", "ConfirmColdStake", "MessageStatus", "trade",
                 "Trade2", "_trade", "ledger.trade", "pegx.ledger"):
        got = outcome(x, name, PW)
        assert isinstance(got, xmlrpc.client.Fault) and got.faultCode == -32601, name


def test_ints_a_stock_client_cannot_send(daemon):
    huge = str(10**40)
    liquid, pw = "<string>liquid</string>", f"<string>{PW}</string>"
    alice, bobby = "<string>alice</string>", "<string>bobby</string>"
    assert raw_call(daemon, "Trade", bobby, f"<i8>{2**40}</i8>", alice, liquid, pw) == (
        "Insufficient liquid balance")
    for tag in ("i8", "int", "i4"):
        got = raw_call(daemon, "Trade", alice, f"<{tag}>{huge}</{tag}>", bobby, liquid, pw)
        assert got == TOO_LARGE, (tag, got)
    got = raw_call(daemon, "Trade", alice, f"<i8>-{huge}</i8>", "<string></string>", liquid, pw)
    assert got == TOO_LARGE
    assert raw_call(daemon, "GetBalance", f"<i8>{huge}</i8>", pw) is False
    assert raw_call(daemon, "CheckWithdraw", "<string>x</string>", f"<int>{huge}</int>",
                    pw) == NOT_FOUND
    assert raw_call(daemon, "ExchangeSettings", "<string></string>", "<string></string>",
                    "<string></string>", f"<i8>{huge}</i8>", pw) == "Too many confirmations"
    got = raw_call(daemon, "Withdraw", alice, f"<i8>{huge}</i8>", f"<string>{ADDR}</string>",
                   liquid, pw)
    assert got == [TOO_LARGE, ""]
    # the password itself as an int: just a wrong password
    assert raw_call(daemon, "GetCycle", f"<i8>{huge}</i8>") == WRONG


def test_malformed_requests_and_multicalls(daemon):
    x = daemon.proxy()
    for bad in ("<i4>nope</i4>", "<double>x</double>", "<struct><member>", "<i8>1.5</i8>"):
        got = raw_call(daemon, "Trade", "<string>alice</string>", bad, "<string>bobby</string>",
                       "<string>liquid</string>", f"<string>{PW}</string>")
        assert isinstance(got, xmlrpc.client.Fault) and got.faultCode in (-32700, -32600)
    # a control character XML cannot carry is a parse Fault, not a crash
    got = outcome(x, "Trade", "ali\x01ce", 5, "bobby", "liquid", PW)
    assert isinstance(got, xmlrpc.client.Fault) and got.faultCode == -32700
    batch = xmlrpc.client.MultiCall(x)
    batch.Trade("alice", 0, "bobby", "liquid", PW)
    batch.Trade("alice", 5, "bobby", "liquid", "wrong")
    batch.Trade("alice", 5)
    batch.Withdraw("alice", 5, ADDR, "liquid", PW)
    batch.system.multicall([])
    batch.NoSuchCall()
    results = batch().results
    assert results[0] == ["Amount must not be zero."]
    assert results[1] == [WRONG]
    assert results[2]["faultCode"] == -32602
    assert results[3] == [["Withdraw amount is too low", ""]]
    assert results[4]["faultCode"] == -32600
    assert results[5]["faultCode"] == -32601
    raw = raw_call(daemon, "system.multicall",
                   "<array><data><value><int>5</int></value><value><struct><member><name>"
                   "methodName</name><value><int>5</int></value></member></struct></value>"
                   "<value><struct><member><name>methodName</name><value>Trade</value></member>"
                   "<member><name>params</name><value>notalist</value></member></struct>"
                   "</value></data></array>")
    assert [r["faultCode"] for r in raw] == [-32600, -32600, -32600]


# --------------------------------------------------------------------------- generated input
# Values a stock client can send: None, bools, 32-bit ints, any float, text (no surrogates,
# which cannot be encoded), lists and structs.
# Only characters XML 1.0 can carry: the others are parse Faults (tested above), not API input.
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
               | st.sampled_from("\t\n"), max_size=40)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=8)
# never the real password
WRONG_PW = JUNK.filter(lambda v: v != PW)
# names that are not accounts holding anything
STRANGERS = JUNK.filter(lambda v: not (isinstance(v, str) and v in USERS))
NAMES = st.one_of(st.sampled_from(USERS), STRANGERS)
STYLES = st.one_of(st.sampled_from(["liquid", "reserve"]), JUNK)


def _is_valid_amount(v) -> bool:
    """Whether the API would take ``v`` as a non-zero amount (negatives are pool debits)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return math.isfinite(v) and float(v).is_integer() and v != 0
    return isinstance(v, str) and bool(re.fullmatch(r"[+-]?[0-9]{1,30}", v.strip())) and int(v) != 0


# amounts that are never a usable amount: junk, zero in every spelling, near-misses
BAD_AMOUNTS = st.one_of(JUNK, st.sampled_from(["0", "-0", "+0", "5.0", "1e5", " ", "0x10", "1_0"])
                        ).filter(lambda v: not _is_valid_amount(v))


@given(user1=NAMES, amount=BAD_AMOUNTS, user2=st.one_of(NAMES, st.just("")), style=STYLES)
def test_trade_with_a_bad_amount_is_refused(daemon, user1, amount, user2, style):
    got = outcome(daemon.proxy(), "Trade", user1, amount, user2, style, PW)
    assert got is not True
    assert isinstance(got, (str, xmlrpc.client.Fault)), got


@given(user1=STRANGERS, amount=st.integers(-(2**31), 2**31 - 1),
       user2=st.one_of(NAMES, st.just("")), style=STYLES)
def test_trade_from_a_stranger_is_refused(daemon, user1, amount, user2, style):
    got = outcome(daemon.proxy(), "Trade", user1, amount, user2, style, PW)
    assert got is not True
    assert isinstance(got, str), got


@given(user=NAMES, amount=st.one_of(JUNK, st.integers(1, 2**31 - 1)),
       address=JUNK.filter(lambda v: v != ""), style=STYLES)
def test_withdraw_to_a_bad_address_is_refused_as_a_pair(daemon, user, amount, address, style):
    got = outcome(daemon.proxy(), "Withdraw", user, amount, address, style, PW)
    assert isinstance(got, list) and len(got) == 2 and got[1] == "", got
    assert got[0] is not True and isinstance(got[0], str)


@given(name=NAMES, txids=st.one_of(JUNK, st.lists(TEXT, max_size=3)))
def test_deposit_of_junk_claims_nothing(daemon, name, txids):
    got = outcome(daemon.proxy(), "Deposit", name, txids, PW)
    assert isinstance(got, (str, xmlrpc.client.Fault)), got


VALID_SETTINGS = (st.just([OWN]), st.just(ADDR),
                  st.just({"min": 10000, "max": 20000, "percent": 0.01}), st.integers(7, 15))
BAD_SETTINGS = (  # a list of junk is as bad as no list: none of it is an address
    JUNK.filter(lambda v: v != "") | st.just([]),
    JUNK.filter(lambda v: v != ""),
    JUNK.filter(lambda v: v != "" and not (isinstance(v, dict)
                                           and {"min", "max", "percent"} <= v.keys())),
    JUNK.filter(lambda v: v != "" and not (type(v) is int and 7 <= v <= 15)),
)


@st.composite
def settings_args(draw):
    """ExchangeSettings arguments with at least one invalid field."""
    bad = draw(st.sets(st.integers(0, 3), min_size=1))
    return [draw(BAD_SETTINGS[i]) if i in bad
            else draw(st.one_of(st.just(""), VALID_SETTINGS[i])) for i in range(4)]


@given(args=settings_args())
def test_exchange_settings_with_any_bad_field_change_nothing(daemon, args):
    got = outcome(daemon.proxy(), "ExchangeSettings", *own(args, daemon.own), PW)
    assert got is not True
    assert got is False or isinstance(got, (str, xmlrpc.client.Fault)), got


@given(method=st.sampled_from(sorted(set(ARITY) - {"API"})), passw=WRONG_PW, args=st.lists(
    JUNK, max_size=4))
def test_a_wrong_password_beats_everything(daemon, method, passw, args):
    high = ARITY[method][1]
    if method == "StartExchange":  # the one call whose password comes first
        args = [passw, *(args + [0, 0])[:2]]
    else:
        args = (args + ["alice"] * high)[:high - 1] + [passw]
    want = [WRONG, ""] if method in ("GenerateDepositAddress", "Withdraw") else WRONG
    got = outcome(daemon.proxy(), method, *args)
    assert got == want, (method, got)


@given(method=st.sampled_from(["GetBalance", "GetDeposits", "GetSpendable", "CheckWithdraw"]),
       arg=JUNK, extra=st.sampled_from([(), (0,), (1,)]))
def test_reads_answer_any_key(daemon, method, arg, extra):
    if method != "CheckWithdraw":
        extra = ()
    got = outcome(daemon.proxy(), method, arg, *extra, PW)
    assert not isinstance(got, xmlrpc.client.Fault), got
