"""
Configuration of ``usage-monitor serve``.

Values come, highest priority first, from command-line flags, environment
variables (``USAGE_MONITOR_*``), the config file (TOML, by default
``$XDG_CONFIG_HOME/usage-monitor/config.toml``, or the path in
``USAGE_MONITOR_CONFIG``) and the defaults below. The gateway token is never a
flag: it comes from ``USAGE_MONITOR_GATEWAY_TOKEN`` or from a file named by
``gateway_token_file``, which is read again before every poll so a rotated
token is picked up without a restart.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from monitor.gateway import DEFAULT_PRODUCT, REGION_URLS, Region, TokenProvider

from .limits import MAX_FRAME_BYTES

__all__ = [
    "DEFAULT_PORT",
    "Settings",
    "config_dir",
    "default_config_file",
    "is_loopback_host",
    "state_dir",
]

DEFAULT_PORT = 8765


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "usage-monitor"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "usage-monitor"


def default_config_file() -> Path:
    return Path(os.environ.get("USAGE_MONITOR_CONFIG") or config_dir() / "config.toml")


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps the relay on this machine ("localhost" or a loopback IP)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything ``serve`` needs to know."""

    model_config = SettingsConfigDict(env_prefix="USAGE_MONITOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    interval: float = Field(default=30.0, gt=0, description="seconds between scheduled polls")
    gateway_url: str | None = None
    region: Region = "us"
    product: str = DEFAULT_PRODUCT
    gateway_token: SecretStr | None = None
    gateway_token_file: Path | None = None
    request_timeout: float = Field(default=10.0, gt=0)
    source: str = "default"
    demo: bool = False
    database: Path | None = Field(
        default=None, description="SQLite file for snapshots and history (default: state dir)"
    )
    thresholds: tuple[float, ...] = (50.0, 75.0, 90.0, 100.0)
    history_detail_days: float = Field(
        default=7.0, gt=0, description="keep every snapshot this long"
    )
    history_hourly_days: float = Field(
        default=400.0, gt=0, description="then keep one point an hour this long"
    )

    # -- access control (docs/security.md) --------------------------------------
    allow_remote: bool = Field(
        default=False, description="allow a host that is not loopback; every check stays on"
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host names accepted besides loopback names and `host`"
    )
    allowed_origins: tuple[str, ...] = Field(
        default=(), description="browser origins (scheme://host:port) allowed besides the relay's"
    )
    client_token_file: Path | None = Field(
        default=None, description="the client token (default: config dir / client-token)"
    )
    auth_grace_period: float = Field(
        default=3.0, gt=0, description="seconds an unauthenticated connection stays open"
    )

    # -- limits and keepalive ---------------------------------------------------
    max_connections: int = Field(default=10_000, ge=1)
    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, ge=1024)
    requests_per_second: float = Field(default=20.0, gt=0, description="per connection")
    request_burst: int = Field(default=40, ge=1)
    refreshes_per_minute: float = Field(default=6.0, gt=0, description="per connection")
    refresh_burst: int = Field(default=5, ge=1)
    flood_close_after: int = Field(
        default=100, ge=1, description="refused requests in one episode before closing with 1008"
    )
    send_timeout: float = Field(
        default=10.0, gt=0, description="seconds a frame may wait to leave before 4008"
    )
    ws_ping_interval: float = Field(default=20.0, gt=0)
    ws_ping_timeout: float = Field(default=20.0, gt=0)
    webhook_url: SecretStr | None = Field(
        default=None, description="POST alerts here as JSON (Slack-compatible); kept secret"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=default_config_file())
        return (init_settings, env_settings, toml)

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> Self:
        if not self.allow_remote and not is_loopback_host(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address: the relay would be reachable "
                "from the network; set allow_remote (USAGE_MONITOR_ALLOW_REMOTE=1) if you mean it"
            )
        return self

    def gateway_base_url(self) -> str:
        return self.gateway_url or REGION_URLS[self.region]

    def database_path(self) -> Path:
        # The demo keeps its own file so simulated numbers never mix with real history.
        return self.database or state_dir() / ("demo.db" if self.demo else "usage.db")

    def token_provider(self) -> TokenProvider:
        """Return a callable giving the current gateway token (the file wins over the env)."""
        token_file = self.gateway_token_file
        if token_file is not None:
            return lambda: token_file.read_text(encoding="utf-8").strip()
        token = self.gateway_token
        if token is None:
            raise ValueError(
                "no gateway token: set USAGE_MONITOR_GATEWAY_TOKEN or gateway_token_file "
                "(or use --demo)"
            )
        return token.get_secret_value
