"""Smoke test of an installed pegx: serve, a deposit, a trade, stop, through its `pegx` commands.

    .venv-3.13/bin/python scripts/smoke.py

It runs the `pegx` command installed beside the interpreter (``sys.executable``'s bin
directory), on a free port with a temporary datadir, on the devnet: `pegx serve --autostart`,
a deposit key, an outside payment, confirmations, `Deposit`, the registration, a `Trade`,
`pegx stop`. The client commands find the daemon through $PEGX_PORT and $PEGX_DATADIR, as an
operator's would. Any step that fails stops the run with exit 1, the step's output and the
daemon's log. CI runs it from a Python 3.13 venv, where LevelDB comes from plyvel-next.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pegx.crypto import wif_to_address
from pegx.ledger import store

TIMEOUT = 120.0  # seconds any one wait may take (a loaded machine is slow, never this slow)
PEGX = Path(sys.executable).with_name("pegx")


class SmokeFailed(Exception):
    pass


def pegx(env: dict, *args: str) -> str:
    """`pegx ARGS`; its stdout, or SmokeFailed with everything it printed."""
    proc = subprocess.run([str(PEGX), *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, check=False)
    if proc.returncode != 0:
        raise SmokeFailed(f"`pegx {' '.join(args)}` exited {proc.returncode}:\n"
                          f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def call(env: dict, *args: str):
    """`pegx call ARGS`, its JSON answer."""
    return json.loads(pegx(env, "call", *args))


def wait(what: str, ready) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise SmokeFailed(f"waited {TIMEOUT:.0f} s for {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(env: dict) -> bool:
    proc = subprocess.run([str(PEGX), "status", "--json"], capture_output=True, text=True,
                          env=env, timeout=TIMEOUT, check=False)
    return proc.returncode == 0 and json.loads(proc.stdout)["loaded"]


def smoke(env: dict, server: subprocess.Popen) -> None:
    def step(text: str) -> None:
        if server.poll() is not None:
            raise SmokeFailed(f"pegx serve exited with {server.returncode}")
        print(f"  {text}", flush=True)

    step("serve: waiting for the daemon to answer and load")
    wait("pegx serve to answer and load", lambda: server.poll() is not None or answers(env))
    step("GenerateDepositAddress")
    key, ok = call(env, "GenerateDepositAddress")
    if ok is not True:
        raise SmokeFailed(f"GenerateDepositAddress answered {key!r}")
    address = wif_to_address(key)
    wait("the deposit key's import", lambda: address in json.loads(
        pegx(env, "devnet", "info"))["wallet_addresses"])
    step(f"devnet send 1000 BAY to {address}, mine 13 blocks")
    outpoint = pegx(env, "devnet", "send", address, "1000").strip()
    pegx(env, "devnet", "mine", "13")
    wait("the payment to be spendable", lambda: outpoint in call(env, "GetSpendable", address))
    step(f"Deposit alice {outpoint}")
    if (answer := call(env, "Deposit", "alice", json.dumps([outpoint]))) is not True:
        raise SmokeFailed(f"Deposit answered {answer!r}")
    wait("the deposit's registration",
         lambda: call(env, "GetDeposits", outpoint).get("registered") == 1)
    balance = call(env, "GetBalance", "alice")
    if balance["liquid"] + balance["reserve"] != 100_000_000_000:
        raise SmokeFailed(f"alice holds {balance}, not 1,000 BAY")
    step("Trade alice 1.5 BAY to bobby")
    if (answer := call(env, "Trade", "alice", "150000000", "bobby")) is not True:
        raise SmokeFailed(f"Trade answered {answer!r}")
    if (bobby := call(env, "GetBalance", "bobby")) != {"liquid": 150_000_000, "reserve": 0}:
        raise SmokeFailed(f"bobby holds {bobby}")
    step("stop")
    pegx(env, "stop")
    try:
        code = server.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SmokeFailed(f"pegx serve still runs {TIMEOUT:.0f} s after pegx stop") from None
    if code != 0:
        raise SmokeFailed(f"pegx serve exited with {code} after pegx stop")


def main() -> int:
    if not PEGX.exists():
        print(f"smoke: no pegx command beside {sys.executable}", file=sys.stderr)
        return 1
    leveldb = store.plyvel.__name__
    print(f"smoke: pegx on Python {platform.python_version()} (LevelDB from {leveldb})")
    root = Path(tempfile.mkdtemp(prefix="pegx-smoke-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEGX_")}
    env.update(PEGX_DATADIR=str(root / "datadir"), PEGX_PORT=str(free_port()),
               PEGX_BLOCK_SECONDS="0")
    log_path = root / "serve.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(PEGX), "serve", "--autostart"], stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
        try:
            smoke(env, server)
        except (SmokeFailed, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError,
                TypeError) as exc:
            print(f"smoke FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"--- daemon log ({log_path}) ---\n"
                  f"{log_path.read_text(errors='replace')}", file=sys.stderr)
            return 1
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    shutil.rmtree(root)
    print(f"smoke: passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
