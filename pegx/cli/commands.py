"""The `pegx` command line: start the daemon, or talk to a running one over XML-RPC.

Client commands use a stock ``xmlrpc.client`` (as an exchange would) against ``--url``.
"""

from __future__ import annotations

import json
import logging
import sys
import xmlrpc.client
from decimal import Decimal, InvalidOperation

import click

from pegx import __version__
from pegx.config import SETTINGS, ConfigError, load
from pegx.ops.health import reorg_message

DEFAULT_URL = "http://127.0.0.1:55779"
INT32 = 2**31


def _proxy(url: str) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(url, allow_none=True)


def _fail(message: str, code: int = 1):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _call(url: str, method: str, *args):
    """One call; connection problems and Faults become a clear message and exit code 1/2."""
    try:
        return getattr(_proxy(url), method)(*args)
    except ConnectionRefusedError:
        _fail(f"no pegx daemon answers at {url} (is `pegx serve` running?)")
    except xmlrpc.client.Fault as exc:
        _fail(f"{method}: {exc.faultString}", 2)
    except (OSError, xmlrpc.client.ProtocolError) as exc:
        _fail(f"{url}: {exc}")


def _print(value) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


url_option = click.option("--url", default=DEFAULT_URL, show_default=True,
                          envvar="PEGX_URL", help="XML-RPC address of the daemon.")
password_option = click.option("--password", default="", envvar="PEGX_PASSWORD",
                               help="API password (or $PEGX_PASSWORD); blank if none is set.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pegx")
def main() -> None:
    """pegx: the Halo Peg Exchange API for BitBay (BAY) on a durable LevelDB ledger.

    Start the daemon with `pegx serve` (embedded devnet chain by default, or --chain bitbayd
    for a real node), then point your exchange's XML-RPC client at http://127.0.0.1:55779.
    The other commands talk to a running daemon.
    """


@main.command()
@click.option("--datadir", help="Where the ledger lives [default: ~/.pegx].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Settings file [default: <datadir>/pegx.toml if present].")
@click.option("--host", help="Bind address [default: 127.0.0.1]; non-loopback is warned about.")
@click.option("--port", type=int, help="XML-RPC port [default: 55779].")
@click.option("--metrics-port", type=int, metavar="PORT",
              help="Serve Prometheus /metrics and the status page / on the bind address's "
                   "PORT [default: off].")
@click.option("--chain", type=click.Choice(["devnet", "bitbayd"]),
              help="Chain backend [default: devnet].")
@click.option("--network", type=click.Choice(["main", "testnet", "regtest"]),
              help="BitBay network [default: main]: address versions (devnet: cycle length).")
@click.option("--node-url", help="bitbayd JSON-RPC URL, e.g. http://user:pw@127.0.0.1:19915.")
@click.option("--autostart/--no-autostart", default=None,
              help="Start the exchange at launch, as StartExchange() would.")
@click.option("--block-seconds", type=float, help="devnet: seconds per block (0 = on demand).")
@click.option("--initial-supply", type=int, help="devnet: supply index of a new chain.")
@click.option("--devnet-walk", type=int, metavar="SEED",
              help="devnet: move the supply by a seeded random walk each cycle.")
@click.option("--allow-exec/--no-allow-exec", default=None,
              help="Enable the signed API(command) exec call (needs `pegx api-key install`).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                               case_sensitive=False))
@click.option("--replication-key-file", type=click.Path(dir_okay=False),
              help="Shared replication key (pegx replication-key generate): a primary listens "
                   "for a standby; with --standby-of, this daemon is one.")
@click.option("--replication-host", help="Replication listener address [default: --host].")
@click.option("--replication-port", type=int, help="Replication listener port [default: 55780].")
@click.option("--standby-of", metavar="HOST:PORT",
              help="Run as a read-only standby of the primary whose replication listener is "
                   "at HOST:PORT (its --replication-port); pegx promote makes it the primary.")
@click.option("--sync-standby/--no-sync-standby", default=None,
              help="A state change answers only once the standby has its record on disk.")
@click.option("--standby-fallback", type=click.Choice(["strict", "async"]),
              help="With --sync-standby and no standby: strict (stop acknowledging, the "
                   "default) or async (go on alone, shown in status and metrics).")
def serve(config_file, **flags) -> None:
    """Run the daemon in the foreground (logs to stderr; SIGTERM/SIGINT stop it cleanly)."""
    try:
        cfg = load(flags, config_file=config_file)
    except ConfigError as exc:
        _fail(str(exc))
    # a thread returning from an fsync (GIL released) must not wait 5 ms for busy request
    # threads to yield the GIL: measured here, synced writes beside one busy thread went from
    # 226/s to 1,059/s at 1 ms and 1,768/s at 0.2 ms; 0.5 ms is the compromise
    sys.setswitchinterval(0.0005)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    from pegx.app import App
    from pegx.chain.devnet.log import DevnetLogError
    from pegx.exchange.chainguard import WrongChain
    from pegx.ledger.store import StoreError
    from pegx.replication import epoch, keys, wire

    try:
        app = App(cfg)
    except (WrongChain, epoch.Fenced) as exc:
        _fail(f"refusing to serve: {exc}")
    except wire.Refused as exc:
        _fail(f"the primary {cfg.standby_of} refused this standby: {exc}")
    except (StoreError, DevnetLogError, keys.KeyError_) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc}")
    sys.exit(app.serve())


