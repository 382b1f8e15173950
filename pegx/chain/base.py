"""The chain seam (DESIGN §5): what the engine and the cycle thread need from a BitBay node.

Both backends (``devnet``: an embedded simulated chain; ``bitbayd``: a JSON-RPC client of a
real node) derive from :class:`Chain`, and :mod:`pegx.chain.factory` is the one place that
builds them. Nothing above this package knows which one it talks to.
All amounts are int satoshi. Outpoints are ``"txid:vout"`` strings, as in the original API.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# mainnet nPegInterval: the supply index moves once per 200 blocks. The default only: a chain
# reports its own length in Tip.interval (bitbayd: getpeginfo's interval; testnet has 20)
CYCLE_BLOCKS = 200
MIN_FEE_PER_IO = 5000  # the peg's minimum fee per input and output (BITBAYD §1.1)
FREEZE_NOTARY_VALUE = 5590  # value of a `**F**` notary OP_RETURN output
NOTARY_VALUE = 5575  # value of the OP_RETURN id output and of the exchange notary output


def cycle_of(height: int, interval: int = CYCLE_BLOCKS) -> int:
    """The peg cycle a block height belongs to, for cycles of ``interval`` blocks."""
    return height // interval


def outpoint(txid: str, vout: int) -> str:
    """The ``"txid:vout"`` key used for inputs everywhere."""
    return f"{txid}:{vout}"


def split_outpoint(key: str) -> tuple[str, int]:
    """Parse ``"txid:vout"``; raises ValueError on anything else."""
    txid, sep, vout = str(key).rpartition(":")
    if not sep or not txid or not vout.isdigit():
        raise ValueError(f"not a txid:vout outpoint: {key!r}")
    return txid, int(vout)


class ChainError(Exception):
    """The chain refused or could not answer. Subclasses say whether a retry can help."""


class ChainUnavailable(ChainError):
    """Transient: the node is down, warming up, timing out. Retry later with backoff."""


class ChainRejected(ChainError):
    """Final: the node said no (invalid transaction, unknown key, bad parameter)."""


class WalletLocked(ChainRejected):
    """The node's wallet is encrypted and locked (or unlocked for staking only), and no
    passphrase was given: nothing that needs a key (import, signing) can be done until the
    operator calls ExchangePassword."""


@dataclass(frozen=True)
class Tip:
    """The best block: height, its cycle and the supply index in force for that cycle;
    ``interval`` is the chain's cycle length in blocks (``cycle == height // interval``)."""

    height: int
    cycle: int
    supply: int
    time: int = 0
    interval: int = CYCLE_BLOCKS


@dataclass
class Utxo:
    """A wallet unspent output with its peg fraction vector.

    ``fractions`` is a PEG_SIZE int64 vector whose sum is ``value``. ``frozen_until`` is a unix
    time (0 = not frozen). ``height`` is the block that mined it (0 if unconfirmed).
    """

    txid: str
    vout: int
    address: str
    value: int
    fractions: np.ndarray
    confirmations: int
    height: int = 0
    frozen_until: int = 0

    @property
    def key(self) -> str:
        return outpoint(self.txid, self.vout)


@dataclass(frozen=True)
class TxOut:
    """A transaction output: pay ``value`` to ``address``, or an OP_RETURN carrying ``data``.

    Exactly one of ``address`` and ``data`` is set. A ``**F**`` notary is an OP_RETURN whose
    data is the notation text (e.g. ``b"**F**2:3"``).
    """

    value: int
    address: str | None = None
    data: bytes | None = None

    def __post_init__(self) -> None:
        if (self.address is None) == (self.data is None):
            raise ValueError("a TxOut pays an address or carries OP_RETURN data, not both")
        if self.value < 0:
            raise ValueError(f"negative output value {self.value}")


@dataclass
class Tx:
    """A transaction as the chain reports it.

    ``inputs`` are outpoints; ``height`` is 0 while in the mempool; ``confirmations`` is 0 in the
    mempool. ``op_return`` is the data of the last output when it is an OP_RETURN, else None.
    """

    txid: str
    inputs: list[str]
    outputs: list[TxOut]
    height: int = 0
    confirmations: int = 0
    raw: str = ""

    @property
    def op_return(self) -> bytes | None:
        if self.outputs and self.outputs[-1].data is not None:
            return self.outputs[-1].data
        return None


