"""Hostile input against the whole XML-RPC surface of a live daemon (issue 7, bullet 2).

A hypothesis-driven fuzzer calls every published method (``system.listMethods``: the 15 API
calls, ``devnet.*``, ``pegx.*``, ``system.*``) with random arities and random argument values:
None, bools, nested arrays and structs, ints far beyond ±2^63, NaN/inf doubles, ``<bigdecimal>``,
bytes (``<base64>``), dates, very long and non-ASCII strings, plus plausible values (known
users, addresses, outpoints, withdraw ids, the current password) so that some calls succeed and
move money. For every call it checks that

* the answer is a documented value for that method, or a clean Fault (no traceback, no Python
  repr, never the catch-all "internal error" code 2 and never "result cannot be marshalled");
* a call that did not succeed (anything but True / (True, id) / a lever's documented result)
  left every balance, the deposit claims, the op log position and the devnet chain unchanged;
* the daemon still answers and its exchange-cycle thread is alive without errors.

Raw request bodies (malformed XML, DTDs, bad HTTP framing) are sent with http.client.

Excluded from the random calls, with the reason: ``ShutDown`` (it ends the daemon; covered in
test_api_e2e and test_security) and ``StartExchange(start=0)`` (it halts the exchange, so every
later call would only test "Exchange is stopped."; covered in test_api_e2e).
"""

from __future__ import annotations

import datetime
import gzip
import http.client
import math
import re
import time
import xmlrpc.client
from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import wait_until
from harness.daemon import Daemon
from pegx import crypto

BAY = 100_000_000
SUPPLY = 40  # every deposit then has both reserve and liquid steps
USERS = ("alice", "bobby", "carol", "dave_x")
WRONG = "Incorrect Password"
FAULT_INTERNAL = 2
FAULT_BAD_RESULT = -32603
# Things a Fault or a message must never show: they leak internals.
LEAK = re.compile(r"Traceback \(most recent|File \"|<function |<bound method | object at 0x"
                  r"|<class '")
EXCLUDED = {
    "ShutDown": "ends the daemon (tested in test_api_e2e / test_security)",
    "devnet.reorg": "replaces blocks under the fuzzer's state snapshots (its bad arguments are "
                    "tested in test_devnet_reorg, its effects in test_reorg / test_reorg_e2e)",
}
# Calls whose success makes the exchange-cycle thread write later (key import, deposit
# registration, recompute): after one of them succeeds the fuzzer waits for the ledger to settle.
ASYNC_EFFECTS = {"GenerateDepositAddress", "Deposit", "ExchangeSettings", "devnet.mine",
                 "StartExchange"}


# ------------------------------------------------------------------------- raw XML-RPC client
@dataclass(frozen=True)
class Xml:
    """A value sent exactly as the given XML (for what no marshaller produces)."""

    xml: str


@dataclass(frozen=True)
class Ref:
    """A placeholder resolved when the call is made: the i-th known item of ``kind``."""

    kind: str
    i: int = 0


class FuzzMarshaller(xmlrpc.client.Marshaller):
    """The stock Marshaller plus ints of any size (``<i8>``), Decimal and raw XML values."""

    dispatch: ClassVar[dict] = dict(xmlrpc.client.Marshaller.dispatch)

    def dump_int(self, value, write):
        tag = "int" if -(2**31) <= value < 2**31 else "i8"
        write(f"<value><{tag}>{value}</{tag}></value>\n")

    def dump_decimal(self, value, write):
        write(f"<value><bigdecimal>{value}</bigdecimal></value>\n")

    def dump_xml(self, value, write):
        write(value.xml)

    dispatch[int] = dump_int
    dispatch[Decimal] = dump_decimal
    dispatch[Xml] = dump_xml


def request_body(method: str, params: tuple) -> bytes:
    """A methodCall body; strings XML cannot carry go out raw (the server must refuse them)."""
    body = FuzzMarshaller("utf-8", allow_none=True).dumps(params)
    return (f"<?xml version='1.0'?>\n<methodCall>\n<methodName>{method}</methodName>\n"
            f"{body}</methodCall>\n").encode("utf-8", "surrogatepass")


@dataclass
class Outcome:
    """One HTTP exchange: ``value`` for a result, ``code``/``text`` for a Fault, or ``status``
    alone for an HTTP-level refusal."""

    status: int
    value: object = None
    fault: bool = False
    code: int = 0
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.fault


