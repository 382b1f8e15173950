"""One validated Config, built once: defaults < pegx.toml < PEGX_* environment < CLI flags.

Nothing else in pegx reads ``os.environ`` or the config file (STYLE §7). Every setting is listed
once, in SETTINGS, with its type, default and meaning: the Config dataclass, ``pegx serve``'s
options, ``pegx settings`` and README's settings table are built from it. The client commands'
way to find the daemon (:func:`client_url`, :func:`client_password`) lives here too.

Over 400 lines (~410): the SETTINGS table is most of it, one entry per setting, with the
loading and the validation that read it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A setting has a wrong type or value; the message names the setting and its source."""


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 55779  # the original API's port: the one place pegx spells it


@dataclass(frozen=True)
class Setting:
    """One setting: its pegx.toml key (``name``), type, default and meaning.

    ``flag``: it is also a ``pegx serve`` option (``--node-url`` for ``node_url``);
    ``choices``: the values it takes, if a fixed list.
    """

    name: str
    kind: type
    default: object
    help: str
    flag: bool = False
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        """Its environment variable."""
        return f"PEGX_{self.name.upper()}"

    @property
    def option(self) -> str:
        """Its command-line option (``pegx serve``)."""
        return "--" + self.name.replace("_", "-")

    def show(self, value: object) -> str:
        """``value`` as pegx.toml would spell it (bools lower-case)."""
        return str(value).lower() if isinstance(value, bool) else str(value)


# Every setting, once: Config, `pegx serve`'s options, `pegx settings` and README's settings
# table are all built from this table (tests/test_config.py checks README against it).
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("datadir", str, "~/.pegx", "where the ledger (and devnet chain) live", flag=True),
    Setting("host", str, DEFAULT_HOST, "XML-RPC bind address (loopback by default; any other "
            "is warned about)", flag=True),
    Setting("port", int, DEFAULT_PORT, "XML-RPC port", flag=True),
    Setting("rpc_request_deadline", float, 10.0, "seconds a client may take to send one whole "
            "request (line, headers, body); later ones get 408"),
    Setting("metrics_port", int, 0, "Prometheus `/metrics` and the status page `/` on "
            "host:PORT (0 = off)", flag=True),
    Setting("chain", str, "devnet", "chain backend: devnet (embedded simulation) or bitbayd",
            flag=True, choices=("devnet", "bitbayd")),
    Setting("network", str, "main", "main, testnet or regtest: address and key versions (main "
            "and regtest 25/85/153, testnet 111/196/239); the devnet also takes its cycle length "
            "from it (200 blocks, testnet 20), bitbayd from `getpeginfo`", flag=True,
            choices=("main", "testnet", "regtest")),
    Setting("node_url", str, "http://127.0.0.1:19915",
            "bitbayd JSON-RPC URL (user:password@host:port)", flag=True),
    Setting("node_timeout", float, 10.0, "seconds a single bitbayd request may take"),
    Setting("node_deadline", float, 15.0, "seconds a bitbayd call may take with retries"),
    Setting("autostart", bool, False, "start the exchange at launch (as StartExchange)",
            flag=True),
    Setting("block_seconds", float, 2.0, "devnet: seconds between blocks (0 = only on demand)",
            flag=True),
    Setting("initial_supply", int, 0, "devnet: supply index of a new chain (0..1198)",
            flag=True),
    Setting("devnet_walk", int, -1, "devnet: seed of a random supply walk (-1 = off)",
            flag=True),
    Setting("devnet_seed", int, 1, "devnet: seed of the simulated chain"),
    Setting("final_depth", int, 0, "confirmations that make a block final (0 = "
            "exchangeconfirmations): deposits credited, withdraws Complete, cancels refunded "
            "only at this depth"),
    Setting("stall_seconds", float, 0.0, "seconds without a new block before status calls the "
            "chain stalled (0: ten block intervals, never on an on-demand devnet; < 0: never)"),
    Setting("poll_seconds", float, 0.5, "exchange cycle: seconds between passes"),
    Setting("busy_wait", float, 2.0, "seconds a call waits for a running recompute before "
            "'busy'"),
    Setting("allow_exec", bool, False, "enable the signed API(command) exec call (needs a key "
            "installed with `pegx api-key install`)", flag=True),
    Setting("checkpoint_ops", int, 5000, "ledger: checkpoint after this many logged operations"),
    Setting("checkpoint_seconds", float, 30.0, "ledger: checkpoint at least this often when "
            "busy"),
    Setting("cycle_stall_seconds", float, 120.0, "systemd watchdog: a started exchange whose "
            "cycle thread has finished no pass for this long is stalled, and WATCHDOG=1 stops"),
    Setting("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR", flag=True,
            choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Setting("log_format", str, "text", "text (for people) or json (one object a line, for log "
            "shippers)", flag=True, choices=("text", "json")),
    # replication (pegx.replication; README "Real-time backup: a standby")
    Setting("replication_key_file", str, "", "shared replication key (`pegx replication-key "
            "generate FILE`, mode 0600, the same file on both machines); turns replication on: a "
            "primary listens for a standby, with standby_of this daemon is one", flag=True),
    Setting("replication_host", str, "", "address the replication listener binds (a "
            "primary's; a standby's once promoted; empty = host)", flag=True),
    Setting("replication_port", int, 55780, "replication listener port", flag=True),
    Setting("standby_of", str, "", "run as a read-only standby of the primary whose "
            "replication listener is at HOST:PORT; `pegx promote` makes it the primary",
            flag=True),
    Setting("sync_standby", bool, False, "a state change answers only once the standby has its "
            "record on disk", flag=True),
    Setting("standby_fallback", str, "strict", "with sync_standby and no standby: strict (stop "
            "acknowledging) or async (go on alone, shown in status and metrics)", flag=True,
            choices=("strict", "async")),
    Setting("standby_timeout", float, 10.0, "seconds of silence before a replication peer is "
            "dropped (async fallback: the longest wait for an acknowledgement)"),
    Setting("replication_retain", int, 2_000_000, "op-log records kept at most beyond the "
            "checkpoint for a standby that is behind (0 = no limit)"),
)}


