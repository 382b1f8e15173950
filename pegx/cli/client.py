"""How every client command reaches the daemon: the shared options, one RPC helper.

Every command that talks to a running daemon (`status`, `stop`, `call`, `devnet ...`,
`backup`, `audit`, `exec`) takes the same options and finds the daemon the same way
(:func:`pegx.config.client_url`): ``--url`` > ``--host``/``--port`` > ``$PEGX_URL`` >
``$PEGX_HOST``/``$PEGX_PORT`` > the datadir's ``pegx.toml`` (``--datadir``, ``$PEGX_DATADIR``
or ``~/.pegx``; or ``--config FILE``) > the default address; the password comes from
``--password`` or ``$PEGX_PASSWORD``. Calls go through a stock ``xmlrpc.client``, as an
exchange's would.
"""

from __future__ import annotations

import functools
import sys
import xmlrpc.client
from collections.abc import Callable
from typing import NoReturn

import click

from pegx.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Config,
    ConfigError,
    client_password,
    client_url,
    load,
)
from pegx.rpc.api import WRONG_PASSWORD


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Client:
    """The daemon a client command talks to, and the password it sends."""

    def __init__(self, url: str, password: str = "", password_source: str = "",
                 datadir: str | None = None, config_file: str | None = None):
        self.url = url
        self.password = password
        self.password_source = password_source  # "--password", "$PEGX_PASSWORD" or ""
        self.datadir = datadir  # as given with --datadir (None: not given)
        self.config_file = config_file

    def config(self) -> Config:
        """The settings of the datadir (for commands that may open it directly)."""
        try:
            return load({"datadir": self.datadir}, config_file=self.config_file)
        except ConfigError as exc:
            fail(str(exc))

    def proxy(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(self.url, allow_none=True)

    def answers(self) -> bool:
        """Does a pegx daemon answer at the URL (``pegx.noop``, which takes no password)?"""
        try:
            self.proxy().pegx.noop()
        except (OSError, xmlrpc.client.ProtocolError, xmlrpc.client.Fault):
            return False
        return True

    def call(self, method: str, *args, strict: bool = False):
        """One call. No daemon, a transport error (exit 1) or a Fault (exit 2) becomes a clear
        message. ``strict``: a string answer (the API's way to say no) is a failure too."""
        try:
            result = getattr(self.proxy(), method)(*args)
        except ConnectionRefusedError:
            fail(f"no pegx daemon answers at {self.url} (is `pegx serve` running? the "
                 f"address comes from --url, --host/--port, $PEGX_URL, $PEGX_HOST/$PEGX_PORT "
                 f"or the datadir's pegx.toml)")
        except xmlrpc.client.Fault as exc:
            fail(f"{method}: {exc.faultString}", 2)
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            fail(f"{self.url}: {exc}")
        if strict and isinstance(result, str):
            if result == WRONG_PASSWORD:
                fail(f"{method}: {result} (give the API password with --password or "
                     f"$PEGX_PASSWORD)")
            fail(f"{method}: {result}")
        return result


def client_options(command: Callable | None = None, *, password: bool = True) -> Callable:
    """Add the shared client options to a click command, which receives ``client=Client``.
    ``@client_options(password=False)`` for commands whose calls take no password (`devnet
    ...`, `exec`): they have no --password and ignore $PEGX_PASSWORD."""
    if command is None:
        return functools.partial(client_options, password=password)
    with_password = password  # the wrapper's own `password` is the option's value

    @functools.wraps(command)
    def wrapper(*args, url, host, port, datadir, config_file, password=None, **kwargs):
        try:
            resolved = client_url(url=url, host=host, port=port, datadir=datadir,
                                  config_file=config_file)
        except ConfigError as exc:
            fail(str(exc))
        secret, source = client_password(password) if with_password else ("", "")
        client = Client(resolved, secret, source, datadir=datadir, config_file=config_file)
        return command(*args, client=client, **kwargs)

    options = [
        click.option("--url", help="The daemon's XML-RPC address [default: from --host/--port, "
                     "$PEGX_URL, $PEGX_HOST/$PEGX_PORT, the datadir's pegx.toml, else "
                     f"http://{DEFAULT_HOST}:{DEFAULT_PORT}]."),
        click.option("--host", help="The daemon's host (a daemon bound to 0.0.0.0 is reached "
                     "on 127.0.0.1)."),
        click.option("--port", type=click.IntRange(1, 65535), help="The daemon's port."),
        click.option("--datadir", help="The daemon's datadir, whose pegx.toml gives its "
                     "address [default: $PEGX_DATADIR or ~/.pegx]."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="The daemon's settings file, if not <datadir>/pegx.toml."),
    ]
    if with_password:
        options.append(click.option("--password", help="The API password [default: "
                                    "$PEGX_PASSWORD, else blank]."))
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
