"""Tests for pegx.rpc.execapi: the signed API(command) exec call.

Signatures are built here the way the original documents it (PegAPI.txt):
``base64.b64encode(highlevelcrypto.sign(txhash(code), privkey))``, i.e. a DER
ECDSA secp256k1 signature over SHA-256 of the txhash hex string, reproduced
with the ``ecdsa`` library directly rather than with pegx.crypto.
"""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest
from ecdsa import SECP256k1, SigningKey
from ecdsa.util import sigencode_der

from pegx.crypto import CryptoError, sign_message, txhash
from pegx.rpc.execapi import ExecAPI

OPERATOR = SigningKey.from_string(bytes([7]) * 32, curve=SECP256k1)
INTRUDER = SigningKey.from_string(bytes([9]) * 32, curve=SECP256k1)
# Uncompressed "04..." hex, the form the original's API.share file holds.
OPERATOR_PUB = "04" + OPERATOR.get_verifying_key().to_string().hex()


def der_sig(code: str, key: SigningKey = OPERATOR) -> bytes:
    h = txhash(code)
    return key.sign_digest(hashlib.sha256(h.encode()).digest(), sigencode=sigencode_der)


def signed(code: str, key: SigningKey = OPERATOR) -> dict:
    return {"sig": base64.b64encode(der_sig(code, key)).decode(), "exec": code}


class Harness:
    """An ExecAPI over a plain-set replay store and a namespace with a side-effect box."""

    def __init__(
        self, pub: str | None = OPERATOR_PUB, enabled: bool = True, lock: object = None
    ) -> None:
        self.hashes: set[str] = set()
        self.box: list[object] = []
        self.lock = lock
        self.api = ExecAPI(
            pub,
            enabled,
            seen=self.hashes.__contains__,
            record=self.hashes.add,
            namespace=lambda: {"box": self.box, "lock": self.lock},
            lock=lock,  # type: ignore[arg-type]
        )


def test_accepted_command_runs_and_returns_result() -> None:
    t = Harness()
    code = "nonce=1\nbox.append('ran')\nresult = 6 * 7"
    assert t.api.active is True
    assert t.api.run(signed(code)) == 42
    assert t.box == ["ran"]
    assert t.hashes == {txhash(code)}


def test_result_defaults_to_true() -> None:
    t = Harness()
    assert t.api.run(signed("nonce=2\nbox.append(1)")) is True
    assert t.box == [1]


def test_each_command_gets_a_fresh_namespace() -> None:
    t = Harness()
    assert t.api.run(signed("nonce=1\nleftover = 5")) is True
    assert t.api.run(signed("nonce=2\nresult = 'leftover' in globals()")) is False


def test_pegx_signer_is_accepted_too() -> None:
    t = Harness()
    code = "nonce=3\nresult = 'ok'"
    sig = sign_message(txhash(code), OPERATOR.to_string())
    assert t.api.run({"sig": base64.b64encode(sig).decode(), "exec": code}) == "ok"


def test_compressed_public_key_works() -> None:
    compressed = OPERATOR.get_verifying_key().to_string("compressed").hex()
    t = Harness(pub=compressed)
    assert t.api.run(signed("nonce=4\nresult = 1")) == 1


def test_exception_returns_traceback_string_and_is_recorded() -> None:
    t = Harness()
    cmd = signed("nonce=5\nbox.append('before')\nraise RuntimeError('boom')")
    out = t.api.run(cmd)
    assert isinstance(out, str)
    assert out.startswith("Traceback") and "RuntimeError: boom" in out
    assert t.box == ["before"]
    assert t.api.run(cmd) == "Command sent previously"
    assert t.box == ["before"]


def test_syntax_error_and_exit_return_traceback() -> None:
    t = Harness()
    out = t.api.run(signed("nonce=6\nresult = (("))
    assert isinstance(out, str) and "SyntaxError" in out
    out = t.api.run(signed("nonce=7\nraise SystemExit(3)"))
    assert isinstance(out, str) and "SystemExit: 3" in out


def test_replay_is_refused_without_running() -> None:
    t = Harness()
    cmd = signed("nonce=8\nbox.append('x')")
    assert t.api.run(cmd) is True
    # A fresh signature of the same code (ECDSA k differs) is still the same command.
    assert t.api.run(signed("nonce=8\nbox.append('x')")) == "Command sent previously"
    assert t.api.run(cmd) == "Command sent previously"
    assert t.box == ["x"]


def test_replay_record_from_a_previous_run_is_honoured() -> None:
    # As after a restart: the durable store already holds the hash.
    t = Harness()
    code = "nonce=9\nbox.append('x')"
    t.hashes.add(txhash(code))
    assert t.api.run(signed(code)) == "Command sent previously"
    assert t.box == []


def _bad_commands() -> list[object]:
    code = "nonce=10\nbox.append('pwned')"
    good = signed(code)
    der = der_sig(code)
    return [
        signed(code, INTRUDER),  # wrong key
        {"sig": good["sig"], "exec": code + "\nbox.append('more')"},  # tampered code
        {"sig": base64.b64encode(der[:-1]).decode(), "exec": code},  # truncated sig
        {"sig": base64.b64encode(der[:-4]).decode(), "exec": code},
        {"sig": good["sig"][:-4], "exec": code},  # truncated base64
        {"sig": "not base64 at all!", "exec": code},  # non-base64
        {"sig": good["sig"] + "\n", "exec": code},  # strict: no stray characters
        {"sig": "", "exec": code},
        {"sig": base64.b64encode(b"\x30\x00").decode(), "exec": code},  # garbage DER
        {"exec": code},  # missing sig
        {"sig": good["sig"]},  # missing exec
        {"sig": der, "exec": code},  # bytes, not base64 text
        {"sig": good["sig"], "exec": code.encode()},
        {"sig": None, "exec": code},
        [good["sig"], code],  # not a dict
        code,
        None,
        42,
    ]