class RawClient:
    """XML-RPC over one keep-alive http.client connection, reconnecting when the server closes."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict | None = None, *, verb: str = "POST",
             path: str = "/RPC2") -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(verb, path, body, {"Content-Type": "text/xml",
                                                     **(headers or {})})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the server dropped: one retry
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def send(self, body: bytes, headers: dict | None = None, **kw) -> Outcome:
        status, data = self.post(body, headers, **kw)
        if status != 200:
            return Outcome(status)
        try:
            (value,), _ = xmlrpc.client.loads(data, use_builtin_types=True)
        except xmlrpc.client.Fault as f:
            return Outcome(status, fault=True, code=f.faultCode, text=f.faultString)
        return Outcome(status, value)

    def call(self, method: str, *params) -> Outcome:
        return self.send(request_body(method, params))

    def value(self, method: str, *params):
        """A call that must succeed at the transport level (for the fuzzer's own bookkeeping)."""
        out = self.call(method, *params)
        assert out.ok, f"{method}{params!r}: {out}"
        return out.value

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ------------------------------------------------------------------------- value strategies
NAN, INF = float("nan"), float("inf")
SPECIAL_INTS = [0, 1, -1, 6, 7, 15, 16, 10001, 2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1,
                2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2 * 10**17 + 1, 10**30, -(10**30),
                10**4000]
SPECIAL_FLOATS = [NAN, INF, -INF, -0.0, 0.5, 1e8, 1e300, 2.0**53, 2.0**64, -1e8]
SNAN = Decimal("sNaN")
DECIMALS = [Decimal("NaN"), Decimal("Infinity"), Decimal("1E+999999"), Decimal("-0"),
            Decimal("1.5"), Decimal(100000), Decimal(-7), SNAN]


def deep_array(depth: int) -> Xml:
    return Xml("<value><array><data>" * depth + "<value><string>x</string></value>"
               + "</data></array></value>" * depth)


def deep_struct(depth: int) -> Xml:
    return Xml("<value><struct><member><name>k</name>" * depth + "<value><int>1</int></value>"
               + "</member></struct></value>" * depth)


HUGE_LITERAL = Xml("<value><int>" + "9" * 5000 + "</int></value>")  # past int()'s digit limit
# Long, not huge: an address argument of 100,000 characters keeps a daemon thread busy for
# ~20 s in base58 decoding (quadratic; reported). MEGA goes only where no address is decoded.
LONG_STRINGS = ["a" * 8000, "é" * 8000, "漢字" * 4000, "1" * 5000, "9" * 31, " " * 5000,
                "💩" * 3000, "alice" * 60]
MEGA = "a" * 1_000_000
ADDRESS_POSITIONS = {("Withdraw", 2), ("ExchangeSettings", 1), ("devnet.send", 0),
                     ("devnet.balance", 0)}
WEIRD_STRINGS = ["", " ", "\t", "\n", "\r\n", "alice ", " alice", "ALICE", "Alice", "Pool", "pool",
                 "POOL", "WITHDRAWS", "withdraws", "exchange", "Exchange", "total", "frozen", "x",
                 "abc", "../../etc/passwd", "/abs/path", "a\u200bbcd", "ａｌｉｃｅ", "liquid",
                 "reserve", "LIQUID", "nan", "inf", "-1", "+5", "1e5", "0x10", "1_000", "١٢٣٤",
                 "５０００", "<b>&amp;</b>", "]]>", "%s%n%x", "{}", "None", "True", "\x00abc",
                 "\x7fdel!", "ab\x1bcd", "\ufffe\uffff", "1000000000000000000000000000000",
                 "00000000000000000000000000000000", "Bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                 "ＥＸＣＨＡＮＧＥ", "exchange\u0307", "İstanbul"]
DATES = [datetime.datetime(1970, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(SPECIAL_INTS),
    st.floats(), st.sampled_from(SPECIAL_FLOATS), st.sampled_from(DECIMALS),
    st.binary(max_size=40), st.text(max_size=30), st.sampled_from(WEIRD_STRINGS),
    st.sampled_from(LONG_STRINGS), st.sampled_from(DATES),
    st.sampled_from([HUGE_LITERAL, deep_array(40), deep_struct(40), deep_array(3000)]),
)
junk = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                 max_size=4),
    max_leaves=8,
)


def mix(*plausible):
    """Plausible values (each branch alike) four times as often as junk."""
    return st.integers(0, 4).flatmap(lambda k: junk if k == 4 else st.one_of(*plausible))


PASSW = mix(st.just(Ref("password")))
_KNOWN_USER = st.builds(Ref, st.just("user"), st.integers(0, 50))
USER = mix(_KNOWN_USER, _KNOWN_USER, _KNOWN_USER, st.sampled_from(WEIRD_STRINGS))
ADDRESS = mix(st.builds(Ref, st.just("address"), st.integers(0, 50)),
              st.sampled_from(["", "B", "BSd5qhrZ61kWbtLMKw1XtAauXAi8A4q5mZ"]))
OUTPOINT = st.builds(Ref, st.just("outpoint"), st.integers(0, 50))
_SMALL = st.integers(1, 10**9)
AMOUNT = mix(_SMALL, _SMALL, _SMALL, _SMALL.map(str), _SMALL.map(float),
             st.integers(-(10**9), 10**9), st.integers(1, 10**12).map(str),
             st.sampled_from(SPECIAL_INTS + SPECIAL_FLOATS + ["0", "-5", " 7 ", "+9"]))
STYLE = mix(st.sampled_from(["liquid", "reserve"]))
PERCENT = st.sampled_from([0, 0.001, "0.001", 0.05, 0.06, -0.01, NAN, INF, "1e-9999", "abc",
                           None, True, [1], "5E+9999999999"])
COMMISSION = mix(st.fixed_dictionaries({"min": AMOUNT, "max": AMOUNT, "percent": PERCENT}),
                 st.fixed_dictionaries({"min": st.integers(10000, 10**9),
                                        "max": st.integers(10**9, 10**10),
                                        "percent": PERCENT}))
COMMAND = mix(st.fixed_dictionaries({"sig": st.text(max_size=20) | st.binary(max_size=20),
                                     "exec": st.sampled_from(["result = 5", "import os"])}))
# pegx.backup writes a backup into any absolute path that does not exist yet ("/abs/path" is
# one of the WEIRD_STRINGS): the fuzzer moves such a destination under /proc, where no
# directory can be made, so its backup job starts and fails and nothing is written anywhere
NOWHERE = "/proc/self/pegx-fuzz-nowhere"
METHOD_NAMES = st.sampled_from(["Trade", "system.multicall", "nope", "", "devnet.mine"])

MONEY = ("Trade", "Trade", "Trade", "Withdraw", "Withdraw", "Deposit", "GetBalance",
         "system.multicall")
# name -> (number of required args, a strategy per parameter)
SIGNATURES: dict[str, tuple[int, tuple]] = {
    "SetPassword": (0, (mix(st.sampled_from(["", "s3cret", "pässwörd ✓", "p" * 300]),
                            st.sampled_from(["", "s3cret"])), PASSW)),
    "StartExchange": (0, (PASSW, mix(st.sampled_from([1, True, 2, -1, 1.0, "1", "0", NAN])),
                          mix(st.sampled_from([0, 1, True, False, 2, 1.0, -1])))),
    "ExchangePassword": (0, (mix(st.text(max_size=20)), PASSW)),
    "GenerateDepositAddress": (0, (PASSW,)),
    "GetSpendable": (0, (ADDRESS, PASSW)),
    "Deposit": (2, (USER, mix(st.lists(OUTPOINT, max_size=3), st.lists(st.text(max_size=70),
                                                                      max_size=2)), PASSW)),
    "GetDeposits": (0, (mix(OUTPOINT, st.just("")), PASSW)),
    "GetBalance": (1, (USER, PASSW)),
    "Trade": (3, (USER, AMOUNT, mix(USER, USER, USER, st.just("")), STYLE, PASSW)),
    "ExchangeSettings": (0, (mix(st.lists(ADDRESS, max_size=3), st.just("")),
                             mix(ADDRESS, st.just("")), mix(COMMISSION, st.just("")),
                             mix(st.integers(5, 17), st.just("")), PASSW)),
    "Withdraw": (3, (USER, mix(st.integers(100_010_001, 10**11), AMOUNT), ADDRESS, STYLE,
                     PASSW)),
    "CheckWithdraw": (1, (mix(st.builds(Ref, st.just("withdraw"), st.integers(0, 50))),
                          mix(st.sampled_from([0, 1, True, 2])), PASSW)),
    "GetCycle": (0, (PASSW,)),
    "API": (1, (COMMAND,)),
    "devnet.mine": (0, (mix(st.integers(1, 3), st.sampled_from([200, 10_000, 10_001])),)),
    "devnet.send": (2, (ADDRESS, mix(st.integers(1, 10**11), AMOUNT),
                        mix(st.none(), st.lists(st.integers(0, 10), max_size=3)))),
    "devnet.vote": (1, (mix(st.sampled_from(["inflate", "deflate", "nochange", "INFLATE"])),
                        mix(st.integers(0, 4)))),
    "devnet.info": (0, ()),
    "devnet.balance": (1, (ADDRESS,)),
    "devnet.new_address": (0, ()),
    "devnet.drop": (1, (mix(st.builds(Ref, st.just("txid"), st.integers(0, 50)),
                            st.just("0" * 64)),)),
    "devnet.malleate_next": (0, ()),
    "devnet.reject_next_broadcast": (0, (mix(st.text(min_size=1, max_size=20)),)),
    # (no password argument drawn here: the sweep below gives them every hostile password; a
    # draw more would change every later draw of the derandomized random calls)
    "pegx.status": (0, ()),
    "pegx.noop": (0, ()),
    "pegx.checkpoint": (0, ()),
    "pegx.audit": (0, ()),
    "pegx.backup": (0, (mix(st.sampled_from(["", "relative/dir", "/", NOWHERE + "/b"])),)),
    "pegx.backup_progress": (0, (mix(st.sampled_from(["", "nope", "0" * 12])),)),
    "pegx.digest": (0, ()),
    "pegx.promote": (0, ()),  # not a standby here: a clean Fault, nothing changes
    "system.listMethods": (0, ()),
    "system.methodHelp": (1, (mix(METHOD_NAMES),)),
    "system.methodSignature": (1, (mix(METHOD_NAMES),)),
}


@st.composite
def calls(draw, names: tuple[str, ...], nested: bool = True):
    """(method, args): usually a valid arity, sometimes a wrong one."""
    # the money paths more often than the rest
    name = draw(st.sampled_from(names) | st.sampled_from([n for n in MONEY if n in names]))
    if name == "system.multicall":
        inner = draw(st.lists(calls(tuple(n for n in names if n != "system.multicall"),
                                    nested=False), max_size=4))
        entries = [{"methodName": m, "params": list(a)} for m, a in inner]
        extra = draw(st.sampled_from([[], [{"methodName": "system.multicall", "params": []}],
                                      [{"params": [1]}], [7], [{"methodName": 5}]]))
        return name, (entries + extra,) if draw(st.integers(0, 4)) else (draw(junk),)
    required, params = SIGNATURES.get(name, (0, ()))
    if name in MONEY and draw(st.integers(0, 3)) == 0:
        # a quarter of the money calls are plausible in every argument: which junk Hypothesis
        # draws depends on the constants of every module imported (a new module changed them,
        # and no Trade succeeded), but the money paths must be reached whatever it draws
        return name, tuple(draw(p) for p in params)
    if draw(st.integers(0, 5)) == 0:  # wrong arity (or the generic treatment of a new method)
        n = draw(st.integers(0, len(params) + 2))
    elif draw(st.integers(0, 3)):  # all arguments, so the password is given
        n = len(params)
    else:
        n = draw(st.integers(required, len(params)))
    hostile = draw(st.integers(0, 2)) == 2  # a third of the calls get junk for every argument
    args = [draw(params[i]) if i < len(params) and not hostile else draw(junk)
            for i in range(n)]
    if name == "StartExchange" and len(args) >= 2 and type(args[1]) in (int, bool) \
            and args[1] == 0:
        args[1] = 1  # start=0 halts the exchange (excluded, see the module docstring)
    if name == "pegx.backup" and args and isinstance(args[0], str) and args[0].startswith("/"):
        args[0] = NOWHERE + args[0]  # see NOWHERE
    return name, tuple(args)


# ------------------------------------------------------------------------- documented answers
def _msg(v) -> bool:
    return isinstance(v, str) and v != "" and not LEAK.search(v)


def _balance(v) -> bool:
    return (isinstance(v, dict) and set(v) == {"liquid", "reserve"}
            and all(type(x) is int and x >= 0 for x in v.values()))


def _exchange_balance(v) -> bool:
    return (isinstance(v, dict) and set(v) == {"liquid", "reserve", "subpremium", "frozen"}
            and all(type(x) is int and x >= 0 for x in v.values()))


def _pair(v) -> bool:
    return isinstance(v, list) and len(v) == 2


def _spendable(v) -> bool:
    keys = {"address", "amount", "rtotal", "ltotal", "nfreeze", "supply", "confirmations"}
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(e, dict) and keys <= set(e) <= keys | {"change"}
        and e["amount"] == str(int(e["ltotal"]) + int(e["rtotal"]))
        for k, e in v.items())


