"""Command-line friction (issue 16 item 3) and one way for every client command to find the
daemon (issue 11): through the real `pegx` commands against a real daemon."""

import json
import re
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from harness import free_port, wait_until
from harness.daemon import Daemon
from pegx.cli import main

CLEAN = {"PEGX_URL": None, "PEGX_HOST": None, "PEGX_PORT": None, "PEGX_DATADIR": None,
         "PEGX_PASSWORD": None}


def run(*args, env=None):
    """`pegx ARGS` in-process with a clean PEGX_* environment plus ``env``."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False,
                              env={**CLEAN, **(env or {})})


def status(*args, env=None) -> dict:
    res = run("status", "--json", *args, env=env)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.fixture
def daemon(tmp_path):
    """A daemon whose datadir's pegx.toml names its port (as an operator would set it)."""
    d = Daemon(tmp_path / "d")
    d.datadir.mkdir(mode=0o700)
    (d.datadir / "pegx.toml").write_text(f"port = {d.port}\n")
    with d:
        yield d


def test_client_commands_find_the_daemon_from_the_environment_and_pegx_toml(daemon, tmp_path):
    """They went to 55779 whatever PEGX_PORT, PEGX_HOST or the datadir's pegx.toml said."""
    d = daemon
    home = str(d.datadir)
    assert status("--datadir", home)["datadir"] == home  # the port from <datadir>/pegx.toml
    assert status(env={"PEGX_DATADIR": home})["datadir"] == home
    assert status(env={"PEGX_PORT": str(d.port)})["datadir"] == home
    assert status(env={"PEGX_HOST": "127.0.0.1", "PEGX_PORT": str(d.port)})["datadir"] == home
    assert status(env={"PEGX_URL": d.url})["datadir"] == home
    assert status("--port", str(d.port))["datadir"] == home
    other = tmp_path / "elsewhere"  # a pegx.toml pointing at another port
    other.mkdir()
    (other / "pegx.toml").write_text(f"port = {free_port()}\n")
    # precedence: flag > $PEGX_URL > $PEGX_HOST/$PEGX_PORT > pegx.toml > default
    assert status("--port", str(d.port), env={"PEGX_URL": "http://127.0.0.1:9"})["running"]
    assert status("--url", d.url, env={"PEGX_PORT": "9"})["running"]
    assert status(env={"PEGX_URL": d.url, "PEGX_PORT": "9"})["running"]
    assert status("--datadir", str(other), env={"PEGX_PORT": str(d.port)})["running"]
    away = run("status", "--datadir", str(other))
    assert away.exit_code == 3 and "not running at http://127.0.0.1:" in away.output
    # every client command resolves the same way
    env = {"PEGX_PORT": str(d.port)}
    assert run("devnet", "mine", "2", env=env).output.strip() == "height 2"
    assert json.loads(run("devnet", "info", "--datadir", home).output)["height"] == 2
    assert json.loads(run("call", "GetBalance", "nobody", env=env).output) is False
    assert run("audit", env=env).exit_code == 0
    both = run("status", "--url", d.url, "--port", str(d.port))
    assert both.exit_code == 1 and "not both" in both.output
    bad = run("status", env={"PEGX_URL": "127.0.0.1:55779"})
    assert bad.exit_code == 1 and "$PEGX_URL" in bad.output
    assert "shutting down" in run("stop", env={"PEGX_DATADIR": home}).output
    wait_until(lambda: d.proc.poll() is not None, 15, what="exit after pegx stop")
    assert d.proc.returncode == 0