@pytest.mark.parametrize("command", _bad_commands())
def test_bad_commands_fail_and_do_not_run(command: object) -> None:
    t = Harness()
    assert t.api.run(command) == "Signature failed"
    assert t.box == []
    assert t.hashes == set()


def test_forged_request_does_not_burn_the_legit_hash() -> None:
    t = Harness()
    code = "nonce=11\nbox.append('legit')\nresult = 'done'"
    assert t.api.run(signed(code, INTRUDER)) == "Signature failed"
    assert t.api.run({"sig": "AAAA", "exec": code}) == "Signature failed"
    assert t.hashes == set()
    assert t.api.run(signed(code)) == "done"
    assert t.box == ["legit"]


@pytest.mark.parametrize(("pub", "enabled"), [(OPERATOR_PUB, False), (None, True), ("", True)])
def test_disabled_returns_false_and_runs_nothing(pub: str | None, enabled: bool) -> None:
    t = Harness(pub=pub, enabled=enabled)
    assert t.api.active is False
    assert t.api.run(signed("nonce=12\nbox.append('x')")) is False
    assert t.api.run("garbage") is False
    assert t.box == [] and t.hashes == set()


def test_bad_public_key_is_refused_at_start() -> None:
    with pytest.raises(CryptoError):
        Harness(pub="04deadbeef")


def test_hash_is_recorded_before_the_code_runs() -> None:
    events: list[tuple[str, str]] = []
    api = ExecAPI(
        OPERATOR_PUB,
        True,
        seen=lambda h: False,
        record=lambda h: events.append(("record", h)),
        namespace=lambda: {"events": events},
    )
    code = "nonce=13\nevents.append(('run', ''))"
    assert api.run(signed(code)) is True
    assert events == [("record", txhash(code)), ("run", "")]


def test_record_failure_stops_the_command() -> None:
    box: list[str] = []

    def failing_record(h: str) -> None:
        raise OSError("disk full")

    api = ExecAPI(
        OPERATOR_PUB,
        True,
        seen=lambda h: False,
        record=failing_record,
        namespace=lambda: {"box": box},
    )
    with pytest.raises(OSError, match="disk full"):
        api.run(signed("nonce=14\nbox.append('x')"))
    assert box == []


def test_lock_is_held_while_running_and_released_after() -> None:
    lock = threading.Lock()
    t = Harness(lock=lock)
    assert t.api.run(signed("nonce=15\nresult = lock.locked()")) is True
    assert lock.locked() is False
    out = t.api.run(signed("nonce=16\nassert not lock.locked(), 'held'\n1/0"))
    assert isinstance(out, str) and "AssertionError: held" in out
    assert lock.locked() is False


def test_concurrent_copies_run_once() -> None:
    t = Harness()
    cmd = signed("nonce=17\nbox.append('x')")
    start = threading.Barrier(8)
    results: list[object] = []

    def worker() -> None:
        start.wait()
        results.append(t.api.run(cmd))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(map(str, results)) == ["Command sent previously"] * 7 + ["True"]
    assert t.box == ["x"]


def test_a_command_calling_checkpoint_during_an_automatic_one_answers(tmp_path) -> None:
    """A signed command runs under the ledger lock (pegx.app passes ``ledger.locked()``);
    one calling ``engine.checkpoint()`` while the automatic checkpoint was being written
    waited for it, and it for the ledger lock: the daemon hung for good. Now it answers."""
    from pegx import peg
    from pegx.ledger.engine import Exchange
    from pegx.ledger.store import Store

    ex = Exchange(Store(tmp_path / "ledger"), checkpoint_ops=2)
    vec = peg.std_spread(10**11)
    ex.credit_inputs([{"key": "f" * 64 + ":0", "value": int(vec.sum()), "vector": vec,
                       "owner": "bank"}], supply=500, now=0)
    ex.checkpoint()
    in_write, go_on = threading.Event(), threading.Event()

    def hold(_seconds: float) -> None:  # the automatic checkpoint, committed, unfinished
        if not in_write.is_set():
            in_write.set()
            assert go_on.wait(120)

    ex.observe(checkpoint=hold)
    trades: list[object] = []
    auto = threading.Thread(target=lambda: trades.extend(
        ex.trade("bank", 1, f"user{k:04d}") for k in range(2)), daemon=True)
    auto.start()
    assert in_write.wait(120), "the automatic checkpoint never started"
    hashes: set[str] = set()
    api = ExecAPI(OPERATOR_PUB, True, seen=hashes.__contains__, record=hashes.add,
                  namespace=lambda: {"engine": ex}, lock=ex.locked())
    out: list[object] = []
    cmd = threading.Thread(target=lambda: out.append(api.run(signed(
        "nonce=1\nresult = engine.checkpoint()"))), daemon=True)
    cmd.start()
    cmd.join(60)
    try:
        assert not cmd.is_alive(), "the command hung"
    finally:
        go_on.set()
    auto.join(60)
    assert not auto.is_alive() and trades == [True, True]
    # (the automatic checkpoint held the checkpoint lock: the answer is the refusal, as text)
    assert len(out) == 1 and "EngineError: a checkpoint is being written" in str(out[0])
    assert ex.checkpoint() == ex.seq
    ex.close()
