"""The ``bitbayd`` chain backend: a JSON-RPC client of a real BitBay node (DESIGN §5).

The transport, its time bounds and the error taxonomy (NodeError, NodeWarmingUp,
NodeUnavailable) are :mod:`pegx.chain.jsonrpc`; this module maps the node's calls onto the
:class:`pegx.chain.base.Chain` protocol, with the shapes the real node (bitbay-core 3d39e0a)
answers in (tests/bitbayd_replies/).

Amounts: the node prints BAY amounts as doubles with 8 decimals, which are inexact above 2^53
sat (~90M BAY): 99,999,979,999,985,000 sat prints as ``999999799.99984992``. So the exact
integers are taken from elsewhere: a wallet output's value is its ``getfractions`` total (checked
against the printed amount with :func:`amount_is`), a transaction's output values come from its
raw bytes. A wallet output that cannot be reconciled is logged once and left out of
``list_unspent``; it never fails the whole list (issue #13).

Wallet: an encrypted wallet is unlocked with the passphrase given (ExchangePassword's) for
imports and signing, once per UNLOCK_REUSE seconds, and again if it was locked behind our back.
Without a passphrase a locked wallet raises WalletLocked ("wallet locked: call ExchangePassword").

Every public Chain method (``tip``, ``list_unspent``, ...) runs under one deadline for all its
node calls (:func:`pegx.chain.jsonrpc.bounded`); ``chain.with_retry(deadline)`` returns the
view the cycle thread uses, sharing connections and caches.

Over 400 lines (~610): one adapter, the Chain protocol method by method in the node's reply
shapes (the transport is pegx.chain.jsonrpc).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import numpy as np

from pegx import crypto
from pegx.chain.base import (
    CYCLE_BLOCKS,
    Chain,
    ChainRejected,
    SignedTx,
    Tip,
    Tx,
    TxOut,
    Utxo,
    WalletLocked,
    outpoint,
    split_outpoint,
)
from pegx.chain.jsonrpc import (
    COIN,
    LOCAL_CHECK,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_METHOD_NOT_FOUND,
    RPC_WALLET_ALREADY_UNLOCKED,
    RPC_WALLET_ERROR,
    RPC_WALLET_PASSPHRASE_INCORRECT,
    RPC_WALLET_UNLOCK_NEEDED,
    RPC_WALLET_WRONG_ENC_STATE,
    JsonRpcClient,
    NodeError,
    NodeUnavailable,
    NodeWarmingUp,
    Shared,
    amount_is,
    backoff_delays,
    bounded,
    btc_to_sat,
    cache_put,
)
from pegx.chain.txbuild import op_return_data, op_return_script, parse_tx, serialize_tx, txid_of
from pegx.peg import PEG_SIZE

# the taxonomy and amount helpers are part of this module's interface too
__all__ = ["COIN", "Bitbayd", "NodeError", "NodeUnavailable", "NodeWarmingUp", "amount_is",
           "backoff_delays", "btc_to_sat"]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:19915"
MAX_CONF = 9_999_999
UNLOCK_SECONDS = 60  # walletpassphrase timeout used before imports and signing
UNLOCK_REUSE = 40  # an unlock is trusted this long (each costs the node ~0.1 s of key stretching)
PEG_CACHE_CYCLES = 64  # past cycles whose peg we remember (~9.5 days of mainnet)
FRACTIONS_CACHE_SIZE = 8192  # outpoints (9.6 kB each)
BLOCK_CACHE_SIZE = 4096  # blockhash -> height
SKIPPED_LOG_SIZE = 65536  # outputs whose "skipped" warning was logged (each logged once)
LOCKED = "wallet locked: call ExchangePassword"
STAKING_ONLY = "wallet unlocked for staking only: call ExchangePassword"
WRONG_PASSPHRASE = "wallet passphrase incorrect: call ExchangePassword"
FROZEN_UNKNOWN = 0xFFFFFFFF  # frozen, but the node gave no unlock time: treat as locked


class _Shared(Shared):
    """The transport's shared state plus this client's caches (all views share them)."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.pegs: OrderedDict[int, int] = OrderedDict()  # cycle -> peg seen as current
        self.fractions: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self.block_heights: OrderedDict[str, int] = OrderedDict()
        self.tip_block: tuple[int, int] | None = None  # (height, time) of the last tip seen
        self.skipped: OrderedDict[str, str] = OrderedDict()  # outputs logged as unreconcilable
        self.unlocked: tuple[bytes, float] | None = None  # (sha256 of passphrase, trusted until)


