"""Test helpers for replication: a key, a primary and its standby as real `pegx serve` processes.

    key = make_key(tmp_path)
    p = primary(tmp_path / "p", key, sync=True).start(wait_loaded=False)
    s = standby(tmp_path / "s", key, p).start()
    wait_loaded(p)
    ...
    wait_caught_up(p, s)
    assert digest(p) == digest(s)
"""

from __future__ import annotations

from pathlib import Path

from harness import cli_process, free_port, wait_until
from harness.daemon import Daemon
from pegx.replication import keys


def make_key(root: Path, name: str = "repl.key") -> Path:
    path = Path(root) / name
    keys.generate(path)
    return path


def primary(datadir: Path, key: Path, *, sync: bool = False, fallback: str | None = None,
            autostart: bool = True, extra: list[str] | None = None,
            env: dict | None = None) -> Daemon:
    """A primary that takes a standby on its own free replication port (``d.repl``)."""
    port = free_port()
    args = ["--replication-key-file", str(key), "--replication-port", str(port)]
    if sync:
        args.append("--sync-standby")
    if fallback:
        args += ["--standby-fallback", fallback]
    d = Daemon(datadir, autostart=autostart, extra=args + (extra or []), env=env)
    d.repl = f"127.0.0.1:{port}"
    return d


def standby(datadir: Path, key: Path, of: Daemon | str, *,
            extra: list[str] | None = None) -> Daemon:
    """A standby of ``of`` (a primary Daemon or a replication address); ``d.repl`` is its own
    replication address once promoted."""
    port = free_port()
    target = of if isinstance(of, str) else of.repl
    d = Daemon(datadir, autostart=False,
               extra=["--replication-key-file", str(key), "--replication-port", str(port),
                      "--standby-of", target] + (extra or []))
    d.repl = f"127.0.0.1:{port}"
    return d


def status(d: Daemon, passw: str = "") -> dict:
    """The replication part of pegx.status."""
    return d.proxy().pegx.status(passw)["replication"]


def wait_loaded(d: Daemon, timeout: float = 30) -> None:
    x = d.proxy()
    wait_until(lambda: x.StartExchange("", 1, 1) is True, timeout, what=f"{d.url} to load")


def wait_caught_up(p: Daemon, s: Daemon, timeout: float = 30, passw: str = "") -> int:
    """Until the standby holds every record the primary has (and the primary knows); returns
    that seq."""
    def same():
        ps, ss = status(p, passw), status(s, passw)
        return ps["seq"] if ps["seq"] == ss["seq"] == ps["acked_seq"] else None
    return wait_until(same, timeout, what=f"standby {s.url} to catch up with {p.url}")


def digest(d: Daemon) -> dict:
    return d.proxy().pegx.digest("")


def promote(s: Daemon) -> dict:
    out = cli_process("promote", "--url", s.url)
    assert out.returncode == 0, out.stdout + out.stderr
    return status(s)
