"""Tests for the store's hourly ledger: written with each snapshot, rebuilt, migrated, pruned,
and summed by ``breakdown`` (monitor.ledger)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest

from common.breakdown import GROUPS, Breakdown, BreakdownQuery, Group
from common.models import Snapshot
from monitor.store import AsyncSnapshotStore, SnapshotStore

T0 = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")


def posthog(
    seq: int, at: datetime, burst: float, sustained: float = 1.0, source: str = "us"
) -> Snapshot:
    """A PostHog snapshot of ``source`` at ``at``; its daily window resets at the next midnight."""
    day_end = at.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return Snapshot.model_validate(
        {
            "seq": seq,
            "source": source,
            "fetched_at": at,
            "usage": {
                "product": "posthog_code",
                "burst": {"used_percent": burst, "reset_at": day_end},
                "sustained": {"used_percent": sustained, "reset_at": T0 + timedelta(days=30)},
            },
        }
    )


def router(seq: int, at: datetime, spend: float) -> Snapshot:
    """An OpenRouter-like snapshot: a usd meter with a 50 USD limit and one without."""
    return Snapshot.model_validate(
        {
            "seq": seq,
            "source": "router",
            "kind": "openrouter",
            "fetched_at": at,
            "usage": {},
            "meters": [
                {"id": "limit", "label": "Limit", "unit": "usd", "used": spend, "limit": 50.0,
                 "used_percent": spend / 50.0 * 100},
                {"id": "spend", "label": "Spend", "unit": "usd", "used": spend * 2},
            ],
        }
    )  # fmt: skip


def day_of_polls(
    start: datetime, hours: int, every: timedelta = timedelta(minutes=15)
) -> list[Snapshot]:
    """Snapshots of two sources every ``every`` for ``hours`` from ``start``, usage growing
    steadily (the daily window resets at midnight UTC)."""
    snapshots = []
    at, seq = start, 1
    while at < start + timedelta(hours=hours):
        minutes = (at - at.replace(hour=0, minute=0)).total_seconds() / 60
        snapshots.append(posthog(seq, at, burst=minutes / 20, sustained=seq / 10))
        snapshots.append(router(seq, at, spend=seq * 0.125))
        at, seq = at + every, seq + 1
    return snapshots


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SnapshotStore]:
    s = SnapshotStore(tmp_path / "usage.db")
    s.open()
    yield s
    s.close()


def breakdown(
    store: SnapshotStore,
    since: datetime,
    until: datetime,
    group_by: tuple[Group, ...] = (),
    zone: tzinfo = LONDON,
) -> Breakdown:
    query = BreakdownQuery(since=since, until=until, group_by=group_by, timezone=str(zone))
    return store.breakdown(query, zone)


def delete_ledger(path: Path, where: str = "") -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"DELETE FROM ledger {where}")


# --- Written with each snapshot ---------------------------------------------------------------


def test_append_writes_the_snapshot_and_its_ledger_rows(store: SnapshotStore) -> None:
    """One append is one row per meter of the snapshot's hour."""
    store.append(posthog(1, T0 + timedelta(minutes=5), burst=3.0))
    rows = store.ledger_rows()
    assert [(r.source, r.meter, r.hour, r.unit, r.polls) for r in rows] == [
        ("us", "burst", T0, "percent", 1),
        ("us", "sustained", T0, "percent", 1),
    ]


def test_a_failed_append_writes_no_ledger_row(store: SnapshotStore) -> None:
    """The snapshot and its rows are one transaction: a refused snapshot leaves no row."""
    store.append(posthog(1, T0, burst=3.0))
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON snapshots BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    with pytest.raises(Exception, match="no"):
        store.append(posthog(2, T0 + timedelta(minutes=5), burst=5.0))
    assert [row.polls for row in store.ledger_rows()] == [1, 1]


def test_restart_counts_the_rise_since_the_last_stored_snapshot(tmp_path: Path) -> None:
    """A reopened store seeds its arithmetic from the last stored snapshot."""
    path = tmp_path / "usage.db"
    first = SnapshotStore(path)
    first.append(posthog(1, T0, burst=3.0))
    first.close()
    second = SnapshotStore(path)
    second.append(posthog(2, T0 + timedelta(minutes=30), burst=7.0))
    burst = [row for row in second.ledger_rows() if row.meter == "burst"]
    assert [(row.consumed, row.polls) for row in burst] == [(4.0, 2)]
    second.close()