class Bitbayd(JsonRpcClient, Chain):
    """JSON-RPC client of a BitBay node implementing :class:`pegx.chain.base.Chain`.

    ``url`` is ``http://[user:password@]host[:port][/path]`` (port 19915 by default).
    ``timeout`` bounds each socket wait, ``deadline`` each public call in total; ``retry``
    chooses between failing fast and retrying transient faults until the deadline.
    ``network`` gives the address and key versions the node uses.
    """

    name = "bitbayd"
    reorganises = True  # the block at a height can change (the node follows the best chain)

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        deadline: float = 15.0,
        retry: bool = False,
        network: crypto.Network = crypto.MAIN,
    ) -> None:
        super().__init__(url, timeout=timeout, deadline=deadline, retry=retry)
        self.network = network

    def _new_shared(self) -> _Shared:
        return _Shared(self.url)

    def quick(self, timeout: float, deadline: float) -> Bitbayd:
        """The fail-fast view health probes use: no retries, ``timeout`` per request and
        ``deadline`` per call, on the same connections."""
        return self.with_options(retry=False, timeout=timeout, deadline=deadline)

    def __repr__(self) -> str:
        return f"Bitbayd({self.url!r}, retry={self.retry}, deadline={self.deadline:g})"

    # ------------------------------------------------------------------ node calls

    def getblockcount(self) -> int:
        """``getblockcount``: height of the best block."""
        return int(self._rpc("getblockcount"))

    def getblockhash(self, height: int) -> str:
        """``getblockhash height``."""
        return str(self._rpc("getblockhash", int(height)))

    def getblock(self, blockhash: str) -> dict:
        """``getblock hash``: the verbose block (``height``, ``time``, ...)."""
        return self._rpc("getblock", str(blockhash))

    def getpeginfo(self) -> dict:
        """``getpeginfo``: ``{steps, cycle, interval, startingblock, pegfeeperinput,
        subpremiumrating, peg, pegnext, pegnextnext}`` (network pegs, no buffer)."""
        return self._rpc("getpeginfo")

    def listunspent(self, minconf: int = 1, maxconf: int = MAX_CONF) -> list[dict]:
        """Wallet-mode ``listunspent``: rows with float-BAY ``amount``, ``reserve``,
        ``liquidity`` (sic), ``confirmations``, ``spendable``."""
        return self._rpc("listunspent", int(minconf), int(maxconf))

    def listfrozen(self, minconf: int = 1, maxconf: int = MAX_CONF) -> list[dict]:
        """Wallet-mode ``listfrozen``: frozen wallet outputs, rows as ``listunspent``."""
        return self._rpc("listfrozen", int(minconf), int(maxconf))

    def getfractions(self, key: str) -> dict:
        """``getfractions "txid:vout"``: ``{total, reserve, liquidity, peg, lock, flags,
        values[1200]}`` in int satoshi, or ``{}`` for an unknown output."""
        return self._rpc("getfractions", str(key))

    def getrawtransaction(self, txid: str, verbose: int = 1) -> Any:
        """``getrawtransaction txid verbose``: hex, or the bitcoin-0.8 verbose dict."""
        return self._rpc("getrawtransaction", str(txid), int(verbose))

    def gettxout(self, txid: str, n: int, include_mempool: bool = True) -> dict | None:
        """``gettxout txid n include_mempool``: the output, or None once spent/unknown."""
        return self._rpc("gettxout", str(txid), int(n), bool(include_mempool))

    def importprivkey(self, wif: str, label: str = "", rescan: bool = False) -> Any:
        """``importprivkey wif label rescan``: ``{"address": ...}`` (also for a key the wallet
        already has)."""
        return self._rpc("importprivkey", str(wif), str(label), bool(rescan))

    def validateaddress(self, address: str) -> dict:
        """``validateaddress address``: ``{isvalid[, address, ismine, watchonly, ...]}``."""
        return self._rpc("validateaddress", str(address))

    def walletpassphrase(self, passphrase: str, seconds: int = UNLOCK_SECONDS) -> None:
        """``walletpassphrase passphrase seconds``: null, also when already unlocked."""
        self._rpc("walletpassphrase", str(passphrase), int(seconds))

    def getinfo(self) -> dict:
        """``getinfo``: ``unlocked_until`` (0 = locked) only when the wallet is encrypted."""
        return self._rpc("getinfo")

    def signrawtransaction(self, rawhex: str) -> dict:
        """``signrawtransaction hex``: ``{hex, complete}``."""
        return self._rpc("signrawtransaction", str(rawhex))

    def sendrawtransaction(self, rawhex: str) -> str:
        """``sendrawtransaction hex``: the txid."""
        return str(self._rpc("sendrawtransaction", str(rawhex)))

    # ------------------------------------------------------------------ Chain protocol

    def _remember_peg(self, info: dict) -> None:
        with self._s.lock:
            cache_put(self._s.pegs, int(info["cycle"]), int(info["peg"]), PEG_CACHE_CYCLES)

    def _block_time(self, height: int) -> int:
        with self._s.lock:
            if self._s.tip_block is not None and self._s.tip_block[0] == height:
                return self._s.tip_block[1]
        try:
            blockhash = self.getblockhash(height)
        except NodeError as exc:
            # -1 "Block number out of range." (-8 on bitcoin): the chain got shorter between
            # getblockcount and this call (a reorganisation); the next read will do
            if "out of range" not in exc.message:
                raise
            raise NodeUnavailable(f"block {height:,d} vanished: {exc.message}") from None
        btime = int(self.getblock(blockhash).get("time", 0))
        with self._s.lock:
            self._s.tip_block = (height, btime)
        return btime

    @bounded
    def tip(self) -> Tip:
        """Height from ``getblockcount``; cycle and supply from ``getpeginfo``; block time."""
        height = self.getblockcount()
        info = self.getpeginfo()
        interval = int(info.get("interval") or 0)
        if interval > 0 and height // interval != int(info["cycle"]):
            # a block (and a new cycle) arrived between the two calls: read both again
            height = self.getblockcount()
            info = self.getpeginfo()
        self._remember_peg(info)
        return Tip(height, int(info["cycle"]), int(info["peg"]), self._block_time(height),
                   interval if interval > 0 else CYCLE_BLOCKS)

    @bounded
    def identity(self) -> str:
        """``getblockhash 0``: the genesis block's hash names the network (main, testnet, a
        regtest of its own)."""
        return self.block_hash(0)

    @bounded
    def block_hash(self, height: int) -> str:
        """``getblockhash height``: the best chain's block there; NodeError (-1, "Block number
        out of range.") above the tip."""
        found = self.getblockhash(height)
        if len(found) != 64:
            raise NodeError(LOCAL_CHECK, f"block hash {found!r} is not 64 hex digits",
                            "getblockhash")
        return found

    @bounded
    def supply_for_cycle(self, cycle: int) -> int:
        """The peg of ``cycle``: the current cycle and the next two come from ``getpeginfo``
        (``peg``, ``pegnext``, ``pegnextnext``); past cycles only from the pegs this client
        saw as current (the last PEG_CACHE_CYCLES cycles, since start): ChainRejected else."""
        with self._s.lock:
            if cycle in self._s.pegs:
                return self._s.pegs[cycle]
        info = self.getpeginfo()
        self._remember_peg(info)
        ahead = cycle - int(info["cycle"])
        if 0 <= ahead <= 2:
            return int(info[("peg", "pegnext", "pegnextnext")[ahead]])
        if ahead < 0:
            raise ChainRejected(f"supply of past cycle {cycle} not known to this bitbayd client")
        raise ChainRejected(f"supply of cycle {cycle} not known yet (now {info['cycle']})")

    def _fractions(self, key: str, amount: Any, cache: bool) -> tuple[np.ndarray, int] | None:
        """(fraction vector, lock) of an output, None if the node has no peg data for it. The
        vector's integers are the truth: they must sum to ``total``, and ``amount`` (the BAY
        amount listunspent printed, if given) must stand for that total (:func:`amount_is`);
        NodeError(LOCAL_CHECK) otherwise."""
        with self._s.lock:
            hit = self._s.fractions.get(key)
        if hit is not None:
            return hit
        reply = self.getfractions(key)
        if not reply:
            return None
        values = reply.get("values")
        if (not isinstance(values, list) or len(values) != PEG_SIZE
                or not all(type(v) is int and v >= 0 for v in values)):
            raise NodeError(LOCAL_CHECK, f"{key}: values is not {PEG_SIZE} ints >= 0",
                            "getfractions")
        total = reply.get("total", sum(values))
        if type(total) is not int or sum(values) != total:
            raise NodeError(
                LOCAL_CHECK, f"{key}: fractions sum to {sum(values):,d} sat, not the total "
                f"{total!r} sat", "getfractions",
            )
        if amount is not None and not amount_is(amount, total):
            raise NodeError(
                LOCAL_CHECK, f"{key}: the wallet lists {Decimal(amount):,} BAY, which is not the "
                f"fractions' total of {total:,d} sat", "getfractions",
            )
        vec = np.array(values, dtype=np.int64)
        vec.flags.writeable = False  # cached and shared: callers get copies
        found = (vec, int(reply.get("lock") or 0))
        if cache:
            with self._s.lock:
                cache_put(self._s.fractions, key, found, FRACTIONS_CACHE_SIZE)
        return found

    def _skip(self, key: str, why: str) -> None:
        """Log once that a wallet output is left out (a warning per output, not per pass)."""
        with self._s.lock:
            if key in self._s.skipped:
                return
            cache_put(self._s.skipped, key, why, SKIPPED_LOG_SIZE)
        why = why.removeprefix(f"{key}: ")
        log.warning(f"wallet output {key} skipped (logged once): {why}")

    @bounded
    def list_unspent(self, min_conf: int = 0) -> list[Utxo]:
        """Wallet ``listunspent`` + ``listfrozen`` (frozen rows win; ``frozen_until`` from
        ``unlocktime``, else the fractions' lock, else FROZEN_UNKNOWN), each with its
        ``getfractions`` vector, valued at the vector's exact total. Outputs the node has no
        peg data for yet are left out (they appear once it has), and so are outputs whose data
        cannot be reconciled (logged once each): one odd output, at an address pegx may not
        even watch, must not stop the exchange. Fractions of confirmed outputs are cached."""
        rows, height = self._wallet_rows(min_conf)
        out = []
        for key, (row, is_frozen) in rows.items():
            u = self._utxo(key, row, is_frozen, height)
            if u is not None:
                out.append(u)
        return out

    def _wallet_rows(self, min_conf: int) -> tuple[dict[str, tuple[dict, bool]], int]:
        """{outpoint: (row, frozen)} of listunspent + listfrozen (frozen rows win) and the
        height they were listed at (confirmations -> height needs a tip that did not move
        meanwhile: listed again once if it did)."""
        for _ in range(2):
            before = self.getblockcount()
            rows = {outpoint(r["txid"], int(r["vout"])): (r, False)
                    for r in self.listunspent(min_conf)}
            try:
                frozen = self.listfrozen(min_conf)
            except NodeError as exc:
                if exc.code != RPC_METHOD_NOT_FOUND:
                    raise  # dropping frozen outputs silently would look like spends
                frozen = []
            rows.update({outpoint(r["txid"], int(r["vout"])): (r, True) for r in frozen})
            height = self.getblockcount()
            if height == before:
                break
        return rows, height

    def _utxo(self, key: str, row: dict, is_frozen: bool, height: int) -> Utxo | None:
        """One wallet row valued at its fractions' exact total; None (skipped) when the node
        has no peg data for it yet or it cannot be reconciled (logged once)."""
        try:
            conf = int(row.get("confirmations") or 0)
            found = self._fractions(key, row["amount"], cache=conf > 0)
        except NodeError as exc:
            if exc.code != LOCAL_CHECK:
                raise  # the node said no: not this output's problem
            self._skip(key, exc.message)
            return None
        except (KeyError, TypeError, ValueError) as exc:
            self._skip(key, f"unreadable listunspent row: {exc!r}")
            return None
        if found is None:
            log.debug(f"{key}: no peg data at the node yet, skipped")
            return None
        vec, lock = found
        until = 0
        if is_frozen:
            until = int(row.get("unlocktime") or 0) or lock or FROZEN_UNKNOWN
        return Utxo(
            txid=str(row["txid"]), vout=int(row["vout"]), address=str(row.get("address", "")),
            value=int(vec.sum()), fractions=vec.copy(), confirmations=conf,
            height=height - conf + 1 if conf > 0 else 0, frozen_until=until,
        )

    @bounded
    def get_fractions(self, key: str) -> np.ndarray:
        """``getfractions`` of one output (checked: 1200 ints summing to ``total``)."""
        try:
            split_outpoint(key)
        except ValueError as exc:
            raise ChainRejected(str(exc)) from None
        found = self._fractions(key, None, cache=False)
        if found is None:
            raise ChainRejected(f"unknown output {key}")
        return found[0].copy()

    def _block_height(self, blockhash: str) -> int:
        with self._s.lock:
            if blockhash in self._s.block_heights:
                return self._s.block_heights[blockhash]
        try:
            height = int(self.getblock(blockhash)["height"])
        except NodeError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:  # block gone between the two calls
                raise NodeUnavailable(f"block {blockhash} vanished (reorganisation?)") from None
            raise
        with self._s.lock:
            cache_put(self._s.block_heights, blockhash, height, BLOCK_CACHE_SIZE)
        return height

    @staticmethod
    def _txout(vout: dict, exact: tuple[int, bytes] | None) -> TxOut:
        """One output: value and script from the raw bytes when we have them (``exact``), else
        from the JSON (whose float value is inexact above 2^53 sat)."""
        spk = vout.get("scriptPubKey") or {}
        if exact is not None:
            value, script = exact
        else:
            value, script = btc_to_sat(vout["value"]), bytes.fromhex(spk.get("hex", ""))
        data = op_return_data(script)
        if data is not None:
            return TxOut(value, data=data)
        addresses = spk.get("addresses") or []
        # "" stands for a script without an address (coinstake marker, nonstandard)
        return TxOut(value, address=str(addresses[0]) if addresses else "")

    @bounded
    def get_transaction(self, txid: str) -> Tx | None:
        """``getrawtransaction txid 1`` as a Tx (height via ``getblock`` when mined); None
        when the node does not know the txid (-5)."""
        try:
            res = self.getrawtransaction(txid, 1)
        except NodeError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:
                return None
            raise
        inputs = [outpoint(v["txid"], int(v["vout"])) for v in res.get("vin", []) if "txid" in v]
        vouts = res.get("vout", [])
        try:
            raw = parse_tx(bytes.fromhex(str(res.get("hex", "")))).outputs
        except ValueError:  # no or unreadable hex: the JSON values then
            raw = ()
        exact = raw if len(raw) == len(vouts) else [None] * len(vouts)
        outputs = [self._txout(v, exact[i]) for i, v in enumerate(vouts)]
        conf = int(res.get("confirmations") or 0)
        height = self._block_height(res["blockhash"]) if conf > 0 and res.get("blockhash") else 0
        return Tx(str(res.get("txid", txid)), inputs, outputs, height, conf, str(res.get("hex", "")))

    @bounded
    def is_unspent(self, key: str) -> bool:
        """``gettxout txid n true``: False once spent (mempool included) or unknown."""
        try:
            txid, n = split_outpoint(key)
        except ValueError as exc:
            raise ChainRejected(str(exc)) from None
        return self.gettxout(txid, n, True) is not None

    def _unlock(self, passphrase: str, force: bool = False) -> None:
        """``walletpassphrase`` for UNLOCK_SECONDS, unless this passphrase unlocked the wallet
        less than UNLOCK_REUSE seconds ago (and ``force`` is not set)."""
        digest = hashlib.sha256(passphrase.encode("utf-8", "surrogatepass")).digest()
        with self._s.lock:
            last = self._s.unlocked
            if not force and last is not None and last[0] == digest and last[1] > time.monotonic():
                return
            self._s.unlocked = None
        try:
            self.walletpassphrase(passphrase, UNLOCK_SECONDS)
        except NodeError as exc:
            if exc.code == RPC_WALLET_PASSPHRASE_INCORRECT:
                raise WalletLocked(WRONG_PASSPHRASE) from None
            # -17: an old node's "already unlocked" (this one answers null); -15: the wallet is
            # not encrypted: either way the wallet call can go ahead
            if exc.code not in (RPC_WALLET_ALREADY_UNLOCKED, RPC_WALLET_WRONG_ENC_STATE):
                raise
        with self._s.lock:
            self._s.unlocked = (digest, time.monotonic() + UNLOCK_REUSE)

    def _locked_reason(self, exc: NodeError) -> str:
        """Why a wallet call failed, if the cause is a locked wallet: -13 says so itself;
        -4 ("Error adding key to wallet") only getinfo's ``unlocked_until`` == 0 tells."""
        if exc.code == RPC_WALLET_UNLOCK_NEEDED:
            return STAKING_ONLY if "staking only" in exc.message else LOCKED
        if exc.code == RPC_WALLET_ERROR:
            info = self.getinfo()
            if isinstance(info, dict) and "unlocked_until" in info \
                    and int(info["unlocked_until"]) == 0:
                return LOCKED
        return ""

    def _wallet_call(self, passphrase: str, call: Any) -> Any:
        """Run a call that needs the wallet's keys: unlocked first with ``passphrase`` (if
        any), retried once after a fresh unlock if the wallet was locked meanwhile;
        WalletLocked when a locked wallet is the reason it fails."""
        if passphrase:
            self._unlock(passphrase)
        for attempt in (1, 2):
            try:
                return call()
            except NodeError as exc:
                if exc.code not in (RPC_WALLET_ERROR, RPC_WALLET_UNLOCK_NEEDED):
                    raise
                if passphrase and attempt == 1:
                    self._unlock(passphrase, force=True)  # locked behind our back
                    continue
                why = self._locked_reason(exc)
                if why:
                    raise WalletLocked(why) from None
                raise
        raise AssertionError("unreachable")

    @bounded
    def import_key(self, wif: str, passphrase: str = "") -> str:
        """``importprivkey wif "" false`` (no rescan), unlocking an encrypted wallet with
        ``passphrase``; returns the key's address, checked against the node's answer."""
        net = self.network
        try:
            address = crypto.wif_to_address(wif, net)
        except ValueError as exc:
            raise ChainRejected(f"not a BitBay {net.name} private key: {exc}") from None
        try:
            reply = self._wallet_call(passphrase, lambda: self.importprivkey(wif, "", False))
        except NodeError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:  # "Invalid private key"
                raise NodeError(exc.code, f"{exc.message}: the node takes no {net.name} keys; "
                                f"is network = {net.name} right for this node?",
                                "importprivkey") from None
            raise
        got = reply.get("address") if isinstance(reply, dict) else None
        if got is not None and got != address:
            raise NodeError(LOCAL_CHECK, f"the node imported the key as {got}, not {address}: "
                            f"is network = {net.name} right for this node?", "importprivkey")
        return address

    @bounded
    def is_mine(self, address: str) -> bool:
        """``validateaddress``'s ``ismine``: the wallet can spend what ``address`` receives
        (a watch-only address is not the wallet's own)."""
        if not isinstance(address, str):
            return False
        res = self.validateaddress(address)
        if not isinstance(res, dict):
            raise NodeError(LOCAL_CHECK, f"unreadable reply {res!r}", "validateaddress")
        return res.get("isvalid") is True and res.get("ismine") is True

    def _tx_time(self) -> int:
        """nTime for a new transaction: the tip's block time, so that the next block (whose
        time must not be earlier) can include it; the clock if the node reports none."""
        return self._block_time(self.getblockcount()) or int(time.time())

    @bounded
    def create_transaction(
        self, inputs: list[str], outputs: list[TxOut], passphrase: str = ""
    ) -> SignedTx:
        """Serialise the transaction here (txbuild), unlock the wallet if a passphrase is
        given, have the node sign it, and check the signed bytes spend and pay exactly that."""
        if len(set(inputs)) != len(inputs):
            raise ChainRejected("the same input is listed twice")
        try:
            prevouts = [split_outpoint(key) for key in inputs]
            scripts = [(o.value, op_return_script(o.data) if o.data is not None
                        else crypto.address_to_script(o.address, self.network)) for o in outputs]
            unsigned = serialize_tx(prevouts, scripts, self._tx_time())
        except ValueError as exc:  # TxFormatError, CryptoError
            raise ChainRejected(f"cannot build transaction: {exc}") from None
        res = self._wallet_call(passphrase, lambda: self.signrawtransaction(unsigned.hex()))
        if not res.get("complete"):
            raise NodeError(LOCAL_CHECK, "could not sign every input (a key missing from the "
                            "wallet)", "signrawtransaction")
        try:
            signed = bytes.fromhex(res["hex"])
            got, want = parse_tx(signed), parse_tx(unsigned)
        except (KeyError, ValueError) as exc:
            raise NodeError(LOCAL_CHECK, f"unreadable signed transaction: {exc}",
                            "signrawtransaction") from None
        same = (got.ntime == want.ntime and got.outputs == want.outputs
                and [(i.txid, i.vout) for i in got.inputs] == [(i.txid, i.vout) for i in want.inputs])
        if not same:
            raise NodeError(LOCAL_CHECK, "signed transaction differs from the one built",
                            "signrawtransaction")
        return SignedTx(txid_of(signed), signed.hex(), tuple(inputs))

    @bounded
    def broadcast(self, raw: str) -> str:
        """``sendrawtransaction``; the txid also when the node has the transaction already: it
        answers the txid for one in its mempool, -5 "transaction already in block <hash>" for a
        mined one (a resend after a dropped reply, say), and for any other refusal we ask
        whether it knows the txid. Otherwise NodeError with the node's message."""
        try:
            txid = txid_of(bytes.fromhex(raw))
        except ValueError:
            raise ChainRejected("raw transaction is not hex") from None
        try:
            return self.sendrawtransaction(raw)
        except NodeError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY and "already in block" in exc.message:
                log.info(f"broadcast {txid}: {exc.message}")
                return txid
            try:
                self.getrawtransaction(txid, 0)
            except NodeError:
                raise exc from None
            log.info(f"broadcast {txid}: node said {exc.message!r} but already has it")
            return txid
