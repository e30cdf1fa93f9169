"""ConnectionSettings and LayeredSettings.load: given values > environment > TOML file > defaults.

Every test runs with its own XDG directories and no USAGE_MONITOR_* variables
(the autouse fixture in tests/conftest.py), so only what a test sets applies.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.exceptions import ConfigError
from common.paths import CONFIG_ENV
from common.settings import DEFAULT_PORT, ConnectionSettings

SECRET = "hunter2-do-not-print"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A path for a TOML file; the test writes it (or not)."""
    return tmp_path / "config.toml"


def default_config_dir() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "usage-monitor"


# -- where each value comes from ----------------------------------------------------


def test_defaults_apply_without_file_or_environment() -> None:
    """With no file, no variable and nothing given, the defaults apply."""
    settings = ConnectionSettings.load()
    assert (settings.host, settings.port, settings.client_token_file) == (
        "127.0.0.1",
        DEFAULT_PORT,
        None,
    )


def test_the_toml_file_beats_the_defaults(config_file: Path) -> None:
    """A value in the config file replaces the default."""
    config_file.write_text('host = "localhost"\nport = 9001\n')
    settings = ConnectionSettings.load(config_file=config_file)
    assert (settings.host, settings.port) == ("localhost", 9001)


def test_the_environment_beats_the_toml_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """USAGE_MONITOR_PORT replaces the file's port; the file's other values stay."""
    config_file.write_text('host = "localhost"\nport = 9001\n')
    monkeypatch.setenv("USAGE_MONITOR_PORT", "9002")
    settings = ConnectionSettings.load(config_file=config_file)
    assert (settings.host, settings.port) == ("localhost", 9002)


def test_given_values_beat_the_environment(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value passed to load() (a flag) replaces the environment's and the file's."""
    config_file.write_text("port = 9001\n")
    monkeypatch.setenv("USAGE_MONITOR_PORT", "9002")
    assert ConnectionSettings.load(config_file=config_file, port=9003).port == 9003


def test_without_a_config_file_the_one_in_the_config_dir_is_read() -> None:
    """load() without config_file reads config.toml in $XDG_CONFIG_HOME/usage-monitor."""
    default_config_dir().mkdir(parents=True)
    (default_config_dir() / "config.toml").write_text("port = 9004\n")
    assert ConnectionSettings.load().port == 9004


def test_usage_monitor_config_names_another_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$USAGE_MONITOR_CONFIG names the file load() reads when given none."""
    default_config_dir().mkdir(parents=True)
    (default_config_dir() / "config.toml").write_text("port = 9004\n")
    config_file.write_text("port = 9005\n")
    monkeypatch.setenv(CONFIG_ENV, str(config_file))
    assert ConnectionSettings.load().port == 9005


def test_settings_of_other_commands_in_the_file_are_ignored(config_file: Path) -> None:
    """The clients read serve's config file: keys they do not know are skipped, not errors."""
    config_file.write_text('port = 9006\ninterval = 5\nregion = "eu"\n')
    assert ConnectionSettings.load(config_file=config_file).port == 9006


def test_constructing_settings_directly_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """ConnectionSettings(...) ignores USAGE_MONITOR_* variables and the config file."""
    default_config_dir().mkdir(parents=True)
    (default_config_dir() / "config.toml").write_text("port = 9007\n")
    monkeypatch.setenv("USAGE_MONITOR_PORT", "9008")
    monkeypatch.setenv("USAGE_MONITOR_HOST", "localhost")
    settings = ConnectionSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", DEFAULT_PORT)


# -- errors ---------------------------------------------------------------------------


def test_a_config_file_that_was_named_must_exist(config_file: Path) -> None:
    """A path given for the config file that holds no file is an error, not the defaults."""
    with pytest.raises(ConfigError, match=f"config file not found: {config_file}"):
        ConnectionSettings.load(config_file=config_file)


def test_a_config_variable_naming_no_file_is_an_error(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """USAGE_MONITOR_CONFIG naming a missing file is an error; only the default may be absent."""
    monkeypatch.setenv(CONFIG_ENV, str(config_file))
    with pytest.raises(ConfigError, match="config file not found"):
        ConnectionSettings.load()


def test_a_malformed_toml_file_is_a_config_error_naming_it(config_file: Path) -> None:
    """A config file that does not parse raises ConfigError with the file's path."""
    config_file.write_text("port = = 3\n")
    with pytest.raises(ConfigError) as raised:
        ConnectionSettings.load(config_file=config_file)
    assert str(config_file) in str(raised.value)


@pytest.mark.parametrize("layer", ["given", "environment", "file"])
def test_an_invalid_port_is_a_config_error_naming_port_not_its_value(
    layer: str, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invalid value from any layer names the setting and never repeats what was given."""
    given: dict[str, object] = {}
    if layer == "given":
        given["port"] = SECRET
    elif layer == "environment":
        monkeypatch.setenv("USAGE_MONITOR_PORT", SECRET)
    else:
        config_file.write_text(f'port = "{SECRET}"\n')
    with pytest.raises(ConfigError) as raised:
        ConnectionSettings.load(config_file=config_file, **given)
    message = str(raised.value)
    assert "port" in message
    assert SECRET not in message


def test_a_port_out_of_range_is_a_config_error(config_file: Path) -> None:
    """Ports above 65535 are refused, naming the setting."""
    with pytest.raises(ConfigError, match="port"):
        ConnectionSettings.load(config_file=config_file, port=65536)


# -- where clients find the relay and its token -----------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("localhost", 9000, "ws://localhost:9000/ws"),
        ("0.0.0.0", 9000, "ws://127.0.0.1:9000/ws"),
        ("::", 9000, "ws://127.0.0.1:9000/ws"),
        ("", 9000, "ws://127.0.0.1:9000/ws"),
        ("::1", 9000, "ws://[::1]:9000/ws"),
        ("[::1]", 9000, "ws://[::1]:9000/ws"),
    ],
    ids=["name", "ipv4-wildcard", "ipv6-wildcard", "empty", "ipv6", "ipv6-bracketed"],
)
def test_relay_url_is_where_a_local_client_connects(host: str, port: int, url: str) -> None:
    """A wildcard host is reached on 127.0.0.1, and an IPv6 address is bracketed."""
    assert ConnectionSettings(host=host, port=port).relay_url() == url


def test_relay_url_defaults_to_loopback_on_the_default_port() -> None:
    """Default settings point clients at ws://127.0.0.1:8765/ws."""
    assert ConnectionSettings().relay_url() == f"ws://127.0.0.1:{DEFAULT_PORT}/ws"


def test_client_token_path_defaults_to_the_config_dir() -> None:
    """Without client_token_file the token is client-token in the config directory."""
    assert ConnectionSettings().client_token_path() == default_config_dir() / "client-token"


def test_client_token_file_overrides_the_default_path(tmp_path: Path) -> None:
    """client_token_file, when set, is the token's path."""
    path = tmp_path / "elsewhere" / "token"
    assert ConnectionSettings(client_token_file=path).client_token_path() == path


def test_client_token_file_comes_from_the_layers_too(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """USAGE_MONITOR_CLIENT_TOKEN_FILE sets the token's path for loaded settings."""
    path = tmp_path / "token-from-env"
    monkeypatch.setenv("USAGE_MONITOR_CLIENT_TOKEN_FILE", str(path))
    assert ConnectionSettings.load().client_token_path() == path