def test_failed_poll_counts_for_each_meter_of_the_last_snapshot(store: SnapshotStore) -> None:
    """record_failed_poll adds one to failed_polls of its hour, for every meter of the source."""
    store.record_failed_poll("router", T0)  # no snapshot yet: nothing
    store.append(router(1, T0, spend=1.0))
    store.record_failed_poll("router", T0 + timedelta(hours=2, minutes=1))
    store.record_failed_poll("router", T0 + timedelta(hours=2, minutes=2))
    assert [(r.meter, r.hour, r.polls, r.failed_polls) for r in store.ledger_rows()] == [
        ("limit", T0, 1, 0),
        ("spend", T0, 1, 0),
        ("limit", T0 + timedelta(hours=2), 0, 2),
        ("spend", T0 + timedelta(hours=2), 0, 2),
    ]


@pytest.mark.anyio
async def test_async_failed_polls_are_written_in_order(tmp_path: Path) -> None:
    """submit_failed_poll is queued after the snapshot submitted before it."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    async with anyio.create_task_group() as tg:
        await tg.start(async_store.run)
        async_store.submit(router(1, T0, spend=1.0))
        async_store.submit_failed_poll("router", T0 + timedelta(minutes=1))
        answer = await async_store.breakdown(
            BreakdownQuery(since=T0, until=T0 + timedelta(hours=1), group_by=(), timezone="UTC"),
            UTC,
        )
        async_store.close()
    assert (answer.totals.polls, answer.totals.failed_polls) == (1, 1)


def test_ledger_is_pruned_with_the_downsampled_history(tmp_path: Path) -> None:
    """Ledger hours wholly past downsampled_retention are dropped by prune; later ones stay."""
    store = SnapshotStore(tmp_path / "usage.db", downsampled_retention=timedelta(days=2))
    store.append_many([posthog(1, T0, 1.0), posthog(2, T0 + timedelta(days=1), 2.0)])
    store.prune(T0 + timedelta(days=2, minutes=90))
    assert {row.hour for row in store.ledger_rows()} == {T0 + timedelta(days=1)}
    store.close()


# --- Rebuilt from the stored snapshots --------------------------------------------------------


def test_rebuild_gives_the_rows_built_live(tmp_path: Path) -> None:
    """Deleting the whole ledger and reopening rebuilds exactly the rows built live."""
    path = tmp_path / "usage.db"
    store = SnapshotStore(path)
    for snapshot in day_of_polls(T0 - timedelta(hours=6), hours=30):
        store.append(snapshot)
    live = store.ledger_rows()
    store.close()
    delete_ledger(path)
    rebuilt = SnapshotStore(path)
    assert rebuilt.ledger_rows() == live
    rebuilt.close()


def test_rebuild_fills_the_hours_after_the_last_ledgered_one(tmp_path: Path) -> None:
    """Rows missing after the last ledgered hour are replayed from the snapshot before them,
    and the failed polls counted there are kept."""
    path = tmp_path / "usage.db"
    store = SnapshotStore(path)
    for snapshot in day_of_polls(T0, hours=6):
        store.append(snapshot)
    store.record_failed_poll("us", T0 + timedelta(hours=4, minutes=1))
    live = store.ledger_rows()
    store.close()
    delete_ledger(path, f"WHERE hour >= {int((T0 + timedelta(hours=3)).timestamp() * 1e6)}")
    with closing(sqlite3.connect(path)) as conn, conn:  # ...but not the failed polls
        conn.execute(
            "INSERT INTO ledger VALUES ('us', 'burst', ?, 'percent', 0, NULL, NULL, NULL, 0, 0, 1)",
            (int((T0 + timedelta(hours=4)).timestamp() * 1e6),),
        )
    rebuilt = SnapshotStore(path)
    hour_4 = T0 + timedelta(hours=4)
    assert rebuilt.ledger_rows() == [
        replace(row, failed_polls=0) if (row.hour, row.meter) == (hour_4, "sustained") else row
        for row in live
    ]
    rebuilt.close()


def test_a_complete_ledger_is_not_rebuilt(tmp_path: Path) -> None:
    """Opening a store whose ledger is complete changes no row (failed-poll-only hours too)."""
    path = tmp_path / "usage.db"
    store = SnapshotStore(path)
    store.append_many(day_of_polls(T0, hours=2))
    store.record_failed_poll("us", T0 + timedelta(hours=5))
    live = store.ledger_rows()
    store.close()
    reopened = SnapshotStore(path)
    assert reopened.ledger_rows() == live
    reopened.close()


def test_version_1_database_is_migrated_and_its_ledger_built(tmp_path: Path) -> None:
    """A database of schema version 1 (no ledger) opens as version 2 with its ledger rebuilt."""
    path = tmp_path / "usage.db"
    store = SnapshotStore(path)
    store.append_many(day_of_polls(T0, hours=3))
    live = store.ledger_rows()
    store.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE ledger")
        conn.execute("PRAGMA user_version = 1")
    migrated = SnapshotStore(path)
    assert migrated.ledger_rows() == live
    migrated.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)


# --- The breakdown ----------------------------------------------------------------------------


@pytest.fixture
def day_store(store: SnapshotStore) -> SnapshotStore:
    """Two sources polled every 15 minutes for two days from T0."""
    store.append_many(day_of_polls(T0, hours=48))
    store.record_failed_poll("us", T0 + timedelta(hours=3, minutes=7))
    return store


@pytest.mark.parametrize(
    "group_by",
    [(), *[(group,) for group in GROUPS], ("source", "day"), ("source", "meter", "hour")],
)
def test_totals_equal_the_sum_of_the_rows(
    day_store: SnapshotStore, group_by: tuple[Group, ...]
) -> None:
    """For every grouping, consumed totals are the rows' sums; polls too unless by meter."""
    answer = breakdown(day_store, T0, T0 + timedelta(days=2), group_by)
    rows, totals = answer.breakdown, answer.totals
    assert totals.consumed.usd == pytest.approx(sum(row.consumed.usd or 0.0 for row in rows))
    assert totals.consumed.percent == pytest.approx(
        sum(row.consumed.percent or 0.0 for row in rows)
    )
    assert (totals.polls, totals.failed_polls) == (2 * 4 * 48, 1)
    if "meter" not in group_by:
        assert sum(row.polls for row in rows) == totals.polls


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_gives_its_keys_in_order(day_store: SnapshotStore, group: Group) -> None:
    """Each group answers its key (and no other) on every row, rows ordered by it."""
    answer = breakdown(day_store, T0, T0 + timedelta(days=2), (group,), zone=UTC)
    keys = [getattr(row, group) for row in answer.breakdown]
    expected = {
        "source": ["router", "us"],
        "meter": ["burst", "limit", "spend", "sustained"],
        "hour": [(T0 + timedelta(hours=h)).isoformat() for h in range(48)],
        "day": ["2026-11-22", "2026-11-23"],
        "month": ["2026-11"],
    }[group]
    assert keys == expected
    other = [name for name in GROUPS if name != group]
    assert all(getattr(row, name) is None for row in answer.breakdown for name in other)


