"""The `pegx` command line: start the daemon, or talk to a running one over XML-RPC.

Client commands use a stock ``xmlrpc.client`` (as an exchange would); they find the daemon and
its password the same way (:mod:`pegx.cli.client`).
"""

from __future__ import annotations

import json
import os
import sys
import xmlrpc.client
from decimal import Decimal, InvalidOperation

import click

from pegx import __version__
from pegx.cli.callargs import CallArgsError, build
from pegx.cli.client import client_options, fail
from pegx.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    SETTINGS,
    ConfigError,
    load,
    load_with_sources,
    settings_table,
)
from pegx.ops.health import reorg_message


def _print(value) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _setting_options(command):
    """`pegx serve`'s options, one per SETTINGS entry marked ``flag``."""
    for s in reversed([s for s in SETTINGS.values() if s.flag]):
        help_ = f"{s.help} [default: {s.show(s.default)}]"
        if s.kind is bool:
            option = click.option(f"{s.option}/--no-{s.option[2:]}", s.name, default=None,
                                  help=help_)
        elif s.choices:
            option = click.option(s.option, s.name, help=help_, type=click.Choice(
                s.choices, case_sensitive=s.name != "log_level"))
        else:
            option = click.option(s.option, s.name, type=s.kind, help=help_)
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, help=f"""
    pegx: the Halo Peg Exchange API for BitBay (BAY) on a durable LevelDB ledger.

    Start the daemon with `pegx serve` (embedded devnet chain by default, or --chain bitbayd
    for a real node), then point your exchange's XML-RPC client at
    http://{DEFAULT_HOST}:{DEFAULT_PORT}. The other commands talk to a running daemon: they
    find it with --url, --host/--port, $PEGX_URL, $PEGX_HOST/$PEGX_PORT or the datadir's
    pegx.toml, and send the API password from --password or $PEGX_PASSWORD.
    """)
@click.version_option(__version__, prog_name="pegx")
def main() -> None:
    pass


@main.command(short_help="Run the daemon in the foreground.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Settings file [default: <datadir>/pegx.toml if present].")
@_setting_options
def serve(config_file, **flags) -> None:
    """Run the daemon in the foreground (logs to stderr; SIGTERM/SIGINT stop it cleanly)."""
    try:
        cfg = load(flags, config_file=config_file)
    except ConfigError as exc:
        fail(str(exc))
    # a thread returning from an fsync (GIL released) must not wait 5 ms for busy request
    # threads to yield the GIL: measured here, synced writes beside one busy thread went from
    # 226/s to 1,059/s at 1 ms and 1,768/s at 0.2 ms; 0.5 ms is the compromise
    sys.setswitchinterval(0.0005)
    from pegx import service

    service.setup_logging(cfg.log_level, cfg.log_format)
    from pegx.app import App
    from pegx.chain.devnet.log import DevnetLogError
    from pegx.exchange.chainguard import WrongChain
    from pegx.ledger.store import StoreError
    from pegx.replication import epoch, keys, wire

    try:
        app = App(cfg, notifier=service.Notifier.from_environ(os.environ))
    except (WrongChain, service.DatadirError, epoch.Fenced) as exc:
        fail(f"refusing to serve: {exc}")
    except wire.Refused as exc:
        fail(f"the primary {cfg.standby_of} refused this standby: {exc}")
    except (StoreError, DevnetLogError, keys.KeyError_) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc}")
    sys.exit(app.serve())


@main.command(short_help="Shut the daemon down cleanly.")
@client_options
def stop(client) -> None:
    """Shut the daemon down cleanly (checkpoint, then exit)."""
    res = client.call("ShutDown", client.password)
    if res is not True:
        fail(str(res))
    click.echo("pegx is shutting down")


@main.command(short_help="Show the daemon's state.")
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--check", is_flag=True,
              help="Print only the problems and exit 1 if there is any (for monitoring and "
                   "systemd); 0: none, 3: the daemon does not answer.")
