"""
The usage breakdown (``common.breakdown``) summed from the store's hourly ledger, in SQL.

SQLite knows no IANA zones, so the zone is brought to it: the range is cut,
in Python, into spans of hours that share one UTC offset in ``zone`` (a span
ends where summer time starts or ends), and they are passed as a ``VALUES``
table joined on the hour's range. An hour's local time is then its UTC start
plus its span's offset, and its calendar day and month are those of that
local time; a day that changes to or from summer time therefore has 23 or 25
hours. Hours are ledger hours (UTC): in a zone whose offset is not whole
hours, an hour that straddles local midnight goes to the day it starts in.

A poll touches every meter of its source, so the polls of a group are, for
each (source, hour), the most of any of its meters, summed; only a group by
``meter`` sums that meter's own.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final

from common.breakdown import Breakdown, BreakdownPeriod, BreakdownQuery, BreakdownRow, Consumed

__all__ = ["breakdown", "offset_spans"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Decimals kept of a sum: a millionth of a dollar or of a percent point.
_DIGITS: Final = 6
_MICRO = timedelta(microseconds=1)
_HOUR: Final = 3600 * 1_000_000
#: How far apart the zone's offset is probed: a span is found to the hour by
#: halving between two probes, so no two changes of offset may lie this close.
_PROBE_HOURS: Final = 24

# Each group: the expression it is grouped and ordered by, and its key as answered.
# ``t`` is the hour's local start in seconds since the epoch, ``suffix`` its offset.
_KEYS: Final = {
    "source": ("source", "source"),
    "meter": ("meter", "meter"),
    "hour": ("hour", "strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch') || suffix"),
    "day": ("t / 86400", "date(t, 'unixepoch')"),
    "month": ("strftime('%Y-%m', t, 'unixepoch')", "strftime('%Y-%m', t, 'unixepoch')"),
}


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // _MICRO


def _suffix(offset: timedelta) -> str:
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    return f"{sign}{hours:02d}:{rest // 60:02d}"


def offset_spans(zone: tzinfo, first: int, stop: int) -> list[tuple[int, int, int, str]]:
    """The hours ``first`` ≤ h < ``stop`` (hour numbers since the epoch) cut into spans of
    one UTC offset in ``zone``: (start, stop) in microseconds, the offset in seconds and as
    ``+HH:MM``."""

    def offset(hour: int) -> timedelta:
        at = _EPOCH + timedelta(hours=hour)
        found = at.astimezone(zone).utcoffset()
        return found if found is not None else timedelta(0)

    spans = []
    start, current = first, offset(first)
    probe = first
    while probe < stop - 1:
        ahead = min(probe + _PROBE_HOURS, stop - 1)
        if offset(ahead) == current:
            probe = ahead
            continue
        lo, hi = probe, ahead  # offset(lo) == current != offset(hi)
        while hi - lo > 1:
            middle = (lo + hi) // 2
            if offset(middle) == current:
                lo = middle
            else:
                hi = middle
        spans.append((start, hi, current))
        start, current, probe = hi, offset(hi), hi
    spans.append((start, stop, current))
    return [
        (begin * _HOUR, end * _HOUR, int(off.total_seconds()), _suffix(off))
        for begin, end, off in spans
    ]


def _sql(groups: tuple[str, ...], spans: int) -> str:
    by_meter = "meter" in groups
    inner_keys = "hour, source, meter" if by_meter else "hour, source"
    polls = "SUM" if by_meter else "MAX"  # per (source, hour[, meter])
    inner = f"""
        SELECT {inner_keys},
               SUM(CASE WHEN unit = 'usd' THEN consumed END) AS usd,
               SUM(consumed_percent) AS percent,
               {polls}(polls) AS polls, {polls}(failed_polls) AS failed
        FROM ledger WHERE hour >= ? AND hour < ?
        GROUP BY {inner_keys}
    """
    local = any(group in ("hour", "day", "month") for group in groups)
    if local:
        values = ", ".join("(?, ?, ?, ?)" for _ in range(spans))
        source = f"""
            WITH z(start, stop, shift, suffix) AS (VALUES {values}),
                 h AS ({inner})
            SELECT h.*, h.hour / 1000000 + z.shift AS t, z.suffix AS suffix
            FROM h JOIN z ON h.hour >= z.start AND h.hour < z.stop
        """
    else:
        source = inner
    sums = "SUM(usd), SUM(percent), SUM(polls), SUM(failed)"
    if not groups:
        return f"SELECT {sums} FROM ({source})"
    grouped = ", ".join(_KEYS[group][0] for group in groups)
    shown = ", ".join(_KEYS[group][1] for group in groups)
    return f"SELECT {shown}, {sums} FROM ({source}) GROUP BY {grouped} ORDER BY {grouped}"


_TOTAL_POLLS = """
SELECT SUM(polls), SUM(failed) FROM (
    SELECT MAX(polls) AS polls, MAX(failed_polls) AS failed
    FROM ledger WHERE hour >= :lo AND hour < :hi GROUP BY source, hour
)
"""


def _rounded(value: float | None) -> float | None:
    """A sum without the float noise of adding thousands of rises (0.1 + 0.2 ...)."""
    return None if value is None else round(value, _DIGITS)


def _total(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return _rounded(sum(known)) if known else None


def breakdown(conn: sqlite3.Connection, query: BreakdownQuery, zone: tzinfo) -> Breakdown:
    """The ledger's hours that start in [``query.since``, ``query.until``), grouped as it asks.

    Rows are ordered by their groups (hours in time order); ``totals`` sums
    the whole range, its ``consumed`` the rows' own.
    """
    groups = tuple(query.group_by)
    first = -(-_micros(query.since) // _HOUR)  # the first hour starting at or after since
    stop = -(-_micros(query.until) // _HOUR)  # hours starting before until
    params: list[Any] = []
    spans: list[tuple[int, int, int, str]] = []
    if any(group in ("hour", "day", "month") for group in groups) and first < stop:
        spans = offset_spans(zone, first, stop)
        params = [value for span in spans for value in span]
    rows: list[BreakdownRow] = []
    if first < stop:
        sql = _sql(groups, len(spans))
        for found in conn.execute(sql, [*params, first * _HOUR, stop * _HOUR]):
            *keys, usd, percent, polls, failed = found
            if polls is None:  # no grouping, and no rows
                continue
            rows.append(
                BreakdownRow.model_construct(
                    **dict(zip(groups, keys, strict=True)),
                    consumed=Consumed.model_construct(usd=_rounded(usd), percent=_rounded(percent)),
                    polls=polls,
                    failed_polls=failed,
                )
            )
    if "meter" in groups and rows:
        polls, failed = conn.execute(
            _TOTAL_POLLS, {"lo": first * _HOUR, "hi": stop * _HOUR}
        ).fetchone()
    else:
        polls, failed = sum(row.polls for row in rows), sum(row.failed_polls for row in rows)
    totals = BreakdownRow.model_construct(
        consumed=Consumed.model_construct(
            usd=_total([row.consumed.usd for row in rows]),
            percent=_total([row.consumed.percent for row in rows]),
        ),
        polls=polls or 0,
        failed_polls=failed or 0,
    )
    return Breakdown(
        period=BreakdownPeriod(start=query.since, end=query.until),
        timezone=query.timezone,
        group_by=list(groups),
        breakdown=rows,
        totals=totals,
    )
