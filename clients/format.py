"""
How usage is put into words in the terminal, the way the desktop app showed it.

The numbers and window names come from ``common.text``, the rules the
dashboard shares. Pure functions of their arguments: the caller passes ``now`` (and, for tests,
the time zone), so the same input always gives the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from common.models import Snapshot, UsageWindow, WindowForecast
from common.text import WINDOW_LABELS, burn_rate_label, percent_label

__all__ = [
    "clock_label",
    "dominant_window",
    "forecast_label",
    "labelled_windows",
    "reset_label",
    "sparkline",
    "status_line",
]

# Spelled out rather than strftime("%b") so the label does not follow the locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SPARKS = "▁▂▃▄▅▆▇█"


def reset_label(reset_at: datetime, now: datetime, tz: tzinfo | None = None) -> str:
    """Say when a window resets; beyond a day, as a local date and time (``tz`` or the system's)."""
    minutes = int((reset_at - now).total_seconds() // 60)
    if minutes <= 0:
        return "Resets shortly"
    if minutes < 60:
        return f"Resets in {minutes}m"
    if minutes < 24 * 60:
        hours, rest = divmod(minutes, 60)
        return f"Resets in {hours}h {rest}m" if rest else f"Resets in {hours}h"
    local = reset_at.astimezone(tz)
    hour = local.hour % 12 or 12
    meridiem = "AM" if local.hour < 12 else "PM"
    return f"Resets {_MONTHS[local.month - 1]} {local.day} at {hour}:{local.minute:02d} {meridiem}"


def dominant_window(snapshot: Snapshot) -> UsageWindow:
    """The window that binds: the fuller one, then the exceeded one, then the later reset."""

    def weight(window: UsageWindow) -> tuple[float, bool, datetime]:
        return (window.used_percent, window.exceeded, window.reset_at)

    return max(snapshot.usage.burst, snapshot.usage.sustained, key=weight)


def labelled_windows(snapshot: Snapshot) -> list[tuple[str, UsageWindow]]:
    """The windows in display order, with the names people know them by."""
    usage = snapshot.usage
    return [(WINDOW_LABELS["burst"], usage.burst), (WINDOW_LABELS["sustained"], usage.sustained)]


def status_line(snapshot: Snapshot, now: datetime, tz: tzinfo | None = None) -> str:
    """One line for a status bar: "Daily 37% · Monthly 12% · resets in 5h 59m"."""
    parts = [
        f"{label} {percent_label(window.used_percent)}"
        for label, window in labelled_windows(snapshot)
    ]
    dominant = dominant_window(snapshot)
    if dominant.exceeded:
        parts.append("Limit reached")
    label = reset_label(dominant.reset_at, now, tz)
    parts.append(label[0].lower() + label[1:])
    return " · ".join(parts)


def clock_label(at: datetime, now: datetime, tz: tzinfo | None = None) -> str:
    """A local time: "15:40" on the day of ``now``, "Nov 23 15:40" on any other."""
    local = at.astimezone(tz)
    if local.date() == now.astimezone(tz).date():
        return f"{local:%H:%M}"
    return f"{_MONTHS[local.month - 1]} {local.day} {local:%H:%M}"


def forecast_label(forecast: WindowForecast, now: datetime, tz: tzinfo | None = None) -> str | None:
    """Burn rate and outlook: "+4.2%/h · limit at 15:40, before reset"; None without a rate."""
    rate = forecast.burn_rate_percent_per_hour
    if rate is None:
        return None
    if forecast.limit_before_reset and forecast.projected_limit_at is not None:
        outlook = f"limit at {clock_label(forecast.projected_limit_at, now, tz)}, before reset"
    else:
        outlook = "not before reset"
    return f"{burn_rate_label(rate)} · {outlook}"


def sparkline(percents: Sequence[float]) -> str:
    """One block per percentage, "▁" for 0 up to "█" for 100.

    The scale is fixed rather than stretched to the values, so a flat 12 % reads
    as low and only a window near its limit reaches the top.
    """
    steps = len(_SPARKS) - 1
    return "".join(_SPARKS[round(min(percent, 100.0) / 100 * steps)] for percent in percents)
