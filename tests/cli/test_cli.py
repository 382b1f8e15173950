"""The `pegx` command line against a real daemon (CliRunner in-process for client commands)."""

import json
import subprocess
import sys

from click.testing import CliRunner

from harness import wait_until
from harness.daemon import Daemon
from pegx.cli import main
from pegx.crypto import wif_to_address


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)


def test_help_explains_every_command():
    out = run("--help").output
    for cmd in ("serve", "stop", "status", "call", "devnet", "settings"):
        assert cmd in out
    serve_help = run("serve", "--help").output
    for flag in ("--datadir", "--host", "--port", "--chain", "--node-url", "--autostart",
                 "--config", "--block-seconds", "--initial-supply", "--devnet-walk"):
        assert flag in serve_help


def test_client_commands_against_a_daemon(tmp_path):
    with Daemon(tmp_path / "d") as d:
        url = ["--url", d.url]
        st = json.loads(run("status", "--json", *url).output)
        assert st["running"] and st["loaded"] and st["chain"] == "devnet"
        assert "height" in run("status", *url).output
        assert run("devnet", "mine", "3", *url).output.strip() == "height 3"
        info = json.loads(run("devnet", "info", *url).output)
        assert info["height"] == 3
        assert "deflate by 2" in run("devnet", "vote", "deflate", "--steps", "2", *url).output
        key, _ = d.proxy().GenerateDepositAddress()
        addr = wif_to_address(key)
        outpoint = run("devnet", "send", addr, "12.5", *url).output.strip()
        d.mine(1)
        assert d.proxy().devnet.balance(addr)["amount"] == 1_250_000_000
        assert outpoint.endswith(":0")
        # a big amount goes as a decimal string, an unknown user gives False
        assert json.loads(run("call", *url, "GetBalance", "nobody").output) is False
        assert json.loads(run("call", *url, "Trade", "alice", "5000000000", "bobby").output) \
            == "Unknown user."
        bad = run("call", *url, "NoSuchMethod")
        assert bad.exit_code == 2 and "not supported" in bad.output
        assert run("devnet", "send", addr, "1.123456789", *url).exit_code == 1
        assert "shutting down" in run("stop", *url).output
        wait_until(lambda: d.proc.poll() is not None, 10, what="exit after pegx stop")
        assert d.proc.returncode == 0
    missing = run("status", "--url", d.url)
    assert missing.exit_code == 3 and "not running" in missing.output


def test_second_serve_on_the_same_datadir_is_refused(tmp_path):
    with Daemon(tmp_path / "d", autostart=False):
        proc = subprocess.run([sys.executable, "-m", "pegx", "serve", "--datadir",
                               str(tmp_path / "d"), "--port", "0"],
                              capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 1
        assert "in use by another pegx process" in proc.stderr


def test_serve_rejects_a_bad_setting(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pegx", "serve", "--datadir", str(tmp_path),
                           "--initial-supply", "5000"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 1 and "initial_supply" in proc.stderr


def test_operator_commands_send_the_password_from_the_option_or_the_environment(tmp_path):
    """Issue 10 item 7: with a password set every pegx.* call but noop needs it, so the CLI
    must send it: `--password` or $PEGX_PASSWORD."""
    pw = "cli pass word"
    with Daemon(tmp_path / "d") as d:
        assert d.proxy().SetPassword(pw) is True
        url = ["--url", d.url]
        env = {"PEGX_PASSWORD": pw}
        refused = run("status", *url)
        assert refused.exit_code == 1 and "Incorrect Password" in refused.output
        assert "Traceback" not in refused.output
        st = json.loads(run("status", "--json", "--password", pw, *url).output)
        assert st["datadir"] == str(d.datadir) and st["running"] is True
        assert "height" in run("status", *url, env=env).output
        refused = run("audit", *url)
        assert refused.exit_code == 1 and "pegx.audit: Incorrect Password" in refused.output
        assert run("audit", *url, env=env).exit_code == 0
        # with --datadir of a served ledger the CLI first asks pegx.status which datadir it is
        audited = run("audit", "--datadir", str(d.datadir), "--password", pw, *url)
        assert audited.exit_code == 0 and "audit OK" in audited.output
        refused = run("backup", str(tmp_path / "b0"), *url)
        assert refused.exit_code == 1 and "Incorrect Password" in refused.output
        assert not (tmp_path / "b0").exists()
        backed = run("backup", str(tmp_path / "b1"), *url, env=env)
        assert backed.exit_code == 0 and "backup written" in backed.output
        assert run("stop", *url).exit_code == 1 and d.proc.poll() is None
        assert "shutting down" in run("stop", *url, env=env).output
        wait_until(lambda: d.proc.poll() is not None, 15, what="exit after pegx stop")
        assert d.proc.returncode == 0
