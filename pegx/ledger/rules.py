"""The ledger's rules on names, amounts and styles, its messages and its errors.

Each rule has this one owner: the API, the engine's op checks and the operator tools all call
these, so a name the API accepts is a name the ledger accepts, with the same message, in the
original's order (ORIGINAL §1.3).
"""

from __future__ import annotations

import math
import re

import numpy as np

from pegx import peg

POOL = "pool"
WITHDRAWS = "withdraws"
HOUSE = "exchange"  # the exchange's own account: fee income, change surplus
RESERVED = frozenset({"total", "pool", "frozen", "x", "exchange", "withdraws"})
INTERNAL = (POOL, WITHDRAWS, HOUSE)
MIN_NAME = 4
MAX_NAME = 256
MAX_AMOUNT = 10**17 * 2  # twice the total BAY supply in satoshi: anything larger is a mistake
FROZEN_GRACE = 43200  # an input unfrozen less than 12 h ago still counts as frozen (ORIGINAL §3.2)

RESERVED_MSG = "Name reserved for exchange operations. Please use different name."
SHORT_MSG = "Name is too short in length."
STYLE_MSG = "Style must be 'liquid' or 'reserve'."
TAKEN_MSG = "{key} was already deposited for another user."
# pending withdraws per style (the original allowed 301 liquid by an off-by-one)
LIMITS = {peg.LIQUID: 300, peg.RESERVE: 45}
LIMIT_MSGS = {
    peg.LIQUID: "Withdraw limit reached, please wait until transactions clear.",
    peg.RESERVE: "Reserve withdraw limit reached, please wait until transactions clear.",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"^[+-]?[0-9]{1,30}$")  # ASCII digits only: int() would take "١٢٣"


class EngineError(ValueError):
    """A request the ledger refuses; ``str(exc)`` is the message for the client."""


class NameError_(EngineError):
    """A reserved, too short or malformed account name."""


class AmountError(EngineError):
    """An amount that is not a positive integer in range."""


class FundsError(EngineError):
    """Not enough balance (or pool) for the request."""


class UnknownAccount(EngineError):
    """The account does not exist."""


class LimitReached(EngineError):
    """The style already has its maximum of pending withdraws."""


class HouseShort(FundsError):
    """A settlement would make the house account pay more than it holds (nothing changed)."""


def check_name(name, *, allow_internal: bool = False) -> str:
    """Validate an account name as the original does (reserved first, then length)."""
    if not isinstance(name, str):
        raise NameError_(f"Name must be a string, got {type(name).__name__}.")
    if name.lower() in RESERVED and not (allow_internal and name in INTERNAL):
        raise NameError_(RESERVED_MSG)
    if len(name) < MIN_NAME and not (allow_internal and name in INTERNAL):
        raise NameError_(SHORT_MSG)
    if len(name) > MAX_NAME:
        raise NameError_(f"Name is too long (at most {MAX_NAME} characters).")
    if _CONTROL.search(name):
        raise NameError_("Name contains control characters.")
    return name


def check_trade_names(user1, user2) -> None:
    """Trade's name checks in the original order (ORIGINAL §1.3 Trade 5-6): ``user2 == ''`` is
    the pool, and nobody trades with the withdraws account."""
    check_name(user1)
    if user2 != "":
        if isinstance(user2, str) and user2.lower() == WITHDRAWS:
            raise NameError_(RESERVED_MSG)
        check_name(user2)


def check_amount(amount, *, allow_negative: bool = False) -> int:
    """An int amount in satoshi, non-zero, within MAX_AMOUNT."""
    if isinstance(amount, bool) or not isinstance(amount, (int, np.integer)):
        raise AmountError(f"Amount must be an integer number of satoshi, got {type(amount).__name__}.")
    amount = int(amount)
    if amount == 0:
        raise AmountError("Amount must not be zero.")
    if amount < 0 and not allow_negative:
        raise AmountError("Amount must be greater than zero.")
    if abs(amount) > MAX_AMOUNT:
        raise AmountError(f"Amount is too large (at most {MAX_AMOUNT:,d} satoshi).")
    return amount


def check_style(style) -> str:
    """``style`` if it is 'liquid' or 'reserve'; EngineError with the API's message otherwise."""
    if style not in peg.STYLES:
        raise EngineError(STYLE_MSG)
    return style


def coerce_amount(value) -> int:
    """An amount in satoshi from an int, a decimal string of satoshi or an integral float.

    A stock xmlrpc.client cannot send ints beyond ±2^31, so big amounts come as strings or
    floats. Raises AmountError with a clear message otherwise.
    """
    if isinstance(value, bool):
        raise AmountError("Amount must be a number of satoshi, not a boolean.")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise AmountError(f"Amount must be a whole number of satoshi, got {value!r}.")
        if abs(value) > 2**53:
            raise AmountError(
                "Amount is too large to be exact as a float: send it as a decimal string.")
        return int(value)
    if isinstance(value, str) and _DIGITS.match(value.strip()):
        return int(value.strip())
    raise AmountError(
        "Amount must be an integer number of satoshi: an int, a decimal string such as "
        "'2500000000', or a whole float.")