def _claim(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("name"), str) and set(v) <= {"name",
                                                                                 "registered"}


DOCUMENTED = {
    "SetPassword": lambda v: v is True or _msg(v),
    "StartExchange": lambda v: isinstance(v, bool) or _msg(v),
    "ExchangePassword": lambda v: v is True or _msg(v),
    "GenerateDepositAddress": lambda v: _pair(v) and (
        (v[1] is True and crypto.wif_to_address(v[0]) != "") or (_msg(v[0]) and v[1] == "")),
    "GetSpendable": lambda v: _spendable(v) or _msg(v),
    "Deposit": lambda v: v is True or _msg(v),
    "GetDeposits": lambda v: v is False or _msg(v) or _claim(v) or (
        isinstance(v, dict) and all(_claim(c) for c in v.values())),
    "GetBalance": lambda v: v is False or _msg(v) or _balance(v) or _exchange_balance(v),
    "Trade": lambda v: v is True or _msg(v),
    "ExchangeSettings": lambda v: isinstance(v, bool) or _msg(v),
    "Withdraw": lambda v: _pair(v) and (
        (v[0] is True and re.fullmatch("[0-9a-f]{32}", v[1]) is not None)
        or ((v[0] is False or _msg(v[0])) and v[1] == "")),
    "CheckWithdraw": lambda v: _msg(v) or (isinstance(v, dict) and "status" in v),
    "GetCycle": lambda v: (type(v) is int and v >= 0) or _msg(v),
    "API": lambda v: v is False,  # the exec call is not enabled on this daemon
    "devnet.mine": lambda v: type(v) is int and v > 0,
    "devnet.send": lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}:0", v),
    "devnet.vote": lambda v: v is True,
    "devnet.info": lambda v: isinstance(v, dict) and "height" in v,
    "devnet.balance": lambda v: isinstance(v, dict) and set(v) == {"amount", "liquid",
                                                                   "reserve", "frozen"},
    "devnet.new_address": lambda v: isinstance(v, str) and crypto.validate_address(v) >= 0,
    "devnet.drop": lambda v: isinstance(v, bool),
    "devnet.malleate_next": lambda v: v is True,
    "devnet.reject_next_broadcast": lambda v: v is True,
    "pegx.status": lambda v: (isinstance(v, dict) and "op_seq" in v) or v == WRONG,
    "pegx.noop": lambda v: v is True,
    "pegx.checkpoint": lambda v: type(v) is int or v == WRONG,
    # the fuzzed exchange keeps its law whatever the calls: every audit is clean
    "pegx.audit": lambda v: v == WRONG or (isinstance(v, dict) and v.get("ok") is True
                                           and v.get("problems") == []),
    "pegx.backup": lambda v: v == WRONG or (isinstance(v, dict) and set(v) == {
        "id", "dest", "total"} and v["dest"].startswith(NOWHERE) and type(v["total"]) is int),
    "pegx.backup_progress": lambda v: v == WRONG or (isinstance(v, dict) and set(v) == {
        "id", "dest", "copied", "total", "done", "error", "result"}),
    "pegx.digest": lambda v: v == WRONG or (isinstance(v, dict) and set(v) == {"seq", "digest"}
                                            and type(v["seq"]) is int),
    # not a standby: the right password gets a Fault, so the only value is the refusal
    "pegx.promote": lambda v: v == WRONG,
    "system.listMethods": lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
    "system.methodHelp": lambda v: isinstance(v, str),
    "system.methodSignature": lambda v: isinstance(v, str),
}
# Results that mean "it worked": the call may have changed state.
SUCCESS = {
    "GenerateDepositAddress": lambda v: v[1] is True,
    "Withdraw": lambda v: v[0] is True,
    "devnet.mine": lambda v: True, "devnet.send": lambda v: True,
    "devnet.new_address": lambda v: True, "pegx.checkpoint": lambda v: type(v) is int,
    "GetDeposits": lambda v: False, "GetBalance": lambda v: False,
}


