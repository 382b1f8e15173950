"""Write a format-1 ledger (the layout before the one-record-per-batch change) with the code of
main at be9ddad, plus the answers that code gives on it, as a test fixture.

Run from a checkout of the OLD code:  .venv/bin/python make_v1.py OUTDIR
"""
import base64
import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, "tests")

from pegx import crypto
from pegx.admin import tools
from pegx.chain.devnet import Devnet
from pegx.exchange.cycle import ExchangeCycle
from pegx.exchange.withdraws import WithdrawDesk, conservation
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store
from pegx.rpc.api import PegAPI

COMM = {"min": 100000000, "max": 1000000000, "percent": "0.001"}


def addr():
    return crypto.wif_to_address(crypto.generate_deposit_key())


class Rig:
    def __init__(self, path):
        self.path = path
        self.chain = Devnet(path, block_seconds=0, initial_supply=100)
        self.open()

    def open(self):
        self.ledger = Exchange(Store(self.path / "ledger"), checkpoint_ops=10**9,
                               checkpoint_rows=10**9, checkpoint_seconds=10**9)
        self.desk = WithdrawDesk(self.ledger, self.chain)
        self.cycle = ExchangeCycle(self.ledger, self.chain, desk=self.desk)
        self.cycle._started = True
        self.api = PegAPI(self.ledger, self.cycle, busy_wait=0)
        self.step()

    def step(self):
        self.cycle.step()
        law = conservation(self.ledger)
        assert law["ok"] and law["drift_value"] == 0 and law["liquid_ok"], law

    def mine(self, n=1):
        for _ in range(n):
            self.chain.mine(1)
            self.step()

    def fund(self, user, amount):
        key = crypto.generate_deposit_key()
        address = crypto.wif_to_address(key)
        self.ledger.put("addresses", address, {"wif": key, "imported": 0})
        self.step()
        op = self.chain.send(address, amount)
        self.chain.mine(13)
        self.step()
        self.ledger.put("claims", op, {"name": user})
        self.step()
        return op

    def settings(self, accounts):
        s = self.ledger.exchange_settings()
        s.update(exchangeaccounts=accounts, exchangefeeaccount=self.fee, commission=dict(COMM))
        self.ledger.put("settings", "exchange", s)

    def status(self, wid):
        rec = self.ledger.record("history", wid)
        if isinstance(rec, str):
            rec = self.ledger.record("history", rec)
        return rec

    def until(self, pred, limit=450):
        for _ in range(limit):
            if pred():
                return
            self.mine(1)
        raise AssertionError("not reached")


