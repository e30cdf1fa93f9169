"""
Data models shared by the monitor, the relay and the clients.

Everything here crosses the wire: a snapshot and its forecast, the monitor's
status and the alerts it raises. The relay serialises these models and the
clients validate what they receive against the very same classes.

A snapshot belongs to one *source* (an account on a gateway) of one ``kind``
(its dialect: ``posthog``, ``openrouter`` or ``litellm``). ``usage`` is the
source's own answer, validated; ``meters`` is the normalized view every
client draws, one ``Meter`` per quantity the source reports.

``Usage`` is PostHog's usage object, validated. It accepts both gateway
versions: older gateways send only ``resets_in_seconds``, newer ones send
``reset_at``. ``reset_at`` is always filled, computed against the moment the
response was received (pass it as ``context={"received_at": ...}``), and
``resets_in_seconds`` is dropped because it drifts while a snapshot is cached.
Fields the gateway adds later are kept and passed through untouched.

What comes from outside is held to strict types: a percentage is a finite
number (not ``"50"``, ``true`` or ``Infinity``), a flag is a boolean, and every
time is converted to UTC and clamped to ``EARLIEST``..``LATEST``, so that no
later arithmetic on it (a window's length, a projection, microseconds in the
store) can overflow.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationInfo,
    model_validator,
)

__all__ = [
    "BUCKETS",
    "EARLIEST",
    "KINDS",
    "LATEST",
    "Alert",
    "AlertRule",
    "Bucket",
    "Derived",
    "LimitProjected",
    "Meter",
    "MeterUnit",
    "MonitorState",
    "Snapshot",
    "SourceInfo",
    "SourceKind",
    "Status",
    "ThresholdCrossed",
    "Timestamp",
    "Usage",
    "UsageWindow",
    "WindowForecast",
    "redacted_url",
    "utc_now",
]

MonitorState = Literal["starting", "ok", "degraded", "auth_error", "stopped"]
#: ``burst`` is the daily window, ``sustained`` the monthly one.
Bucket = Literal["burst", "sustained"]
BUCKETS: tuple[Bucket, ...] = ("burst", "sustained")
#: The gateway dialects a source may speak.
SourceKind = Literal["posthog", "openrouter", "litellm"]
KINDS: tuple[SourceKind, ...] = get_args(SourceKind)
#: ``percent``: the source reports only how full a window is; ``usd``: money spent.
MeterUnit = Literal["percent", "usd"]


#: The range every time in a model is clamped to.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _clamped(at: datetime) -> datetime:
    try:
        utc = at.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00 is past year 9999 in UTC
        return LATEST if at.year > EARLIEST.year else EARLIEST
    return min(max(utc, EARLIEST), LATEST)


#: An aware time, in UTC, within ``EARLIEST``..``LATEST``.
Timestamp = Annotated[AwareDatetime, AfterValidator(_clamped)]
#: A finite number, never a string or a boolean.
StrictFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)


class UsageWindow(_Model):
    """One cost window: ``burst`` (shown as "Daily") or ``sustained`` ("Monthly")."""

    model_config = ConfigDict(extra="allow")

    used_percent: StrictFloat = Field(ge=0)
    reset_at: Timestamp
    exceeded: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _fill_reset_at(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        resets_in = data.pop("resets_in_seconds", None)
        if data.get("reset_at") is None and resets_in is not None:
            if isinstance(resets_in, bool) or not isinstance(resets_in, int | float):
                raise ValueError("resets_in_seconds must be a number")
            if not math.isfinite(resets_in):
                raise ValueError("resets_in_seconds must be a finite number")
            context = info.context or {}
            received_at: datetime = context.get("received_at") or utc_now()
            try:
                data["reset_at"] = received_at + timedelta(seconds=float(resets_in))
            except OverflowError:
                data["reset_at"] = LATEST if resets_in > 0 else EARLIEST
        return data


class Usage(_Model):
    """The gateway's usage object for one product and user."""

    model_config = ConfigDict(extra="allow")

    product: str
    user_id: int | str | None = None
    burst: UsageWindow
    sustained: UsageWindow
    is_rate_limited: StrictBool = False
    is_pro: StrictBool | None = None
    billing_period_end: Timestamp | None = None

    def meters(self) -> list[Meter]:
        """The two windows as meters: ``burst`` ("Daily") and ``sustained`` ("Monthly")."""
        return [
            Meter(
                id=bucket,
                label=label,
                unit="percent",
                used_percent=window.used_percent,
                reset_at=window.reset_at,
                exceeded=window.exceeded,
            )
            for bucket, label, window in (
                ("burst", "Daily", self.burst),
                ("sustained", "Monthly", self.sustained),
            )
        ]


