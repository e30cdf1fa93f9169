"""
Configuration of ``usage-monitor serve``.

``Settings`` extends the ``ConnectionSettings`` that the clients read too
(``common.settings``), with the same layers: flags, environment variables
(``USAGE_MONITOR_*``), the config file, the defaults.

The sources to poll are the ``[[sources]]`` entries of the config file
(``SourceSettings``); without any, the single-source settings (``gateway_url``,
``region``, ``product``, the gateway token) make one PostHog source named
``source`` (``default``). A token is never a flag: it comes from an
environment variable or a file, read again before every poll so a rotated
token is picked up without a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Final, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from common.exceptions import ConfigError
from common.hosts import is_http_url, is_loopback_host
from common.models import SourceKind
from common.paths import state_dir
from common.settings import ConnectionSettings
from monitor.exceptions import UpstreamAuthError
from monitor.gateway import (
    DEFAULT_PRODUCT,
    DEFAULT_URLS,
    REGION_URLS,
    Region,
    TokenProvider,
    token_from_file,
)

from .limits import MAX_FRAME_BYTES
from .policy import normalize_origin

__all__ = ["SOURCE_NAME_PATTERN", "Settings", "SourceConfig", "SourceSettings"]

# Upper bounds that keep every derived time and count finite.
_HOUR: Final = 3600.0
_DAY: Final = 24 * _HOUR
_CENTURY_DAYS: Final = 36_500.0

#: A source's name: short, lower case, safe in a topic, a URL and a file name.
SOURCE_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,31}$"
_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_Interval = Annotated[float, Field(gt=0, le=_DAY, description="seconds between scheduled polls")]


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One source, resolved: what its monitor needs to poll it."""

    name: str
    kind: SourceKind
    base_url: str
    product: str
    token: TokenProvider
    interval: float


def _env_token(variable: str) -> TokenProvider:
    """A provider that reads ``variable`` before every poll."""

    def read() -> str:
        token = os.environ.get(variable, "").strip()
        if not token:
            raise UpstreamAuthError(
                f"the environment variable {variable} holding the token is unset"
            )
        return token

    return read