class _Paths:
    """The derived paths and properties of a Config (the fields come from SETTINGS)."""

    @property
    def path(self) -> Path:
        """The datadir, expanded."""
        return Path(self.datadir).expanduser()

    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger"

    @property
    def devnet_path(self) -> Path:
        return self.path / "devnet"

    @property
    def config_path(self) -> Path:
        """The settings file a datadir carries."""
        return self.path / "pegx.toml"

    @property
    def net(self):
        """The pegx.crypto.Network of the ``network`` setting."""
        from pegx.crypto import network

        return network(self.network)

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


# The validated settings in effect: one frozen field per SETTINGS entry, with its default.
Config = make_dataclass(
    "Config", [(s.name, s.kind, field(default=s.default)) for s in SETTINGS.values()],
    bases=(_Paths,), frozen=True)
Config.__module__ = __name__
Config.__doc__ = "The settings in effect (see SETTINGS); build it with :func:`load`."


def settings_table() -> str:
    """README's settings table (Markdown), from SETTINGS."""
    rows = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    rows += [f"| {s.name} | {s.env} | {s.show(s.default)} | {s.help} |"
             for s in SETTINGS.values()]
    return "\n".join(rows) + "\n"


def _coerce(name: str, value, source: str):
    kind = SETTINGS[name].kind
    try:
        if kind is bool:
            return _coerce_bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if not isinstance(value, str):
            raise ValueError(value)  # noqa: TRY004 (caught below into a ConfigError)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{name} from {source}: expected {kind.__name__}, got {value!r}") from None


