"""Fixtures of the exchange tests."""

import pytest

from harness.rig import Rig


@pytest.fixture
def rig(tmp_path):
    """The in-process exchange (harness.rig.Rig) on a fresh devnet and ledger."""
    r = Rig(tmp_path)
    yield r
    r.close()
    r.chain.close()
