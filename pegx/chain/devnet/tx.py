"""The devnet's transaction format, signatures and argument checks.

A devnet transaction's ``raw`` is the hex of canonical JSON (sorted keys, no spaces); its txid
is ``crypto.txhash(raw)`` (double SHA-256, byte-reversed hex, like a real txid). A spend is
``{"v": 1, "inputs": ["txid:vout", ...], "outputs": [{"value", "address"|"data"}], "sigs":
[[pubkey hex, DER signature hex], ...]}``: every input signs the whole body with the key of the
address it spends (RFC 6979, so signing is deterministic). An outside payment (``Devnet.send``)
is ``{"v": 1, "outside": n, "seed", "address", "amount", "fractions"}`` and has no inputs.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from pegx import crypto
from pegx.chain.base import ChainRejected, TxOut


def canonical(obj: object) -> str:
    """Deterministic JSON text (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def encode(body: dict) -> str:
    """The raw hex of a transaction body."""
    return canonical(body).encode().hex()


def txid_of(raw: str) -> str:
    """The txid of a raw transaction."""
    return crypto.txhash(raw)


def out_to_json(out: TxOut) -> dict:
    """An output as it appears in the raw body (OP_RETURN data as hex)."""
    if out.data is not None:
        return {"value": out.value, "data": out.data.hex()}
    return {"value": out.value, "address": out.address}


def out_from_json(obj: dict) -> TxOut:
    """Inverse of :func:`out_to_json`; ValueError/TypeError on anything malformed."""
    value = obj["value"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"output value must be an int, got {value!r}")
    if "data" in obj:
        return TxOut(value, data=bytes.fromhex(obj["data"]))
    return TxOut(value, address=str(obj["address"]))


def sighash(inputs: list[str], outputs: list[dict]) -> str:
    """The message every input signs: a digest of the whole body (SIGHASH_ALL in spirit)."""
    body = canonical({"inputs": inputs, "outputs": outputs})
    return "pegx-devnet-sighash:" + hashlib.sha256(body.encode()).hexdigest()


def sign(message: str, priv: bytes, compressed: bool) -> list[str]:
    """[pubkey hex, DER signature hex] of one input."""
    pub = crypto.public_key(priv, compressed).hex()
    return [pub, crypto.sign_message(message, priv).hex()]


def check_signature(n: int, key: str, address: str, sig: object, message: str,
                    net: crypto.Network = crypto.MAIN) -> None:
    """Raise ChainRejected unless ``sig`` is a valid signature of ``message`` by ``address``
    (an address of ``net``)."""
    try:
        pub_hex, sig_hex = sig  # type: ignore[misc]
        ok = crypto.pubkey_to_address(bytes.fromhex(pub_hex), net=net) == address and crypto.verify_message(
            message, bytes.fromhex(sig_hex), pub_hex
        )
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ChainRejected(f"input {n} ({key}): signature does not match {address}")


def decode_spend(raw: object) -> tuple[list[str], list[TxOut], list[dict], list]:
    """(inputs, outputs, outputs as JSON, signatures) of a raw spend; ChainRejected if malformed."""
    ok = False
    try:
        body = json.loads(bytes.fromhex(raw))  # type: ignore[arg-type]
        inputs = [str(k) for k in body["inputs"]]
        outs_json = list(body["outputs"])
        outputs = [out_from_json(o) for o in outs_json]
        sigs = list(body["sigs"])
        ok = body.get("v") == 1 and len(sigs) == len(inputs) and bool(inputs) and bool(outputs)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    if not ok:
        raise ChainRejected("TX decode failed: not a signed devnet transaction")
    return inputs, outputs, outs_json, sigs


def check_int(name: str, value: object, lo: int, hi: int | None) -> int:
    """Validate an int argument of a lever (bools refused); ValueError with a clear message."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")  # noqa: TRY004
    if value < lo or (hi is not None and value > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {span}, got {value}")
    return int(value)


def check_address(address: object, net: crypto.Network = crypto.MAIN) -> str:
    """Validate a BitBay address of ``net`` (pegx.crypto.validate_address); ValueError
    otherwise."""
    try:
        crypto.validate_address(address, net)
    except crypto.CryptoError as exc:
        raise ValueError(f"bad address {address!r}: {exc}") from None
    return str(address)
