"""Settings: one table of variables, every bad value a ConfigError that names it, typos named."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import INTERNAL, VARIABLES, ConfigError, Settings, unknown_variables

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)

ROOT = Path(__file__).resolve().parents[1]
NAMES = [v.name for v in VARIABLES]
GOOD = {"JWT_SECRET": "k" * 40}


def test_the_readme_table_is_the_settings_table():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", section, re.MULTILINE)
    assert [(name, default.strip()) for name, default in rows] == [(v.name, v.default or "—") for v in VARIABLES]


def test_every_variable_the_code_reads_is_in_the_table():
    read = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("gateway/*.py"), *ROOT.glob("brokers/*.py")]:
        source = path.read_text()
        read |= set(re.findall(r"""\be\.(?:raw|text|flag|choice|int|ms|items)\(\s*"([A-Z_]+)""", source))
        read |= set(re.findall(r"""os\.environ(?:\.get)?[\[(]\s*"([A-Z_]+)""", source))
        read |= set(re.findall(r"""\benv\.get\(\s*"([A-Z_]+)""", source))
    assert len(read) > 30
    assert read - set(NAMES) - INTERNAL == set()
    assert set(NAMES) - read == set()  # and nothing in the table is dead


def test_one_default_per_setting():
    """The dataclass's defaults are the table's: nothing reads differently when built in code."""
    from_code, from_env = Settings(), Settings.from_env(GOOD)
    differ = [f.name for f in fields(Settings) if f.name != "authenticator"
              and getattr(from_code, f.name) != getattr(from_env, f.name)]
    assert differ == []


def test_defaults_and_the_platform_names():
    s = Settings.from_env(GOOD)
    assert (s.port, s.heartbeat_interval, s.silence_timeout, s.max_channels_per_connection) == (3001, 30.0, 60.0, 100)
    assert Settings.from_env({**GOOD, "WS_PORT": "4000"}).port == 4000
    assert Settings.from_env({**GOOD, "PORT": "5000", "WS_PORT": "4000"}).port == 5000
    assert Settings.from_env({**GOOD, "WS_HEARTBEAT_INTERVAL": "15000"}).silence_timeout == 30.0
    assert Settings.from_env({**GOOD, "POPULAR_PAIRS": ""}).popular_pairs == ()  # set but empty: none pinned
    assert Settings.from_env({**GOOD, "LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize("name", [v.name for v in VARIABLES if v.default.isdigit()])
@given(value=st.text(max_size=12))
@settings(max_examples=25, deadline=None)
def test_any_value_of_a_number_setting_is_taken_or_refused_by_name(name, value):
    try:
        Settings.from_env({**GOOD, name: value})
    except ConfigError as exc:
        assert str(exc).startswith(name)


@given(env=st.dictionaries(st.sampled_from(NAMES), st.text(max_size=20), max_size=6))
@settings(max_examples=200, deadline=None)
def test_any_environment_starts_or_says_which_setting_is_wrong(env):
    try:
        Settings.from_env({**GOOD, **env})
    except ConfigError as exc:
        assert any(name in str(exc) for name in NAMES)


@pytest.mark.parametrize(("typo", "meant"), [
    ("WS_MAX_CHANNEL", "WS_MAX_CHANNELS"), ("JWT_SECRT", "JWT_SECRET"),
    ("WS_HEARTBEAT_INTERVALL", "WS_HEARTBEAT_INTERVAL"),
    ("MARKET_SOURCES", "MARKET_SOURCE"), ("BYBIT_TEST_NET", "BYBIT_TESTNET"), ("WORKER", "WORKERS"),
])
def test_a_misspelled_setting_is_named_with_the_closest_one(typo, meant):
    assert unknown_variables({typo: "1"}) == [
        f"unknown setting {typo} is ignored: did you mean {meant}? (trading-gateway serve --help lists them)"]


def test_known_names_foreign_names_and_service_links_are_not_typos():
    env = {name: "1" for name in NAMES} | {name: "1" for name in INTERNAL}
    env |= {"HOME": "/root", "PATH": "/bin", "REDIS_PASSWORD": "x", "LOGNAME": "x",
            "WS_GATEWAY_SERVICE_HOST": "10.0.0.1", "WS_GATEWAY_SERVICE_PORT": "3001",
            "WS_GATEWAY_PORT": "tcp://10.0.0.1:3001", "WS_GATEWAY_PORT_3001_TCP_ADDR": "10.0.0.1"}
    assert unknown_variables(env) == []
    assert unknown_variables({"GATEWAY_ZZZ": "1"}) == [
        "unknown setting GATEWAY_ZZZ is ignored: no setting has a similar name "
        "(trading-gateway serve --help lists them)"]
