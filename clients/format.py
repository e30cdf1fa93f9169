"""
How usage is put into words in the terminal, the way the desktop app showed it.

The numbers and meter names come from ``common.text``, the rules the
dashboard shares. Pure functions of their arguments: the caller passes ``now``
and the time zone (``ConnectionSettings.zone()``; None is the system's), so
the same input always gives the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from common.models import LATEST, Meter, Snapshot, SourceInfo, WindowForecast
from common.text import burn_rate_label, meter_name, meter_value_label

__all__ = [
    "age_label",
    "clock_label",
    "dominant_meter",
    "forecast_label",
    "meter_line",
    "reset_label",
    "source_lines",
    "sparkline",
    "state_label",
    "status_line",
]

# Spelled out rather than strftime("%b") so the label does not follow the locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SPARKS = "▁▂▃▄▅▆▇█"
#: Between a source's name and its line, after padding to the longest name.
_NAME_GAP = "  "


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


def dominant_meter(meters: Sequence[Meter]) -> Meter | None:
    """The meter that binds, the rule of v1's two windows for any meters (the dashboard's
    ``dominantMeter``).

    Among the meters with a percent: the fullest, then the exceeded one, then
    the one that resets later (its limit lifts last; never resetting is
    latest), the first of equals. A source with no percent meter shows its
    first meter; None without meters.
    """
    with_percent = [meter for meter in meters if meter.used_percent is not None]
    if not with_percent:
        return meters[0] if meters else None

    def weight(meter: Meter) -> tuple[float, bool, datetime]:
        return (meter.used_percent or 0.0, meter.exceeded, meter.reset_at or LATEST)

    return max(with_percent, key=weight)  # max() keeps the first of equal keys


def meter_line(meter: Meter) -> str:
    """A meter's name and reading: "Daily 37%", "Key limit $12.50 of $50.00", "Today $3.10"."""
    return f"{meter_name(meter.id, meter.label)} {meter_value_label(meter)}"


def status_line(snapshot: Snapshot, now: datetime, tz: tzinfo | None = None) -> str:
    """One line for a status bar: "Daily 37% · Monthly 12% · resets in 5h 59m".

    Every meter in order, then "Limit reached" when the dominant meter is
    exceeded, and when that meter resets (nothing for one that never does).
    """
    parts = [meter_line(meter) for meter in snapshot.meters]
    dominant = dominant_meter(snapshot.meters)
    if dominant is not None:
        if dominant.exceeded:
            parts.append("Limit reached")
        if dominant.reset_at is not None:
            label = reset_label(dominant.reset_at, now, tz)
            parts.append(label[0].lower() + label[1:])
    return " · ".join(parts) or "no meters"


def state_label(state: str) -> str:
    """A monitor state in words: "ok", "degraded", "auth error"."""
    return state.replace("_", " ")


def source_lines(
    sources: Sequence[SourceInfo], now: datetime, tz: tzinfo | None = None
) -> list[str]:
    """One line per source, its name padded to the longest: "us  Daily 37% · ...".

    A source not polled successfully yet says so; one whose monitor is not
    ``ok`` (the figures are its last good ones) says its state at the end.
    """
    width = max((len(source.name) for source in sources), default=0)
    lines = []
    for source in sources:
        state = source.status.state
        if source.latest is None:
            text = f"no usage yet (monitor {state_label(state)})"
        else:
            text = status_line(source.latest, now, tz)
            if state != "ok":
                text += f" · {state_label(state)}"
        lines.append(f"{source.name.ljust(width)}{_NAME_GAP}{text}")
    return lines


def age_label(at: datetime, now: datetime) -> str:
    """How long ago: "just now", "12 s ago", "3 min ago", "2 h ago" (as the dashboard's)."""
    seconds = max(0, int((now - at).total_seconds()))
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


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
    return "".join(
        _SPARKS[round(min(max(percent, 0.0), 100.0) / 100 * steps)] for percent in percents
    )