def fault_problem(code: int, text: str) -> str | None:
    if code in (FAULT_INTERNAL, FAULT_BAD_RESULT):
        return f"a crash reported as Fault {code}: {text!r}"
    if not text or LEAK.search(text):
        return f"an unclear Fault {code}: {text[:300]!r}"
    return None


def answer_problem(method: str, value) -> str | None:
    """None if ``value`` is a documented answer of ``method``, else what is wrong."""
    check = DOCUMENTED.get(method)
    if check is None:  # a method added later: its answers are checked once DOCUMENTED has it
        return f"no documented answer to check {str(value)[:100]!r} against (add {method} to " \
               "DOCUMENTED)"
    try:
        good = check(value)
    except Exception as exc:  # noqa: BLE001 - a malformed answer made the check itself fail
        good, value = False, f"{value!r} ({exc!r})"
    return None if good else f"undocumented answer {str(value)[:300]!r}"


def succeeded(method: str, value) -> bool:
    rule = SUCCESS.get(method)
    return rule(value) if rule is not None else value is True


# ------------------------------------------------------------------------- the fuzzing world
@dataclass
class World:
    """The live daemon plus what the fuzzer knows; checks every call against a snapshot."""

    daemon: Daemon
    client: RawClient
    password: str = ""
    known: dict[str, list] = field(default_factory=lambda: {
        "user": list(USERS), "address": [], "outpoint": [], "withdraw": [], "txid": []})
    problems: list[str] = field(default_factory=list)
    calls: int = 0
    successes: dict[str, int] = field(default_factory=dict)
    last: dict | None = None  # the snapshot after the last checked call

    def resolve(self, value):
        if isinstance(value, Ref):
            if value.kind == "password":
                return self.password
            pool = self.known[value.kind]
            return pool[value.i % len(pool)] if pool else ""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.resolve(v) for v in value)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        return value

    def snapshot(self) -> dict:
        """Every balance the fuzzer knows of, the claims, the op log position, the chain."""
        pw = self.password
        users = sorted(set(self.known["user"]))
        names = users + ["exchange", "pool", "withdraws"]
        batch = [{"methodName": "GetBalance", "params": [u, pw]} for u in names]
        batch += [{"methodName": "GetDeposits", "params": ["", pw]},
                  {"methodName": "pegx.status", "params": [pw]},
                  {"methodName": "devnet.info", "params": []},
                  {"methodName": "GetCycle", "params": [pw]}]
        # chunks, so that a long password repeated in every call stays under the body cap
        per = max(1, 2_000_000 // (len(pw.encode()) + 1000))
        out = [r for i in range(0, len(batch), per)
               for r in self.client.value("system.multicall", batch[i:i + per])]
        assert all(isinstance(r, list) for r in out), out
        status = out[-3][0]
        assert status["cycle_thread_alive"] and status["last_error"] == "", status
        keep = ("op_seq", "users", "inputs", "withdraws", "exchange", "supply", "cycle",
                "height", "started", "loaded")
        return {"balances": dict(zip(names, (r[0] for r in out), strict=False)),
                "claims": out[-4][0], "status": {k: status[k] for k in keep},
                "chain": out[-2][0], "cycle": out[-1][0]}

    def settle(self) -> None:
        """Wait for the cycle thread to finish what a successful call started."""
        x = self.client

        def caught_up():
            info, st_ = x.value("devnet.info"), x.value("pegx.status", self.password)
            return st_["height"] == info["height"] and st_["cycle"] == info["cycle"]

        wait_until(caught_up, 60, what="the cycle thread to follow the chain")
        seq = x.value("pegx.status", self.password)["op_seq"]
        deadline = time.monotonic() + 60
        while True:
            time.sleep(0.35)  # > 3 cycle passes (poll 0.1 s): a pass in progress has finished
            now = x.value("pegx.status", self.password)["op_seq"]
            if now == seq:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the ledger kept changing for 60 s after a call (op seq "
                                     f"{seq:,d} -> {now:,d}): the fuzzer's snapshots would race "
                                     "the cycle thread")
            seq = now

    def learn(self, method: str, args: tuple, value) -> None:
        """Remember what a successful call created, so later calls can use it."""
        if method == "SetPassword":
            new = args[0] if args else ""
            self.password = new.replace("\r\n", "\n").replace("\r", "\n")  # XML newline rule
            assert self.client.value("GetCycle", self.password) != WRONG, "password not taken"
        elif method == "Trade":
            for u in (args[0], args[2]):
                if u not in ("", *self.known["user"]):
                    self.known["user"].append(u)
        elif method == "Withdraw":
            self.known["withdraw"].append(value[1])
        elif method == "GenerateDepositAddress":
            self.known["address"].append(crypto.wif_to_address(value[0]))
        elif method == "devnet.new_address":
            self.known["address"].append(value)
        elif method == "devnet.send":
            self.known["outpoint"].append(value)
            self.known["txid"].append(value.split(":")[0])

    def check(self, method: str, args: tuple, *, collect: bool = False) -> None:
        """Make one call and hold it to every rule in the module docstring (``collect``: add
        problems to ``self.problems`` for the caller to assert, instead of failing now)."""
        args = self.resolve(args)
        # the state after the previous call is the state before this one: nothing else writes
        before = self.last if self.last is not None else self.snapshot()
        self.last = None
        out = self.client.call(method, *args)
        self.calls += 1
        shown = f"{method}{_short(args)}"
        changed_ok = False
        if out.status != 200:
            self.problems.append(f"{shown}: HTTP {out.status}")
        elif out.fault:
            problem = fault_problem(out.code, out.text)
            if problem:
                self.problems.append(f"{shown}: {problem}")
        elif method == "system.multicall":
            changed_ok = self._multicall(args, out.value, shown)
        else:
            problem = answer_problem(method, out.value)
            if problem:
                self.problems.append(f"{shown}: {problem}")
            elif succeeded(method, out.value):
                changed_ok = True
                self.successes[method] = self.successes.get(method, 0) + 1
                self.learn(method, args, out.value)
                if method in ASYNC_EFFECTS:
                    self.settle()
        after = self.last = self.snapshot()
        if not changed_ok and after != before:
            diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            self.problems.append(f"{shown} answered {_short(out.value or out.text)} but changed "
                                 f"state: {_short(diff, 800)}")
        if not collect:
            assert not self.problems, "\n".join(self.problems)

    def _multicall(self, args: tuple, results, shown: str) -> bool:
        if not isinstance(results, list):
            self.problems.append(f"{shown}: multicall answered {_short(results)}")
            return False
        calls_ = args[0] if args and isinstance(args[0], list) else [None] * len(results)
        if len(results) != len(calls_):  # (raw XML arguments: one entry per element sent)
            self.problems.append(f"{shown}: {len(results)} answers to {len(calls_)} calls")
            return False
        changed = False
        for call, res in zip(calls_, results, strict=True):
            name = call.get("methodName") if isinstance(call, dict) else None
            if isinstance(res, dict):
                problem = fault_problem(res.get("faultCode"), res.get("faultString", ""))
            elif isinstance(res, list) and len(res) == 1:
                problem = answer_problem(str(name), res[0])
                if problem is None and succeeded(str(name), res[0]):
                    changed = True
                    self.learn(name, tuple(call["params"]), res[0])
                    if name in ASYNC_EFFECTS:
                        self.settle()
            else:
                problem = f"multicall entry {_short(res)}"
            if problem:
                self.problems.append(f"{shown} -> {name}: {problem}")
        return changed


def _short(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text):,d} chars)"


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One exchange at supply 40: four funded users and two confirmed, unclaimed deposits."""
    d = Daemon(tmp_path_factory.mktemp("fuzz") / "d", extra=["--initial-supply", str(SUPPLY)],
               env={"PEGX_POLL_SECONDS": "0.1"})
    with d:
        yield d


@pytest.fixture(scope="module")
def world(daemon):
    x = daemon.proxy()
    w = World(daemon, RawClient(daemon.port))
    for i, user in enumerate(USERS):
        w.known["outpoint"].append(daemon.fund(user, (i + 1) * 300 * BAY))
    for _ in range(2):  # unclaimed: Deposit can claim them (first claim wins)
        key, _ok = x.GenerateDepositAddress()
        address = crypto.wif_to_address(key)
        wait_until(lambda a=address: a in x.devnet.info()["wallet_addresses"], 10)
        w.known["address"].append(address)
        w.known["outpoint"].append(x.devnet.send(address, str(50 * BAY)))
    x.devnet.mine(13)
    w.known["address"].append(x.devnet.new_address())
    w.known["address"].append(crypto.wif_to_address(crypto.generate_deposit_key()))
    w.known["txid"] = [o.split(":")[0] for o in w.known["outpoint"]]
    w.settle()
    yield w
    w.client.close()


@pytest.fixture(autouse=True)
def own_connection(request):
    """Each test talks over a connection of its own: a test that fails with a request still
    half-sent (or an answer unread) must not hand that connection to the tests after it."""
    if "world" not in request.fixturenames:
        yield
        return
    world = request.getfixturevalue("world")
    world.client.close()
    world.client = RawClient(world.daemon.port)
    world.last = None  # the next check takes a fresh snapshot over the new connection
    yield
    world.client.close()


# ------------------------------------------------------------------------- tests
def test_the_fuzzer_covers_every_published_method(daemon):
    """Both ways: every published method has plausible arguments (SIGNATURES) and documented
    answers (DOCUMENTED) or is excluded with a reason, and the fuzzer names no method the
    daemon does not publish."""
    published = set(daemon.proxy().system.listMethods())
    fuzzed = published - set(EXCLUDED) - {"system.multicall"}
    assert fuzzed - set(SIGNATURES) == set(), "published methods without SIGNATURES"
    assert fuzzed - set(DOCUMENTED) == set(), "published methods without DOCUMENTED answers"
    known = set(SIGNATURES) | set(DOCUMENTED) | set(EXCLUDED) | {"system.multicall"}
    assert known - published == set(), "the fuzzer knows methods the daemon does not publish"


def fuzzed_methods(daemon: Daemon) -> tuple[str, ...]:
    return tuple(sorted(m for m in daemon.proxy().system.listMethods() if m not in EXCLUDED))


@pytest.fixture(scope="module")
def methods(daemon):
    return fuzzed_methods(daemon)


def test_fuzz_whole_surface(world, methods):
    """Random calls: documented answers or clean Faults; rejected calls change nothing. And
    they must not all have been refused: trades and deposit addresses happened (counted over
    this test's own calls, so it holds whatever ran before it). It starts without an API
    password, as a new exchange does (the draws' successes count on it; other tests set one)."""
    if world.password != "":
        world.check("SetPassword", ("", Ref("password")))
    assert world.password == ""
    calls0, successes0 = world.calls, dict(world.successes)

    @settings(max_examples=settings.default.max_examples * 2)
    @given(data=st.data())
    def fuzz(data):
        for method, args in data.draw(st.lists(calls(methods), min_size=3, max_size=10),
                                      label="calls"):
            world.check(method, args)

    fuzz()
    made = world.calls - calls0
    ok = {m: n - successes0.get(m, 0) for m, n in world.successes.items()}
    print(f"{made} fuzzed calls; successes: {sorted(ok.items())}")
    assert made > 200, made
    assert ok.get("Trade", 0) >= 3, ok
    assert ok.get("GenerateDepositAddress", 0) >= 1, ok


# One hostile value at a time in every argument position of every method, the other
# arguments plausible: the systematic complement of the random calls above.
HOSTILE = [None, True, False, 0, -1, 2**31, 2**63, -(2**63) - 1, 10**30, 10**4000, NAN, INF, -INF,
           -0.0, 0.5, 1e300, *DECIMALS[:3], b"", b"\x00\xff" * 50, "", " ", MEGA, "漢字" * 4000, "\x00", "\ufffe", "ＥＸＣＨＡＮＧＥ", "Pool", "-5", "1e5", [], [None],
           {}, {"a": [1, {"b": None}]}, DATES[1], deep_array(40), deep_struct(40), HUGE_LITERAL,
           SNAN, deep_array(3000)]
PLAUSIBLE = {
    "SetPassword": (Ref("password"), Ref("password")),
    "StartExchange": (Ref("password"), 1, 0),
    "ExchangePassword": ("wallet-pw", Ref("password")),
    "GenerateDepositAddress": (Ref("password"),),
    "GetSpendable": (Ref("address"), Ref("password")),
    "Deposit": ("alice", [Ref("outpoint")], Ref("password")),
    "GetDeposits": (Ref("outpoint"), Ref("password")),
    "GetBalance": ("alice", Ref("password")),
    "Trade": ("alice", 1000, "bobby", "liquid", Ref("password")),
    "ExchangeSettings": ("", "", "", "", Ref("password")),
    "Withdraw": ("alice", 2 * BAY, Ref("address"), "liquid", Ref("password")),
    "CheckWithdraw": (Ref("withdraw"), 0, Ref("password")),
    "GetCycle": (Ref("password"),),
    "API": ({"sig": "", "exec": "result = 1"},),
    "devnet.mine": (1,), "devnet.send": (Ref("address"), BAY, None),
    "devnet.vote": ("nochange", 1), "devnet.balance": (Ref("address"),),
    "devnet.drop": (Ref("txid"),), "devnet.reject_next_broadcast": ("lever",),
    "pegx.status": (Ref("password"),), "pegx.checkpoint": (Ref("password"),),
    "pegx.audit": (Ref("password"),), "pegx.digest": (Ref("password"),),
    "pegx.promote": (Ref("password"),),
    "pegx.backup": ("relative/dir", Ref("password")),
    "pegx.backup_progress": ("nope", Ref("password")),
    "system.methodHelp": ("Trade",), "system.methodSignature": ("Trade",),
    "system.multicall": ([{"methodName": "pegx.noop", "params": []}],),
}


def test_every_argument_position_against_hostile_values(world, methods):
    """With a password set, so a hostile value in the password position must be refused."""
    world.check("SetPassword", ("sweep-Pw", Ref("password")))
    assert world.password == "sweep-Pw"
    for method in methods:
        plausible = PLAUSIBLE.get(method, ())
        for i in range(max(len(plausible), 1)):
            for value in HOSTILE:
                args = list(plausible) or [value]
                args[i] = value
                if method == "StartExchange" and i == 1 and type(value) in (int, bool) \
                        and value == 0:
                    continue  # start=0: excluded (module docstring)
                if value is MEGA and (method, i) in ADDRESS_POSITIONS:
                    continue  # see LONG_STRINGS
                world.check(method, tuple(args), collect=True)
                if method == "SetPassword" and world.password != "sweep-Pw":
                    world.check("SetPassword", ("sweep-Pw", Ref("password")), collect=True)
    problems, world.problems = world.problems, []
    assert not problems, "\n".join(problems)


# Raw bodies: not well-formed, not a method call, hostile XML, odd encodings.
MALFORMED = [
    b"", b"not xml at all", b"<?xml version='1.0'?>", b"<methodCall>",
    b"<methodCall><methodName>pegx.noop</methodName><params><param>",
    b"<methodCall><params></params></methodCall>",
    b"<methodCall><methodName></methodName></methodCall>",
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value><int>abc</int>"
    b"</value></param></params></methodCall>"),
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value><double>x</double>"
    b"</value></param></params></methodCall>"),
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value><boolean>2"
    b"</boolean></value></param></params></methodCall>"),
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value><base64>!!!*"
    b"</base64></value></param></params></methodCall>"),
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value><dateTime.iso8601>"
    b"yesterday</dateTime.iso8601></value></param></params></methodCall>"),
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value><struct><member>"
    b"<value>1</value></member></struct></value></param></params></methodCall>"),
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value><foo>alice</foo>"
    b"</value></param></params></methodCall>"),
    b"<methodCall><methodName>Trade</methodName><params><param><value><i8>" + b"9" * 5000
    + b"</i8></value></param></params></methodCall>",
    (b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]>"
    b"<methodCall><methodName>GetBalance</methodName><params><param><value>&lol2;</value>"
    b"</param></params></methodCall>"),
    (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><methodCall>"
    b"<methodName>GetBalance</methodName><params><param><value>&e;</value></param></params>"
    b"</methodCall>"),
    (b"<methodResponse><params><param><value><int>1</int></value></param></params>"
    b"</methodResponse>"),
    (b"<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>1</int>"
    b"</value></member><member><name>faultString</name><value>x</value></member></struct>"
    b"</value></fault></methodResponse>"),
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value>\xff\xfe\x00"
    b"</value></param></params></methodCall>"),
    "<?xml version='1.0' encoding='utf-16'?><methodCall><methodName>pegx.noop</methodName>"
    "</methodCall>".encode("utf-16"),
    (b"<?xml version='1.0' encoding='klingon'?><methodCall><methodName>pegx.noop</methodName>"
    b"</methodCall>"),
    (b"<methodCall><methodName>GetBalance</methodName><params><param><value>a\x00b</value>"
    b"</param></params></methodCall>"),
    b"<methodCall><methodName>pegx.noop</methodName></methodCall><methodCall>",
    (b"<methodCall><methodName>pegx.noop</methodName><methodName>ShutDown</methodName>"
    b"</methodCall>"),
    b"<methodCall><methodName>" + b"A" * 100_000 + b"</methodName></methodCall>",
    b"<a>" * 50_000 + b"</a>" * 50_000,
    b"<methodCall><methodName>system.multicall</methodName><params><param><value><array><data>"
    + b"<value><struct><member><name>methodName</name><value>pegx.noop</value></member>"
      b"<member><name>params</name><value><array><data/></array></value></member></struct>"
      b"</value>" * 20_000
    + b"</data></array></value></param></params></methodCall>",
]


