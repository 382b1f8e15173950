"""A rebroadcast goes to the chain only after its record is committed (the desk, in process).

With a strict ``--sync-standby`` primary that commit returns once the standby holds it, and so
every earlier record (the batch itself, written on the primary's disk only before a restart):
a rebroadcast the standby does not know the batch of would let a promoted standby pay the
withdraws again. The desk used to broadcast first and record ``last_try`` after.
"""

from __future__ import annotations

from harness import new_address
from harness.rig import Rig


def test_a_rebroadcast_is_recorded_before_it_reaches_the_chain(tmp_path):
    rig = Rig(tmp_path)
    rig.setup()
    rig.fund("alice", 10**12)
    rig.ledger.request_withdraw("w1", "alice", 10**10, "liquid", new_address(), rig.cycle.cycle())
    rig.until(lambda: (rig.status("w1") or {}).get("status") == "unconfirmed")
    master = rig.status("w1")["ID"]
    assert rig.chain.drop(rig.status("w1")["txid"]) is True  # the next block rebroadcasts it
    seen: list[tuple[int, int]] = []  # (the batch's last_try in the ledger, the tip) per call
    real = rig.chain.broadcast

    def broadcast(raw: str) -> str:  # the real devnet's, noting what the ledger holds first
        seen.append((rig.ledger.record("batches", master)["last_try"], rig.chain.tip().height))
        return real(raw)

    rig.chain.broadcast = broadcast
    try:
        rig.mine(1)
    finally:
        rig.chain.broadcast = real
        rig.close()
    assert seen, "the desk did not rebroadcast the dropped batch"
    assert all(last_try == tip for last_try, tip in seen), seen
