"""scripts/smoke.py (what CI runs from a Python 3.13 venv) works, here with this interpreter."""

import subprocess
import sys
from pathlib import Path

SMOKE = Path(__file__).resolve().parent.parent / "scripts" / "smoke.py"


def test_smoke_script_serves_deposits_trades_and_stops():
    proc = subprocess.run([sys.executable, str(SMOKE)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke: passed" in proc.stdout
    for step in ("GenerateDepositAddress", "Deposit alice", "Trade alice", "stop"):
        assert step in proc.stdout