def status(client, as_json, check) -> None:
    """Show the daemon's state: first what needs the operator (node unreachable, wallet
    locked, chain not advancing, cycle errors, withdraws that cannot go out), then chain,
    cycle, totals, users, withdraws."""
    try:
        st = client.proxy().pegx.status(client.password)
    except (OSError, xmlrpc.client.ProtocolError):
        if as_json:
            _print({"running": False})
        else:
            click.echo(f"pegx is not running at {client.url}")
        sys.exit(3)
    except xmlrpc.client.Fault as exc:
        fail(f"pegx.status: {exc.faultString}", 2)
    if not isinstance(st, dict):  # "Incorrect Password"
        fail(f"pegx.status: {st} (give it with --password or $PEGX_PASSWORD)")
    problems = [p["message"] for p in st["problems"]]
    if as_json:
        _print(st)
    elif check:
        click.echo("\n".join(problems) if problems else "ok: nothing needs the operator")
    else:
        click.echo("\n".join(problems + _figures(st)))  # problems first, before the figures
    if check and problems:
        sys.exit(1)


def _figures(st: dict) -> list[str]:
    ex = st["exchange"]
    age = f"{st['tip_age']:,d} s ago" if st["tip_age"] >= 0 else "unknown"
    node = st["node"]
    at_node = "" if node["height"] in (-1, st["height"]) else f", node at {node['height']:,d}"
    stages = st["pipeline"]["stages"]
    flow = []
    for name, s in stages.items():
        waited = f" (oldest {s['oldest_age']:,d} s)" if s["oldest_age"] >= 0 else ""
        flow.append(f"{name} {s['count']:,d}{waited}")
    lines = []
    alarm = st.get("reorg_alarm")
    if alarm and not any(p["kind"] == "deep_reorg" for p in st["problems"]):
        lines.append(reorg_message(alarm))  # an old one: no longer a problem, still first
    lines += [
        (f"pegx {st['version']} (pid {st['pid']}) on {st['chain']} "
         f"({st.get('network', 'main')}), datadir {st['datadir']}"),
        (f"exchange   started={st['started']} loaded={st['loaded']} "
         f"cycle thread={'alive' if st['cycle_thread_alive'] else 'stopped'}"),
        (f"chain      height {st['height']:,d}{at_node}, cycle {st['chain_cycle']}, "
         f"published cycle {st['cycle']}, supply {st['supply']}, last block {age}"),
        (f"totals     liquid {ex['liquid']:,d} sat, reserve {ex['reserve']:,d} sat, "
         f"frozen {ex['frozen']:,d} sat"),
        f"accounts   {st['users']:,d} ({st['inputs']:,d} exchange inputs)",
        f"withdraws  {', '.join(flow)}",
        (f"ledger     {st['ledger_bytes']:,d} bytes, op {st['op_seq']:,d} "
         f"(checkpoint {st['checkpoint_seq']:,d}), uptime {st['uptime']:,d} s, "
         f"{st['calls_served']:,d} calls"),
        f"last error {st['last_error'] or '-'}",
    ]
    if st.get("wallet"):  # e.g. "wallet locked: call ExchangePassword"
        lines.append(f"wallet     {st['wallet']}")
    rep = st.get("replication", {})
    if rep.get("state") != "off" and rep:
        lines.append(replication_line(rep))
    return lines


def replication_line(rep: dict) -> str:
    """One line for pegx status: role, epoch, the other side and the lag."""
    lag = f"lag {rep.get('lag_records', 0):,d} records / {rep.get('lag_seconds', 0):.1f} s"
    if rep["role"] == "standby":
        return (f"replica    standby (epoch {rep['epoch']}) of {rep['primary']}, "
                f"{rep['state']}, op {rep['seq']:,d} of {rep['primary_seq']:,d}, {lag}")
    other = f"standby {rep['standby']}" if rep.get("standby") else "no standby"
    return (f"replica    {rep['role']} (epoch {rep['epoch']}), {rep['state']}, {other}, "
            f"acked op {rep.get('acked_seq', -1):,d}, {lag}")


@main.command(context_settings={"ignore_unknown_options": True},
              short_help="Call any API method; print its answer as JSON.")
