"""pegx.chain.pegstd against the BitBay node's own answers on 3,000 golden transactions.

The vectors (``shared/reference/vectors/node_tx_fractions.jsonl.gz``, README beside it) were
produced by the unmodified bitbay-core 3d39e0a ``CalculateStandardFractions`` + ``GetMinFee``.
For every vector: the same accept/reject and the node's cause text; for accepted ones the same
fee, every output's 1200 fractions, its frozen flag and the fee's fractions. One test per
category of the README's table, which also pins the table's accepted/rejected counts.

The file is found through ``PEGX_VECTORS``, else beside the project as
``../shared/reference/vectors/`` (a checkout next to ``shared/``) or ``../../shared/...`` (a
worktree under ``wt/``). A missing file fails the tests: it is never skipped.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from harness import ROOT
from pegx.chain import pegstd
from pegx.chain.base import TxOut

RELATIVE = Path("shared/reference/vectors/node_tx_fractions.jsonl.gz")

# the README's table: category -> (accepted, rejected); "edge" groups every edge:<kind>
TABLE = {
    "liquid_send": (292, 38),
    "reserve_return": (202, 68),
    "op_return_notary": (198, 42),
    "F_single": (278, 82),
    "F_ab_fair_escrow": (237, 93),
    "F_shared": (310, 80),
    "pegx_plan_reserve_withdraw": (456, 84),
    "tight_reserve_notaries_first": (253, 17),
    "edge": (157, 113),
}


def vectors_path() -> Path:
    """Where the vectors are: $PEGX_VECTORS, else ../shared/... or ../../shared/... of the repo."""
    env = os.environ.get("PEGX_VECTORS")
    if env:
        return Path(env)
    for up in (ROOT.parent, ROOT.parent.parent):
        if (up / RELATIVE).is_file():
            return up / RELATIVE
    return ROOT.parent / RELATIVE


@pytest.fixture(scope="module")
def vectors() -> list[dict]:
    path = vectors_path()
    if not path.is_file():
        pytest.fail(
            f"golden node vectors not found at {path}: set PEGX_VECTORS to the path of "
            f"node_tx_fractions.jsonl.gz (shared/reference/vectors/)",
            pytrace=False,
        )
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


def group(vec: dict) -> str:
    return "edge" if vec["category"].startswith("edge:") else vec["category"]


def transaction(vec: dict) -> tuple[list, list[TxOut]]:
    inputs = [(i["address"], np.array(i["fractions"], dtype=np.int64)) for i in vec["inputs"]]
    outputs = [
        TxOut(o["value"], address=o["address"])
        if "address" in o
        else TxOut(o["value"], data=bytes.fromhex(o["data_hex"]))
        for o in vec["outputs"]
    ]
    return inputs, outputs


def disagreement(vec: dict) -> str:
    """'' when pegstd says what the node says, else what differs."""
    inputs, outputs = transaction(vec)
    got = pegstd.verdict(vec["supply"], inputs, outputs)
    node = vec["node"]
    if got.ok != node["ok"]:
        return f"ok {got.ok} vs node {node['ok']} ({got.cause or 'accepted'} / {node.get('cause')})"
    if not node["ok"]:
        if got.cause != node["cause"]:
            return f"cause {got.cause!r} vs node {node['cause']!r}"
        if got.peg_ok != node.get("peg_ok", False):
            return f"peg_ok {got.peg_ok} vs node {node.get('peg_ok', False)}"
        return ""
    if got.fee != node["fee"]:
        return f"fee {got.fee} vs node {node['fee']}"
    for j, (mine, theirs) in enumerate(zip(got.fractions, node["outputs"], strict=True)):
        if not np.array_equal(mine, theirs["fractions"]):
            steps = np.flatnonzero(mine != np.array(theirs["fractions"]))
            return f"output {j} fractions differ at {steps.size} steps (first {steps[0]})"
        if got.frozen[j] != theirs["frozen"]:
            return f"output {j} frozen {got.frozen[j]} vs node {theirs['frozen']}"
    if not np.array_equal(got.fee_fractions, node["fee_fractions"]):
        return "fee fractions differ"
    return ""


def test_the_vectors_are_the_readmes_3000(vectors):
    counts = Counter((group(v), v["node"]["ok"]) for v in vectors)
    assert len(vectors) == 3000
    assert {g: (counts[(g, True)], counts[(g, False)]) for g in TABLE} == TABLE


@pytest.mark.parametrize("category", list(TABLE))
def test_pegstd_reproduces_the_node(vectors, category, record_property, capsys):
    mine = [v for v in vectors if group(v) == category]
    failures = {v["id"]: why for v in mine if (why := disagreement(v))}
    kinds = Counter(v["category"] for v in mine)
    passed = len(mine) - len(failures)
    record_property(f"vectors_{category}", f"{passed}/{len(mine)}")
    with capsys.disabled():
        print(f"\n  node vectors {category}: {passed}/{len(mine)} agree"
              + (f" ({len(kinds)} kinds)" if len(kinds) > 1 else ""))
    assert mine and not failures, f"{len(failures)} of {len(mine)} differ: " + "; ".join(
        f"{k}: {w}" for k, w in list(failures.items())[:10]
    )