@pytest.fixture
def guarded(world):
    """The world with an API password set: a malformed body that still names ShutDown (two
    methodNames, the last wins) is then refused for its password, so the daemon lives on
    whatever ran before (it was the hostile sweep's password, set only when that test ran
    first)."""
    if world.password == "":
        world.check("SetPassword", ("guard-Pw", ""))
    assert world.password != ""
    return world


@pytest.mark.parametrize("body", MALFORMED, ids=[f"body{i}" for i in range(len(MALFORMED))])
def test_malformed_bodies_get_a_clean_fault(guarded, body):
    world = guarded
    before = world.snapshot()
    out = world.client.send(body)
    assert out.status == 200, out
    if out.fault:
        assert fault_problem(out.code, out.text) is None, out
    else:  # a few are calls after all (the utf-16 noop, lenient base64, 20,000 noops)
        assert out.value in (True, False) or _msg(out.value) or (
            isinstance(out.value, list) and all(r == [True] for r in out.value)), out
    assert world.snapshot() == before
    assert world.client.value("pegx.noop") is True


def test_http_framing_abuse_is_refused_and_the_daemon_keeps_serving(world, daemon):
    before = world.snapshot()
    c = world.client
    assert c.post(b"", verb="GET")[0] in (404, 405, 501)
    assert c.post(request_body("pegx.noop", ()), path="/admin")[0] == 404
    # the refused POST's body was not taken for the next request (issue 10 item 8): the same
    # connection answers the next call
    assert c.call("GetCycle", world.password).value == before["cycle"]
    assert c.post(request_body("pegx.noop", ()), {"Content-Encoding": "br"})[0] == 415
    bomb = gzip.compress(b"<methodCall>" + b" " * (64 << 20))
    assert c.post(bomb, {"Content-Encoding": "gzip"})[0] in (400, 413)
    assert c.post(b"x", {"Content-Encoding": "gzip"})[0] == 400
    c.close()
    # lies about the length: one that the body cannot meet, a negative one, a huge one
    for length in ("-1", "abc", str(10**12)):
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        conn.putrequest("POST", "/RPC2")
        conn.putheader("Content-Length", length)
        conn.endheaders()
        assert conn.getresponse().status in (400, 413)
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.putrequest("POST", "/RPC2")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    # a client that announces 1000 bytes, sends 10 and hangs up
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.putrequest("POST", "/RPC2")
    conn.putheader("Content-Length", "1000")
    conn.endheaders()
    conn.send(b"<methodCal")
    conn.close()
    assert world.snapshot() == before
    assert c.value("pegx.noop") is True


