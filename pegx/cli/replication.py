"""The replication commands: `pegx replication-key generate FILE` and `pegx promote`.

``register(main)`` attaches them to the ``pegx`` group (pegx.cli calls it at import). The
contract operators' scripts rely on (README "Real-time backup: a standby"):

* ``pegx replication-key generate FILE`` writes a new key, mode 0600, never over a file;
* ``pegx promote [--url URL]`` promotes the standby at URL (its XML-RPC address) and prints
  the new epoch; exit 0 when promoted, 1 when no daemon answers, 2 when it refused (not a
  standby, its chain is not the ledger's...).
"""

from __future__ import annotations

import sys
import xmlrpc.client

import click

from pegx.replication import keys
from pegx.rpc.api import WRONG_PASSWORD

DEFAULT_URL = "http://127.0.0.1:55779"


def _fail(message: str, code: int = 1):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group("replication-key")
def replication_key() -> None:
    """Manage the shared key a primary and its standby authenticate each other with."""


@replication_key.command("generate")
@click.argument("file", type=click.Path(dir_okay=False))
def key_generate(file: str) -> None:
    """Write a new random 32-byte key to FILE (hex, mode 0600; never overwrites)."""
    try:
        keys.generate(file)
    except keys.KeyError_ as exc:
        _fail(str(exc))
    click.echo(f"replication key written to {file} (mode 0600); copy it to the standby's "
               f"machine and start both daemons with --replication-key-file {file}")


@click.command("promote")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="PEGX_URL",
              help="XML-RPC address of the standby to promote.")
@click.option("--password", default="", envvar="PEGX_PASSWORD",
              help="API password (or $PEGX_PASSWORD); blank if none is set.")
def promote(url: str, password: str) -> None:
    """Make the standby at --url the primary: a new epoch fences the old primary, and the
    standby starts the exchange and takes state changes from now on."""
    proxy = xmlrpc.client.ServerProxy(url, allow_none=True)
    try:
        result = proxy.pegx.promote(password)
    except xmlrpc.client.Fault as exc:
        _fail(f"not promoted: {exc.faultString}", 2)
    except (OSError, xmlrpc.client.ProtocolError) as exc:
        _fail(f"no pegx daemon answers at {url} ({exc})")
    if result == WRONG_PASSWORD:
        _fail(f"{result} (give the API password with --password or $PEGX_PASSWORD)", 2)
    click.echo(f"promoted {url} to primary: epoch {result['epoch']}, from op seq "
               f"{result['seq']:,d}; the exchange is started")


def register(main: click.Group) -> None:
    """Attach the replication commands to the ``pegx`` group."""
    main.add_command(replication_key)
    main.add_command(promote)
