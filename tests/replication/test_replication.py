"""A standby that holds every acknowledged call (issue #17), through the public surface: real
`pegx serve` daemons (a primary and a standby on loopback), stock xmlrpc.client, SIGKILL,
`pegx backup/restore/promote` on the command line, files on disk.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import urllib.request
import xmlrpc.client

from prometheus_client.parser import text_string_to_metric_families

from harness import cli_process, free_port, wait_until
from harness.daemon import Daemon
from harness.replica import (
    digest,
    make_key,
    primary,
    promote,
    standby,
    status,
    wait_caught_up,
    wait_loaded,
)
from pegx import crypto
from pegx.replication.role import STANDBY_MSG

BAY = 100_000_000


def outside_address() -> str:
    return crypto.wif_to_address(crypto.generate_deposit_key())


def test_sync_standby_holds_every_record_and_serves_reads(tmp_path):
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key, sync=True).start(wait_loaded=False)
    s = None
    try:
        s = standby(tmp_path / "s", key, p).start()
        wait_loaded(p)
        x, sx = p.proxy(), s.proxy()
        dep = p.fund("alice", 10**11)
        for i in range(30):
            assert x.Trade("alice", 1000 + i, "bobby") is True
        ok, wid = x.Withdraw("alice", str(2 * BAY), outside_address())
        assert ok is True
        # every call above answered only once the standby had its record on disk
        seq = wait_caught_up(p, s)
        assert digest(p) == digest(s) == {"seq": seq, "digest": digest(p)["digest"]}
        for call in (lambda y: y.GetBalance("alice"), lambda y: y.GetBalance("bobby"),
                     lambda y: y.GetBalance("exchange"), lambda y: y.GetDeposits(dep),
                     lambda y: y.GetDeposits(), lambda y: y.CheckWithdraw(wid),
                     lambda y: y.GetCycle(), lambda y: sorted(y.GetSpendable())):
            assert call(sx) == call(x)
        st = status(p)
        assert st["state"] == "synchronous" and st["lag_records"] == 0, st
        sst = status(s)
        assert sst["role"] == "standby" and sst["connected"] and sst["lag_records"] == 0, sst
        assert sst["epoch"] == st["epoch"] == 1 and sst["lineage"] == st["lineage"]
    finally:
        if s is not None:
            s.stop()
        p.stop()


def test_a_sync_standby_that_keeps_up_raises_no_alarm(tmp_path):
    """Every group commit waits for the standby's acknowledgement; one that arrives in time is
    no incident: no "NOT ACKNOWLEDGING" error, no "acknowledging again", status never BLOCKED
    (it used to say all three on every waiting commit)."""
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key, sync=True).start(wait_loaded=False)
    s = None
    try:
        s = standby(tmp_path / "s", key, p).start()
        wait_loaded(p)
        p.fund("alice", 10**11)
        wait_caught_up(p, s)
        mark = len(p.log())
        x = p.proxy()
        for i in range(50):
            assert x.Trade("alice", 1000 + i, "bobby") is True
            assert not status(p)["blocked"]
        wait_caught_up(p, s)
        tail = p.log()[mark:]
        assert "NOT ACKNOWLEDGING" not in tail and "acknowledging again" not in tail, tail
        assert status(p)["state"] == "synchronous"
    finally:
        if s is not None:
            s.stop()
        p.stop()


def write_calls(sx, pw: str) -> dict:
    """Every state-changing call, with password ``pw``: {name: (call, answers a pair)}."""
    return {
        "Trade": (lambda: sx.Trade("alice", 1000, "bobby", "liquid", pw), False),
        "Deposit": (lambda: sx.Deposit("alice", ["00" * 32 + ":0"], pw), False),
        "ExchangeSettings": (lambda: sx.ExchangeSettings("", "", "", 9, pw), False),
        "SetPassword": (lambda: sx.SetPassword("other", pw), False),
        "StartExchange": (lambda: sx.StartExchange(pw, 1), False),
        "CheckWithdraw": (lambda: sx.CheckWithdraw("someid", 1, pw), False),
        "Withdraw": (lambda: sx.Withdraw("alice", str(2 * BAY), outside_address(), "liquid",
                                         pw), True),
        "GenerateDepositAddress": (lambda: sx.GenerateDepositAddress(pw), True),
    }


def test_standby_refuses_state_changes_and_changes_nothing(tmp_path):
    key = make_key(tmp_path)
    with primary(tmp_path / "p", key) as p, standby(tmp_path / "s", key, p) as s:
        p.fund("alice", 10**11)
        p.proxy().SetPassword("pw")
        wait_caught_up(p, s, passw="pw")
        sx = s.proxy()
        before = sx.pegx.digest("pw")
        for pw, answer in (("pw", STANDBY_MSG), ("nope", "Incorrect Password")):
            # with a wrong password, the password is checked first, as for any refusal, in
            # the call's own shape
            for name, (call, pair) in write_calls(sx, pw).items():
                assert call() == ([answer, ""] if pair else answer), (name, pw)
        # reads are served, from the replicated ledger
        assert sx.GetBalance("alice", "pw") == p.proxy().GetBalance("alice", "pw")
        assert sx.StartExchange("pw", 1, 1) is True
        assert sx.CheckWithdraw("someid", 0, "pw") == "ID not found"
        try:
            sx.devnet.mine(1)
            raise AssertionError("a standby's devnet mined a block")
        except Exception as exc:  # noqa: BLE001 - the Fault
            assert "standby" in str(exc), exc
        assert sx.devnet.info()["height"] == p.proxy().devnet.info()["height"]
        assert sx.pegx.digest("pw") == before


def test_a_standby_never_runs_a_write_whose_password_the_primary_just_set(tmp_path):
    """A write with a password the standby does not know yet answers "Incorrect Password"
    without the write method ever running: the primary's SetPassword replicated between the
    guard's check and the method's own used to let the write run on the standby's ledger.
    Each round makes the race likely (a fresh password record, so every check is a ~50 ms
    scrypt; the next one lands while a call is in its check)."""
    key = make_key(tmp_path)
    with primary(tmp_path / "p", key) as p, standby(tmp_path / "s", key, p) as s:
        p.fund("alice", 10**11)
        x, sx = p.proxy(), s.proxy()
        target = {"pw": ""}
        answers: list[object] = []
        done = threading.Event()

        def hammer():
            y = s.proxy()
            while not done.is_set():
                answers.append((target["pw"], y.Trade("alice", 1, "bobby", "liquid",
                                                      target["pw"])))

        prev = ""
        t = threading.Thread(target=hammer, daemon=True)
        try:
            for k in range(12):
                between, target["pw"] = f"between-{k}", f"pw-{k}"
                assert x.SetPassword(between, prev) is True
                # the standby holds it (asked of the primary: a right password checked on the
                # standby would make its later checks of this record fast, the race tiny)
                wait_until(lambda b=between: (v := status(p, b))["acked_seq"] == v["seq"], 30,
                           what="the standby to acknowledge the SetPassword")
                if not t.is_alive():
                    t.start()
                n = len(answers)
                wait_until(lambda n=n: len(answers) > n, 30, what="the standby to answer")
                assert x.SetPassword(target["pw"], between) is True
                wait_until(lambda k=k: any(pw == f"pw-{k}" and a != "Incorrect Password"
                                           for pw, a in answers), 30,
                           what="the standby to take the new password")
                # a write that ran on the standby answers True (and the standby diverges)
                assert {a for _, a in answers} <= {"Incorrect Password", STANDBY_MSG}, k
                prev = target["pw"]
        finally:
            done.set()
            t.join(60)
        assert {a for _, a in answers} <= {"Incorrect Password", STANDBY_MSG}, answers
        wait_caught_up(p, s, passw=prev)
        assert sx.pegx.digest(prev) == x.pegx.digest(prev)
        assert sx.GetBalance("bobby", prev) is x.GetBalance("bobby", prev) is False  # no trade


def test_standby_killed_and_restarted_catches_up(tmp_path):
    """With --standby-fallback async the primary goes on alone (and says so); its checkpoints
    keep the records the standby lacks; the restarted standby catches up."""
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key, sync=True, fallback="async").start(wait_loaded=False)
    s = standby(tmp_path / "s", key, p).start()
    try:
        wait_loaded(p)
        p.fund("alice", 10**11)
        x = p.proxy()
        for _ in range(20):
            assert x.Trade("alice", 1000, "bobby") is True
        wait_caught_up(p, s)
        s.kill()  # SIGKILL: a crash
        for _ in range(50):
            assert x.Trade("alice", 1000, "bobby") is True  # acknowledged alone: degraded
        st = wait_until(lambda: (v := status(p))["state"].startswith("DEGRADED") and v, 10,
                        what="the primary to say it acknowledges without the standby")
        assert st["problem"] and st["lag_records"] >= 50, st
        assert x.pegx.checkpoint("") == st["seq"]
        assert st["retained_from"] <= st["acked_seq"] + 1, st  # the checkpoint kept them
        s.start()
        seq = wait_caught_up(p, s)
        assert digest(p) == digest(s)
        assert s.proxy().GetBalance("bobby") == x.GetBalance("bobby") == \
            {"liquid": 70 * 1000, "reserve": 0}
        assert x.Trade("alice", 1000, "bobby") is True
        wait_until(lambda: status(p)["state"] == "synchronous", 20,
                   what="the primary to be synchronous again")
        assert status(s)["seq"] >= seq + 1
    finally:
        s.stop()
        p.stop()


def test_standby_started_from_a_backup_catches_up(tmp_path):
    key = make_key(tmp_path)
    with primary(tmp_path / "p", key) as p:
        p.fund("alice", 10**11)
        x = p.proxy()
        for _ in range(10):
            assert x.Trade("alice", 1000, "bobby") is True
        out = cli_process("backup", str(tmp_path / "backup"), "--url", p.url)
        assert out.returncode == 0, out.stderr
        for _ in range(30):
            assert x.Trade("alice", 1000, "bobby") is True
        x.pegx.checkpoint("")  # the records after the backup are kept for a standby
        p.fund("carol", 10**10)  # new devnet blocks and a deposit after the backup
        out = cli_process("restore", str(tmp_path / "backup"), "--datadir", str(tmp_path / "s"))
        assert out.returncode == 0, out.stderr
        with standby(tmp_path / "s", key, p) as s:
            wait_caught_up(p, s)
            assert digest(p) == digest(s)
            assert s.proxy().GetBalance("carol") == x.GetBalance("carol")
            assert s.proxy().devnet.info() == x.devnet.info()


def test_strict_sync_stops_acknowledging_without_the_standby(tmp_path):
    """The default fallback: with the standby gone no state change answers; the call that
    waits answers True once a standby holds its record, and the standby has it."""
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key, sync=True).start(wait_loaded=False)
    s = standby(tmp_path / "s", key, p).start()
    try:
        wait_loaded(p)
        p.fund("alice", 10**11)
        wait_caught_up(p, s)
        s.kill()
        answers: list[object] = []
        t = threading.Thread(target=lambda: answers.append(
            p.proxy().Trade("alice", 12345, "bobby")), daemon=True)
        t.start()
        st = wait_until(lambda: (v := status(p))["state"].startswith("BLOCKED") and v, 20,
                        what="the primary to say it does not acknowledge")
        assert st["problem"] and not answers and t.is_alive()
        # reads are still served meanwhile
        assert p.proxy().GetBalance("alice")["liquid"] > 0
        s.start()
        t.join(60)
        assert answers == [True]
        wait_caught_up(p, s)
        assert s.proxy().GetBalance("bobby")["liquid"] == 12345
    finally:
        s.stop()
        p.stop()


def test_a_standby_with_another_key_is_refused(tmp_path):
    """Both sides prove they hold the key; a standby with another key gets nothing (a new
    one, which must first fetch its devnet header, exits with the reason)."""
    key, other = make_key(tmp_path), make_key(tmp_path, "other.key")
    with primary(tmp_path / "p", key) as p:
        p.fund("alice", 10**11)
        s = standby(tmp_path / "s", other, p)
        out = cli_process(*s.args[3:])  # pegx serve ... in the foreground
        assert out.returncode == 1, out.stdout + out.stderr
        assert "does not hold our replication key" in out.stderr, out.stderr
        assert not (tmp_path / "s" / "devnet").exists()
        assert status(p)["standby"] == ""
        assert p.proxy().Trade("alice", 1000, "bobby") is True  # the primary is unharmed


def test_key_file_contract(tmp_path):
    path = tmp_path / "k"
    out = cli_process("replication-key", "generate", str(path))
    assert out.returncode == 0, out.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    again = cli_process("replication-key", "generate", str(path))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    os.chmod(path, 0o644)
    d = Daemon(tmp_path / "d", extra=["--replication-key-file", str(path)])
    out = cli_process(*d.args[3:])
    assert out.returncode == 1 and "chmod 600" in out.stderr, out.stderr


def test_promotion_fences_the_old_primary(tmp_path):
    """The old primary still runs when the standby is promoted: the new primary's fencer tells
    it, it stops (exit 3), and it refuses to start again as a primary."""
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key).start()
    s = standby(tmp_path / "s", key, p).start()
    try:
        p.fund("alice", 10**11)
        wait_caught_up(p, s)
        st = promote(s)
        assert st["role"] == "primary" and st["epoch"] == 2, st
        assert p.proc.wait(60) == 3
        assert "superseded by epoch 2" in p.log()
        p.stop()
        out = cli_process(*p.args[3:])
        assert out.returncode == 1 and "superseded by epoch 2" in out.stderr, out.stderr
        assert s.proxy().Trade("alice", 1000, "bobby") is True
        wait_until(lambda: status(s)["fencing"]["state"] == "fenced", 20,
                   what="the fencer to report")
    finally:
        s.stop()
        p.stop()


def test_a_promotion_whose_replication_port_is_taken_changes_nothing(tmp_path):
    """`pegx promote` of a standby that cannot listen on its replication port is refused
    with the reason (exit 2) before anything is written: the standby follows on at the same
    epoch, and promotes once the port is free (one epoch further, not two). It used to write
    the new epoch and promoted.json first, then fail to bind: an internal error, a node
    neither following nor primary, and another epoch at the next try."""
    key = make_key(tmp_path)
    with primary(tmp_path / "p", key) as p, standby(tmp_path / "s", key, p) as s:
        p.fund("alice", 10**11)
        wait_caught_up(p, s)
        host, port = s.repl.split(":")
        with socket.create_server((host, int(port))):  # someone else listens there
            out = cli_process("promote", "--url", s.url)
            assert out.returncode == 2, out.stdout + out.stderr
            assert "not promoted" in out.stderr and f"{port}" in out.stderr, out.stderr
            st = status(s)
            assert st["role"] == "standby" and st["epoch"] == 1, st
            assert not (tmp_path / "s" / "promoted.json").exists()
            assert p.proxy().Trade("alice", 1000, "bobby") is True
            wait_caught_up(p, s)  # it follows again
            assert status(s)["connected"]
        assert digest(p) == digest(s)
        st = promote(s)
        assert st["role"] == "primary" and st["epoch"] == 2, st


def test_an_old_primary_that_comes_back_learns_from_a_standby_of_a_newer_epoch(tmp_path):
    """The primary is down while its standby is promoted, and the promoted daemon is down when
    the old primary comes back (asynchronous: it would serve). A standby of the new epoch that
    connects to it (a service file pointing at the old address) is refused, and the old
    primary, having learnt of the higher epoch, stops; that standby does not follow it. The
    promoted datadir, started again with its old --standby-of, refuses to start."""
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key).start()
    s = standby(tmp_path / "s", key, p).start()
    try:
        p.fund("alice", 10**11)
        wait_caught_up(p, s)
        p.kill()
        promote(s)
        assert s.proxy().Trade("alice", 1000, "bobby") is True
        assert cli_process("backup", str(tmp_path / "b"), "--url", s.url).returncode == 0
        assert cli_process("restore", str(tmp_path / "b"), "--datadir",
                        str(tmp_path / "n")).returncode == 0
        s.stop()  # the new primary (and its fencer) is away
        again = cli_process(*s.args[3:])
        assert again.returncode == 1 and "was promoted to primary (epoch 2" in again.stderr
        p.start()
        assert p.proxy().GetBalance("bobby") is False  # the old primary serves its old ledger
        n = standby(tmp_path / "n", key, p).start()  # epoch 2, pointed at the old primary
        try:
            assert p.proc.wait(60) == 3
            assert "superseded by epoch 2" in p.log()
            wait_until(lambda: "newer primary exists" in status(n)["problem"], 30,
                       what="the standby to say why it does not follow")
            assert n.proxy().Trade("alice", 1000, "bobby") == STANDBY_MSG
        finally:
            n.stop()
    finally:
        s.stop()
        p.stop(signal.SIGKILL)


def test_lag_and_degradation_in_status_and_metrics(tmp_path):
    """The lag (records and seconds) and a sync primary acknowledging alone show in `pegx
    status` (the problem first) and in the metrics, on both sides; then they clear."""
    def metrics(port: int) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
            text = resp.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    key = make_key(tmp_path)
    pm, sm = free_port(), free_port()
    p = primary(tmp_path / "p", key, sync=True, fallback="async",
                extra=["--metrics-port", str(pm)]).start(wait_loaded=False)
    s = standby(tmp_path / "s", key, p, extra=["--metrics-port", str(sm)]).start()
    try:
        wait_loaded(p)
        p.fund("alice", 10**11)
        wait_caught_up(p, s)
        m = metrics(pm)
        assert m[("pegx_replication_role", (("role", "primary"),))] == 1
        assert m[("pegx_replication_connected", ())] == 1
        assert m[("pegx_replication_lag_records", ())] == 0
        assert m[("pegx_replication_degraded", ())] == 0
        ms = metrics(sm)
        assert ms[("pegx_replication_role", (("role", "standby"),))] == 1
        assert ms[("pegx_replication_epoch", ())] == 1
        out = cli_process("status", "--url", s.url)
        assert out.returncode == 0 and "replica    standby (epoch 1)" in out.stdout, out.stdout
        assert "exchange not started" not in out.stdout  # a standby's idle exchange is fine
        s.kill()
        x = p.proxy()
        for _ in range(5):
            assert x.Trade("alice", 1000, "bobby") is True
        wait_until(lambda: metrics(pm)[("pegx_replication_degraded", ())] == 1, 20,
                   what="the degraded gauge")
        m = metrics(pm)
        assert m[("pegx_replication_lag_records", ())] >= 5
        assert m[("pegx_replication_lag_seconds", ())] > 0
        assert m[("pegx_problem", (("kind", "replication"),))] == 1 and m[("pegx_up", ())] == 0
        out = cli_process("status", "--url", p.url)
        first = out.stdout.splitlines()[0]
        assert first.startswith("DEGRADED: acknowledging without the standby"), out.stdout
        assert cli_process("status", "--check", "--url", p.url).returncode == 1
        s.start()
        wait_caught_up(p, s)
        assert x.Trade("alice", 1000, "bobby") is True
        wait_until(lambda: metrics(pm)[("pegx_replication_degraded", ())] == 0, 20,
                   what="the degraded gauge to clear")
        wait_caught_up(p, s)
        m = metrics(pm)
        assert m[("pegx_replication_lag_records", ())] == 0
        assert m[("pegx_replication_lag_seconds", ())] == 0
    finally:
        s.stop()
        p.stop()


def test_a_call_waiting_for_a_gone_standby_is_not_acknowledged_at_shutdown(tmp_path):
    """Strict sync, no standby: the daemon is stopped while a Trade waits; the Trade answers
    Fault 1 'not acknowledged' (never True), the shutdown completes, and the change (on the
    primary's disk) reaches the standby after the restart."""
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key, sync=True).start(wait_loaded=False)
    s = standby(tmp_path / "s", key, p).start()
    try:
        wait_loaded(p)
        p.fund("alice", 10**11)
        wait_caught_up(p, s)
        s.kill()
        answers: list[object] = []

        def trade():
            try:
                answers.append(p.proxy().Trade("alice", 777, "bobby"))
            except xmlrpc.client.Fault as exc:
                answers.append(exc)
        t = threading.Thread(target=trade, daemon=True)
        t.start()
        wait_until(lambda: status(p)["state"].startswith("BLOCKED"), 20,
                   what="the primary to wait for the standby")
        assert p.stop() == 0
        t.join(60)
        assert len(answers) == 1 and isinstance(answers[0], xmlrpc.client.Fault), answers
        assert answers[0].faultCode == 1 and "not acknowledged" in answers[0].faultString
        p.start(wait_loaded=False)
        s.start()
        wait_caught_up(p, s)
        assert s.proxy().GetBalance("bobby")["liquid"] == 777
    finally:
        s.stop()
        p.stop()


