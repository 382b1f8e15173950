"""Engine entry points: behaviour, bad input (specific errors, no state change), durability."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pegx import peg
from pegx.ledger.engine import Exchange
from pegx.ledger.rules import (
    POOL,
    WITHDRAWS,
    AmountError,
    EngineError,
    FundsError,
    NameError_,
    UnknownAccount,
)
from pegx.ledger.store import LedgerLocked, Store, StoreError

SUPPLY = 500


def deposit(ex, key, user, value, supply=SUPPLY, vector=None):
    ex.claim_deposits(user, [key])
    vec = peg.std_spread(value) if vector is None else vector
    ex.credit_inputs([{"key": key, "value": int(vec.sum()), "address": "Bdeposit",
                       "vector": vec, "owner": user}], supply=supply, now=0)


def test_deposit_credits_fractions_and_balances_follow(ledger):
    deposit(ledger, "a" * 64 + ":0", "alice", 10**11)
    assert (ledger.row("alice") == peg.std_spread(10**11)).all()
    bal = ledger.balance("alice")
    ex = ledger.exchange_balance()
    f = peg.std_spread(10**11)
    liquid, reserve = peg.split(f, SUPPLY)
    nf = peg.nfreeze(f, SUPPLY)
    assert ex["liquid"] == liquid - nf and ex["reserve"] == reserve + nf
    assert bal == {"liquid": liquid - nf, "reserve": reserve + nf}
    assert ledger.record("claims", "a" * 64 + ":0") == {"name": "alice", "registered": 1}


def test_trade_and_pool_semantics(ledger):
    deposit(ledger, "t1:0", "alice", 10**11)
    ledger.trade("alice", 10**8, "bobby")
    assert ledger.balance("bobby") == {"liquid": 10**8, "reserve": 0}
    ledger.trade("bobby", -4 * 10**7, "")  # debit into the pool
    assert ledger.balance(POOL)["liquid"] == 4 * 10**7
    with pytest.raises(FundsError, match="Insufficient funds in liquid pool. Please make the "
                                         "debit before the credit."):
        ledger.trade("carol", 5 * 10**7, "")
    ledger.trade("carol", 4 * 10**7, "")  # credit out of the pool
    assert ledger.balance("carol")["liquid"] == 4 * 10**7
    assert ledger.balance(POOL)["liquid"] == 0
    ledger.trade("alice", 10**9, "bobby", "reserve")
    assert ledger.balance("bobby")["reserve"] == 10**9
    assert int(ledger.row("bobby")[:SUPPLY].sum()) == 10**9  # reserve steps moved


def test_withdraw_refund_returns_exactly_the_same_steps(ledger):
    deposit(ledger, "w:0", "alice", 10**11)
    before = ledger.row("alice")
    ledger.request_withdraw("id1", "alice", 3 * 10**8, "liquid", "Baddr", 0)
    assert ledger.balance(WITHDRAWS)["liquid"] == 3 * 10**8
    assert int(ledger.vector("withdraws", "id1").sum()) == 3 * 10**8
    ledger.trade("alice", 10**8, "bobby")  # other activity in between
    ledger.trade("bobby", 10**8, "alice")
    mid = ledger.row("alice")
    given = ledger.vector("withdraws", "id1")
    ledger.refund(["id1"])
    assert (ledger.row("alice") - mid == given).all()  # the user's own steps come back
    assert ledger.balance(WITHDRAWS) == {"liquid": 0, "reserve": 0}
    assert int(ledger.row("alice").sum()) == int(before.sum())
    ledger.request_withdraw("id2", "alice", 2 * 10**8, "liquid", "Baddr", 0)
    ledger.burn(["id2"])
    assert int(ledger.row("alice").sum()) == 10**11 - 2 * 10**8
    assert int(ledger.row(WITHDRAWS).sum()) == 0


BAD_NAMES = [("pool", "reserved"), ("Exchange", "reserved"), ("WITHDRAWS", "reserved"),
             ("x", "reserved"), ("abc", "too short"), ("", "too short"), (None, "string"),
             (1234, "string"), ("a" * 10_000, "too long"), ("bad\nname", "control")]


@pytest.mark.parametrize("name,why", BAD_NAMES)
def test_bad_names_are_refused_and_change_nothing(ledger, name, why):
    deposit(ledger, "n:0", "alice", 10**10)
    digest = ledger.digest()
    seq = ledger.seq
    with pytest.raises(NameError_):
        ledger.trade(name, 10, "bobby")
    with pytest.raises(NameError_):
        ledger.trade("alice", 10, name) if name != "" else ledger.trade("alice", 10, "abc")
    with pytest.raises(NameError_):
        ledger.request_withdraw("id", name, 10, "liquid", "B", 0)
    assert ledger.digest() == digest and ledger.seq == seq


@pytest.mark.parametrize("amount", [0, -1, 1.5, "10", None, True, 10**30, float("nan")])
def test_bad_amounts_are_refused_and_change_nothing(ledger, amount):
    deposit(ledger, "m:0", "alice", 10**10)
    digest = ledger.digest()
    with pytest.raises(EngineError):
        ledger.trade("alice", amount, "bobby")
    with pytest.raises(EngineError):
        ledger.request_withdraw("id", "alice", amount, "liquid", "B", 0)
    assert ledger.digest() == digest


def test_other_refusals_change_nothing(ledger):
    deposit(ledger, "o:0", "alice", 10**10)
    digest = ledger.digest()
    with pytest.raises(EngineError, match="Style must be"):
        ledger.trade("alice", 10, "bobby", "frozen")
    with pytest.raises(UnknownAccount):
        ledger.trade("nobody", 10, "bobby")
    with pytest.raises(FundsError, match="Insufficient liquid balance"):
        ledger.trade("alice", 10**10, "bobby")
    with pytest.raises(FundsError, match="Insufficient reserve balance"):
        ledger.request_withdraw("id", "alice", 10**10, "reserve", "B", 0)
    with pytest.raises(AmountError, match="negative if both users are known"):
        ledger.trade("alice", -10, "bobby")
    with pytest.raises(EngineError, match="no pending withdraw"):
        ledger.refund(["nope"])
    with pytest.raises(EngineError, match="no pending withdraw"):
        ledger.burn(["nope"])
    with pytest.raises(EngineError, match="already registered"):
        ledger.credit_inputs([{"key": "o:0", "value": 5, "vector": peg.std_spread(5),
                               "owner": "alice"}], supply=SUPPLY, now=0)
    with pytest.raises(EngineError, match="sum to"):
        ledger.credit_inputs([{"key": "p:0", "value": 6, "vector": peg.std_spread(5),
                               "owner": "alice"}], supply=SUPPLY, now=0)
    with pytest.raises(EngineError, match="listed twice"):  # was credited twice, one input
        ledger.credit_inputs([{"key": "q:0", "value": 5, "vector": peg.std_spread(5),
                               "owner": "alice"}] * 2, supply=SUPPLY, now=0)
    with pytest.raises(peg.PegError):
        ledger.recompute(1199, now=0)
    with pytest.raises(EngineError, match="not registered"):
        ledger.spend_inputs(["zz:1"], supply=SUPPLY, now=0)
    assert ledger.digest() == digest


def test_restart_reproduces_state_with_and_without_checkpoint(tmp_path):
    ex = Exchange(Store(tmp_path / "l"), checkpoint_ops=7)
    deposit(ex, "r:0", "alice", 10**11)
    for i in range(40):
        ex.trade("alice", 10**6 + i, f"user{i % 5}")
        if i % 9 == 0:
            ex.recompute(SUPPLY + i % 3, now=0)
    digest = ex.digest()
    ex.store.close()  # no final checkpoint: like a crash after the last ack
    ex2 = Exchange(Store(tmp_path / "l"))
    assert ex2.replayed > 0 and ex2.digest() == digest
    ex2.close()
    ex3 = Exchange(Store(tmp_path / "l"))
    assert ex3.replayed == 0 and ex3.digest() == digest
    ex3.close()


def test_second_open_is_refused_and_first_keeps_its_lock(tmp_path):
    s = Store(tmp_path / "l")
    with pytest.raises(LedgerLocked):
        Store(tmp_path / "l")
    code = ("import sys; from pegx.ledger.store import Store, LedgerLocked\n"
            "try:\n    Store(sys.argv[1])\nexcept LedgerLocked as e:\n    print('locked', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "l")],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("locked") and "another pegx process" in out
    s.close()


def test_unknown_format_version_is_refused_with_advice(tmp_path):
    s = Store(tmp_path / "l")
    with s.batch() as wb:
        wb.put(b"S", b'{"format": 99, "seq": 0}')
    s.close()
    with pytest.raises(StoreError, match="format version 99.*restore"):
        Store(tmp_path / "l")


def test_a_batch_whose_body_raises_writes_nothing(tmp_path):
    s = Store(tmp_path / "l")
    with pytest.raises(RuntimeError), s.batch() as wb:
        wb.put(b"Tx\x00a", b"1")
        raise RuntimeError("boom")
    assert s.get(b"Tx\x00a") is None
    s.close()


CHILD = textwrap.dedent("""
    import sys
    from pegx import peg
    from pegx.ledger.engine import Exchange
    from pegx.ledger.store import Store
    ex = Exchange(Store(sys.argv[1]), checkpoint_ops=int(sys.argv[2]))
    ex.claim_deposits("alice", ["k:0"])
    ex.credit_inputs([{"key": "k:0", "value": 10**12, "vector": peg.std_spread(10**12),
                       "owner": "alice"}], supply=400, now=0)
    print(ex.seq, flush=True)
    for i in range(100000):
        ex.trade("alice", 1000 + i, "user%d" % (i % 7))
        if i % 50 == 0:
            ex.request_withdraw("w%d" % i, "user%d" % (i % 7), 500, "liquid", "B", 0)
        if i % 50 == 25:
            ex.refund(["w%d" % (i - 25)])
        print(ex.seq, flush=True)
