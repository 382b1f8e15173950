"""Exchange accounts must be the wallet's own (issue #10 item 11).

The exchange's change goes to ``exchangeaccounts[0]`` and later withdraws spend it: an account
the wallet has no key for loses that change and stalls every withdraw after it. ExchangeSettings
refuses such accounts (devnet: the wallet; bitbayd: ``validateaddress``'s ``ismine``), the desk
will not send change to one stored before that check existed, and ``pegx status`` says why
pending withdraws are not going out.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from harness import COMM, SUPPLY, new_address, wait_until
from harness.daemon import Daemon, advance, status_of
from harness.fakenode import FakeNode
from pegx import crypto
from pegx.chain.bitbayd import Bitbayd
from pegx.cli import main
from pegx.exchange.cycle import ExchangeCycle
from pegx.exchange.session import Session
from pegx.exchange.withdraws import NO_RETURN_ADDRESS
from pegx.ledger.engine import Exchange
from pegx.ledger.store import Store
from pegx.rpc.api import PegAPI

BAY = 10**8
STATUS_LINE = "withdraws pending but not batchable: "


def not_mine(address: str) -> str:
    return (f"Exchange account {address!r} is not an address of the exchange's wallet: the "
            "wallet could not spend the change sent to it.")


def cli_status(url: str) -> list[str]:
    res = CliRunner().invoke(main, ["status", "--url", url], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output.splitlines()


def test_exchange_settings_refuses_accounts_the_wallet_does_not_own(tmp_path):
    with Daemon(tmp_path / "d") as d:
        x = d.proxy()
        own, foreign, fee = x.devnet.new_address(), new_address(), new_address()
        key, ok = x.GenerateDepositAddress()
        assert ok is True
        deposit = crypto.wif_to_address(key)
        wait_until(lambda: deposit in x.devnet.info()["wallet_addresses"], 10,
                   what="the deposit key import")
        seq = x.pegx.status()["op_seq"]
        for accounts in ([foreign], [own, foreign]):
            got = x.ExchangeSettings(accounts, fee, COMM, 10)
            assert got == not_mine(foreign), got
        # the original's order: the accounts are checked before the fee account and the rest
        assert x.ExchangeSettings([foreign], "Bnot-an-address", {"min": 1}) == not_mine(foreign)
        assert x.pegx.status()["op_seq"] == seq  # nothing applied
        # a fee account need not be the wallet's (fees may leave for a cold address)
        assert x.ExchangeSettings([own, deposit], fee, COMM, 10) is True  # imported keys too
        assert x.pegx.status()["op_seq"] == seq + 1


def test_status_says_why_pending_withdraws_are_not_batched(tmp_path):
    """No exchange account, then one stored outside the wallet (a ledger from before the
    check): `pegx status` says so first, and the desk sends nothing; a wallet account set with
    ExchangeSettings lets the withdraw complete and the line goes away."""
    data = tmp_path / "d"
    d = Daemon(data, extra=["--initial-supply", str(SUPPLY)])
    foreign, fee = new_address(), new_address()
    with d:
        x = d.proxy()
        d.fund("alice", 10**11)
        assert x.pegx.status()["withdraws_not_batchable"] == ""
        ok, wid = x.Withdraw("alice", str(10 * BAY), new_address())
        assert ok is True
        advance(x, lambda: x.pegx.status()["withdraws_not_batchable"])
        assert x.pegx.status()["withdraws_not_batchable"] == NO_RETURN_ADDRESS
        lines = cli_status(d.url)
        assert lines[0] == STATUS_LINE + NO_RETURN_ADDRESS
        assert lines[1].startswith("pegx ")  # then the figures
    ledger = Exchange(Store(data / "ledger"))  # settings stored before ExchangeSettings checked
    try:
        s = ledger.exchange_settings()
        s.update(exchangeaccounts=[foreign], exchangefeeaccount=fee, commission=dict(COMM))
        ledger.put("settings", "exchange", s)
    finally:
        ledger.close()
    with d:
        x = d.proxy()
        why = (f"Exchange account {foreign} is not an address of the exchange's wallet, which "
               "could not spend the change sent to it")
        advance(x, lambda: x.pegx.status()["withdraws_not_batchable"] == why)
        assert cli_status(d.url)[0] == STATUS_LINE + why
        st = json.loads(CliRunner().invoke(main, ["status", "--json", "--url", d.url]).output)
        assert st["withdraws_not_batchable"] == why
        assert x.CheckWithdraw(wid) == "ID not found"  # nothing was sent
        assert x.devnet.balance(foreign)["amount"] == 0
        assert x.ExchangeSettings([x.devnet.new_address()], fee, COMM) is True
        advance(x, lambda: status_of(x, wid) == "Complete")
        assert x.pegx.status()["withdraws_not_batchable"] == ""
        assert not any(line.startswith(STATUS_LINE) for line in cli_status(d.url))
        assert x.devnet.balance(foreign)["amount"] == 0


def test_exchange_settings_on_bitbayd_asks_validateaddress(ledger):
    """The API on a bitbayd chain (a fake node answering in the real node's shapes)."""
    node = FakeNode()
    st = node.state
    st["blockcount"] = 1005
    st["peginfo"].update(cycle=5, peg=10, pegnext=11, pegnextnext=13)
    st["blockhashes"] = {1005: "b" * 64}
    st["blocks"] = {"b" * 64: {"hash": "b" * 64, "height": 1005, "time": 1_700_000_000}}
    own, foreign = new_address(), new_address()
    st["mine"] = {own: "02" + "11" * 32}
    chain = Bitbayd(node.url, timeout=2.0, deadline=5.0)
    session = Session(ledger, chain)
    cycle = ExchangeCycle(ledger, chain, session, poll_seconds=3600)
    api = PegAPI(ledger, session)
    try:
        session.start()  # ExchangeSettings needs a started exchange
        # then the thread idles (an hour's poll, no block notifications on bitbayd), so the
        # scripted fault below meets our call, not one of its passes
        wait_until(lambda: cycle.passes >= 1 or cycle.last_error, 10, what="the first pass")
        seq = ledger.seq
        assert api.ExchangeSettings([own, foreign], foreign) == not_mine(foreign)
        assert ("validateaddress", [foreign]) in node.calls
        node.fault("http503", 1)  # the node cannot answer: a message, nothing applied
        got = api.ExchangeSettings([own], foreign)
        assert got.startswith(f"Could not ask the node whether exchange account {own!r} is "
                              "the wallet's: "), got
        assert ledger.seq == seq
        assert api.ExchangeSettings([own], foreign) is True
        assert ledger.exchange_settings()["exchangeaccounts"] == [own]
    finally:
        cycle.stop()
        chain.close()
        node.close()
