"""The relay's Settings: loopback only unless allowed, and nothing read implicitly."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from common.exceptions import ConfigError
from relay.settings import Settings
from tests.conftest import RelayHarness


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "relay.lan"])
def test_settings_refuse_a_remote_host_without_allow_remote(host: str) -> None:
    """Binding off loopback needs allow_remote."""
    with pytest.raises(ValidationError, match="allow_remote"):
        Settings(host=host)
    assert Settings(host=host, allow_remote=True).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_settings_accept_loopback_hosts(host: str) -> None:
    """Any loopback address or "localhost" needs no flag."""
    assert Settings(host=host).host == host


def test_constructing_settings_directly_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings(...) reads no USAGE_MONITOR_* variable: tests and embedders get what they pass."""
    monkeypatch.setenv("USAGE_MONITOR_GATEWAY_TOKEN", "from-the-environment")
    monkeypatch.setenv("USAGE_MONITOR_MAX_CONNECTIONS", "1")
    monkeypatch.setenv("USAGE_MONITOR_PORT", "1")
    settings = Settings()
    assert settings.gateway_token is None
    assert (settings.max_connections, settings.port) == (10_000, 8765)


def test_loaded_settings_read_the_relays_own_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings.load() takes the relay's settings from USAGE_MONITOR_* like the shared ones."""
    monkeypatch.setenv("USAGE_MONITOR_GATEWAY_TOKEN", "from-the-environment")
    monkeypatch.setenv("USAGE_MONITOR_MAX_CONNECTIONS", "1")
    settings = Settings.load()
    assert settings.gateway_token is not None
    assert settings.gateway_token.get_secret_value() == "from-the-environment"
    assert settings.max_connections == 1


# -- on a live relay -------------------------------------------------------------------


@pytest.mark.anyio
async def test_relay_started_with_defaults_binds_loopback_only(relay: RelayHarness) -> None:
    """The default host is loopback: the listening socket is not reachable from elsewhere."""
    assert Settings.model_fields["host"].default == "127.0.0.1"
    assert relay.url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("origin", ["*", "x://y", "https://ui.lan/path", "null"])
def test_an_allowed_origin_that_is_not_an_origin_is_refused(origin: str) -> None:
    """allowed_origins takes scheme://host[:port] only; anything else is a settings error."""
    with pytest.raises(ValueError, match="allowed_origins"):
        Settings(allowed_origins=(origin,))


@pytest.mark.parametrize("url", ["http://:secret@redis.lan/0", "redis.lan:6379", ""])
def test_a_redis_url_that_is_not_one_is_refused_without_quoting_it(url: str) -> None:
    """redis_url takes redis://, rediss:// or unix:// only; the error never shows the URL."""
    with pytest.raises(ConfigError, match="redis_url") as refused:
        Settings.load(redis_url=url)
    assert "secret" not in str(refused.value)


def test_the_demo_runs_without_a_team_relay() -> None:
    """The demo's own simulator belongs to one relay: redis_url is refused with --demo."""
    with pytest.raises(ValidationError, match="runs alone"):
        Settings(demo=True, redis_url="redis://127.0.0.1:6379/0")