""")


def reference_run(path, upto):
    """The same operations, uninterrupted, stopped after record ``upto``."""
    ex = Exchange(Store(path), checkpoint_ops=10**9)
    ex.claim_deposits("alice", ["k:0"])
    ex.credit_inputs([{"key": "k:0", "value": 10**12, "vector": peg.std_spread(10**12),
                       "owner": "alice"}], supply=400, now=0)
    i = 0
    while ex.seq < upto:
        ex.trade("alice", 1000 + i, f"user{i % 7}")
        if i % 50 == 0 and ex.seq < upto:
            ex.request_withdraw(f"w{i}", f"user{i % 7}", 500, "liquid", "B", 0)
        if i % 50 == 25 and ex.seq < upto:
            ex.refund([f"w{i - 25}"])
        i += 1
    assert ex.seq == upto
    digest = ex.digest()
    ex.close()
    return digest


@pytest.mark.parametrize("checkpoint_ops", [10**9, 37])
def test_kill_9_loses_no_acknowledged_operation(tmp_path, checkpoint_ops):
    path = tmp_path / "crash"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(checkpoint_ops)],
                            stdout=subprocess.PIPE, text=True)
    acked = 0
    for line in proc.stdout:
        acked = int(line)
        if acked >= 400:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ex = Exchange(Store(path))  # no manual step: it just opens
    recovered = ex.seq
    digest = ex.digest()
    ex.close()
    assert recovered >= acked  # every acknowledged record survived
    assert digest == reference_run(tmp_path / "ref", recovered)
