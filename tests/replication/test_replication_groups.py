"""A standby and the long groups of issue #15: a group longer than RECORD_BYTES is several
op-log records (all but the last marked '+'); a standby applies and logs whole groups only.

In process: two real ledgers (real LevelDB), the primary's records read back as stored
(``log_records``, what the Replicator ships) and handed to the standby's ``apply_replicated``
cut wherever a frame may end. Through daemons: a primary and its synchronous standby, one
cycle crediting 900 deposits (one group of several records).
"""

from __future__ import annotations

from harness import oplog_records, std_inputs, wait_until
from harness.replica import (
    digest,
    make_key,
    primary,
    standby,
    status,
    wait_caught_up,
    wait_loaded,
)
from pegx.crypto import wif_to_address
from pegx.ledger import journal, schema
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store

SUPPLY = 500




def test_a_standby_applies_a_long_group_only_whole(tmp_path):
    p = Exchange(Store(tmp_path / "p"))
    s = Exchange(Store(tmp_path / "s"), file_rows=10)
    p.credit_inputs(std_inputs(5), supply=SUPPLY, now=0)
    assert p.trade("user00000", 1_000, "user00001")
    p.credit_inputs(std_inputs(700, first=5), supply=SUPPLY, now=0)  # ~4.5 MB: several records
    records = list(p.log_records(0))
    long = [r for r in records if journal.is_part(r[1])]
    assert len(long) >= 3, [len(v) for _, v in records]
    first_part = records.index(long[0])

    # the first frame ends inside the long group: its parts are held, nothing is applied
    got = s.apply_replicated(records[:first_part + 2])
    assert got == s.seq == records[first_part - 1][0]
    assert [q for q, _ in oplog_records(s.store)] == [q for q, _ in records[:first_part]]
    # the connection is lost; the primary sends again from the standby's seq
    got = s.apply_replicated(records[first_part:first_part + 1])
    assert got == s.seq == records[first_part - 1][0]
    got = s.apply_replicated(records[first_part:])
    assert got == s.seq == p.seq and s.digest_at() == p.digest_at()
    assert oplog_records(s.store) == oplog_records(p.store)  # the same records, the same bytes

    # its checkpoint writes checkpoint files (705 rows > file_rows), a restart reads them
    s.checkpoint()
    state = s.store.state()
    assert Store.named_files(state), state
    seq, dig = s.digest_at()
    s.close()
    again = Exchange(Store(tmp_path / "s"), file_rows=10)
    assert again.digest_at() == (seq, dig) == p.digest_at()
    # and follows on from there
    assert p.trade("user00002", 500, "user00003")
    again.apply_replicated(list(p.log_records(seq)))
    assert again.digest_at() == p.digest_at()
    again.close()
    p.close()


def test_a_standby_seeded_from_a_backup_with_checkpoint_files_catches_up(tmp_path):
    p = Exchange(Store(tmp_path / "p"), file_rows=10)
    p.credit_inputs(std_inputs(600), supply=SUPPLY, now=0)
    p.recompute(SUPPLY + 1, now=0)
    p.checkpoint()  # a rows file and a balances file
    assert Store.named_files(p.store.state())
    p.store.copy_to(tmp_path / "backup")
    backup_seq = p.seq
    p.credit_inputs(std_inputs(600, first=600), supply=SUPPLY + 1, now=0)  # a long group
    p.recompute(SUPPLY + 2, now=0)
    assert any(journal.is_part(v) for _, v in p.log_records(backup_seq))
    s = Exchange(Store(tmp_path / "backup"), file_rows=10)
    assert s.seq == backup_seq
    s.apply_replicated(list(p.log_records(s.seq)))
    assert s.digest_at() == p.digest_at()
    s.close()
    p.close()


def test_retention_never_cuts_a_long_group(tmp_path):
    """A retention floor inside a long group (``retain`` records back) keeps the whole group:
    a standby holding the group before it can still be sent everything after."""

    class Keep:
        """The Sink contract (pegx.ledger.journal.Sink) of a standby that acknowledged
        ``acked``; only ``floor`` matters to a checkpoint."""

        def __init__(self, acked: int):
            self.acked = acked

        def committed(self, seq: int) -> None:
            pass

        def floor(self, seq: int) -> int:
            return min(seq, self.acked)

    p = Exchange(Store(tmp_path / "p"))
    s = Exchange(Store(tmp_path / "s"))
    p.credit_inputs(std_inputs(5), supply=SUPPLY, now=0)
    before = s.apply_replicated(list(p.log_records(0)))  # the standby holds this group
    p.credit_inputs(std_inputs(400, first=5), supply=SUPPLY, now=0)
    parts = [q for q, v in p.log_records(before) if journal.is_part(v)]
    assert len(parts) >= 2
    p.replicate_to(Keep(parts[1]))  # a floor inside the group
    p.checkpoint()
    assert p.log_bounds()[1] == before  # all its records stay
    assert next(q for q, _ in p.log_records(before)) == before + 1
    s.apply_replicated(list(p.log_records(s.seq)))
    assert s.digest_at() == p.digest_at()
    s.close()
    p.close()


def test_a_sync_standby_follows_a_cycle_of_900_deposits(tmp_path):
    """One cycle credits 900 claimed deposits in one group (~6 MB: several records, more
    than one replication frame); the synchronous standby holds it whole and equal."""
    key = make_key(tmp_path)
    # no checkpoint but at shutdown: the records stay in the primary's log to be looked at
    p = primary(tmp_path / "p", key, sync=True, env={
        "PEGX_CHECKPOINT_OPS": "1000000", "PEGX_CHECKPOINT_SECONDS": "100000"}).start(
        wait_loaded=False)
    s = standby(tmp_path / "s", key, p).start()
    try:
        wait_loaded(p)
        x = p.proxy()
        wif, ok = x.GenerateDepositAddress()
        assert ok is True, wif
        address = wif_to_address(wif, p.net)
        wait_until(lambda: address in x.devnet.info()["wallet_addresses"], 30,
                   what="the deposit key import")
        outs = [x.devnet.send(address, str(10**9 + i)) for i in range(900)]
        x.devnet.mine(13)
        wait_until(lambda: set(outs) <= set(x.GetSpendable(address)), 60, what="Spendable")
        assert x.Deposit("alice", outs) is True
        wait_until(lambda: all((x.GetDeposits(o) or {}).get("registered") == 1
                               for o in outs[::100] + outs[-1:]), 120,
                   what="the deposits to register")
        target = digest(p)["seq"]  # the group is in memory: wait until both hold it
        wait_until(lambda: status(s)["seq"] >= target and status(p)["acked_seq"] >= target,
                   120, what="the standby to hold the group")
        assert wait_caught_up(p, s) == digest(p)["seq"]
        assert digest(p) == digest(s)
        assert s.proxy().GetBalance("alice") == x.GetBalance("alice")
        assert "replicated record" not in s.log()
        p.kill()  # SIGKILL: no shutdown checkpoint
        with Store(tmp_path / "p" / "ledger", create=False, read_only=True) as store:
            parts = [v for _, v in store.scan(schema.OPLOG) if journal.is_part(v)]
        assert len(parts) >= 4, len(parts)  # more than one frame (wire.CHUNK) of parts
    finally:
        s.stop()
        p.stop()
