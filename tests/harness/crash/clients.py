"""The crash run's client processes: random calls over stock xmlrpc.client, each logged
(intent, then outcome) to a JSONL file the coordinator folds into the model."""

from __future__ import annotations

import http.client
import json
import random
import time
import xmlrpc.client
from xml.parsers.expat import ExpatError

from pegx.crypto import generate_deposit_key, wif_to_address

POOL, WITHDRAWS, HOUSE = "pool", "withdraws", "exchange"
INT32 = 2**31


class OneShotTransport(xmlrpc.client.Transport):
    """The stock transport, minus its silent retry, on a fresh connection per call.

    Stock ``Transport.request`` resends a request once when the connection is reset. After a
    crash that resend meets a closed port and raises ConnectionRefusedError, which would make a
    call that may well have been applied look as if it was never sent. One attempt per call, and
    a fresh connection (no stale keep-alive socket from the previous daemon), keeps the outcome
    honest: refused at connect = not sent; anything after that = unknown.
    """

    timeout = 60.0

    def make_connection(self, host):
        """A new HTTPConnection with a timeout (a hung daemon must not hang the client)."""
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn

    def request(self, host, handler, request_body, verbose=False):
        """One attempt; the connection is closed afterwards."""
        try:
            return self.single_request(host, handler, request_body, verbose)
        finally:
            self.close()


def proxy(url: str) -> xmlrpc.client.ServerProxy:
    """A stock ServerProxy on the one-shot transport."""
    return xmlrpc.client.ServerProxy(url, transport=OneShotTransport(), allow_none=True)


def classify(method: str, result) -> str:
    """acked / refused for a call that got an answer (errors are values in this API)."""
    if method.startswith("devnet."):
        return "acked"
    if result is True:
        return "acked"
    if isinstance(result, list) and len(result) == 2 and True in result:
        return "acked"  # Withdraw -> (True, id), GenerateDepositAddress -> (key, True)
    return "refused"


# ------------------------------------------------------------------------ client processes
def wire(amount: int, rng: random.Random):
    """Amounts beyond ±2^31 go as decimal strings (a stock client cannot send them as ints)."""
    if abs(amount) >= INT32 or rng.random() < 0.3:
        return str(amount)
    return amount


def draw_amount(rng: random.Random) -> int:
    """Mostly small amounts, 30 % above 2^31 (exercises <i8> on the way back)."""
    if rng.random() < 0.3:
        return rng.randrange(INT32, 4 * INT32)
    return int(10 ** rng.uniform(4, 9.3))


class Client:
    """One client process: random calls, each logged (intent, then outcome) to a JSONL file."""

    def __init__(self, k: int, url: str, users: list[str], everyone: list[str], seed: int,
                 log_path: str):
        self.k = k
        self.rng = random.Random(seed * 1009 + k)
        self.x = proxy(url)
        self.users, self.everyone = users, everyone
        self.log = open(log_path, "a")  # noqa: SIM115 (closed when the process ends)
        self.n = 0
        self.address: str | None = None  # generated, nothing sent yet
        self.pending: list[dict] = []  # sent to an exchange address, not yet claimed
        self.last_deposit_step = 0.0

    def _write(self, rec: dict) -> None:
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    def call(self, method: str, args: list, fx: dict) -> tuple[str, object]:
        """Log the intent, make the call, log the outcome; returns (outcome, result)."""
        self.n += 1
        self._write({"n": self.n, "k": self.k, "m": method, "args": args, "fx": fx})
        result = None
        try:
            result = getattr(self.x, method)(*args)
            outcome = classify(method, result)
        except ConnectionRefusedError:
            outcome = "not_sent"
        except xmlrpc.client.Fault as exc:
            outcome, result = "fault", exc.faultString
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError,
                ExpatError) as exc:
            outcome, result = "unknown", f"{type(exc).__name__}: {exc}"
        rec = {"n": self.n, "k": self.k, "o": outcome, "r": repr(result)[:200]}
        if method == "Withdraw" and outcome == "acked":
            rec["id"] = result[1]
        self._write(rec)
        if outcome == "not_sent":
            time.sleep(0.05)  # the daemon is down; the coordinator is about to pause us
        return outcome, result

    def step(self) -> None:
        """One random call: trade, pool debit/credit, withdraw, an oversized trade or a
        deposit step."""
        rng = self.rng
        u = rng.choice(self.users)
        r = rng.random()
        if r < 0.12 and time.monotonic() - self.last_deposit_step > 0.3:
            self.last_deposit_step = time.monotonic()
            return self.deposit_step(u)
        a = draw_amount(rng)
        if r < 0.55:
            v = rng.choice([w for w in self.everyone if w != u])
            style = "reserve" if rng.random() < 0.1 else "liquid"
            self.call("Trade", [u, wire(a, rng), v, style],
                      {"kind": "move", "src": u, "dst": v, "amount": a})
        elif r < 0.70:
            self.call("Trade", [u, wire(-a, rng), ""],
                      {"kind": "move", "src": u, "dst": POOL, "amount": a})
        elif r < 0.85:
            self.call("Trade", [u, wire(a, rng), ""],
                      {"kind": "move", "src": POOL, "dst": u, "amount": a})
        elif r < 0.88:
            a = rng.randrange(2 * 10**8, 3 * 10**9)
            address = wif_to_address(generate_deposit_key())
            style = "reserve" if rng.random() < 0.2 else "liquid"
            self.call("Withdraw", [u, wire(a, rng), address, style],
                      {"kind": "withdraw", "user": u, "amount": a, "address": address})
        else:  # more than anyone has: must be refused and change nothing
            v = rng.choice([w for w in self.everyone if w != u])
            a = rng.randrange(10**15, 10**16)
            self.call("Trade", [u, str(a), v], {"kind": "move", "src": u, "dst": v, "amount": a})

    def deposit_step(self, user: str) -> None:
        """GenerateDepositAddress -> devnet.send -> Deposit (retried until acknowledged)."""
        if self.pending:
            p = self.pending[0]
            outcome, _ = self.call("Deposit", [p["user"], [p["outpoint"]]],
                                   {"kind": "claim", **p})
            if outcome == "acked":
                self.pending.pop(0)
        elif self.address is not None:
            value = self.rng.randrange(10**9, 5 * 10**11)
            outcome, result = self.call("devnet.send", [self.address, str(value)],
                                        {"kind": "none"})
            if outcome == "acked":
                self.pending.append({"outpoint": result, "user": user, "value": value})
            self.address = None  # unknown: the payment may exist, unclaimed; harmless
        else:
            outcome, result = self.call("GenerateDepositAddress", [], {"kind": "none"})
            if outcome == "acked":
                self.address = wif_to_address(result[0])


def client_main(k: int, url: str, users: list[str], everyone: list[str], seed: int,
                log_path: str, phase, acks) -> None:
    """Process body: run while ``phase`` is odd, acknowledge even (paused) phases, stop at -1."""
    client = Client(k, url, users, everyone, seed, log_path)
    while True:
        ph = phase.value
        if ph < 0:
            return
        if ph % 2 == 0:
            acks[k] = ph
            time.sleep(0.01)
            continue
        client.step()