def test_polls_of_a_source_are_not_multiplied_by_its_meters(day_store: SnapshotStore) -> None:
    """A poll touches every meter: a source's polls are its polls, a meter's its own."""
    by_source = breakdown(day_store, T0, T0 + timedelta(days=1), ("source",))
    by_meter = breakdown(day_store, T0, T0 + timedelta(days=1), ("source", "meter"))
    assert [row.polls for row in by_source.breakdown] == [96, 96]
    assert [row.polls for row in by_meter.breakdown] == [96, 96, 96, 96]
    assert by_meter.totals.polls == 192


def test_consumed_in_dollars_and_percent(day_store: SnapshotStore) -> None:
    """usd sums usd meters (null for a PostHog source), percent sums meters with a limit."""
    answer = breakdown(day_store, T0, T0 + timedelta(hours=1), ("source", "meter"))
    consumed = {(row.source, row.meter): row.consumed for row in answer.breakdown}
    # The first poll counts nothing; the next three each add 0.125 USD to limit, 0.25 to spend.
    assert consumed["router", "limit"].usd == pytest.approx(0.375)
    assert consumed["router", "limit"].percent == pytest.approx(0.75)
    assert (consumed["router", "spend"].usd, consumed["router", "spend"].percent) == (0.75, None)
    assert (consumed["us", "burst"].usd, consumed["us", "burst"].percent) == (None, 2.25)


def test_range_edges_count_a_poll_on_the_boundary_once(store: SnapshotStore) -> None:
    """A poll exactly at 01:00 is in [01:00, 02:00), not in [00:00, 01:00)."""
    store.append_many([posthog(1, T0, 1.0), posthog(2, T0 + timedelta(hours=1), 3.0)])
    first = breakdown(store, T0, T0 + timedelta(hours=1))
    second = breakdown(store, T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert (first.totals.polls, second.totals.polls) == (1, 1)
    assert (first.totals.consumed.percent, second.totals.consumed.percent) == (0.0, 2.0)


def test_empty_range_has_no_rows_and_zero_totals(store: SnapshotStore) -> None:
    """A range without ledger rows answers no rows, null consumption and no polls."""
    answer = breakdown(store, T0, T0 + timedelta(days=1), ("source", "day"))
    assert answer.breakdown == []
    assert (answer.totals.consumed.usd, answer.totals.polls) == (None, 0)


@pytest.mark.parametrize(
    ("day", "hours"), [("2026-03-29", 23), ("2026-10-25", 25), ("2026-06-01", 24)]
)
def test_a_day_in_london_sums_exactly_its_hours(store: SnapshotStore, day: str, hours: int) -> None:
    """A calendar day in Europe/London is 23 hours when summer time starts, 25 when it ends."""
    start = datetime.fromisoformat(day).replace(tzinfo=LONDON).astimezone(UTC)
    store.append_many(
        [posthog(n + 1, start + timedelta(hours=n - 4), 0.0, float(n)) for n in range(hours + 8)]
    )
    answer = breakdown(store, start - timedelta(hours=4), start + timedelta(hours=hours + 4),
                       ("day",))  # fmt: skip
    (row,) = [row for row in answer.breakdown if row.day == day]
    assert row.polls == hours
    assert row.consumed.percent == hours  # one point a poll on the monthly window


def test_hour_keys_carry_the_offset_of_their_hour(store: SnapshotStore) -> None:
    """On the day summer time ends, 01:00 local comes twice: +01:00, then +00:00."""
    start = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)
    store.append_many([posthog(n + 1, start + timedelta(hours=n), 1.0) for n in range(2)])
    answer = breakdown(store, start, start + timedelta(hours=2), ("hour",))
    assert [row.hour for row in answer.breakdown] == [
        "2026-10-25T01:00:00+01:00",
        "2026-10-25T01:00:00+00:00",
    ]


