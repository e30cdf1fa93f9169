"""
Configuration of ``usage-monitor serve``.

``Settings`` extends the ``ConnectionSettings`` that the clients read too
(``common.settings``), with the same layers: flags, environment variables
(``USAGE_MONITOR_*``), the config file, the defaults. The gateway token is
never a flag: it comes from ``USAGE_MONITOR_GATEWAY_TOKEN`` or from a file
named by ``gateway_token_file``, which is read again before every poll so a
rotated token is picked up without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator

from common.exceptions import ConfigError
from common.hosts import is_loopback_host
from common.paths import state_dir
from common.settings import ConnectionSettings
from monitor.gateway import DEFAULT_PRODUCT, REGION_URLS, Region, TokenProvider, token_from_file

from .limits import MAX_FRAME_BYTES

__all__ = ["Settings"]


class Settings(ConnectionSettings):
    """Everything ``serve`` needs to know."""

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
        if self.gateway_token_file is not None:
            return token_from_file(self.gateway_token_file)
        token = self.gateway_token
        if token is None:
            raise ConfigError(
                "no gateway token: set USAGE_MONITOR_GATEWAY_TOKEN or gateway_token_file "
                "(or use --demo)"
            )
        return token.get_secret_value
