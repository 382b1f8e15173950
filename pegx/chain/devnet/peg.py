"""The peg rule the devnet applies to every spend: the node's, from :mod:`pegx.chain.pegstd`.

The devnet accepts exactly the spends a BitBay node (bitbay-core 3d39e0a) accepts, and gives
their outputs the node's fractions and frozen marks (``tests/chain/test_pegstd_vectors.py`` holds
``pegstd`` to 3,000 of the node's answers). This adapter turns a refusal into
:class:`ChainRejected` with a message for a human (what went wrong first, then the node's own
cause text in brackets) and a frozen mark into a lock time: the block time plus 30 days, the
node's ``nPegFrozenTime``.

Until this module used pegstd, the devnet had its own simplified rules (each ``**F**`` notary
paying its input address's reserve into the listed outputs before any output was filled, a
stricter notation); the withdraw planner was built on those, so the devnet could not show the
spends the node refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pegx.chain import pegstd
from pegx.chain.base import ChainRejected, TxOut

FREEZE_SECONDS = 30 * 24 * 3600  # NOTARY_F locks for nPegFrozenTime: 30 days on mainnet


@dataclass
class PegResult:
    """Outcome of a valid spend: a vector per output, which outputs freeze, and the fee."""

    fractions: list[np.ndarray]
    frozen: list[bool]
    fee: int


def apply_peg_rules(
    inputs: Sequence[tuple[str, np.ndarray]], outputs: Sequence[TxOut], supply: int
) -> PegResult:
    """Assign fractions to ``outputs`` of a spend of ``inputs`` ((address, fractions) pairs).

    Raises ChainRejected when the node would refuse the spend: the peg rule (an output it
    cannot fill, a bad ``**F**`` notary) or the minimum fee. A fee refusal keeps the wording
    "Fees are below the 5000 satoshis per input/output minimum." that callers already know.
    """
    v = pegstd.verdict(supply, inputs, outputs)
    if v.ok:
        return PegResult(v.fractions, v.frozen, v.fee)
    if v.peg_ok:
        raise ChainRejected(
            f"Fees are below the 5000 satoshis per input/output minimum. ({v.detail}) "
            f"[node: {v.cause}]"
        )
    if v.detail and v.detail != v.cause:
        raise ChainRejected(f"{v.detail} [node: {v.cause}]")
    raise ChainRejected(v.cause)
