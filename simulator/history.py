"""
Simulated history: the snapshots a source would have given, poll after poll, over past days.

``serve --demo --demo-days N`` stores these at first start, so the charts,
the breakdown and the daily reports have data from the first minute. Spend
follows the hours of a working day with some noise (seeded, so a source's
history is the same every time), and each dialect's windows reset as the
simulator's own do: PostHog's daily window every 24 hours and its monthly one
every 30 days, both ending at ``end`` (when the live simulator starts its
own); OpenRouter's day, week (from Monday) and month at 00:00 UTC;
LiteLLM's budget every 30 days.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from common.models import Meter, Snapshot, SourceKind, Usage, UsageWindow, utc_now

from .accounts import period_start

__all__ = ["SimulatedState", "simulated_history"]

_DAY: Final = timedelta(days=1)
_MONTH: Final = timedelta(days=30)
#: OpenRouter's key limit in the demo, per week, and LiteLLM's budget.
KEY_LIMIT_USD: Final = 50.0
TEAM_BUDGET_USD: Final = 100.0
_BURST_LIMIT_USD: Final = 100.0
_SUSTAINED_LIMIT_USD: Final = 1000.0


@dataclass
class SimulatedState:
    """Where a simulated account stands at the end of its history, to start the live one there."""

    #: OpenRouter's spend: all of it, today's, this week's (its limit's) and this month's.
    usage: float = 0.0
    daily: float = 0.0
    weekly: float = 0.0
    monthly: float = 0.0
    #: LiteLLM's spend in the current budget period, and when that period ends.
    spend: float = 0.0
    budget_reset_at: datetime | None = None
    #: PostHog's spend in the current daily and monthly windows.
    burst: float = 0.0
    sustained: float = 0.0
    resets: dict[str, datetime] = field(default_factory=dict)
    #: When the history ends and the live simulator starts.
    end: datetime = field(default_factory=utc_now)


def _hourly_rate(at: datetime, noise: float) -> float:
    """The share of the daily rate spent at ``at``: busy in the working day, low at night."""
    hour = at.hour + at.minute / 60
    daytime = max(0.0, math.sin(math.pi * (hour - 7) / 14))
    return (0.25 + 1.5 * daytime) * noise


def _percent(used: float, limit: float) -> float:
    return round(min(100.0, used / limit * 100), 1)


def simulated_history(
    source: str,
    kind: SourceKind,
    *,
    end: datetime,
    days: int,
    interval: float,
    usd_per_hour: float,
    epoch: str | None,
) -> tuple[list[Snapshot], SimulatedState]:
    """``days`` of snapshots of ``source`` up to ``end`` (excluded), one every ``interval``
    seconds numbered from 1, and the account's state at ``end``."""
    rng = random.Random(f"{source}:{kind}")
    state = SimulatedState(budget_reset_at=end + _MONTH - timedelta(days=days), end=end)
    snapshots: list[Snapshot] = []
    step = timedelta(seconds=interval)
    at = end - timedelta(days=days)
    noise: dict[datetime, float] = {}
    previous = at
    while at < end:
        hour = at.replace(minute=0, second=0, microsecond=0)
        factor = noise.setdefault(hour, rng.uniform(0.6, 1.4))
        spent = usd_per_hour * interval / 3600 * _hourly_rate(at, factor)
        _roll(state, kind, previous, at)
        _spend(state, spent)
        usage, meters = _reading(state, kind, at)
        snapshots.append(
            Snapshot.model_construct(
                seq=len(snapshots) + 1,
                epoch=epoch,
                source=source,
                kind=kind,
                fetched_at=at,
                usage=usage,
                meters=meters,
                derived=None,
            )
        )
        previous, at = at, at + step
    _roll(state, kind, previous, end)
    return snapshots, state


def _spend(state: SimulatedState, usd: float) -> None:
    state.usage += usd
    state.daily += usd
    state.weekly += usd
    state.monthly += usd
    state.spend += usd
    state.burst += usd
    state.sustained += usd


def _roll(state: SimulatedState, kind: SourceKind, before: datetime, now: datetime) -> None:
    """Start the periods that began between ``before`` and ``now``."""
    for name, length in (("burst", _DAY), ("sustained", _MONTH)):
        # Windows end at the live simulator's start, ``end``: whole windows before it.
        reset = state.end - (state.end - now) // length * length
        if reset <= now:
            reset += length
        if reset - length > before:
            setattr(state, name, 0.0)
        state.resets[name] = reset
    if period_start("daily", now) > before:
        state.daily = 0.0
    if period_start("weekly", now) > before:
        state.weekly = 0.0
    if period_start("monthly", now) > before:
        state.monthly = 0.0
    if state.budget_reset_at is not None and now >= state.budget_reset_at:
        state.spend = 0.0
        state.budget_reset_at += _MONTH


def _reading(
    state: SimulatedState, kind: SourceKind, at: datetime
) -> tuple[Usage | dict[str, Any], list[Meter]]:
    """What the source's adapter would read from the simulator's answer at ``at``."""
    match kind:
        case "posthog":
            windows = {
                name: UsageWindow.model_construct(
                    used_percent=_percent(used, limit),
                    reset_at=state.resets[name],
                    exceeded=used >= limit,
                )
                for name, used, limit in (
                    ("burst", state.burst, _BURST_LIMIT_USD),
                    ("sustained", state.sustained, _SUSTAINED_LIMIT_USD),
                )
            }
            usage = Usage.model_construct(
                product="posthog_code",
                user_id=1234,
                is_rate_limited=False,
                is_pro=False,
                billing_period_end=None,
                burst=windows["burst"],
                sustained=windows["sustained"],
            )
            return usage, usage.meters()
        case "openrouter":
            used = min(state.weekly, KEY_LIMIT_USD)
            data = {
                "limit": KEY_LIMIT_USD,
                "limit_remaining": KEY_LIMIT_USD - used,
                "limit_reset": "weekly",
                "usage": state.usage,
                "usage_daily": state.daily,
                "usage_monthly": state.monthly,
            }
            meters = [
                Meter.model_construct(
                    id="limit",
                    label="Key limit",
                    unit="usd",
                    used=used,
                    limit=KEY_LIMIT_USD,
                    used_percent=_percent(used, KEY_LIMIT_USD),
                    reset_at=period_start("weekly", at) + timedelta(days=7),
                    exceeded=used >= KEY_LIMIT_USD,
                ),
                Meter.model_construct(
                    id="today",
                    label="Today",
                    unit="usd",
                    used=state.daily,
                    limit=None,
                    used_percent=None,
                    reset_at=period_start("daily", at) + _DAY,
                    exceeded=False,
                ),
                Meter.model_construct(
                    id="month",
                    label="Month",
                    unit="usd",
                    used=state.monthly,
                    limit=None,
                    used_percent=None,
                    reset_at=period_start("monthly", period_start("monthly", at) + 32 * _DAY),
                    exceeded=False,
                ),
            ]
            return {"data": data}, meters
        case "litellm":
            info = {
                "spend": state.spend,
                "max_budget": TEAM_BUDGET_USD,
                "budget_reset_at": state.budget_reset_at.isoformat()
                if state.budget_reset_at
                else None,
                "budget_duration": "30d",
            }
            meter = Meter.model_construct(
                id="budget",
                label="Budget",
                unit="usd",
                used=state.spend,
                limit=TEAM_BUDGET_USD,
                used_percent=_percent(state.spend, TEAM_BUDGET_USD),
                reset_at=state.budget_reset_at,
                exceeded=state.spend >= TEAM_BUDGET_USD,
            )
            return {"info": info}, [meter]