@client_options
@click.argument("method")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def call(client, method, args) -> None:
    """Call any API method and print its answer as JSON: `pegx call GetBalance alice`,
    `pegx call Trade alice 150000000 bobby`, `pegx call Deposit alice '["TXID:0"]'`.

    Names, addresses, txids, ids, styles and passwords are sent as typed (`GetBalance 12345`
    asks for the user "12345"); other arguments are JSON when they parse. Without a password
    the arguments go exactly as given. With one (--password or $PEGX_PASSWORD), give the
    call's other arguments and pegx puts the password in the call's passw place (optional
    arguments before it get their defaults): `pegx call --password PW CheckWithdraw ID` sends
    CheckWithdraw(ID, 0, PW), `pegx call --password PW StartExchange 0` sends
    StartExchange(PW, 0). Calls without passw (API, devnet.*, system.*, pegx.noop) refuse
    --password.
    """
    try:
        values = build(method, list(args), client.password, client.password_source)
    except CallArgsError as exc:
        fail(str(exc))
    _print(client.call(method, *values))


@main.group(short_help="Drive the embedded devnet chain of a running daemon.")
def devnet() -> None:
    """Drive the embedded devnet chain of a running daemon (tests and demos)."""


def _bay_to_sat(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        fail(f"not an amount in BAY: {text!r}")
    sat = value * 100_000_000
    if sat != sat.to_integral_value() or sat <= 0:
        fail(f"amount must be positive with at most 8 decimals: {text!r}")
    return str(int(sat))


@devnet.command("mine")
@client_options(password=False)
@click.argument("n", type=click.IntRange(1, 10000), default=1)
def devnet_mine(client, n) -> None:
    """Mine N blocks now."""
    click.echo(f"height {client.call('devnet.mine', n):,d}")


@devnet.command("send", short_help="Pay AMOUNT BAY to ADDRESS from outside.")
@client_options(password=False)
@click.argument("address")
@click.argument("amount")
def devnet_send(client, address, amount) -> None:
    """Pay AMOUNT BAY (decimal) to ADDRESS from outside the exchange (STD spread)."""
    click.echo(client.call("devnet.send", address, _bay_to_sat(amount)))


@devnet.command("vote")
@client_options(password=False)
@click.argument("direction", type=click.Choice(["inflate", "deflate", "nochange"]))
@click.option("--steps", type=click.IntRange(1, 3), default=1, show_default=True)
def devnet_vote(client, direction, steps) -> None:
    """Script the supply move at the next cycle boundary."""
    client.call("devnet.vote", direction, steps)
    click.echo(f"{direction} by {steps} at the next cycle boundary")


@devnet.command("reorg", short_help="Replace the last DEPTH blocks with a new branch.")
@client_options(password=False)
@click.argument("depth", type=click.IntRange(1, 1000))
@click.option("--txs", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
              help="keep: the replaced blocks' transactions are mined again in the new branch; "
                   "drop: the new branch does not have them.")
@click.option("--votes", metavar="DIRECTION[:STEPS]", default="",
              help="the vote every cycle boundary of the new branch uses (changes the supply).")
@click.option("--spend", multiple=True, metavar="TXID|TXID:VOUT",
              help="a conflicting spend the new branch mines first (repeatable): a txid the "
                   "devnet has seen, or a wallet outpoint it spends back to its own address.")
def devnet_reorg(client, depth, txs, votes, spend) -> None:
    """Replace the last DEPTH blocks with as many new ones (a competing branch wins)."""
    _print(client.call("devnet.reorg", depth, txs, votes, list(spend)))


@devnet.command("info")
@client_options(password=False)
def devnet_info(client) -> None:
    """Height, cycle, supply, mempool of the devnet chain."""
    _print(client.call("devnet.info"))


@main.command("settings", short_help="Show every setting's value in effect and its source.")
@click.option("--datadir", help="The datadir whose pegx.toml to read [default: $PEGX_DATADIR "
              "or ~/.pegx].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Settings file [default: <datadir>/pegx.toml if present].")
@click.option("--markdown", is_flag=True, help="Print README's table of every setting and its "
              "default instead.")
def settings_cmd(datadir, config_file, markdown) -> None:
    """Show every setting's value in effect for `pegx serve` with the same datadir, config
    file and environment, and where it comes from (default, the pegx.toml file, $PEGX_*)."""
    if markdown:
        click.echo(settings_table(), nl=False)
        return
    try:
        cfg, sources = load_with_sources({"datadir": datadir}, config_file=config_file)
    except ConfigError as exc:
        fail(str(exc))
    click.echo(f"{'setting':<21} {'value':<24} {'from':<28} meaning")
    for s in SETTINGS.values():
        value = s.show(getattr(cfg, s.name))
        click.echo(f"{s.name:<21} {value:<24} {sources[s.name]:<28} {s.help}")
