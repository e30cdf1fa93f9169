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
from typing import Annotated, Final, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from common.exceptions import ConfigError
from common.hosts import is_loopback_host
from common.paths import state_dir
from common.settings import ConnectionSettings
from monitor.gateway import DEFAULT_PRODUCT, REGION_URLS, Region, TokenProvider, token_from_file

from .limits import MAX_FRAME_BYTES
from .policy import normalize_origin

__all__ = ["Settings"]

# Upper bounds that keep every derived time and count finite.
_HOUR: Final = 3600.0
_DAY: Final = 24 * _HOUR
_CENTURY_DAYS: Final = 36_500.0


class Settings(ConnectionSettings):
    """Everything ``serve`` needs to know."""

    interval: float = Field(
        default=30.0, gt=0, le=_DAY, description="seconds between scheduled polls"
    )
    gateway_url: str | None = None
    region: Region = "us"
    product: str = DEFAULT_PRODUCT
    gateway_token: SecretStr | None = None
    gateway_token_file: Path | None = None
    request_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds for a whole gateway request, body included"
    )
    max_response_bytes: int = Field(
        default=1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="largest gateway answer"
    )
    source: str = "default"
    demo: bool = False
    database: Path | None = Field(
        default=None, description="SQLite file for snapshots and history (default: state dir)"
    )
    thresholds: tuple[Annotated[float, Field(gt=0, le=100)], ...] = (50.0, 75.0, 90.0, 100.0)
    history_detail_days: float = Field(
        default=7.0, gt=0, le=_CENTURY_DAYS, description="keep every snapshot this long"
    )
    history_hourly_days: float = Field(
        default=400.0, gt=0, le=_CENTURY_DAYS, description="then keep one point an hour this long"
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
        default=3.0, gt=0, le=_HOUR, description="seconds an unauthenticated connection stays open"
    )

    # -- limits and keepalive ---------------------------------------------------
    max_connections: int = Field(
        default=10_000, ge=1, description="authenticated connections; lowered to fit open files"
    )
    max_unauthenticated: int = Field(
        default=128,
        ge=1,
        description="connections still sending their request, and WebSockets without valid "
        "credentials in their grace period: each group has this cap of its own",
    )
    header_timeout: float = Field(
        default=10.0, gt=0, le=_HOUR, description="seconds a connection has to send its request"
    )
    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, ge=1024)
    requests_per_second: float = Field(default=20.0, gt=0, description="per connection")
    request_burst: int = Field(default=40, ge=1)
    refreshes_per_minute: float = Field(default=6.0, gt=0, description="per connection")
    refresh_burst: int = Field(default=5, ge=1)
    refresh_polls_per_minute: float = Field(
        default=12.0, gt=0, description="gateway polls that refreshes may start, relay-wide"
    )
    refresh_poll_burst: int = Field(default=6, ge=1)
    max_history_queries: int = Field(
        default=4, ge=1, description="history queries running at once, relay-wide"
    )
    flood_close_after: int = Field(
        default=100, ge=1, description="refused requests in one episode before closing with 1008"
    )
    send_timeout: float = Field(
        default=10.0, gt=0, le=_HOUR, description="seconds a frame may wait to leave before 4008"
    )
    ws_ping_interval: float = Field(default=20.0, gt=0, le=_HOUR)
    ws_ping_timeout: float = Field(default=20.0, gt=0, le=_HOUR)
    webhook_url: SecretStr | None = Field(
        default=None, description="POST alerts here as JSON (Slack-compatible); kept secret"
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if normalize_origin(value) is None:
                raise ValueError(f"{value!r} is not an origin (scheme://host[:port])")
        return values

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