class SourceSettings(BaseModel):
    """One ``[[sources]]`` entry of the config file (``accounting-v1.md``, section 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    kind: SourceKind
    region: Region | None = Field(default=None, description="posthog only: us or eu")
    url: str | None = Field(default=None, description="base URL; beats region")
    product: str = Field(default=DEFAULT_PRODUCT, description="posthog only")
    token_env: str | None = Field(default=None, description="environment variable of the token")
    token_file: Path | None = Field(default=None, description="file holding the token")
    interval: _Interval | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not is_http_url(url):
            raise ValueError("must be an http:// or https:// URL with a host")
        return url

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("give exactly one of token_env and token_file")
        if self.region is not None and self.kind != "posthog":
            raise ValueError(f"region applies to posthog sources only, not {self.kind}")
        if self.url is None and self.kind not in DEFAULT_URLS and self.kind != "posthog":
            raise ValueError(f"a {self.kind} source needs a url")
        return self

    def base_url(self) -> str:
        if self.url is not None:
            return self.url
        if self.kind == "posthog":
            return REGION_URLS[self.region or "us"]
        return DEFAULT_URLS[self.kind]

    def token_provider(self) -> TokenProvider:
        if self.token_file is not None:
            return token_from_file(self.token_file.expanduser())
        assert self.token_env is not None
        return _env_token(self.token_env)

    def check_token(self) -> None:
        """Raise ``ConfigError`` when the token cannot be read now (at start)."""
        try:
            self.token_provider()()
        except UpstreamAuthError as exc:
            raise ConfigError(f"source {self.name!r}: {exc}") from None


class Settings(ConnectionSettings):
    """Everything ``serve`` needs to know."""

    interval: _Interval = 30.0
    sources: tuple[SourceSettings, ...] = Field(
        default=(), description="the sources to poll ([[sources]]); none: the settings below"
    )
    default_source: str | None = Field(
        default=None, description="the source of the v1 topic `usage` (default: the first)"
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
    source: str = Field(
        default="default", pattern=SOURCE_NAME_PATTERN, description="the single source's name"
    )
    demo: bool = False
    demo_days: int = Field(
        default=14, ge=0, le=400, description="days of simulated history the demo stores at first"
    )
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

    # -- daily usage reports (accounting-v1.md, section 3) ------------------------
    report_url: SecretStr | None = Field(
        default=None,
        description="POST each daily usage report here, under an Idempotency-Key; kept secret",
    )
    report_token_env: str | None = Field(
        default=None, description="environment variable of the bearer token sent to report_url"
    )
    report_dir: Path | None = Field(
        default=None,
        description="write each report to <report_dir>/<source>/<usage_day>.json "
        "(the demo: a directory in the state dir)",
    )
    report_delay: float = Field(
        default=1800.0, ge=0, le=_DAY, description="seconds after a day closes before its report"
    )
    reports_since: date | None = Field(
        default=None,
        description="the first usage day to report (default: each source's first day with data, "
        "at most report_catchup_days back)",
    )
    report_catchup_days: int = Field(
        default=35, ge=1, le=400, description="how many closed days catching up goes back"
    )
    report_concurrency: int = Field(
        default=4, ge=1, le=64, description="reports built and delivered at once"
    )
    report_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds for a whole POST to report_url"
    )

    # -- a team relay on Redis (team-relay.md) ---------------------------------------
    redis_url: SecretStr | None = Field(
        default=None,
        description="the cluster's Redis (redis://host:port/db or rediss://); unset: one relay "
        "alone; kept secret",
    )
    cluster: str = Field(
        default="usage-monitor",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="the name that keys everything of this cluster in Redis",
    )
    lease_seconds: float = Field(
        default=10.0,
        ge=1.0,
        le=_HOUR,
        description="how long a source's lease lives without renewal; a failover takes this "
        "plus one interval at most",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if normalize_origin(value) is None:
                raise ValueError(f"{value!r} is not an origin (scheme://host[:port])")
        return values

    @field_validator("report_url")
    @classmethod
    def _report_url_is_http(cls, url: SecretStr | None) -> SecretStr | None:
        # The message never quotes the URL: it may hold a secret.
        if url is not None and not is_http_url(url.get_secret_value()):
            raise ValueError("must be an http:// or https:// URL with a host")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_redis(cls, url: SecretStr | None) -> SecretStr | None:
        # The message never quotes the URL: it may hold a password.
        if url is not None and urlsplit(url.get_secret_value()).scheme not in _REDIS_SCHEMES:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return url

    @model_validator(mode="after")
    def _demo_alone(self) -> Self:
        if self.demo and self.redis_url is not None:
            raise ValueError(
                "the demo polls a simulator of its own, so it runs alone: unset redis_url"
            )
        return self

    @model_validator(mode="after")
    def _sources_consistent(self) -> Self:
        seen: set[str] = set()
        for number, source in enumerate(self.sources, 1):
            if source.name in seen:
                raise ValueError(f"sources entry {number}: the name {source.name!r} is used twice")
            seen.add(source.name)
        names = self.source_names()
        if self.default_source is not None and self.default_source not in names:
            raise ValueError(f"default_source {self.default_source!r} is not a source's name")
        return self

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

    def source_names(self) -> list[str]:
        return [source.name for source in self.sources] or [self.source]

    def default_source_name(self) -> str:
        return self.default_source or self.source_names()[0]

    def source_configs(self) -> list[SourceConfig]:
        """Every source to poll, in order; raises ``ConfigError`` when a token is missing."""
        if not self.sources:
            return [
                SourceConfig(
                    name=self.source,
                    kind="posthog",
                    base_url=self.gateway_base_url(),
                    product=self.product,
                    token=self.token_provider(),
                    interval=self.interval,
                )
            ]
        return [
            SourceConfig(
                name=source.name,
                kind=source.kind,
                base_url=source.base_url(),
                product=source.product,
                token=source.token_provider(),
                interval=source.interval or self.interval,
            )
            for source in self.sources
        ]

    def check_tokens(self) -> None:
        """Raise ``ConfigError`` naming the first source whose token cannot be read now."""
        if not self.sources:
            self.token_provider()
            token_file = self.gateway_token_file
            if token_file is not None and not token_file.is_file():
                raise ConfigError(f"token file not found: {token_file}")
        for source in self.sources:
            source.check_token()
        report_token = self.report_token()
        if report_token is not None:
            try:
                report_token()
            except UpstreamAuthError as exc:
                raise ConfigError(f"report_token_env: {exc}") from None

    def report_directory(self) -> Path | None:
        """Where reports are written: ``report_dir``; the demo writes to the state dir."""
        if self.report_dir is None and self.demo:
            return state_dir() / "demo-reports"
        return None if self.report_dir is None else self.report_dir.expanduser()

    def report_token(self) -> TokenProvider | None:
        """The bearer token of ``report_url``, read before every delivery; None: none is sent."""
        return None if self.report_token_env is None else _env_token(self.report_token_env)

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