@main.command()
@url_option
@password_option
def stop(url, password) -> None:
    """Shut the daemon down cleanly (checkpoint, then exit)."""
    res = _call(url, "ShutDown", password)
    if res is not True:
        _fail(str(res))
    click.echo("pegx is shutting down")


@main.command()
@url_option
@password_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--check", is_flag=True,
              help="Print only the problems and exit 1 if there is any (for monitoring and "
                   "systemd); 0: none, 3: the daemon does not answer.")
def status(url, password, as_json, check) -> None:
    """Show the daemon's state: first what needs the operator (node unreachable, wallet
    locked, chain not advancing, cycle errors, withdraws that cannot go out), then chain,
    cycle, totals, users, withdraws."""
    try:
        st = _proxy(url).pegx.status(password)
    except (OSError, xmlrpc.client.ProtocolError):
        if as_json:
            _print({"running": False})
        else:
            click.echo(f"pegx is not running at {url}")
        sys.exit(3)
    except xmlrpc.client.Fault as exc:
        _fail(f"pegx.status: {exc.faultString}", 2)
    if not isinstance(st, dict):  # "Incorrect Password"
        _fail(f"pegx.status: {st} (give it with --password or $PEGX_PASSWORD)")
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


def _parse_arg(text: str):
    """JSON when it parses (numbers, lists, dicts, true/false/null), else the plain string.

    Ints beyond ±2^31 are sent as decimal strings: a stock client cannot send them as ints
    and the API accepts amounts as strings.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, int) and not isinstance(value, bool) and not -INT32 <= value < INT32:
        return str(value)
    return value


@main.command(context_settings={"ignore_unknown_options": True})
@url_option
@click.argument("method")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def call(url, method, args) -> None:
    """Call any API method, e.g. `pegx call GetBalance alice` or
    `pegx call Trade alice 150000000 bobby`. Arguments are JSON when they parse."""
    _print(_call(url, method, *[_parse_arg(a) for a in args]))


@main.group()
def devnet() -> None:
    """Drive the embedded devnet chain of a running daemon (tests and demos)."""


def _bay_to_sat(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        _fail(f"not an amount in BAY: {text!r}")
    sat = value * 100_000_000
    if sat != sat.to_integral_value() or sat <= 0:
        _fail(f"amount must be positive with at most 8 decimals: {text!r}")
    return str(int(sat))


@devnet.command("mine")
@url_option
@click.argument("n", type=click.IntRange(1, 10000), default=1)
def devnet_mine(url, n) -> None:
    """Mine N blocks now."""
    click.echo(f"height {_call(url, 'devnet.mine', n):,d}")


@devnet.command("send")
@url_option
@click.argument("address")
@click.argument("amount")
def devnet_send(url, address, amount) -> None:
    """Pay AMOUNT BAY (decimal) to ADDRESS from outside the exchange (STD spread)."""
    click.echo(_call(url, "devnet.send", address, _bay_to_sat(amount)))


@devnet.command("vote")
@url_option
@click.argument("direction", type=click.Choice(["inflate", "deflate", "nochange"]))
@click.option("--steps", type=click.IntRange(1, 3), default=1, show_default=True)
def devnet_vote(url, direction, steps) -> None:
    """Script the supply move at the next cycle boundary."""
    _call(url, "devnet.vote", direction, steps)
    click.echo(f"{direction} by {steps} at the next cycle boundary")


@devnet.command("reorg")
@url_option
@click.argument("depth", type=click.IntRange(1, 1000))
@click.option("--txs", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
              help="keep: the replaced blocks' transactions are mined again in the new branch; "
                   "drop: the new branch does not have them.")
@click.option("--votes", metavar="DIRECTION[:STEPS]", default="",
              help="the vote every cycle boundary of the new branch uses (changes the supply).")
@click.option("--spend", multiple=True, metavar="TXID|TXID:VOUT",
              help="a conflicting spend the new branch mines first (repeatable): a txid the "
                   "devnet has seen, or a wallet outpoint it spends back to its own address.")
def devnet_reorg(url, depth, txs, votes, spend) -> None:
    """Replace the last DEPTH blocks with as many new ones (a competing branch wins)."""
    _print(_call(url, "devnet.reorg", depth, txs, votes, list(spend)))


@devnet.command("info")
@url_option
def devnet_info(url) -> None:
    """Height, cycle, supply, mempool of the devnet chain."""
    _print(_call(url, "devnet.info"))


@main.command("settings")
def settings_cmd() -> None:
    """List every setting (pegx.toml key, PEGX_* variable, default)."""
    for name, (kind, default, help_) in SETTINGS.items():
        click.echo(f"{name:<20} PEGX_{name.upper():<20} {kind.__name__:<6} "
                   f"{default!s:<24} {help_}")