# ------------------------------------- once bugs: <bigdecimal> sNaN and deep nesting (fixed)
@pytest.mark.parametrize("method,args", [("StartExchange", (Ref("password"), SNAN)),
                                         ("StartExchange", (Ref("password"), 1, SNAN)),
                                         ("CheckWithdraw", ("abc", SNAN, Ref("password")))])
def test_signalling_nan_decimal_gets_a_clean_fault_or_value(world, method, args):
    before = world.snapshot()
    out = world.client.call(method, *world.resolve(args))
    assert world.snapshot() == before
    assert not out.fault or fault_problem(out.code, out.text) is None, out
    assert not out.fault or out.code != FAULT_INTERNAL


@pytest.mark.parametrize("method,wrap", [("devnet.drop", False), ("devnet.vote", False),
                                         ("ExchangeSettings", True),
                                         ("system.methodHelp", False)])
def test_deeply_nested_params_get_a_clean_fault(world, method, wrap):
    value = deep_array(3000)
    if wrap:  # ExchangeSettings(exchangeaccounts=[deep], passw=...)
        value = Xml(f"<value><array><data>{value.xml}</data></array></value>")
        out = world.client.call(method, value, "", "", "", world.password)
    else:
        out = world.client.call(method, value)
    assert out.status == 200
    assert not out.fault or fault_problem(out.code, out.text) is None, out


def test_nan_and_infinite_amounts_are_refused_as_values(world):
    """Stock xmlrpc.client sends NaN/inf as doubles: a message back, never a Fault."""
    x = world.daemon.proxy()
    before = world.snapshot()
    for bad in (math.nan, math.inf, -math.inf, 0.5, 1e300):
        got = x.Trade("alice", bad, "bobby", "liquid", world.password)
        assert _msg(got) and got != WRONG, got
        got = x.Withdraw("alice", bad, world.known["address"][0], "liquid", world.password)
        assert _pair(got) and _msg(got[0]) and got[1] == "", got
    assert world.snapshot() == before
