"""Running as a service: systemd's notify protocol and watchdog, JSON logs, a private datadir.

* :class:`Notifier` speaks sd_notify(3) by hand: one datagram of ``KEY=VALUE`` lines to the
  AF_UNIX socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
  It is a few lines over the standard library; the PyPI wrappers either need libsystemd's C
  headers to build (systemd-python) or are unmaintained (sdnotify, last release 2017). Without
  ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
* The daemon sends ``READY=1`` once it serves calls, ``STOPPING=1`` when it starts to shut
  down, and, when systemd asks for a watchdog (``$WATCHDOG_USEC``, for this process if
  ``$WATCHDOG_PID`` is set), ``WATCHDOG=1`` every third of that interval **while healthy**
  (:class:`CycleHealth`): a started exchange whose cycle thread has finished no pass (passed
  or failed) for ``cycle_stall_seconds`` is stalled; the pings stop and systemd restarts pegx once
  the interval runs out. A stopped exchange (no ``--autostart``, ``StartExchange(start=0)``)
  has nothing to stall and is healthy.
* ``--log-format json``: one JSON object a line (``time``, ``level``, ``logger``,
  ``message``, ``thread``, and ``exception`` with its traceback) for log shippers.
* The datadir holds every user's deposit keys: ``pegx serve`` creates it with mode 0700 and
  refuses to serve one that other users can read or enter (:func:`check_datadir`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


# ------------------------------------------------------------------------------ logging
class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` as ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# ------------------------------------------------------------------------------ datadir
class DatadirError(RuntimeError):
    """The datadir is not fit to hold the ledger; the message says what to do."""


def check_datadir(path: Path) -> None:
    """Refuse a datadir other users can read or enter: it holds the deposit keys. (Group access
    is left to the operator, e.g. for a backup group.)"""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise DatadirError(f"datadir {path} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        raise DatadirError(
            f"datadir {path} is open to other users (mode {mode:04o}), and it holds every "
            f"user's deposit keys: close it with `chmod o-rwx {path}` (or `chmod 700 {path}`) "
            f"and start again")


def make_datadir(path: Path) -> None:
    """Check the datadir (see :func:`check_datadir`) and create it, mode 0700, if missing."""
    check_datadir(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


# ------------------------------------------------------------------------------ sd_notify
class Notifier:
    """sd_notify over ``address`` (None: disabled); ``watchdog``: the interval systemd expects
    pings at, in seconds (None: no watchdog)."""

    def __init__(self, address: str | None = None, watchdog: float | None = None):
        self.address = address
        self.watchdog = watchdog
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int | None = None) -> Notifier:
        """The notifier systemd set up for process ``pid`` (default: this one)."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and address[0] not in "/@":
            log.warning("NOTIFY_SOCKET %r is neither a path nor @abstract: not notifying",
                        address)
            address = None
        watchdog = None
        usec, for_pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if address and usec.isdigit() and int(usec) > 0 and (
                not for_pid or for_pid == str(pid or os.getpid())):
            watchdog = int(usec) / 1e6
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; False (logged once) if it cannot go."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            if not self._warned:  # the service manager went away: nothing to do but say so
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# ------------------------------------------------------------------------------ watchdog
class CycleHealth:
    """Is the daemon healthy? ``""`` if so, else why not.

    Healthy: the exchange is stopped (nothing to stall), or its cycle thread finished a pass
    (passed or failed) within ``stall_seconds`` (the setting ``cycle_stall_seconds``). The pass
    count and the last error's time are the cycle thread's own records, read here from the main
    loop; a change in either is a finished pass. (This is not pegx.ops.health's
    ``chain_stalled``, the chain's blocks: a node that stops mining is no reason to restart.)
    """

    def __init__(self, session, cycle, stall_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.session = session  # started or not (pegx.exchange.session.Session)
        self.cycle = cycle  # its passes (pegx.exchange.cycle.ExchangeCycle)
        self.stall_seconds = stall_seconds
        self.clock = clock
        self._mark: tuple | None = None
        self._since = 0.0

    def __call__(self) -> str:
        now = self.clock()
        if not self.session.started():
            self._mark = None
            return ""
        mark = (self.cycle.passes, self.cycle.last_error_time)
        if mark != self._mark:  # a pass finished (or the exchange was just started)
            self._mark, self._since = mark, now
            return ""
        idle = now - self._since
        if idle <= self.stall_seconds:
            return ""
        what = "is running" if self.cycle.running else "is not running"
        return (f"the exchange cycle thread {what} and has finished no pass for {idle:,.0f} s "
                f"(cycle_stall_seconds {self.stall_seconds:g})")


class Watchdog:
    """Pings WATCHDOG=1 while ``health()`` says healthy; call :meth:`tick` often (the main
    loop does, every :attr:`tick_seconds` at most)."""

    def __init__(self, notifier: Notifier, health: Callable[[], str], status: str = ""):
        self.notifier = notifier
        self.health = health
        self.status = status  # the STATUS= shown while healthy
        self.period = notifier.watchdog / 3 if notifier.watchdog else None
        self._last_ping = float("-inf")
        self._reason = ""

    @property
    def enabled(self) -> bool:
        return self.period is not None

    @property
    def tick_seconds(self) -> float:
        return min(0.5, self.period) if self.period else 0.5

    def tick(self) -> None:
        """Ping if healthy and due; say so once when health changes."""
        if self.period is None:
            return
        reason = self.health()
        if bool(reason) != bool(self._reason):  # said once per change, not every tick
            if reason:
                log.error("watchdog: %s; WATCHDOG=1 pings stop, so systemd restarts pegx "
                          "when its WatchdogSec runs out", reason)
                self.notifier.notify(f"STATUS=stalled: {reason}")
            else:
                log.warning("watchdog: the exchange cycle thread finished a pass again; "
                            "WATCHDOG=1 pings resume")
                self.notifier.notify(f"STATUS={self.status}")
            self._reason = reason
        if reason:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.period:
            self.notifier.notify("WATCHDOG=1")
            self._last_ping = now
