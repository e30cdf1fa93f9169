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
``meter`` sums that meter's own. The days a range covers whole are read from
the daily rollup (``ledger_days``) instead of their hours when it is kept in
the query's zone; there a day's polls are the most of any meter's that day,
which is the same as long as a source keeps its meters through the day.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Final

from common.breakdown import Breakdown, BreakdownPeriod, BreakdownQuery, BreakdownRow, Consumed

__all__ = ["ROLLUP_TABLE", "breakdown", "local_day", "offset_spans", "rebuild_rollup"]

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


#: The ledger summed per calendar day of the store's zone, kept as polls land, so
#: that a breakdown by day or month reads a row per (day, source, meter) for the
#: days it covers whole, and the hourly ledger only for the hours at its edges.
ROLLUP_TABLE: Final = """
CREATE TABLE IF NOT EXISTS ledger_days (
    day TEXT NOT NULL,
    source TEXT NOT NULL,
    meter TEXT NOT NULL,
    unit TEXT NOT NULL,
    consumed REAL NOT NULL,
    consumed_percent REAL,
    polls INTEGER NOT NULL,
    failed_polls INTEGER NOT NULL,
    PRIMARY KEY (day, source, meter)
) WITHOUT ROWID
"""


def local_day(hour: datetime, zone: tzinfo) -> str:
    """The calendar day, in ``zone``, that the hour starting at ``hour`` belongs to."""
    return hour.astimezone(zone).date().isoformat()


def rebuild_rollup(conn: sqlite3.Connection, zone: tzinfo) -> None:
    """Sum the whole ledger into ``ledger_days`` afresh, days in ``zone``."""
    conn.execute("DELETE FROM ledger_days")
    bounds = conn.execute("SELECT MIN(hour), MAX(hour) FROM ledger").fetchone()
    if bounds[0] is None:
        return
    spans = offset_spans(zone, bounds[0] // _HOUR, bounds[1] // _HOUR + 1)
    values = ", ".join("(?, ?, ?, ?)" for _ in spans)
    conn.execute(
        f"""
        INSERT INTO ledger_days
        WITH z(start, stop, shift, suffix) AS (VALUES {values})
        SELECT date(l.hour / 1000000 + z.shift, 'unixepoch'), l.source, l.meter, MAX(l.unit),
               SUM(l.consumed), SUM(l.consumed_percent), SUM(l.polls), SUM(l.failed_polls)
        FROM ledger l JOIN z ON l.hour >= z.start AND l.hour < z.stop
        GROUP BY 1, 2, 3
        """,
        [value for span in spans for value in span],
    )


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


def _sql(groups: tuple[str, ...], spans: int, ranges: int, days: bool) -> str:
    """The breakdown's query: ``ranges`` ranges of the ledger's hours (and, with ``days``,
    whole days of the rollup), summed per unit (a source's hour or day), then per group."""
    by_meter = "meter" in groups
    polls = "SUM" if by_meter else "MAX"  # a poll counts once per source, not per meter
    values = ", ".join("(?, ?, ?, ?)" for _ in range(spans))
    # One SELECT per range, each an index range: an OR of ranges would scan every hour.
    hours = " UNION ALL ".join(
        """
        SELECT l.hour AS unit, l.source, l.meter, l.unit AS kind, l.consumed,
               l.consumed_percent, l.polls, l.failed_polls,
               l.hour / 1000000 + z.shift AS t, z.suffix AS suffix
        FROM ledger l JOIN z ON l.hour >= z.start AND l.hour < z.stop
        WHERE l.hour >= ? AND l.hour < ?
        """
        for _ in range(ranges)
    )
    if days:
        hours += """
        UNION ALL
        SELECT day, source, meter, unit, consumed, consumed_percent, polls, failed_polls,
               CAST(strftime('%s', day) AS INTEGER), ''
        FROM ledger_days WHERE day >= ? AND day < ?
        """
    keys = "unit, source, meter" if by_meter else "unit, source"
    units = f"""
        WITH z(start, stop, shift, suffix) AS (VALUES {values})
        SELECT {keys}, MAX(t) AS t, MAX(suffix) AS suffix, unit AS hour,
               SUM(CASE WHEN kind = 'usd' THEN consumed END) AS usd,
               SUM(consumed_percent) AS percent,
               {polls}(polls) AS polls, {polls}(failed_polls) AS failed
        FROM ({hours})
        GROUP BY {keys}
    """
    sums = "SUM(usd), SUM(percent), SUM(polls), SUM(failed)"
    if not groups:
        return f"SELECT {sums} FROM ({units})"
    grouped = ", ".join(_KEYS[group][0] for group in groups)
    shown = ", ".join(_KEYS[group][1] for group in groups)
    return f"SELECT {shown}, {sums} FROM ({units}) GROUP BY {grouped} ORDER BY {grouped}"


_TOTAL_POLLS = """
SELECT SUM(polls), SUM(failed) FROM (
    SELECT MAX(polls) AS polls, MAX(failed_polls) AS failed
    FROM ledger WHERE hour >= :lo AND hour < :hi GROUP BY source, hour
)
"""


def _rounded(value: float | None) -> float | None:
    """A sum without the float noise of adding thousands of rises (0.1 + 0.2 ...)."""
    return None if value is None else round(value, _DIGITS)


def _next_midnight(hour: int, zone: tzinfo) -> tuple[int, str]:
    """The first local midnight at or after ``hour`` (an hour number): as an hour number
    and as the day it starts."""
    at = (_EPOCH + timedelta(hours=hour)).astimezone(zone)
    day = at.date() if at.time() == time() else at.date() + timedelta(days=1)
    return _midnight(day, zone)


def _last_midnight(hour: int, zone: tzinfo) -> tuple[int, str]:
    """The last local midnight at or before ``hour``."""
    return _midnight((_EPOCH + timedelta(hours=hour)).astimezone(zone).date(), zone)


def _midnight(day: date, zone: tzinfo) -> tuple[int, str]:
    start = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
    return -(-_micros(start) // _HOUR), day.isoformat()


def _total(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return _rounded(sum(known)) if known else None


def breakdown(
    conn: sqlite3.Connection, query: BreakdownQuery, zone: tzinfo, *, rolled_up: bool = False
) -> Breakdown:
    """The ledger's hours that start in [``query.since``, ``query.until``), grouped as it asks.

    Rows are ordered by their groups (hours in time order); ``totals`` sums
    the whole range, its ``consumed`` the rows' own. With ``rolled_up`` (the
    ``ledger_days`` rollup is kept in ``zone``) and no ``hour`` group, the days
    the range covers whole are read from the rollup.
    """
    groups = tuple(query.group_by)
    first = -(-_micros(query.since) // _HOUR)  # the first hour starting at or after since
    stop = -(-_micros(query.until) // _HOUR)  # hours starting before until
    days: tuple[str, str] | None = None
    edges = [(first, stop)]
    if rolled_up and "hour" not in groups and first < stop:
        start_day = _next_midnight(first, zone)
        stop_day = _last_midnight(stop, zone)
        if start_day[0] < stop_day[0]:
            days = (start_day[1], stop_day[1])
            edges = [(first, start_day[0]), (stop_day[0], stop)]
    rows: list[BreakdownRow] = []
    if first < stop:
        spans = offset_spans(zone, first, stop)
        params: list[Any] = [value for span in spans for value in span]
        sql = _sql(groups, len(spans), len(edges), days is not None)
        hour_params = [bound * _HOUR for edge in edges for bound in edge]
        for found in conn.execute(sql, [*params, *hour_params, *(days or ())]):
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
