"""Shared fixtures: a real LevelDB ledger in a temp dir, and hypothesis profiles."""

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

# tests (and scripts) import the shared daemon fixture module as `daemon`
sys.path.insert(0, str(Path(__file__).parent))

# CI runs are reproducible (no seed that changes from day to day); a deeper local run:
# PEGX_HYPOTHESIS=deep pytest
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep", deadline=None, max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("PEGX_HYPOTHESIS", "ci"))


@pytest.fixture
def ledger(tmp_path):
    """An Exchange on a fresh real LevelDB; closed after the test."""
    ex = Exchange(Store(tmp_path / "ledger"))
    yield ex
    if not ex.store.db.closed:
        ex.close()