def main(out: Path):
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    r = Rig(work)
    r.acct0, r.fee = r.chain.new_address(), addr()
    r.settings([r.acct0])
    r.fund("alice", 10**11)
    r.fund("bobby", 5 * 10**10)
    def cyc():
        return r.cycle.cycle()
    # w1: malleated, Complete (txid2)
    r.ledger.withdraw("w1", "alice", 10**10, "liquid", addr(), cyc())
    r.until(lambda: r.status("w1") is not None)
    r.chain.malleate_next()
    r.until(lambda: (r.status("w1") or {}).get("status") == "Complete")
    # w2: reserve, Complete
    r.ledger.withdraw("w2", "bobby", 2 * 10**10, "reserve", addr(), cyc())
    r.until(lambda: (r.status("w2") or {}).get("status") == "Complete")
    # w3: dropped, cancelled, Failed/Declined
    r.ledger.withdraw("w3", "alice", 10**10, "liquid", addr(), cyc())
    r.until(lambda: r.status("w3") is not None)
    assert r.chain.drop(r.ledger.record("batches", r.ledger.record("history", "w3"))["txid"])
    r.until(lambda: (r.status("w3") or {}).get("status") == "Failed/Declined", 60)
    # w4: no exchange account for a while: Expired
    r.settings([])
    r.ledger.withdraw("w4", "alice", 10**9 * 3, "liquid", addr(), cyc())
    r.until(lambda: r.status("w4") is not None, 450)
    assert r.status("w4")["status"] == "Expired"
    r.settings([r.acct0])
    r.until(lambda: 5 <= r.chain.tip().height % 200 < 10, 400)
    # a clean stop: what follows is in the op log only
    r.ledger.close()
    r.open()
    # w5 + w6: one batch in flight (unconfirmed, never broadcast: the node refused it)
    r.until(lambda: 12 <= r.chain.tip().height % 200 < 20, 400)
    r.chain.reject_next_broadcast("node restarting")
    r.ledger.withdraw("w5", "alice", 2 * 10**9, "liquid", addr(), cyc())
    r.ledger.withdraw("w6", "bobby", 10**9 * 4, "liquid", addr(), cyc())
    r.until(lambda: r.status("w5") is not None, 60)
    assert r.status("w5")["status"] == "unconfirmed", (r.status("w5"), r.chain.tip().height)
    # w7: pending reserve withdraw, not batched yet (the liquid window)
    r.ledger.withdraw("w7", "bobby", 10**9 * 5, "reserve", addr(), cyc())
    # clears: a finished withdraw id, a finished master id (its withdraw id now dangles)
    m3 = r.ledger.record("history", "w3")
    assert r.api.CheckWithdraw("w2", 1)["status"] == "Complete"
    assert r.api.CheckWithdraw(m3, 1)["status"] == "Failed/Declined"
    assert r.api.CheckWithdraw("w5", 1)["status"] == "unconfirmed"  # in flight: kept
    ids = ["w1", "w2", "w3", "w4", "w5", "w6", "w7", "nope"]
    masters = sorted(m for m in r.ledger.records("batches"))
    answers = {i: r.api.CheckWithdraw(i) for i in ids + masters}
    history = r.ledger.records("history")
    by_status = {"pending": len(r.ledger.records("withdraws"))}
    for rec in history.values():
        if isinstance(rec, dict):
            by_status[rec["status"]] = by_status.get(rec["status"], 0) + 1
    expected = {
        "check_withdraw": answers,
        "deposits": r.api.GetDeposits(),
        "balances": {u: r.ledger.balance(u) for u in r.ledger.users()},
        "rows": {u: hashlib.sha256(r.ledger.row(u).astype("<i8").tobytes()).hexdigest()
                 for u in r.ledger.users()},
        "by_status": by_status,
        "active": sorted(r.desk.active()),
        "not_batchable": r.desk.not_batchable(),
        "audit": tools.audit(r.ledger, r.chain),
        "withdraws": r.ledger.records("withdraws"),
        "inputs": r.ledger.records("inputs"),
        "batches": r.ledger.records("batches"),
        "history": history,
        "seq": r.ledger.seq,
        "ckpt_seq": r.ledger.ckpt_seq,
        "height": r.chain.tip().height,
    }
    assert expected["seq"] > expected["ckpt_seq"], "the op log must hold a tail"
    r.ledger.store.close()  # a crash: the tail stays in the op log
    r.chain.close()
    # dump every LevelDB record
    store = Store(work / "ledger", create=False, read_only=True)
    records = [[base64.b64encode(k).decode(), base64.b64encode(v).decode()]
               for k, v in store.scan(b"")]
    store.close()
    fixture = {
        "about": "a format-1 pegx ledger and devnet written by pegx at be9ddad "
                 "(scripts: /work/tmp/arch-ledger/make_v1.py), with that code's answers on it",
        "ledger": records,
        "devnet_log": (work / "devnet" / "actions.jsonl").read_text(),
        "expected": expected,
    }
    data = json.dumps(fixture, sort_keys=True).encode()
    (out / "ledger_v1.json.gz").write_bytes(gzip.compress(data, 9, mtime=0))
    print("records", len(records), "bytes", len(gzip.compress(data, 9)))
    print(json.dumps(answers, indent=1))
    print(by_status)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
