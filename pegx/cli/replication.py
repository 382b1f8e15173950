"""The replication commands: `pegx replication-key generate FILE` and `pegx promote`.

``register(main)`` attaches them to the ``pegx`` group (pegx.cli calls it at import). The
contract operators' scripts rely on (README "Real-time backup: a standby"):

* ``pegx replication-key generate FILE`` writes a new key, mode 0600, never over a file;
* ``pegx promote [--url URL]`` promotes the standby at URL (its XML-RPC address; the shared
  client options find it as for every client command) and prints the new epoch; exit 0 when
  promoted, 1 when no daemon answers or the password is wrong, 2 when it refused (not a
  standby, its chain is not the ledger's...).
"""

from __future__ import annotations

import click

from pegx.cli.client import client_options, fail
from pegx.replication import keys


@click.group("replication-key", short_help="Manage the key a primary and its standby share.")
def replication_key() -> None:
    """Manage the shared key a primary and its standby authenticate each other with."""


@replication_key.command("generate", short_help="Write a new random key to FILE (0600).")
@click.argument("file", type=click.Path(dir_okay=False))
def key_generate(file: str) -> None:
    """Write a new random 32-byte key to FILE (hex, mode 0600; never overwrites)."""
    try:
        keys.generate(file)
    except keys.KeyError_ as exc:
        fail(str(exc))
    click.echo(f"replication key written to {file} (mode 0600); copy it to the standby's "
               f"machine and start both daemons with --replication-key-file {file}")


@click.command("promote", short_help="Make the standby the primary (a new epoch).")
@client_options
def promote(client) -> None:
    """Make the standby the primary: a new epoch fences the old primary, and the standby
    starts the exchange and takes state changes from now on."""
    result = client.call("pegx.promote", client.password, strict=True)
    click.echo(f"promoted {client.url} to primary: epoch {result['epoch']}, from op seq "
               f"{result['seq']:,d}; the exchange is started")


def register(main: click.Group) -> None:
    """Attach the replication commands to the ``pegx`` group."""
    main.add_command(replication_key)
    main.add_command(promote)
