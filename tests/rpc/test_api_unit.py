"""Unit tests of the API's pure parts: amount coercion and the password gate (real ledger)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from pegx.ledger import rules
from pegx.ledger.rules import coerce_amount
from pegx.rpc.api import PasswordGate


@pytest.mark.parametrize(("value", "want"), [
    (5, 5), (-5, -5), (2**62, 2**62), ("250000000000", 250000000000), (" +7 ", 7), ("-0", 0),
    ("9" * 30, int("9" * 30)), (2.5e9, 2500000000), (-3.0, -3), (float(2**53), 2**53),
])
def test_amounts_accepted(value, want):
    got = coerce_amount(value)
    assert got == want and type(got) is int


@pytest.mark.parametrize("value", [
    True, False, None, 1.5, math.nan, math.inf, -math.inf, float(2**53) * 2, "1.0", "1e5", "",
    " ", "0x10", "1_000", "٣", "５", "9" * 31, [5], {"a": 5}, b"5",
])
def test_amounts_refused_with_a_message(value):
    with pytest.raises(rules.AmountError) as info:
        coerce_amount(value)
    assert str(info.value).startswith("Amount")


def test_password_gate_blank_by_default_then_hashed(ledger):
    gate = PasswordGate(ledger)
    assert gate.check("") and gate.check("anything") and gate.check(None)
    gate.set("s3cret pw")
    rec = ledger.record("settings", "password")
    assert set(rec) == {"salt", "hash", "n", "r", "p"}
    assert "s3cret" not in repr(rec)
    assert not gate.check("") and not gate.check(None) and not gate.check(["s3cret pw"])
    assert not gate.check("s3cret pw ")
    assert gate.check("s3cret pw")
    assert not gate.check("s3cret pW")  # the fast path after a success is just as strict
    assert gate.check("s3cret pw")
    fresh = PasswordGate(ledger)  # what a restart sees: only the stored hash
    assert not fresh.check("") and fresh.check("s3cret pw")
    gate.set("")
    assert ledger.record("settings", "password") is None
    assert gate.check("") and PasswordGate(ledger).check("whatever")


def test_password_gate_under_concurrent_wrong_guesses(ledger):
    gate = PasswordGate(ledger)
    gate.set("right")
    guesses = [f"wrong{i}" for i in range(12)] + ["right"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(gate.check, guesses))
    assert results == [False] * 12 + [True]
