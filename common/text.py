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
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from .models import Alert, LimitProjected, Meter, ThresholdCrossed
from .reports import ReportEntry

__all__ = [
    "WINDOW_LABELS",
    "alert_text",
    "burn_rate_label",
    "meter_name",
    "meter_value_label",
    "percent_label",
    "report_failed_text",
    "usd_label",
]

#: How people name the gateway's two windows (the v1 buckets, PostHog's meters).
WINDOW_LABELS: Final[dict[str, str]] = {"burst": "Daily", "sustained": "Monthly"}
#: The source a single-source relay names its only one.
_DEFAULT_SOURCE: Final = "default"

#: What a dollar amount is rounded to.
_CENT: Final = Decimal("0.01")
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


def usd_label(amount: float) -> str:
    """US dollars with cents and thousands separators: "$12.50", "$1,234.50".

    Rounded to the cent as the number is written (its shortest decimal form,
    as the dashboard's ``Intl.NumberFormat`` does), halves to the even cent:
    2.675 reads "$2.68" and 0.005 "$0.00". A negative amount, or anything that
    is not a finite number, reads "$0.00".
    """
    if not math.isfinite(amount) or amount <= 0:
        return "$0.00"
    cents = Decimal(repr(float(amount))).quantize(_CENT, rounding=ROUND_HALF_EVEN)
    return f"${cents:,.2f}"


def meter_name(meter_id: str, label: str | None = None) -> str:
    """What a meter is called: its label, else the v1 window name of its id, else the id."""
    return label or WINDOW_LABELS.get(meter_id) or meter_id


def meter_value_label(meter: Meter) -> str:
    """A meter's reading: "37%" for a percent meter, "$12.50 of $50.00" for a usd meter
    with a limit, "$3.10" for one without; "—" when the source sent no value."""
    if meter.unit == "usd":
        if meter.used is None:
            return "—"
        if meter.limit is None:
            return usd_label(meter.used)
        return f"{usd_label(meter.used)} of {usd_label(meter.limit)}"
    return "—" if meter.used_percent is None else percent_label(meter.used_percent)


def burn_rate_label(rate: float) -> str:
    """A burn rate to one decimal with its sign, halves rounded up: "+4.2%/h"; flat is "+0.0%/h"."""
    tenths = math.floor(rate * 10 + 0.5)
    return f"{'-' if tenths < 0 else '+'}{abs(tenths) / 10:.1f}%/h"


def alert_text(alert: Alert, tz: tzinfo | None = UTC) -> str:
    """One human sentence for an alert; times in ``tz`` (None: the system's own zone).

    The meter is named by the alert's ``label`` (v1 alerts have none: their
    window's name); a source other than ``default`` comes first: "eu: Daily ...".
    """
    name = meter_name(alert.bucket, alert.label)
    if alert.source != _DEFAULT_SOURCE:
        name = f"{alert.source}: {name}"
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


def report_failed_text(entry: ReportEntry) -> str:
    """One sentence for a daily usage report a destination refused."""
    return (
        f"The usage report of {entry.source} for {entry.usage_day} was refused and waits for "
        f"someone to act ({entry.last_error or 'no reason given'})."
    )