@dataclass(frozen=True)
class SignedTx:
    """A signed, not yet broadcast, transaction."""

    txid: str
    raw: str
    inputs: tuple[str, ...] = field(default=())


class Chain(abc.ABC):
    """What pegx needs from a BitBay node: the base class of every backend (the devnet,
    bitbayd). Implementations must be thread-safe.

    The abstract methods are what every chain answers. The rest have defaults a backend
    overrides when it can do better (the devnet pushes its blocks, names the spender of an
    output and mines on a timer; bitbayd counts its failed requests and has a fail-fast view),
    so no caller probes a chain for what it can do.
    """

    name: str
    reorganises: bool  # can the block at a height change (a real node: yes; the devnet: no)
    # are block times real (a node's clock), or synthetic (the devnet's fixed spacing)?
    real_block_times: bool = True

    @abc.abstractmethod
    def identity(self) -> str:
        """What names this chain for good: the genesis block hash (bitbayd) or the id the
        devnet was created with. A ledger belongs to one chain (pegx.exchange.chainguard)."""

    @abc.abstractmethod
    def block_hash(self, height: int) -> str:
        """The hash of the best chain's block at ``height``; ChainRejected above the tip."""

    @abc.abstractmethod
    def tip(self) -> Tip:
        """The current best block."""

    @abc.abstractmethod
    def supply_for_cycle(self, cycle: int) -> int:
        """The supply index in force during ``cycle`` (recent cycles at least)."""

    @abc.abstractmethod
    def list_unspent(self, min_conf: int = 0) -> list[Utxo]:
        """Every wallet output (frozen ones included) with fractions and confirmations."""

    @abc.abstractmethod
    def get_fractions(self, key: str) -> np.ndarray:
        """The fraction vector of one output; raises ChainRejected if unknown."""

    @abc.abstractmethod
    def get_transaction(self, txid: str) -> Tx | None:
        """A transaction in a block or the mempool, or None if the chain does not know it."""

    @abc.abstractmethod
    def is_unspent(self, key: str) -> bool:
        """True while the output exists and no mined or mempool transaction spends it."""

    @abc.abstractmethod
    def import_key(self, wif: str, passphrase: str = "") -> str:
        """Add a private key (WIF) to the wallet without rescan; returns its address. An
        encrypted wallet is unlocked with ``passphrase`` first; without one a locked wallet
        raises WalletLocked."""

    @abc.abstractmethod
    def is_mine(self, address: str) -> bool:
        """True if the wallet holds the private key of ``address`` (it can spend what the
        address receives); False for any other address, valid or not."""

    @abc.abstractmethod
    def create_transaction(
        self, inputs: list[str], outputs: list[TxOut], passphrase: str = ""
    ) -> SignedTx:
        """Build and sign (not broadcast) a transaction spending wallet ``inputs``."""

    @abc.abstractmethod
    def broadcast(self, raw: str) -> str:
        """Send a signed transaction; returns its txid or raises ChainRejected with the reason."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources (threads, sockets, files)."""

    # ------------------------------------------------------------ with defaults
    def start(self) -> None:
        """Begin the chain's own background work once the daemon serves (the devnet's block
        timer). Default: nothing to start."""

    def subscribe(self, callback: Callable[[Tip], None]) -> None:
        """Have ``callback(tip)`` called on each new block, from the chain's own thread. A
        chain that cannot push blocks (default) ignores it: its callers poll ``tip()``."""
        del callback

    def spenders(self, key: str) -> list[str]:
        """Txids of the transactions (mined or in the mempool) that may spend ``key``; the
        caller checks each one's inputs. Default: every transaction that paid the wallet
        (each of the exchange's own transactions pays an exchange address: change, notary or
        a cancel's output). A chain that indexes spends names the one spender."""
        return sorted({u.txid for u in self.list_unspent()})

    def quick(self, timeout: float, deadline: float) -> Chain:
        """A view of this chain for health probes: no retries, each request bounded by
        ``timeout`` and a call by ``deadline`` seconds. Default: the chain itself (it answers
        in-process)."""
        del timeout, deadline
        return self

    def rpc_errors(self) -> int:
        """Requests to the node that got no usable answer since start (0: no node)."""
        return 0
