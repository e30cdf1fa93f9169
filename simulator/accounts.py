"""
The simulated accounts, one per dialect, and the JSON each gateway sends of its own.

- ``Window``: one of PostHog's two cost windows (``burst``, ``sustained``).
- ``OpenRouterKey``: an OpenRouter API key, its credit limit and what it spent
  in the current UTC day, week (from Monday) and month, and in all.
- ``LiteLLMKey``: a LiteLLM virtual key, its spend and its budget, which
  starts again every ``budget_duration``.

Each ``roll(now)`` starts the periods whose end has passed; money is added
by the simulator (``GatewaySimulator.spend`` and its simulated activity).
Times are whole seconds in UTC, so every reset field of an answer agrees.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Final, Literal

__all__ = [
    "DURATION_PATTERN",
    "LimitReset",
    "LiteLLMKey",
    "OpenRouterKey",
    "Window",
    "parse_duration",
    "period_start",
]

#: How often an OpenRouter key's limit starts again; None: never.
LimitReset = Literal["daily", "weekly", "monthly"]
#: LiteLLM's ``budget_duration``: a count and a unit (``"30s"``, ``"12h"``, ``"30d"``, ``"1w"``).
DURATION_PATTERN: Final = r"^([1-9][0-9]{0,5})([smhdw])$"
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: Amounts in answers are rounded as OpenRouter rounds them, dropping float noise.
_DIGITS: Final = 10


def parse_duration(text: str) -> timedelta:
    """A LiteLLM ``budget_duration`` as a timedelta; ValueError for one it does not know."""
    match = re.fullmatch(DURATION_PATTERN, text)
    if match is None:
        raise ValueError(f"budget_duration must look like 30s, 30m, 12h, 30d or 1w, not {text!r}")
    count, unit = match.groups()
    return timedelta(**{_UNITS[unit]: int(count)})


def period_start(period: LimitReset, at: datetime) -> datetime:
    """The start of the UTC day, week (Monday) or month that ``at`` falls in."""
    day = at.astimezone(UTC).date()
    match period:
        case "daily":
            start = day
        case "weekly":
            start = day - timedelta(days=day.weekday())
        case "monthly":
            start = day.replace(day=1)
    return datetime.combine(start, time(), tzinfo=UTC)


def _iso_z(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Window:
    """One PostHog cost window; ``reset_at`` is whole seconds so both reset fields agree."""

    length: timedelta
    limit_usd: float
    reset_at: datetime
    used_usd: float = 0.0

    @property
    def used_percent(self) -> float:
        if self.limit_usd <= 0:  # the spec: a window with no limit reports 100
            return 100.0
        return round(min(100.0, self.used_usd / self.limit_usd * 100), 1)

    @property
    def exceeded(self) -> bool:
        return self.used_usd >= self.limit_usd

    def restart(self, now: datetime) -> None:
        self.used_usd = 0.0
        self.reset_at = now.replace(microsecond=0) + self.length

    def roll(self, now: datetime) -> None:
        """Start a new window (used back to 0) if the reset time has passed."""
        if now >= self.reset_at:
            self.used_usd = 0.0
            periods = (now - self.reset_at) // self.length + 1
            self.reset_at += self.length * periods

    def to_json(self, now: datetime, *, legacy: bool) -> dict[str, Any]:
        window: dict[str, Any] = {
            "used_percent": self.used_percent,
            "resets_in_seconds": max(0, int((self.reset_at - now).total_seconds())),
        }
        if not legacy:
            window["reset_at"] = _iso_z(self.reset_at)
        window["exceeded"] = self.exceeded
        return window


@dataclass
class OpenRouterKey:
    """An OpenRouter API key: a credit limit (None: none) and its spend per UTC period.

    The limit counts the spend of the current ``limit_reset`` period, or all
    spend when it never resets; ``limit_remaining`` never goes below 0
    (OpenRouter refuses requests past the limit).
    """

    limit_usd: float | None
    limit_reset: LimitReset | None
    #: The last time the periods were rolled to.
    rolled_at: datetime
    usage: float = 0.0
    usage_daily: float = 0.0
    usage_weekly: float = 0.0
    usage_monthly: float = 0.0

    def restart(self, now: datetime) -> None:
        self.usage = self.usage_daily = self.usage_weekly = self.usage_monthly = 0.0
        self.rolled_at = now

    def roll(self, now: datetime) -> None:
        """Zero the day's, week's and month's spend once their UTC period is over."""
        if now <= self.rolled_at:
            return
        if period_start("daily", now) > self.rolled_at:
            self.usage_daily = 0.0
        if period_start("weekly", now) > self.rolled_at:
            self.usage_weekly = 0.0
        if period_start("monthly", now) > self.rolled_at:
            self.usage_monthly = 0.0
        self.rolled_at = now

    def add(self, usd: float) -> None:
        self.usage += usd
        self.usage_daily += usd
        self.usage_weekly += usd
        self.usage_monthly += usd

    @property
    def limit_remaining(self) -> float | None:
        if self.limit_usd is None:
            return None
        spent = {
            None: self.usage,
            "daily": self.usage_daily,
            "weekly": self.usage_weekly,
            "monthly": self.usage_monthly,
        }[self.limit_reset]
        return max(0.0, round(self.limit_usd - spent, _DIGITS))

    def to_json(self, token: str) -> dict[str, Any]:
        """``GET /api/v1/key``'s answer; ``label`` shows part of the key, as OpenRouter's does."""
        return {
            "data": {
                "label": f"sk-or-v1-{token[:3]}...{token[-3:]}",
                "limit": self.limit_usd,
                "limit_reset": self.limit_reset,
                "limit_remaining": self.limit_remaining,
                "include_byok_in_limit": False,
                "usage": round(self.usage, _DIGITS),
                "usage_daily": round(self.usage_daily, _DIGITS),
                "usage_weekly": round(self.usage_weekly, _DIGITS),
                "usage_monthly": round(self.usage_monthly, _DIGITS),
                "byok_usage": 0.0,
                "byok_usage_daily": 0.0,
                "byok_usage_weekly": 0.0,
                "byok_usage_monthly": 0.0,
                "is_free_tier": False,
                "is_management_key": False,
                "is_provisioning_key": False,
                "expires_at": None,
                "rate_limit": {"requests": -1, "interval": "10s"},  # deprecated, still sent
            }
        }

    def state(self) -> dict[str, Any]:
        return {
            "limit_usd": self.limit_usd,
            "limit_reset": self.limit_reset,
            "limit_remaining_usd": self.limit_remaining,
            "usage_usd": self.usage,
            "usage_daily_usd": self.usage_daily,
            "usage_weekly_usd": self.usage_weekly,
            "usage_monthly_usd": self.usage_monthly,
        }