def test_months_are_calendar_months_in_the_zone(store: SnapshotStore) -> None:
    """23:30 UTC on 31 October is 1 November in Auckland."""
    late = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
    store.append_many([posthog(1, late, 1.0)])
    answer = breakdown(store, late - timedelta(hours=1), late + timedelta(hours=1), ("month",),
                       zone=ZoneInfo("Pacific/Auckland"))  # fmt: skip
    assert [row.month for row in answer.breakdown] == ["2026-11"]


SPRING, AUTUMN = datetime(2026, 3, 27, 22, 7, tzinfo=UTC), datetime(2026, 10, 23, 22, 7, tzinfo=UTC)


def polled_over_both_changes(path: Path, zone: tzinfo) -> SnapshotStore:
    """Two sources polled every 15 minutes over both London DST changes of 2026, with a
    failed poll each time; the rollup kept in ``zone``'s days."""
    store = SnapshotStore(path, zone=zone)
    for start in (SPRING, AUTUMN):
        store.append_many(day_of_polls(start, hours=96))
        store.record_failed_poll("us", start + timedelta(hours=30, minutes=3))
    return store


def figures(answer: Breakdown) -> list[tuple[object, ...]]:
    """Each row's keys and sums, and the totals, to the fourth decimal."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return [
        (row.source, row.meter, row.day, row.month, row.polls, row.failed_polls, usd, percent)
        for row in [*answer.breakdown, answer.totals]
        for usd, percent in [(rounded(row.consumed.usd), rounded(row.consumed.percent))]
    ]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SnapshotStore, SnapshotStore]]:
    """The same polls, rolled up in London days and in UTC days (so London queries of
    the second read the hours alone)."""
    london = polled_over_both_changes(tmp_path / "london.db", LONDON)
    utc = polled_over_both_changes(tmp_path / "utc.db", UTC)
    yield london, utc
    london.close()
    utc.close()


@pytest.mark.parametrize(
    "group_by",
    [
        (),
        ("day",),
        ("source", "day"),
        ("month",),
        ("source",),
        ("meter",),
        ("source", "meter", "day"),
    ],
)
@pytest.mark.parametrize(
    ("since", "until"),
    [
        (SPRING + timedelta(hours=1), SPRING + timedelta(days=3, hours=7)),
        (AUTUMN - timedelta(hours=1), AUTUMN + timedelta(days=4)),
        (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)),
        (SPRING + timedelta(hours=15), SPRING + timedelta(hours=19)),
    ],
    ids=["spring", "autumn", "whole", "within-a-day"],
)
def test_the_daily_rollup_answers_as_the_hours_do(
    stores: tuple[SnapshotStore, SnapshotStore],
    group_by: tuple[Group, ...],
    since: datetime,
    until: datetime,
) -> None:
    """Whole days read from the rollup give the same breakdown as the hours they sum."""
    rolled, hourly = stores
    query = BreakdownQuery(since=since, until=until, group_by=group_by, timezone="Europe/London")
    assert figures(rolled.breakdown(query, LONDON)) == figures(hourly.breakdown(query, LONDON))


def test_the_rollup_is_rebuilt_for_another_zone(tmp_path: Path) -> None:
    """A store opened in another zone sums its days again in that zone."""
    polled_over_both_changes(tmp_path / "usage.db", UTC).close()
    hourly = polled_over_both_changes(tmp_path / "hours.db", UTC)
    reopened = SnapshotStore(tmp_path / "usage.db", zone=LONDON)
    query = BreakdownQuery(
        since=SPRING, until=SPRING + timedelta(days=4), group_by=("day",), timezone="Europe/London"
    )
    assert figures(reopened.breakdown(query, LONDON)) == figures(hourly.breakdown(query, LONDON))
    reopened.close()
    hourly.close()
