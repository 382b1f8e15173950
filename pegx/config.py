"""One validated Config, built once: defaults < pegx.toml < PEGX_* environment < CLI flags.

Nothing else in pegx reads ``os.environ`` or the config file (STYLE §7). Every setting is listed
in SETTINGS with its type, default and meaning; README's settings table mirrors it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A setting has a wrong type or value; the message names the setting and its source."""


# name: (type, default, help)
SETTINGS: dict[str, tuple[type, object, str]] = {
    "datadir": (str, "~/.pegx", "where the ledger (and devnet chain) live"),
    "host": (str, "127.0.0.1", "XML-RPC bind address (loopback by default)"),
    "port": (int, 55779, "XML-RPC port"),
    "rpc_request_deadline": (float, 10.0, "seconds a client may take to send one whole request"),
    "metrics_port": (int, 0, "Prometheus metrics and the status page on host:PORT (0 = off)"),
    "chain": (str, "devnet", "chain backend: devnet (embedded simulation) or bitbayd"),
    "network": (str, "main", "main, testnet or regtest: address versions (devnet: cycle length)"),
    "node_url": (str, "http://127.0.0.1:19915", "bitbayd JSON-RPC URL (user:password@host:port)"),
    "node_timeout": (float, 10.0, "seconds a single bitbayd request may take"),
    "node_deadline": (float, 15.0, "seconds a bitbayd call may take with retries"),
    "autostart": (bool, False, "start the exchange at launch (as StartExchange)"),
    "block_seconds": (float, 2.0, "devnet: seconds between blocks (0 = only on demand)"),
    "initial_supply": (int, 0, "devnet: supply index of a new chain (0..1198)"),
    "devnet_walk": (int, -1, "devnet: seed of a random supply walk (-1 = off)"),
    "devnet_seed": (int, 1, "devnet: seed of the simulated chain"),
    "final_depth": (int, 0, "confirmations that make a block final (0 = exchangeconfirmations)"),
    "stall_seconds": (float, 0.0, ("seconds without a new block before status calls the "
                                    "chain stalled (0: ten blocks' time, never on an "
                                    "on-demand devnet; < 0: never)")),
    "poll_seconds": (float, 0.5, "exchange cycle: seconds between passes"),
    "busy_wait": (float, 2.0, "seconds a call waits for a running recompute before 'busy'"),
    "allow_exec": (bool, False, "enable the signed API(command) exec call (needs a key)"),
    "checkpoint_ops": (int, 5000, "ledger: checkpoint after this many logged operations"),
    "checkpoint_seconds": (float, 30.0, "ledger: checkpoint at least this often when busy"),
    "log_level": (str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    # replication (pegx.replication; README "Real-time backup: a standby")
    "replication_key_file": (str, "", "shared replication key file (0600); turns replication on"),
    "replication_host": (str, "", "replication listener address (empty = host)"),
    "replication_port": (int, 55780, "replication listener port (a standby's once promoted)"),
    "standby_of": (str, "", "run as a standby of the primary at host:port (its replication port)"),
    "sync_standby": (bool, False, "acknowledge a state change only once the standby has it"),
    "standby_fallback": (str, "strict", "sync standby gone: strict (wait) or async (go on, loudly)"),
    "standby_timeout": (float, 10.0, "seconds of silence before a replication peer is dropped"),
    "replication_retain": (int, 2_000_000, "op-log records kept at most for a standby behind"),
}


@dataclass(frozen=True)
class Config:
    datadir: str = "~/.pegx"
    host: str = "127.0.0.1"
    port: int = 55779
    rpc_request_deadline: float = 10.0
    metrics_port: int = 0
    chain: str = "devnet"
    network: str = "main"
    node_url: str = "http://127.0.0.1:19915"
    node_timeout: float = 10.0
    node_deadline: float = 15.0
    autostart: bool = False
    block_seconds: float = 2.0
    initial_supply: int = 0
    devnet_walk: int = -1
    devnet_seed: int = 1
    final_depth: int = 0
    stall_seconds: float = 0.0
    poll_seconds: float = 0.5
    busy_wait: float = 2.0
    allow_exec: bool = False
    checkpoint_ops: int = 5000
    checkpoint_seconds: float = 30.0
    log_level: str = "INFO"
    replication_key_file: str = ""
    replication_host: str = ""
    replication_port: int = 55780
    standby_of: str = ""
    sync_standby: bool = False
    standby_fallback: str = "strict"
    standby_timeout: float = 10.0
    replication_retain: int = 2_000_000

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


def _coerce(name: str, value, source: str):
    kind = SETTINGS[name][0]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
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


def _validate(cfg: Config) -> Config:
    def bad(name: str, why: str):
        raise ConfigError(f"{name} = {getattr(cfg, name)!r}: {why}")

    if not 0 <= cfg.port <= 65535:
        bad("port", "must be 0..65535")
    if not 0 <= cfg.metrics_port <= 65535:
        bad("metrics_port", "must be 0..65535 (0 = off)")
    if cfg.metrics_port and cfg.metrics_port == cfg.port:
        bad("metrics_port", "must differ from the XML-RPC port")
    if cfg.chain not in ("devnet", "bitbayd"):
        bad("chain", "must be 'devnet' or 'bitbayd'")
    if cfg.network not in ("main", "testnet", "regtest"):
        bad("network", "must be 'main', 'testnet' or 'regtest'")
    url = urlparse(cfg.node_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        bad("node_url", "must look like http://user:password@127.0.0.1:19915")
    for name in ("node_timeout", "node_deadline", "poll_seconds", "busy_wait",
                 "checkpoint_seconds", "rpc_request_deadline"):
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
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        bad("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    if not cfg.datadir:
        bad("datadir", "must not be empty")
    _validate_replication(cfg, bad)
    return cfg


def _validate_replication(cfg: Config, bad) -> None:
    if not 0 <= cfg.replication_port <= 65535:
        bad("replication_port", "must be 0..65535")
    if cfg.standby_fallback not in ("strict", "async"):
        bad("standby_fallback", "must be 'strict' (stop acknowledging) or 'async' (go on)")
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
        from pegx.replication.standby import parse_address

        try:
            parse_address(cfg.standby_of)
        except ValueError as exc:
            bad("standby_of", str(exc))


def load(flags: dict | None = None, *, config_file: str | None = None,
         environ: dict | None = None) -> Config:
    """Build the Config: defaults < pegx.toml < PEGX_* env < ``flags`` (None values ignored).

    The file is ``config_file`` if given, else ``<datadir>/pegx.toml`` if it exists, where the
    datadir is taken from flags or env first (a file cannot move its own datadir).
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = dict(os.environ if environ is None else environ)
    env = {}
    for name in SETTINGS:
        key = f"PEGX_{name.upper()}"
        if key in environ:
            env[name] = _coerce(name, environ[key], f"${key}")
    datadir = flags.get("datadir") or env.get("datadir") or SETTINGS["datadir"][1]
    path = Path(config_file) if config_file else Path(datadir).expanduser() / "pegx.toml"
    filevals = {}
    if config_file and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        for name, value in raw.items():
            if name not in SETTINGS:
                raise ConfigError(f"{path}: unknown setting {name!r} "
                                  f"(known: {', '.join(SETTINGS)})")
            filevals[name] = _coerce(name, value, str(path))
    values = {f.name: f.default for f in fields(Config)}
    values.update(filevals)
    values.update(env)
    for name, value in flags.items():
        if name not in SETTINGS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, value, "the command line")
    return _validate(Config(**values))