def test_call_password_goes_in_the_passw_place(daemon):
    """`pegx call` had no --password; with one, the arguments given are the call's others."""
    d, pw = daemon, "call pass"
    assert d.proxy().SetPassword(pw) is True
    url = ["--url", d.url]

    def call(*args, env=None):
        res = run("call", *url, *args, env=env)
        return res.exit_code, (json.loads(res.output) if res.exit_code == 0 else res.output)

    assert call("GetBalance", "nobody") == (0, "Incorrect Password")
    assert call("--password", pw, "GetBalance", "nobody") == (0, False)
    assert call("GetBalance", "nobody", env={"PEGX_PASSWORD": pw}) == (0, False)
    # the password given among the arguments goes as given; $PEGX_PASSWORD yields to it
    assert call("GetBalance", "nobody", pw) == (0, False)
    assert call("GetBalance", "nobody", pw, env={"PEGX_PASSWORD": "wrong"}) == (0, False)
    code, out = call("--password", pw, "GetBalance", "nobody", pw)
    assert code == 1 and "not both" in out
    # passw first (StartExchange), last after defaults (CheckWithdraw, Trade's style)
    assert call("--password", pw, "StartExchange", "1", "1") == (0, True)
    assert call("--password", pw, "CheckWithdraw", "00" * 16) == (0, "ID not found")
    assert call("--password", pw, "Trade", "alice", "100", "bobby") == (0, "Unknown user.")
    assert call("--password", pw, "GetSpendable") == (0, {})
    code, st = call("--password", pw, "pegx.status")
    assert code == 0 and st["datadir"] == str(d.datadir)
    # a missing required argument: sent as given, the daemon names the arity
    code, out = call("--password", pw, "Trade", "alice")
    assert code == 2 and "Trade() takes 3 to 5 arguments (1 given)" in out
    for method in ("devnet.mine", "pegx.noop", "API", "system.listMethods"):
        code, out = call("--password", pw, method)
        assert code == 1 and "takes no password" in out, (method, out)
    assert call("devnet.mine", "1", env={"PEGX_PASSWORD": pw}) == (0, 1)  # env: not for it
    # the commands whose calls take none have no --password to be mistaken
    for args in (("devnet", "mine"), ("exec", "--key", "k", "1")):
        res = run(*args, "--password", pw, *url)
        assert res.exit_code == 2 and "No such option '--password'" in res.output, res.output


def test_call_sends_names_as_strings(daemon):
    """`pegx call GetBalance 12345` sent the int 12345 (`Name must be a string, got int.`)."""
    d = daemon
    d.fund("12345", 10**9)
    res = run("call", "--url", d.url, "GetBalance", "12345")
    assert res.exit_code == 0, res.output
    balance = json.loads(res.output)
    assert balance["liquid"] + balance["reserve"] == 10**9
    # amounts and other values are still JSON: an int, a list
    res = run("call", "--url", d.url, "Trade", "12345", "100000", "67890")
    assert json.loads(res.output) is True
    assert json.loads(run("call", "--url", d.url, "GetBalance", "67890").output)["liquid"] \
        == 100000
    assert json.loads(run("call", "--url", d.url, "Deposit", "12345", "[]").output) \
        == "txids must be a non-empty list of 'txid:vout' strings."


def test_settings_shows_the_values_in_effect(tmp_path):
    """`pegx settings` printed the defaults, not what `pegx serve` would use."""
    (tmp_path / "pegx.toml").write_text('port = 4321\nchain = "bitbayd"\n')
    out = run("settings", "--datadir", str(tmp_path), env={"PEGX_BLOCK_SECONDS": "7"}).output
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
    assert rows["port"] == ["4321", str(tmp_path / "pegx.toml")]
    assert rows["chain"] == ["bitbayd", str(tmp_path / "pegx.toml")]
    assert rows["block_seconds"] == ["7.0", "$PEGX_BLOCK_SECONDS"]
    assert rows["autostart"] == ["false", "default"]
    assert rows["datadir"] == [str(tmp_path), "--datadir"]
    bad = run("settings", "--datadir", str(tmp_path), env={"PEGX_PORT": "x"})
    assert bad.exit_code == 1 and "$PEGX_PORT" in bad.output


def test_a_port_in_use_is_refused_before_the_datadir_is_made(tmp_path):
    """The refusal came after the new datadir had been created, with no hint about --port."""
    datadir = tmp_path / "new"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for flag, hint in (("--port", "--port or port = "),
                           ("--metrics-port", "--metrics-port or metrics_port = ")):
            args = ["--port", str(free_port())] if flag == "--metrics-port" else []
            proc = subprocess.run([sys.executable, "-m", "pegx", "serve", "--datadir",
                                   str(datadir), *args, flag, str(port)], capture_output=True,
                                  text=True, timeout=60, check=False)
            assert proc.returncode == 1, proc.stderr
            assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
            assert hint in proc.stderr and "Traceback" not in proc.stderr
            assert not datadir.exists()


def _summaries(*group: str) -> dict[str, str]:
    out = run(*group, "--help").output
    listing = out.split("Commands:\n", 1)[1]
    return {m.group(1): m.group(2) for m in re.finditer(r"^  (\S+)\s+(.*)$", listing, re.MULTILINE)}


@pytest.mark.parametrize("group", [(), ("devnet",), ("api-key",), ("replication-key",)])
def test_help_summaries_are_whole_sentences(group):
    """`pegx --help` cut `call`'s summary mid-sentence ("Call any API method, e.g.") and
    others with "..."."""
    summaries = _summaries(*group)
    assert summaries
    for name, text in summaries.items():
        assert text.endswith(".") and not text.endswith("..."), (name, text)
        assert not re.search(r"\b(e\.g|i\.e|etc)\.$", text), (name, text)
    if not group:
        assert summaries["call"] == "Call any API method; print its answer as JSON."
