"""The exchange settings (ExchangeSettings): their defaults and their validation, in one place.

:func:`updated` checks the four fields in the original's order (ORIGINAL §1.3 ExchangeSettings)
and returns the new settings only when every given field passed, so a refusal changes nothing;
:class:`Refused` carries the API's answer (a message, or False where the original answers
False). Whether an exchange account belongs to the node's wallet is the caller's question
(``not_in_wallet``): the ledger never asks the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from pegx import crypto
from pegx.ledger.rules import EngineError, coerce_amount

DEFAULT_COMMISSION = {"min": 100000000, "max": 1000000000, "percent": "0.001"}
DEFAULT_CONFIRMATIONS = 7
MIN_COMMISSION = 10000  # below this a batch cannot pay its basic fees
MAX_PERCENT = Decimal("0.05")
ACCOUNTS_MSG = ("Exchange accounts must be a list and must contain all accounts used by the "
                "exchange for receiving change.")
COMMISSION_SHAPE_MSG = "Commission must be a dict with 'min', 'max' and 'percent'."
COMMISSION_VALUES_MSG = "Commission min and max must be satoshi amounts and percent a number."
CONFIRMATIONS_MSG = "Confirmations must be an integer from 7 to 15."


class Refused(Exception):
    """A field ExchangeSettings refuses; ``answer`` is what the call returns (str or False)."""

    def __init__(self, answer: str | bool):
        super().__init__(answer)
        self.answer = answer


def with_defaults(rec: dict | None) -> dict:
    """The stored settings record with the original's defaults filled in."""
    rec = rec or {}
    return {"exchangeaccounts": rec.get("exchangeaccounts", []),
            "exchangefeeaccount": rec.get("exchangefeeaccount", ""),
            "commission": rec.get("commission", dict(DEFAULT_COMMISSION)),
            "exchangeconfirmations": rec.get("exchangeconfirmations", DEFAULT_CONFIRMATIONS)}


def updated(current: dict, *, exchangeaccounts="", exchangefeeaccount="", commission="",
            exchangeconfirmations="",
            not_in_wallet: Callable[[list], str | None] = lambda accounts: None,
            network: crypto.Network = crypto.MAIN) -> dict:
    """``current`` with every field that is not '' replaced by its validated value; raises
    Refused (nothing changed) at the first field that fails. Addresses are checked against
    ``network``'s versions (the network setting)."""
    new = dict(current)
    if exchangeaccounts != "":
        new["exchangeaccounts"] = _accounts(exchangeaccounts, not_in_wallet, network)
    if exchangefeeaccount != "":
        new["exchangefeeaccount"] = _fee_account(exchangefeeaccount, network)
    if commission != "":
        new["commission"] = _commission(commission)
    if exchangeconfirmations != "":
        new["exchangeconfirmations"] = _confirmations(exchangeconfirmations)
    return new


def _accounts(accounts, not_in_wallet: Callable[[list], str | None],
              network: crypto.Network) -> list:
    if not isinstance(accounts, (list, tuple)) or not accounts:
        raise Refused(ACCOUNTS_MSG)
    for addr in accounts:
        try:
            crypto.validate_address(addr, network)
        except crypto.CryptoError as exc:
            raise Refused(f"Exchange account {addr!r} is not a valid address: {exc}.") from None
    refused = not_in_wallet(list(accounts))
    if refused:
        raise Refused(refused)
    return list(accounts)


def _fee_account(address, network: crypto.Network) -> str:
    try:
        crypto.validate_address(address, network)
    except crypto.CryptoError as exc:
        raise Refused(f"Exchange fee account is not a valid address: {exc}.") from None
    return address


def _commission(commission) -> dict:
    if not isinstance(commission, dict) or not {"min", "max", "percent"} <= commission.keys():
        raise Refused(COMMISSION_SHAPE_MSG)
    try:
        cmin = coerce_amount(commission["min"])
        cmax = coerce_amount(commission["max"])
        percent = _percent(commission["percent"])
    except (EngineError, InvalidOperation, ValueError):
        raise Refused(COMMISSION_VALUES_MSG) from None
    if percent < 0:
        raise Refused(False)
    if percent > MAX_PERCENT:
        raise Refused("Commission is too high.")
    if cmax < cmin:
        raise Refused(False)
    if cmin < MIN_COMMISSION:
        raise Refused("Minimum commission should be high enough to cover basic fees and "
                      "maintenance.")
    return {"min": cmin, "max": cmax, "percent": str(percent)}


def _percent(value) -> Decimal:
    if isinstance(value, bool):
        raise InvalidOperation
    percent = Decimal(str(value))
    if not percent.is_finite():
        raise InvalidOperation
    return percent


def _confirmations(conf) -> int:
    if isinstance(conf, bool) or not isinstance(conf, int):
        raise Refused(CONFIRMATIONS_MSG)
    if conf < 7:
        raise Refused("Not enough confirmations")
    if conf > 15:
        raise Refused("Too many confirmations")
    return conf
