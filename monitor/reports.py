"""
The daily usage report of one source and day, built from its ledger hours; no I/O.

A usage day is a calendar day in the relay's zone: from its local midnight to
the next (23 or 25 hours when summer time starts or ends). Its hours are the
ledger hours (UTC) that start within it, as in the breakdown, so a report and
the breakdown by source and day count the same polls and the same usage.

``coverage`` is the share of the day that successful polls account for: each
hour counts its polls times the source's interval, at most the whole hour.
A day without polls gets a report all the same, with coverage 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Final

from common.breakdown import Consumed
from common.models import SourceKind
from common.reports import ReportMeter, ReportPeriod, UsageReport, report_id

from .metering import HOUR, LedgerRow

__all__ = ["build_report", "day_period", "last_closed_day", "next_closing", "report_hours"]

#: Decimals kept of a sum (as in the breakdown): a millionth of a dollar or percent point.
_DIGITS: Final = 6
#: Decimals kept of the coverage.
_COVERAGE_DIGITS: Final = 4


def day_period(day: date, zone: tzinfo) -> ReportPeriod:
    """The usage day ``day`` of ``zone`` in UTC: its local midnight to the next."""
    return ReportPeriod(start=_midnight(day, zone), end=_midnight(day + timedelta(days=1), zone))


def _midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _ceil_hour(at: datetime) -> datetime:
    floor = at.replace(minute=0, second=0, microsecond=0)
    return floor if floor == at else floor + HOUR


def report_hours(period: ReportPeriod) -> tuple[datetime, datetime]:
    """The ledger hours of ``period``: those starting from the first to the second, excluded."""
    return _ceil_hour(period.start), _ceil_hour(period.end)


def last_closed_day(now: datetime, zone: tzinfo, delay: timedelta) -> date:
    """The last usage day whose report is due at ``now``: it ended ``delay`` ago or earlier."""
    today = now.astimezone(zone).date()
    closed = today - timedelta(days=1)
    return closed if now >= _midnight(today, zone) + delay else closed - timedelta(days=1)


def next_closing(now: datetime, zone: tzinfo, delay: timedelta) -> datetime:
    """When the next usage day's report falls due after ``now``."""
    due = last_closed_day(now, zone, delay) + timedelta(days=2)
    return _midnight(due, zone) + delay


def build_report(
    *,
    source: str,
    kind: SourceKind,
    day: date,
    zone: tzinfo,
    rows: Sequence[LedgerRow],
    interval: float,
    generated_at: datetime,
) -> UsageReport:
    """The report of ``source`` for ``day`` from its ledger ``rows`` of that day's hours.

    Only ``generated_at`` depends on anything but the rows: the same rows give
    the same report. A poll counts once per hour however many meters it read.
    """
    period = day_period(day, zone)
    by_meter: dict[str, list[LedgerRow]] = {}
    polls: dict[datetime, tuple[int, int]] = {}
    for row in sorted(rows, key=lambda row: (row.meter, row.hour)):
        by_meter.setdefault(row.meter, []).append(row)
        seen, failed = polls.get(row.hour, (0, 0))
        polls[row.hour] = (max(seen, row.polls), max(failed, row.failed_polls))
    meters = [_meter(meter_id, hours) for meter_id, hours in by_meter.items()]
    usd = [meter.consumed for meter in meters if meter.unit == "usd"]
    percent = [row.consumed_percent for row in rows if row.consumed_percent is not None]
    hour_seconds = HOUR.total_seconds()
    covered = sum(min(hour_seconds, seen * interval) for seen, _ in polls.values())
    length = (period.end - period.start).total_seconds()
    return UsageReport(
        report_id=report_id(source, day),
        source=source,
        kind=kind,
        usage_day=day,
        timezone=str(zone),
        period=period,
        meters=meters,
        consumed=Consumed(
            usd=_rounded(sum(usd)) if usd else None,
            percent=_rounded(sum(percent)) if percent else None,
        ),
        polls=sum(seen for seen, _ in polls.values()),
        failed_polls=sum(failed for _, failed in polls.values()),
        coverage=round(min(1.0, covered / length), _COVERAGE_DIGITS),
        generated_at=generated_at,
    )


def _meter(meter_id: str, hours: list[LedgerRow]) -> ReportMeter:
    """One meter's hours (in time order) summed over the day."""
    peaks = [row.peak_used_percent for row in hours if row.peak_used_percent is not None]
    closes = [row.close_used_percent for row in hours if row.close_used_percent is not None]
    return ReportMeter(
        id=meter_id,
        unit=hours[-1].unit,
        consumed=_rounded(sum(row.consumed for row in hours)),
        peak_used_percent=max(peaks, default=None),
        close_used_percent=closes[-1] if closes else None,
        resets=sum(row.resets for row in hours),
    )


def _rounded(value: float) -> float:
    """A sum without the float noise of adding many rises (0.1 + 0.2 ...)."""
    return round(value, _DIGITS)