def test_a_standby_too_far_behind_is_refused_with_what_to_do(tmp_path):
    """replication_retain caps what checkpoints keep for a standby that is away; one that needs
    records that are gone is refused (re-seed), and one re-seeded from a new backup follows."""
    key = make_key(tmp_path)
    with primary(tmp_path / "p", key, env={"PEGX_REPLICATION_RETAIN": "5"}) as p:
        p.fund("alice", 10**11)
        s = standby(tmp_path / "s", key, p).start()
        wait_caught_up(p, s)
        s.kill()
        x = p.proxy()
        for _ in range(20):
            assert x.Trade("alice", 1000, "bobby") is True
        x.pegx.checkpoint("")
        assert status(p)["retained_from"] > status(p)["acked_seq"] + 1
        s.start()
        wait_until(lambda: "no longer keeps" in status(s)["problem"], 30,
                   what="the standby to be refused")
        assert "re-seed the standby from a new backup" in status(s)["problem"]
        s.stop()
        out = cli_process("backup", str(tmp_path / "b"), "--url", p.url)
        assert out.returncode == 0, out.stderr
        os.rename(tmp_path / "s", tmp_path / "s-old")
        assert cli_process("restore", str(tmp_path / "b"), "--datadir",
                        str(tmp_path / "s")).returncode == 0
        with standby(tmp_path / "s", key, p) as s2:
            wait_caught_up(p, s2)
            assert digest(p) == digest(s2)


def test_an_old_primary_with_records_the_new_one_lacks_cannot_follow_it(tmp_path):
    """An asynchronous primary acknowledged records its standby never got; the standby is
    promoted. The old primary's datadir, started as a standby of the new primary, is refused:
    its records after the end of its epoch were written by a superseded primary."""
    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key).start()
    s = standby(tmp_path / "s", key, p).start()
    try:
        p.fund("alice", 10**11)
        end = wait_caught_up(p, s)
        s.kill()
        x = p.proxy()
        for _ in range(5):
            assert x.Trade("alice", 1000, "bobby") is True  # the standby lacks these
        p.kill()
        s.start()
        promote(s)
        assert s.proxy().GetBalance("bobby") is False  # those 5 trades are not here
        old = standby(tmp_path / "p", key, s)
        old.start()
        wait_until(lambda: "re-seed it from a backup" in status(old)["problem"], 30,
                   what="the old primary to be refused as a standby")
        assert f"which ended at seq {end:,d}" in status(old)["problem"]
        old.stop()
    finally:
        s.stop()
        p.stop()
