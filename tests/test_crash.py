"""The crash-injection test, short: scripts/crash_test.py with 5 kills and 2 clients.

The full run (30 kills, 3 clients) is `python scripts/crash_test.py`; this variant keeps CI
honest in well under a minute. The checker itself is tested first on hand-made snapshots, so a
broken checker cannot pass vacuously.
"""

from __future__ import annotations

import socket
import threading
import xmlrpc.client
from collections import Counter

import pytest

from harness import crash

USERS = ["aaaa", "bbbb"]
ACCOUNTS = USERS + [crash.POOL, crash.WITHDRAWS]


def trade(n: int, src: str, dst: str, amount: int, outcome: str) -> dict:
    return {"n": n, "k": 0, "m": "Trade", "args": [src, amount, dst], "o": outcome,
            "fx": {"kind": "move", "src": src, "dst": dst, "amount": amount}}


def snap(totals: dict, claims: dict | None = None, status: dict | None = None) -> dict:
    return {"totals": {a: totals.get(a, 0) for a in ACCOUNTS}, "claims": claims or {},
            "status": status or {}}


def funded_model(summary) -> crash.Model:
    model = crash.Model(USERS)
    model.claims["f:0"] = {"user": "aaaa", "value": 10**12, "acked": True, "maybe": False}
    model.take(trade(1, "aaaa", "bbbb", 3 * 10**9, "acked"), summary)
    return model


FUNDED = {"f:0": {"name": "aaaa", "registered": 1}}


def test_resolve_finds_the_one_subset_of_unanswered_calls():
    summary = crash.Summary(0)
    model = funded_model(summary)
    model.take(trade(2, "aaaa", "bbbb", 123_456_789, "unknown"), summary)
    model.take(trade(3, "bbbb", "pool", 987_654, "unknown"), summary)
    model.take(trade(4, "aaaa", "pool", 55_555, "refused"), summary)
    got = snap({"aaaa": 10**12 - 3 * 10**9, "bbbb": 3 * 10**9 - 987_654, "pool": 987_654},
               FUNDED)
    model.check_claims(got, summary)
    model.resolve(got, ACCOUNTS, summary)
    assert (summary.unknown_applied, summary.unknown_not_applied) == (1, 1)
    assert model.base["pool"] == 987_654 and model.unknown == []


def test_a_refused_call_that_left_an_effect_fails():
    summary = crash.Summary(0)
    model = funded_model(summary)
    model.take(trade(2, "aaaa", "pool", 55_555, "refused"), summary)
    got = snap({"aaaa": 10**12 - 3 * 10**9 - 55_555, "bbbb": 3 * 10**9, "pool": 55_555}, FUNDED)
    with pytest.raises(crash.CheckFailed, match="pool: 0 vs 55,555"):
        model.resolve(got, ACCOUNTS, summary)


def test_a_lost_acknowledged_claim_fails():
    summary = crash.Summary(0)
    model = funded_model(summary)
    with pytest.raises(crash.CheckFailed, match="is gone"):
        model.check_claims(snap({}, {}), summary)


def test_withdraw_refund_and_orphan_completion_are_accounted():
    summary = crash.Summary(0)
    model = funded_model(summary)
    model.take({"n": 2, "k": 0, "m": "Withdraw", "o": "acked", "id": "w1", "args": [],
                "fx": {"kind": "withdraw", "user": "aaaa", "amount": 7 * 10**8}}, summary)
    model.take({"n": 3, "k": 0, "m": "Withdraw", "o": "unknown", "args": [],
                "fx": {"kind": "withdraw", "user": "bbbb", "amount": 4 * 10**8}}, summary)
    # w1 expired (refunded); the unanswered withdraw happened and is still pending
    got = snap({"aaaa": 10**12 - 3 * 10**9, "bbbb": 3 * 10**9 - 4 * 10**8,
                "withdraws": 4 * 10**8}, FUNDED, {"w1": "Expired"})
    model.resolve(got, ACCOUNTS, summary)
    assert model.withdraws == {} and len(model.orphans) == 1
    # later its batch completes: the orphan leaves `withdraws`
    got = snap({"aaaa": 10**12 - 3 * 10**9, "bbbb": 3 * 10**9 - 4 * 10**8}, FUNDED)
    assert "1 orphan withdraws settled" in model.resolve(got, ACCOUNTS, summary)
    assert model.orphans == []


def test_a_call_cut_off_mid_answer_is_unknown_not_unsent():
    """Stock Transport resends once after a reset; after a crash the resend is refused, which
    would make a call that may have been applied look unsent. The one-shot transport says so."""
    def serve_one(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        listener.close()  # the "daemon" dies with the request in hand
        conn.recv(65536)
        conn.close()

    for make, expected in ((crash.proxy, ConnectionResetError),
                           (lambda url: xmlrpc.client.ServerProxy(url), ConnectionRefusedError)):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        t = threading.Thread(target=serve_one, args=(listener,))
        t.start()
        with pytest.raises(expected) as info:
            make(f"http://127.0.0.1:{port}").Trade("aaaa", 1, "bbbb")
        t.join()
        if make is crash.proxy:
            assert not isinstance(info.value, ConnectionRefusedError)


def test_short_crash_run(tmp_path):
    summary = crash.run(tmp_path, kills=5, clients=2, seed=7, quiet=True, load=(0.2, 0.8))
    assert summary.ok, summary.failures
    assert summary.kills >= 5
    assert summary.labels["cycle"] >= 1 and summary.labels["batch"] >= 1
    # not vacuous: calls were cut off by kills, and each was resolved one way or the other
    assert summary.kills_in_flight >= 1
    resolved = (summary.unknown_applied + summary.unknown_not_applied
                + summary.claims_applied + summary.claims_not_applied)
    assert resolved >= 1
    assert summary.outcomes["acked"] > 100 and sum(summary.conservation.values()) >= 6
    assert Counter(summary.outcomes)["fault"] == 0