@dataclass
class LiteLLMKey:
    """A LiteLLM virtual key: its spend against ``max_budget_usd`` (None: no budget).

    When ``budget_reset_at`` passes, the spend goes back to 0 and the next
    reset is one ``budget_duration`` later (none without a duration), as
    LiteLLM's budget reset job does.
    """

    max_budget_usd: float | None
    budget_duration: str | None
    budget_reset_at: datetime | None
    spend: float = 0.0

    def set_duration(self, duration: str | None, now: datetime) -> None:
        """A new duration, its first period starting now."""
        length = parse_duration(duration) if duration is not None else None
        self.budget_duration = duration
        self.budget_reset_at = now.replace(microsecond=0) + length if length else None

    def restart(self, now: datetime) -> None:
        self.spend = 0.0
        self.set_duration(self.budget_duration, now)

    def roll(self, now: datetime) -> None:
        """Zero the spend once ``budget_reset_at`` has passed, and set the next reset."""
        if self.budget_reset_at is None or now < self.budget_reset_at:
            return
        self.spend = 0.0
        if self.budget_duration is None:
            self.budget_reset_at = None
            return
        length = parse_duration(self.budget_duration)
        self.budget_reset_at += length * ((now - self.budget_reset_at) // length + 1)

    def to_json(self, token: str, created_at: datetime) -> dict[str, Any]:
        """``GET /key/info``'s answer for the key the request carries, as LiteLLM's proxy sends it.

        ``key`` is the hashed token and ``key_name`` ends with the key's last
        characters, as in LiteLLM; times carry LiteLLM's ``+00:00``.
        """
        reset_at = self.budget_reset_at
        return {
            "key": hashlib.sha256(token.encode()).hexdigest(),
            "info": {
                "key_name": f"sk-...{token[-4:]}",
                "key_alias": "simulated",
                "spend": round(self.spend, _DIGITS),
                "max_budget": self.max_budget_usd,
                "expires": None,
                "models": [],
                "aliases": {},
                "config": {},
                "user_id": None,
                "team_id": None,
                "max_parallel_requests": None,
                "metadata": {},
                "tpm_limit": None,
                "rpm_limit": None,
                "budget_duration": self.budget_duration,
                "budget_reset_at": reset_at.isoformat() if reset_at is not None else None,
                "allowed_cache_controls": [],
                "permissions": {},
                "model_spend": {},
                "model_max_budget": {},
                "soft_budget_cooldown": False,
                "blocked": None,
                "litellm_budget_table": None,
                "org_id": None,
                "created_at": created_at.isoformat(),
            },
        }

    def state(self) -> dict[str, Any]:
        reset_at = self.budget_reset_at
        return {
            "spend_usd": self.spend,
            "max_budget_usd": self.max_budget_usd,
            "budget_duration": self.budget_duration,
            "budget_reset_at": _iso_z(reset_at) if reset_at is not None else None,
        }
