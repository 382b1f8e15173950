"""The command line: `pegx serve`, the client commands and the operator's tools."""

from pegx.cli import replication
from pegx.cli.commands import main
from pegx.cli.tools import register

register(main)
replication.register(main)

__all__ = ["main"]
