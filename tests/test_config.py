"""Config precedence (defaults < pegx.toml < PEGX_* env < flags) and validation."""

from dataclasses import fields
from pathlib import Path

import pytest

from pegx.config import DEFAULT_PORT, SETTINGS, ConfigError, load


def test_defaults(tmp_path):
    cfg = load({"datadir": str(tmp_path)}, environ={})
    assert (cfg.host, cfg.port, cfg.chain, cfg.block_seconds) == ("127.0.0.1", 55779, "devnet", 2.0)
    assert cfg.is_loopback and cfg.ledger_path == tmp_path / "ledger"


def test_precedence_file_env_flags(tmp_path):
    (tmp_path / "pegx.toml").write_text('port = 1111\nchain = "bitbayd"\nautostart = true\n'
                                        "block_seconds = 5\n")
    cfg = load({"datadir": str(tmp_path)}, environ={})
    assert (cfg.port, cfg.chain, cfg.autostart, cfg.block_seconds) == (1111, "bitbayd", True, 5.0)
    cfg = load({"datadir": str(tmp_path)}, environ={"PEGX_PORT": "2222", "PEGX_AUTOSTART": "no"})
    assert (cfg.port, cfg.autostart) == (2222, False)
    cfg = load({"datadir": str(tmp_path), "port": 3333, "autostart": None},
               environ={"PEGX_PORT": "2222"})
    assert cfg.port == 3333 and cfg.autostart is True  # None flags do not override


def test_network_setting(tmp_path):
    assert load({"datadir": str(tmp_path)}, environ={}).net.name == "main"
    cfg = load({"datadir": str(tmp_path)}, environ={"PEGX_NETWORK": "testnet"})
    assert (cfg.network, cfg.net.address, cfg.net.script, cfg.net.wif) == ("testnet", 111, 196, 239)
    assert cfg.net.cycle_blocks == 20
    (tmp_path / "pegx.toml").write_text('network = "regtest"\n')
    assert load({"datadir": str(tmp_path)}, environ={}).net.address == 25


def test_datadir_from_env_finds_its_file(tmp_path):
    (tmp_path / "pegx.toml").write_text("port = 4444\n")
    assert load({}, environ={"PEGX_DATADIR": str(tmp_path)}).port == 4444


@pytest.mark.parametrize("flags,env,toml,match", [
    ({"port": 70000}, {}, "", "port"),
    ({"chain": "ethereum"}, {}, "", "chain"),
    ({}, {"PEGX_PORT": "eighty"}, "", r"\$PEGX_PORT"),
    ({}, {"PEGX_AUTOSTART": "maybe"}, "", "autostart"),
    ({}, {}, "prot = 1\n", "unknown setting 'prot'"),
    ({}, {}, "port = [\n", "cannot read"),
    ({"initial_supply": 1199}, {}, "", "initial_supply"),
    ({"node_url": "ftp://x"}, {}, "", "node_url"),
    ({"block_seconds": -1}, {}, "", "block_seconds"),
    ({"network": "mainnet"}, {}, "", "network"),
    ({}, {}, "port = 1.5\n", "port"),
])
def test_bad_settings_name_the_setting(tmp_path, flags, env, toml, match):
    if toml:
        (tmp_path / "pegx.toml").write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load({"datadir": str(tmp_path), **flags}, environ=env)


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load({"datadir": str(tmp_path)}, config_file=str(tmp_path / "nope.toml"), environ={})


def test_config_is_built_from_the_one_settings_table():
    """Issue 11: every default was written twice (SETTINGS and the dataclass)."""
    cfg = load({}, environ={})
    assert [f.name for f in fields(cfg)] == list(SETTINGS)
    assert all(getattr(cfg, s.name) == s.default for s in SETTINGS.values())


PEGX = Path(__file__).resolve().parent.parent / "pegx"


def test_the_port_and_the_ledger_lock_live_in_one_module_each():
    """Issue 11: port 55779 was spelled in four modules, and cli_tools re-implemented the
    store's lock protocol."""
    def holding(text: str) -> list[str]:
        return sorted(str(p.relative_to(PEGX)) for p in PEGX.rglob("*.py") if text in p.read_text())

    assert holding(str(DEFAULT_PORT)) == ["config.py"]
    # the store's lock protocol, and the devnet action log's own lock on its file
    assert holding("flock") == ["chain/devnet/log.py", "ledger/store.py"]
