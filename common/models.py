"""
Data models shared by the monitor, the relay and the clients.

Everything here crosses the wire: a snapshot and its forecast, the monitor's
status and the alerts it raises. The relay serialises these models and the
clients validate what they receive against the very same classes.

``Usage`` is the gateway's usage object, validated. It accepts both gateway
dialects: older gateways send only ``resets_in_seconds``, newer ones send
``reset_at``. ``reset_at`` is always filled, computed against the moment the
response was received (pass it as ``context={"received_at": ...}``), and
``resets_in_seconds`` is dropped because it drifts while a snapshot is cached.
Fields the gateway adds later are kept and passed through untouched.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

__all__ = [
    "BUCKETS",
    "Alert",
    "Bucket",
    "Derived",
    "LimitProjected",
    "MonitorState",
    "Snapshot",
    "Status",
    "ThresholdCrossed",
    "Usage",
    "UsageWindow",
    "WindowForecast",
    "utc_now",
]

MonitorState = Literal["starting", "ok", "degraded", "auth_error", "stopped"]
#: ``burst`` is the daily window, ``sustained`` the monthly one.
Bucket = Literal["burst", "sustained"]
BUCKETS: tuple[Bucket, ...] = ("burst", "sustained")


def utc_now() -> datetime:
    return datetime.now(UTC)


class UsageWindow(BaseModel):
    """One cost window: ``burst`` (shown as "Daily") or ``sustained`` ("Monthly")."""

    model_config = ConfigDict(extra="allow")

    used_percent: float = Field(ge=0)
    reset_at: AwareDatetime
    exceeded: bool = False

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
            context = info.context or {}
            received_at = context.get("received_at") or utc_now()
            try:
                data["reset_at"] = received_at + timedelta(seconds=float(resets_in))
            except (OverflowError, ValueError):
                raise ValueError("resets_in_seconds is out of range") from None
        return data


class Usage(BaseModel):
    """The gateway's usage object for one product and user."""

    model_config = ConfigDict(extra="allow")

    product: str
    user_id: int | str | None = None
    burst: UsageWindow
    sustained: UsageWindow
    is_rate_limited: bool = False
    is_pro: bool | None = None
    billing_period_end: AwareDatetime | None = None


class WindowForecast(BaseModel):
    """Where one window is heading at its recent burn rate."""

    burn_rate_percent_per_hour: float | None
    projected_limit_at: AwareDatetime | None
    limit_before_reset: bool


class Derived(BaseModel):
    """Values the monitor derives from recent snapshots, carried as ``snapshot.derived``."""

    burst: WindowForecast
    sustained: WindowForecast


class Snapshot(BaseModel):
    """What the monitor caches and relays after each successful poll."""

    seq: int = Field(ge=1)
    source: str = "default"
    fetched_at: AwareDatetime
    usage: Usage
    derived: Derived | None = None


class Status(BaseModel):
    """The monitor's health, as carried by ``usage.status`` events."""

    state: MonitorState
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success_at: AwareDatetime | None = None
    next_poll_at: AwareDatetime | None = None


class ThresholdCrossed(BaseModel):
    """A bucket reached ``threshold`` percent for the first time in its window."""

    kind: Literal["threshold_crossed"] = "threshold_crossed"
    bucket: Bucket
    threshold: float
    used_percent: float
    reset_at: AwareDatetime


class LimitProjected(BaseModel):
    """At the current burn rate the bucket reaches 100 % before its window resets."""

    kind: Literal["limit_projected"] = "limit_projected"
    bucket: Bucket
    projected_at: AwareDatetime
    reset_at: AwareDatetime
    burn_rate_percent_per_hour: float


Alert = ThresholdCrossed | LimitProjected
