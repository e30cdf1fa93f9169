"""
How usage is put into words, in Python: the terminal, the webhook and the CLI.

``clients/web/format.js`` is the dashboard's JavaScript counterpart. Both
follow the same rules and are checked against one table of cases
(``tests/label_cases.json``), so the terminal and the dashboard never show
two different numbers for one snapshot.
"""

from __future__ import annotations

import math
from datetime import UTC, tzinfo
from typing import Final

from .models import Alert, Bucket, LimitProjected, ThresholdCrossed

__all__ = ["WINDOW_LABELS", "alert_text", "burn_rate_label", "percent_label"]

#: How people name the gateway's two windows.
WINDOW_LABELS: Final[dict[Bucket, str]] = {"burst": "Daily", "sustained": "Monthly"}

#: Absorbs binary floating-point noise such as 37.49999999 before rounding down.
_EPSILON: Final = 1e-9


def percent_label(percent: float) -> str:
    """Percent used as people read it: "37%" from 10 up, one decimal below ("0.4%", "5%").

    Rounds down, so "100%" appears only when the window is full; values are
    clamped to 0..100 and anything that is not a number reads "0%".
    """
    value = min(100.0, max(0.0, percent)) if not math.isnan(percent) else 0.0
    if value >= 10:
        return f"{math.floor(value + _EPSILON)}%"
    tenths = math.floor(value * 10 + _EPSILON)
    return f"{tenths // 10}%" if tenths % 10 == 0 else f"{tenths / 10:.1f}%"


def burn_rate_label(rate: float) -> str:
    """A burn rate to one decimal with its sign, halves rounded up: "+4.2%/h"; flat is "+0.0%/h"."""
    tenths = math.floor(rate * 10 + 0.5)
    return f"{'-' if tenths < 0 else '+'}{abs(tenths) / 10:.1f}%/h"


def alert_text(alert: Alert, tz: tzinfo | None = UTC) -> str:
    """One human sentence for an alert; times in ``tz`` (None: the system's own zone)."""
    name = WINDOW_LABELS[alert.bucket]
    match alert:
        case ThresholdCrossed():
            now = percent_label(alert.used_percent)
            return f"{name} usage crossed {alert.threshold:g}% (now {now})."
        case LimitProjected():
            # A webhook's readers may be anywhere, so UTC is named; a local view is local.
            zone = " UTC" if tz is UTC else ""
            return (
                f"{name} usage is on track to reach its limit at "
                f"{alert.projected_at.astimezone(tz):%b %-d %H:%M}{zone}, before it resets "
                f"({burn_rate_label(alert.burn_rate_percent_per_hour)})."
            )
