"""
OpenRouter: ``GET {url}/api/v1/key`` describes the key the request carries.

The answer (``{"data": {...}}``) gives the key's credit limit, what is left of
it and when it resets, and what the key spent today, this week, this month
and in all. Three meters come of it, in US dollars: ``limit`` ("Key limit"),
``today`` and ``month``. OpenRouter counts days, weeks (from Monday) and
months in UTC, so every reset here is computed in UTC from the moment the
answer arrived, whatever the machine's zone.

Only the fields read are kept: ``data.label`` in particular holds part of
the key, so it is never stored or relayed.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.models import LATEST, Meter, SourceKind

from .base import Reading
from .fields import invalid, percent_of, read_model, usd

__all__ = ["LimitReset", "OpenRouterAdapter", "next_reset"]

#: How often a key's limit starts again; None: never.
LimitReset = Literal["daily", "weekly", "monthly"]

_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_KIND: Final = "openrouter"
_EXPECTED: Final = {
    "data": "an object",
    "data.limit": "a number or null",
    "data.limit_remaining": "a number or null",
    "data.limit_reset": "daily, weekly, monthly or null",
    "data.usage": "a number",
    "data.usage_daily": "a number",
    "data.usage_monthly": "a number",
}


class _KeyData(BaseModel):
    """The fields of ``data`` the meters need; the others are dropped unread."""

    model_config = ConfigDict(extra="ignore")

    limit: _Number | None = None
    limit_remaining: _Number | None = None
    limit_reset: LimitReset | None = None
    usage: _Number
    usage_daily: _Number
    usage_monthly: _Number


class _KeyAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: _KeyData


class OpenRouterAdapter:
    """An OpenRouter API key's limit and spend, as three meters in US dollars."""

    @property
    def kind(self) -> SourceKind:
        return _KIND

    @property
    def path(self) -> str:
        return "/api/v1/key"

    def read(self, body: Any, *, received_at: datetime, secret: str) -> Reading:
        """The key's meters, their resets counted in UTC from ``received_at``."""
        data = read_model(_KeyAnswer, body, kind=_KIND, expected=_EXPECTED).data
        now = received_at.astimezone(UTC) if received_at.tzinfo else received_at.replace(tzinfo=UTC)
        meters = [
            _limit_meter(data, now),
            _spend_meter("today", "Today", data.usage_daily, next_reset("daily", now)),
            _spend_meter("month", "Month", data.usage_monthly, next_reset("monthly", now)),
        ]
        return Reading(_KIND, {"data": data.model_dump()}, meters)


def _spend_meter(meter_id: str, label: str, used: float, reset_at: datetime) -> Meter:
    """What the key spent in the current UTC day or month, which has no limit of its own."""
    return Meter(id=meter_id, label=label, unit="usd", used=used, reset_at=reset_at)


def _limit_meter(data: _KeyData, now: datetime) -> Meter:
    """The key's credit limit: how much of it is spent, or all-time spend without one."""
    if data.limit is None:
        return Meter(id="limit", label="Key limit", unit="usd", used=data.usage)
    if data.limit_remaining is None:
        raise invalid(_KIND, "data.limit_remaining must be a number when data.limit is")
    fields = "data.limit and data.limit_remaining"
    used = max(0.0, usd(data.limit - data.limit_remaining, kind=_KIND, fields=fields))
    return Meter(
        id="limit",
        label="Key limit",
        unit="usd",
        used=used,
        limit=data.limit,
        used_percent=percent_of(used, data.limit, kind=_KIND, fields=fields),
        reset_at=next_reset(data.limit_reset, now) if data.limit_reset else None,
        exceeded=data.limit_remaining <= 0,
    )


def next_reset(period: LimitReset, now: datetime) -> datetime:
    """The first start of a UTC day, week (Monday) or month strictly after ``now`` (aware).

    At exactly midnight the period has just begun, so its end is a whole
    period away. Past the year 9999 there is no next one: ``LATEST``.
    """
    today = now.astimezone(UTC).date()
    try:
        match period:
            case "daily":
                start = today + timedelta(days=1)
            case "weekly":
                start = today + timedelta(days=7 - today.weekday())
            case "monthly":
                start = (today.replace(day=28) + timedelta(days=4)).replace(day=1)
    except OverflowError:
        return LATEST
    return datetime.combine(start, time(), tzinfo=UTC)