class Meter(_Model):
    """One quantity a source reports, normalized: what clients draw and alerts watch.

    ``used_percent`` is None when there is no limit; ``used`` and ``limit`` are
    None when the source reports only a percentage (PostHog); ``reset_at`` is
    None when the meter never resets.
    """

    id: str
    label: str
    unit: MeterUnit
    used: StrictFloat | None = None
    limit: StrictFloat | None = None
    used_percent: StrictFloat | None = Field(default=None, ge=0)
    reset_at: Timestamp | None = None
    exceeded: StrictBool = False


class WindowForecast(_Model):
    """Where one window is heading at its recent burn rate."""

    burn_rate_percent_per_hour: float | None
    projected_limit_at: Timestamp | None
    limit_before_reset: bool


#: What the monitor derives from recent snapshots, per meter id: ``snapshot.derived``.
Derived = dict[str, WindowForecast]


class Snapshot(_Model):
    """What the monitor caches and relays after each successful poll.

    ``seq`` rises by one with each successful poll of the source within one
    ``epoch``: a random id of the store that numbered it. A new epoch (a fresh
    or replaced database) may start ``seq`` again from 1, and clients that
    see the epoch change accept the lower number (a v1 extension).
    """

    seq: int = Field(ge=1)
    epoch: str | None = None
    source: str = "default"
    kind: SourceKind = "posthog"
    fetched_at: Timestamp
    #: The source's own answer: PostHog's ``Usage``, or the fields the
    #: ``openrouter`` and ``litellm`` adapters read, as the source sent them.
    usage: Usage | dict[str, Any] = Field(union_mode="left_to_right")
    meters: list[Meter] = Field(default_factory=list)
    derived: Derived | None = None

    @model_validator(mode="after")
    def _usage_fits_kind(self) -> Self:
        if self.kind == "posthog":
            if not isinstance(self.usage, Usage):
                raise ValueError("the usage of a posthog snapshot must be a valid usage object")
            if not self.meters:  # stored before sources had meters
                self.meters = self.usage.meters()
        return self

    def meter(self, meter_id: str) -> Meter | None:
        return next((meter for meter in self.meters if meter.id == meter_id), None)


class Status(_Model):
    """The monitor's health, as carried by ``usage.status`` events."""

    state: MonitorState
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success_at: Timestamp | None = None
    next_poll_at: Timestamp | None = None


class ThresholdCrossed(_Model):
    """A meter reached ``threshold`` percent for the first time in its window.

    ``bucket`` is the meter's id (``burst`` and ``sustained`` for PostHog, as in v1).
    """

    kind: Literal["threshold_crossed"] = "threshold_crossed"
    source: str = "default"
    bucket: str
    label: str | None = None
    threshold: float
    used_percent: float
    reset_at: Timestamp | None
    #: The id of the alert rule that fired it; None for a configured threshold.
    rule: str | None = None


class LimitProjected(_Model):
    """At the current burn rate the meter reaches 100 % before its window resets."""

    kind: Literal["limit_projected"] = "limit_projected"
    source: str = "default"
    bucket: str
    label: str | None = None
    projected_at: Timestamp
    reset_at: Timestamp | None
    burn_rate_percent_per_hour: float


Alert = ThresholdCrossed | LimitProjected


class SourceInfo(_Model):
    """One source as ``list_sources`` and ``GET /api/v1/sources`` describe it."""

    name: str
    kind: SourceKind
    topic: str
    status: Status
    latest: Snapshot | None


class AlertRule(_Model):
    """An alert threshold set at run time (``POST /api/v1/usage/alerts``).

    It watches the meters with a percent of ``source`` (None: every source)
    whose id is ``meter`` (None: every meter), and fires once per meter and
    window when ``used_percent`` reaches ``threshold_percent``. ``webhook_url``
    (None: the configured webhook) often embeds a secret, as Slack's do: it is
    a ``SecretStr``, never shown in a repr or a log line, and ``public()``
    shows only its scheme and host.
    """

    id: str = Field(min_length=1, max_length=64)
    threshold_percent: StrictFloat = Field(gt=0, le=100)
    source: str | None = None
    meter: str | None = None
    webhook_url: SecretStr | None = None
    created_at: Timestamp = Field(default_factory=utc_now)

    def matches(self, source: str, meter: str) -> bool:
        return self.source in (None, source) and self.meter in (None, meter)

    def public(self) -> dict[str, Any]:
        """The rule as the API shows it: the webhook URL redacted to ``scheme://host/…``."""
        shown = self.model_dump(mode="json")
        if self.webhook_url is not None:
            shown["webhook_url"] = redacted_url(self.webhook_url.get_secret_value())
        return shown

    def stored(self) -> dict[str, Any]:
        """The rule as the store keeps it: the webhook URL in full."""
        kept = self.model_dump(mode="json")
        if self.webhook_url is not None:
            kept["webhook_url"] = self.webhook_url.get_secret_value()
        return kept


def redacted_url(url: str) -> str:
    """``scheme://host[:port]/…``: enough to recognise a URL, not the secret in its path."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "…"
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}{'' if port is None else f':{port}'}/…"