def _coerce_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _validate(cfg: Config) -> Config:
    """The first setting out of its range raises ConfigError (in this order)."""
    def bad(name: str, why: str):
        raise ConfigError(f"{name} = {getattr(cfg, name)!r}: {why}")

    _validate_choices(cfg, bad)
    _validate_ports(cfg, bad)
    _validate_ranges(cfg, bad)
    _validate_replication(cfg, bad)
    return cfg


def _validate_choices(cfg: Config, bad) -> None:
    for s in SETTINGS.values():
        value = getattr(cfg, s.name)
        if s.name == "log_level":  # the one setting spelled in any case
            value = value.upper()
        if s.choices and value not in s.choices:
            bad(s.name, f"must be {', '.join(s.choices[:-1])} or {s.choices[-1]}")


def _validate_ports(cfg: Config, bad) -> None:
    if not 0 <= cfg.port <= 65535:
        bad("port", "must be 0..65535")
    if not 0 <= cfg.metrics_port <= 65535:
        bad("metrics_port", "must be 0..65535 (0 = off)")
    if cfg.metrics_port and cfg.metrics_port == cfg.port:
        bad("metrics_port", "must differ from the XML-RPC port")
    url = urlparse(cfg.node_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        bad("node_url", "must look like http://user:password@127.0.0.1:19915")


def _validate_ranges(cfg: Config, bad) -> None:
    for name in ("node_timeout", "node_deadline", "poll_seconds", "busy_wait",
                 "checkpoint_seconds", "rpc_request_deadline", "cycle_stall_seconds"):
        if not getattr(cfg, name) > 0:
            bad(name, "must be > 0")
    if cfg.block_seconds < 0:
        bad("block_seconds", "must be >= 0 (0 = mine only on demand)")
    if not 0 <= cfg.initial_supply <= 1198:
        bad("initial_supply", "must be 0..1198")
    if not 0 <= cfg.final_depth <= 1000:
        bad("final_depth", "must be 0..1000 (0 = the exchange's confirmation count)")
    if cfg.checkpoint_ops < 1:
        bad("checkpoint_ops", "must be >= 1")
    if not cfg.datadir:
        bad("datadir", "must not be empty")


def _validate_replication(cfg: Config, bad) -> None:
    if not 0 <= cfg.replication_port <= 65535:
        bad("replication_port", "must be 0..65535")
    if not cfg.standby_timeout > 0:
        bad("standby_timeout", "must be > 0")
    if cfg.replication_retain < 0:
        bad("replication_retain", "must be >= 0 (0 = no limit)")
    if not cfg.replication_key_file:
        for name in ("standby_of", "sync_standby"):
            if getattr(cfg, name):
                bad(name, "needs replication_key_file (pegx replication-key generate FILE, "
                          "then the same file on both machines)")
    if cfg.standby_of:
        try:
            parse_address(cfg.standby_of)
        except ValueError as exc:
            bad("standby_of", str(exc))


def load_with_sources(flags: dict | None = None, *, config_file: str | None = None,
                      environ: dict | None = None) -> tuple[Config, dict[str, str]]:
    """:func:`load`, and where each value came from: ``"default"``, the file's path,
    ``"$PEGX_..."`` or ``"--option"``."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = dict(os.environ if environ is None else environ)
    values = {s.name: s.default for s in SETTINGS.values()}
    sources = dict.fromkeys(SETTINGS, "default")
    env = {}
    for s in SETTINGS.values():
        if s.env in environ:
            env[s.name] = _coerce(s.name, environ[s.env], f"${s.env}")
    datadir = flags.get("datadir") or env.get("datadir") or SETTINGS["datadir"].default
    path = Path(config_file) if config_file else Path(datadir).expanduser() / "pegx.toml"
    if config_file and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    for name, value in _read_file(path).items():
        values[name] = value
        sources[name] = str(path)
    for name, value in env.items():
        values[name] = value
        sources[name] = f"${SETTINGS[name].env}"
    for name, value in flags.items():
        if name not in SETTINGS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, value, "the command line")
        sources[name] = SETTINGS[name].option
    return _validate(Config(**values)), sources


def _read_file(path: Path) -> dict:
    """The settings of the TOML file ``path``, coerced ({} when there is none)."""
    if not path.exists():
        return {}
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    values = {}
    for name, value in raw.items():
        if name not in SETTINGS:
            raise ConfigError(f"{path}: unknown setting {name!r} "
                              f"(known: {', '.join(SETTINGS)})")
        values[name] = _coerce(name, value, str(path))
    return values


def load(flags: dict | None = None, *, config_file: str | None = None,
         environ: dict | None = None) -> Config:
    """Build the Config: defaults < pegx.toml < PEGX_* env < ``flags`` (None values ignored).

    The file is ``config_file`` if given, else ``<datadir>/pegx.toml`` if it exists, where the
    datadir is taken from flags or env first (a file cannot move its own datadir).
    """
    return load_with_sources(flags, config_file=config_file, environ=environ)[0]


# ------------------------------------------------------------------------ client commands
# `pegx status`, `stop`, `call`, `devnet ...`, `backup`, `audit`, `exec` find the daemon the
# same way: --url > --host/--port > $PEGX_URL > $PEGX_HOST/$PEGX_PORT > the datadir's pegx.toml
# (--datadir, $PEGX_DATADIR, or ~/.pegx; or --config FILE) > 127.0.0.1:55779.
_ALL_INTERFACES = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def url_for(host: str, port: int) -> str:
    """The URL a client uses to reach a daemon bound to ``host``:``port`` (a daemon bound to
    every interface is reached on loopback)."""
    if port == 0:
        raise ConfigError("port = 0 (a port the system picks when the daemon starts) cannot be "
                          "found by a client: give the daemon's address with --url or --port")
    host = _ALL_INTERFACES.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _check_url(url: str, source: str) -> str:
    parsed = urlparse(url)
    try:
        parsed.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{source} = {url!r}: must look like http://127.0.0.1:{DEFAULT_PORT}")
    return url


def client_url(*, url: str | None = None, host: str | None = None, port: int | None = None,
               datadir: str | None = None, config_file: str | None = None,
               environ: dict | None = None) -> str:
    """The daemon's URL for a client command (precedence above; flags are the arguments)."""
    environ = dict(os.environ if environ is None else environ)
    if url and (host is not None or port is not None):
        raise ConfigError("give the daemon's address either with --url or with --host/--port, "
                          "not both")
    if url:
        return _check_url(url, "--url")
    if host is None and port is None and environ.get("PEGX_URL"):
        return _check_url(environ["PEGX_URL"], "$PEGX_URL")
    cfg = load({"datadir": datadir, "host": host, "port": port}, config_file=config_file,
               environ=environ)
    return url_for(cfg.host, cfg.port)


def client_password(password: str | None = None, environ: dict | None = None
                    ) -> tuple[str, str]:
    """The API password a client command sends, and its source: ``"--password"``,
    ``"$PEGX_PASSWORD"``, or ``""`` (none given: blank)."""
    if password is not None:
        return password, "--password"
    environ = os.environ if environ is None else environ
    if "PEGX_PASSWORD" in environ:
        return environ["PEGX_PASSWORD"], "$PEGX_PASSWORD"
    return "", ""


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (or ``tcp://host:port``) of a primary's replication listener."""
    raw = text.strip()
    if "://" in raw:
        scheme, _, raw = raw.partition("://")
        if scheme != "tcp":
            raise ValueError(f"--standby-of {text!r}: the primary's replication address is "
                             f"host:port (or tcp://host:port), not a {scheme} URL")
    host, sep, port = raw.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--standby-of {text!r}: expected host:port of the primary's "
                         f"replication listener (its --replication-port)")
    return host.strip("[]"), int(port)
