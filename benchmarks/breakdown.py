"""
The usage breakdown at scale: ``python -m benchmarks.breakdown [--days 365] [--sources 10]``.

Builds a store whose ledger holds ``--days`` of hourly rows for ``--sources``
sources (three meters each: two percent windows, or a dollar meter with a
limit, one without and one percent window), inserted in bulk, then times
``SnapshotStore.breakdown`` over the whole range in Europe/London for each
grouping: ``--repeat`` calls one after the other, after one unmeasured call.
It prints a Markdown table of the median and p99 (ms), with the machine and
the date; the time is the store's call, SQL and the answer's objects, not its
JSON (shown apart).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from common.breakdown import BreakdownQuery, Group
from monitor.store import SnapshotStore

from .procstat import machine_info
from .stats import percentile

__all__ = ["build_ledger", "main"]

ZONE = "Europe/London"
GROUPINGS: tuple[tuple[Group, ...], ...] = (
    ("source", "day"),
    ("day",),
    ("month",),
    ("source", "meter", "hour"),
)
_HOUR_MICROS = 3600 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def build_ledger(path: Path, days: int, sources: int, end: datetime) -> int:
    """A store at ``path`` with ``days`` of hourly ledger rows before ``end`` for ``sources``
    sources; returns the number of rows."""
    SnapshotStore(path).close()
    store = SnapshotStore(path)
    store.open()
    store.close()
    last = (end - _EPOCH) // timedelta(hours=1)
    first = last - days * 24
    meters = []
    for number in range(sources):
        source = f"source-{number:02d}"
        if number % 2:
            meters += [(source, "limit", "usd", 1), (source, "spend", "usd", 0)]
            meters.append((source, "daily", "percent", 1))
        else:
            meters += [(source, "burst", "percent", 1), (source, "sustained", "percent", 1)]
            meters.append((source, "weekly", "percent", 1))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        with conn:
            conn.execute("CREATE TEMP TABLE m (source, meter, unit, has_limit)")
            conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?)", meters)
            conn.execute(
                "INSERT INTO ledger (source, meter, hour, unit, consumed, consumed_percent,"
                " peak_used_percent, close_used_percent, resets, polls, failed_polls)"
                " WITH RECURSIVE h(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM h"
                "                         WHERE n + 1 < :last)"
                " SELECT m.source, m.meter, h.n * :hour, m.unit, (h.n % 7) * 0.25,"
                " CASE WHEN m.has_limit THEN (h.n % 5) * 0.5 END, 50.0, 40.0,"
                " h.n % 24 = 0, 120, h.n % 97 = 0"
                " FROM h CROSS JOIN m",
                {"first": first, "last": last, "hour": _HOUR_MICROS},
            )
        conn.execute("PRAGMA journal_mode = WAL")
        (rows,) = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()
    return int(rows)


def measure(store: SnapshotStore, query: BreakdownQuery, repeat: int) -> dict[str, float]:
    zone = ZoneInfo(query.timezone)
    answer = store.breakdown(query, zone)  # warm the cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = store.breakdown(query, zone)
        times.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    answer.to_json()
    json_ms = (time.perf_counter() - started) * 1000
    return {
        "rows": len(answer.breakdown),
        "median": statistics.median(times),
        "p99": percentile(times, 99),
        "json": json_ms,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__)
    parser.add_argument("--days", type=int, default=365, help="days of hourly ledger rows")
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=30, help="calls of each grouping")
    args = parser.parse_args(argv)
    if args.days < 1 or args.sources < 1 or args.repeat < 1:
        parser.error("--days, --sources and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-breakdown-"))
    when = datetime.now(UTC)
    end = when.replace(minute=0, second=0, microsecond=0)
    try:
        path = workdir / "usage.db"
        started = time.perf_counter()
        rows = build_ledger(path, args.days, args.sources, end)
        build_s = time.perf_counter() - started
        # Opened in the zone of the queries: the daily rollup is summed in it now.
        started = time.perf_counter()
        store = SnapshotStore(path, zone=ZoneInfo(ZONE))
        store.open()
        rollup_s = time.perf_counter() - started
        try:
            results = {
                grouping: measure(
                    store,
                    BreakdownQuery(
                        since=end - timedelta(days=args.days),
                        until=end,
                        group_by=grouping,
                        timezone=ZONE,
                    ),
                    args.repeat,
                )
                for grouping in GROUPINGS
            }
        finally:
            store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine = machine_info()
    print(
        f"\nusage-monitor breakdown benchmark, {when:%Y-%m-%d %H:%M} UTC: {machine['cores']} "
        f"cores {machine['cpu_model']}, Python {machine['python']}, SQLite "
        f"{sqlite3.sqlite_version}; {rows:,} ledger rows ({args.days} days, {args.sources} "
        f"sources, built in {build_s:.1f} s, daily rollup summed at open in {rollup_s:.1f} s), "
        f"{args.repeat} calls each, in {ZONE}\n"
    )
    print("| group_by | rows answered | median (ms) | p99 (ms) | to_json (ms) |")
    print("|---|---:|---:|---:|---:|")
    for grouping, figures in results.items():
        print(
            f"| {','.join(grouping)} | {figures['rows']:,.0f} | {figures['median']:.1f} "
            f"| {figures['p99']:.1f} | {figures['json']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
