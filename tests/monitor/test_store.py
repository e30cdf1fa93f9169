"""Tests for monitor.store: SQLite persistence and its non-blocking async wrapper."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from common.history import MeterReading
from common.models import Snapshot, Usage
from monitor.exceptions import DatabaseInUse, StoreError
from monitor.store import AsyncSnapshotStore, DatabaseLock, SnapshotStore

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The source the tests store under unless they say otherwise.
US = "us"


def snap(
    seq: int,
    at: datetime = T0,
    burst: float = 10.0,
    sustained: float = 5.0,
    source: str = US,
) -> Snapshot:
    """A PostHog snapshot of ``source`` with sequence number ``seq`` taken at ``at``."""
    return Snapshot.model_validate(
        {
            "seq": seq,
            "source": source,
            "fetched_at": at,
            "usage": {
                "product": "posthog_code",
                "user_id": 1234,
                "burst": {"used_percent": burst, "reset_at": at + timedelta(hours=6)},
                "sustained": {"used_percent": sustained, "reset_at": at + timedelta(days=20)},
                "code_usage_subscribed": True,
            },
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SnapshotStore]:
    s = SnapshotStore(tmp_path / "usage.db")
    s.open()
    yield s
    s.close()


def router_snap(seq: int, at: datetime = T0) -> Snapshot:
    """An OpenRouter snapshot of source ``router``: usd meters, one without a limit, one
    that never resets."""
    return Snapshot.model_validate(
        {
            "seq": seq,
            "source": "router",
            "kind": "openrouter",
            "fetched_at": at,
            "usage": {
                "data": {
                    "limit": 50.0,
                    "limit_remaining": 37.5,
                    "limit_reset": "monthly",
                    "usage_daily": 3.1,
                    "usage_monthly": 12.5,
                    "usage": 40.25,
                }
            },
            "meters": [
                {
                    "id": "limit",
                    "label": "Key limit",
                    "unit": "usd",
                    "used": 12.5,
                    "limit": 50.0,
                    "used_percent": 25.0,
                    "reset_at": T0 + timedelta(days=9),
                },
                {
                    "id": "today",
                    "label": "Today",
                    "unit": "usd",
                    "used": 3.1,
                    "reset_at": T0 + timedelta(hours=12),
                },
                {"id": "total", "label": "Total", "unit": "usd", "used": 40.25},
            ],
        }
    )


def seqs(store: SnapshotStore, source: str = US, **kwargs: Any) -> list[int]:
    return [p.seq for p in store.history(source, **kwargs)]


def table_count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        count: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return count


# --- SnapshotStore ------------------------------------------------------------------------


def test_latest_is_none_in_a_fresh_database(store: SnapshotStore) -> None:
    """A new database has no snapshot."""
    assert store.latest(US) is None


def test_latest_returns_the_full_snapshot(store: SnapshotStore) -> None:
    """latest() gives back the snapshot as appended, unknown gateway fields included."""
    store.append(snap(1))
    store.append(snap(2, T0 + timedelta(seconds=30)))
    latest = store.latest(US)
    assert latest == snap(2, T0 + timedelta(seconds=30))
    assert isinstance(latest.usage, Usage)
    assert latest.usage.model_extra == {"code_usage_subscribed": True}


def test_latest_survives_a_restart(tmp_path: Path) -> None:
    """A reopened store still knows the last seq."""
    first = SnapshotStore(tmp_path / "usage.db")
    first.append(snap(41))
    first.close()
    assert SnapshotStore(tmp_path / "usage.db").latest(US) == snap(41)


def test_database_uses_wal(store: SnapshotStore) -> None:
    """The database is in WAL mode, so readers never wait for the writer."""
    with closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    """The store creates the directory its database lives in."""
    SnapshotStore(tmp_path / "a" / "b" / "usage.db").open()
    assert (tmp_path / "a" / "b" / "usage.db").exists()


def test_history_returns_points_in_range_oldest_first(store: SnapshotStore) -> None:
    """history(since, until) is inclusive and ordered by time."""
    for i in range(1, 6):
        store.append(snap(i, T0 + timedelta(minutes=i)))
    assert seqs(store, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4)) == [
        2,
        3,
        4,
    ]


def test_history_points_carry_percent_and_resets(store: SnapshotStore) -> None:
    """Each point has the usage columns of its snapshot."""
    store.append(snap(1, T0, burst=37.5, sustained=12.1))
    [point] = store.history(US)
    assert (point.fetched_at, point.burst_percent, point.sustained_percent) == (T0, 37.5, 12.1)
    assert point.burst_reset_at == T0 + timedelta(hours=6)
    assert point.sustained_reset_at == T0 + timedelta(days=20)


def test_history_thins_evenly_and_keeps_the_newest(store: SnapshotStore) -> None:
    """Ten points with limit 4 give every third one, ending with the newest."""
    for i in range(1, 11):
        store.append(snap(i, T0 + timedelta(minutes=i)))
    assert seqs(store, limit=4) == [1, 4, 7, 10]


def test_history_limit_one_is_the_newest(store: SnapshotStore) -> None:
    """limit=1 returns only the newest point."""
    for i in range(1, 4):
        store.append(snap(i, T0 + timedelta(minutes=i)))
    assert seqs(store, limit=1) == [3]


def test_history_rejects_a_limit_below_one(store: SnapshotStore) -> None:
    """A limit of zero is a caller bug."""
    with pytest.raises(ValueError):
        store.history(US, limit=0)


def test_prune_folds_old_points_into_one_per_hour(store: SnapshotStore) -> None:
    """Detailed points past retention become the last point of each hour."""
    for i in range(12):  # every 10 minutes for two hours
        store.append(snap(i + 1, T0 + timedelta(minutes=10 * i)))
    now = T0 + timedelta(days=8)
    store.append(snap(13, now))
    store.prune(now)
    assert seqs(store) == [6, 12, 13]
    assert table_count(store.path, "snapshots") == 1


def test_prune_keeps_recent_points_detailed(store: SnapshotStore) -> None:
    """Points inside detail_retention are untouched."""
    for i in range(1, 4):
        store.append(snap(i, T0 + timedelta(minutes=i)))
    store.prune(T0 + timedelta(days=1))
    assert seqs(store) == [1, 2, 3]


def test_prune_updates_an_hour_folded_in_two_steps(store: SnapshotStore) -> None:
    """An hour split across two prunes keeps its newest point."""
    store.append(snap(1, T0 + timedelta(minutes=10)))
    store.append(snap(2, T0 + timedelta(minutes=40)))
    store.append(snap(3, T0 + timedelta(days=30)))
    store.prune(T0 + timedelta(days=7, minutes=20))
    store.prune(T0 + timedelta(days=7, minutes=50))
    assert seqs(store) == [2, 3]


def test_prune_keeps_the_newest_snapshot_however_old(store: SnapshotStore) -> None:
    """After a long stop the last snapshot survives so seq can go on rising."""
    store.append(snap(7))
    store.prune(T0 + timedelta(days=30))
    assert store.latest(US) == snap(7)


def test_prune_drops_downsampled_points_past_their_retention(tmp_path: Path) -> None:
    """Folded points older than downsampled_retention are deleted."""
    store = SnapshotStore(
        tmp_path / "usage.db",
        detail_retention=timedelta(days=1),
        downsampled_retention=timedelta(days=10),
    )
    store.append(snap(1, T0))
    store.append(snap(2, T0 + timedelta(days=5)))
    store.append(snap(3, T0 + timedelta(days=12)))
    store.prune(T0 + timedelta(days=12))
    assert seqs(store) == [2, 3]


def test_alert_state_is_empty_by_default(store: SnapshotStore) -> None:
    """Nothing saved yet loads as an empty dict."""
    assert store.load_alert_state(US) == {}


def test_alert_state_round_trips(store: SnapshotStore) -> None:
    """The last saved alert state is what loads."""
    store.save_alert_state(US, {"burst": {"crossed": [50.0]}})
    store.save_alert_state(US, {"burst": {"crossed": [50.0, 75.0]}})
    assert store.load_alert_state(US) == {"burst": {"crossed": [50.0, 75.0]}}


def test_unreadable_alert_state_loads_empty(store: SnapshotStore) -> None:
    """Alert state that is not a JSON object is ignored rather than raised."""
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute("INSERT INTO state (key, value) VALUES ('alert_state:us', '[1, 2')")
    assert store.load_alert_state(US) == {}


def test_corrupt_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file that is not SQLite is renamed *.corrupt-* with one log line, and a fresh db used."""
    path = tmp_path / "usage.db"
    garbage = b"this is not a database" * 200
    path.write_bytes(garbage)
    store = SnapshotStore(path)
    with caplog.at_level(logging.WARNING, logger="usage_monitor.store"):
        store.append(snap(1))
    [aside] = tmp_path.glob("usage.db.corrupt-*")
    assert aside.read_bytes() == garbage
    assert store.latest(US) == snap(1)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "corrupt" in caplog.records[0].getMessage()


def test_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    """A database whose directory cannot exist raises StoreError, not OSError."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError):
        SnapshotStore(tmp_path / "file" / "usage.db").append(snap(1))


def test_full_disk_on_append_raises_store_error(store: SnapshotStore) -> None:
    """SQLITE_FULL, produced for real by capping max_page_count, becomes StoreError."""
    store.append(snap(1))
    assert store._conn is not None
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = snap(2).model_copy(update={"source": "x" * 100_000})
    with pytest.raises(StoreError, match="full"):
        store.append(big)


def test_read_only_database_on_append_raises_store_error(store: SnapshotStore) -> None:
    """A read-only database (PRAGMA query_only, as root ignores chmod) raises StoreError."""
    assert store._conn is not None
    store._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="readonly"):
        store.append(snap(1))


# --- Sources ------------------------------------------------------------------------------


def test_sources_lists_every_source_with_snapshots(store: SnapshotStore) -> None:
    """sources() names each source that has stored snapshots once, in order, and none when empty."""
    assert store.sources() == []
    store.append(snap(1, source="us"))
    store.append(router_snap(1))
    store.append(snap(1, source="eu"))
    store.append(snap(2, T0 + timedelta(seconds=30), source="us"))
    assert store.sources() == ["eu", "router", "us"]


def test_sources_do_not_see_each_others_history(store: SnapshotStore) -> None:
    """history(source) holds that source's points only, interleaved appends or not."""
    for i in range(1, 4):
        store.append(snap(i, T0 + timedelta(minutes=i), source="us"))
        store.append(snap(10 + i, T0 + timedelta(minutes=i, seconds=1), source="eu"))
    assert (seqs(store, "us"), seqs(store, "eu"), seqs(store, "nobody")) == (
        [1, 2, 3],
        [11, 12, 13],
        [],
    )


def test_sources_do_not_see_each_others_latest_or_last_seq(store: SnapshotStore) -> None:
    """latest(source) and last_seq(source) come from that source's rows, even when another
    source wrote after it with a higher seq."""
    store.append(snap(4, source="us"))
    store.append(snap(90, T0 + timedelta(seconds=1), source="eu"))
    assert (store.latest("us"), store.last_seq("us")) == (snap(4, source="us"), 4)
    assert (store.latest("eu"), store.last_seq("eu")) == (
        snap(90, T0 + timedelta(seconds=1), source="eu"),
        90,
    )
    assert (store.latest("nobody"), store.last_seq("nobody")) == (None, 0)


def test_sources_do_not_see_each_others_alert_state(store: SnapshotStore) -> None:
    """Each source's alert state is saved and loaded on its own."""
    store.save_alert_state("us", {"burst": [50.0]})
    store.save_alert_state("eu", {"sustained": [90.0]})
    assert store.load_alert_state("us") == {"burst": [50.0]}
    assert store.load_alert_state("eu") == {"sustained": [90.0]}
    assert store.load_alert_state("router") == {}


def test_usd_meters_round_trip_through_history(store: SnapshotStore) -> None:
    """A source with usd meters gets back used, its percent or None, and its reset or None,
    with the flat PostHog fields left empty."""
    store.append(router_snap(1))
    [point] = store.history("router")
    assert point.meters == {
        "limit": MeterReading(used_percent=25.0, used=12.5, reset_at=T0 + timedelta(days=9)),
        "today": MeterReading(used_percent=None, used=3.1, reset_at=T0 + timedelta(hours=12)),
        "total": MeterReading(used_percent=None, used=40.25, reset_at=None),
    }
    assert (point.burst_percent, point.sustained_reset_at) == (None, None)
    assert store.latest("router") == router_snap(1)


def test_posthog_history_points_carry_their_meters(store: SnapshotStore) -> None:
    """A PostHog point has its two meters by id, percent only."""
    store.append(snap(1, T0, burst=37.5, sustained=12.1))
    [point] = store.history(US)
    assert point.meters == {
        "burst": MeterReading(used_percent=37.5, reset_at=T0 + timedelta(hours=6)),
        "sustained": MeterReading(used_percent=12.1, reset_at=T0 + timedelta(days=20)),
    }


def test_prune_keeps_the_newest_snapshot_of_each_source(store: SnapshotStore) -> None:
    """A source that stopped long ago keeps its last snapshot while others go on."""
    store.append(snap(3, T0, source="eu"))
    store.append(snap(8, T0 + timedelta(days=30), source="us"))
    store.prune(T0 + timedelta(days=30))
    assert (store.latest("eu"), store.last_seq("eu")) == (snap(3, T0, source="eu"), 3)
    assert table_count(store.path, "snapshots") == 2


def test_prune_folds_each_source_into_its_own_hours(store: SnapshotStore) -> None:
    """Two sources with points in the same hour each keep their own last point of that hour."""
    for i in range(6):  # every 10 minutes for an hour, both sources
        store.append(snap(i + 1, T0 + timedelta(minutes=10 * i), source="us"))
        store.append(snap(i + 101, T0 + timedelta(minutes=10 * i, seconds=5), source="eu"))
    now = T0 + timedelta(days=8)
    store.append(snap(7, now, source="us"))
    store.append(snap(107, now, source="eu"))
    store.prune(now)
    assert (seqs(store, "us"), seqs(store, "eu")) == ([6, 7], [106, 107])
    assert table_count(store.path, "downsampled") == 2


# --- AsyncSnapshotStore -------------------------------------------------------------------


class FlakyStore(SnapshotStore):
    """Appends fail with StoreError for the seqs listed in ``failing``."""

    def __init__(self, path: Path, failing: set[int]) -> None:
        super().__init__(path)
        self.failing = failing

    def append(self, snapshot: Snapshot) -> None:
        if snapshot.seq in self.failing:
            raise StoreError("database or disk is full")
        super().append(snapshot)


async def run_writes(async_store: AsyncSnapshotStore, *snapshots: Snapshot) -> None:
    """Start the writer, submit everything, close and wait for the queue to drain."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(async_store.run)
            for s in snapshots:
                async_store.submit(s)
            async_store.close()


@pytest.mark.anyio
async def test_async_submitted_snapshots_are_written(tmp_path: Path) -> None:
    """Snapshots submitted to the writer are all appended in order."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    await run_writes(async_store, *(snap(i, T0 + timedelta(seconds=i)) for i in (1, 2, 3)))
    assert seqs(async_store.store) == [1, 2, 3]


@pytest.mark.anyio
async def test_async_reads_return_stored_data(tmp_path: Path) -> None:
    """sources(), latest(), last_seq(), history() and load_alert_state() work from async code."""
    sync_store = SnapshotStore(tmp_path / "usage.db")
    sync_store.append(snap(5))
    sync_store.save_alert_state(US, {"k": 1})
    async_store = AsyncSnapshotStore(sync_store)
    with anyio.fail_after(5):
        assert await async_store.sources() == [US]
        assert await async_store.latest(US) == snap(5)
        assert await async_store.last_seq(US) == 5
        assert [p.seq for p in await async_store.history(US, limit=10)] == [5]
        assert await async_store.load_alert_state(US) == {"k": 1}


@pytest.mark.anyio
async def test_async_reads_see_every_write_submitted_before_them(tmp_path: Path) -> None:
    """A read issued right after submit() waits for that write, so it reads its own writes."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(async_store.run)
            for i in (1, 2, 3):
                async_store.submit(snap(i, T0 + timedelta(seconds=i)))
            latest = await async_store.latest(US)
            points = await async_store.history(US, limit=10)
            async_store.close()
    assert latest == snap(3, T0 + timedelta(seconds=3))
    assert [p.seq for p in points] == [1, 2, 3]


@pytest.mark.anyio
async def test_async_alert_state_is_saved_as_submitted(tmp_path: Path) -> None:
    """The state is copied at submit time, so later mutation by the caller is not saved."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    state = {"burst": [50.0]}
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(async_store.run)
            async_store.submit_alert_state(US, state)
            state["burst"].append(75.0)
            async_store.close()
    assert async_store.store.load_alert_state(US) == {"burst": [50.0]}


@pytest.mark.anyio
async def test_async_full_queue_drops_the_oldest_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the queue full, submit drops the oldest waiting write and logs it once."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"), max_pending=2)
    with caplog.at_level(logging.WARNING, logger="usage_monitor.store"):
        await run_writes(async_store, *(snap(i, T0 + timedelta(seconds=i)) for i in range(1, 7)))
    stored = seqs(async_store.store)
    assert stored[-2:] == [5, 6]
    assert {3, 4}.isdisjoint(stored)
    assert caplog.text.count("falling behind") == 1


@pytest.mark.anyio
async def test_async_write_error_is_logged_once_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Consecutive failures log one error and leave last_error set, without raising."""
    async_store = AsyncSnapshotStore(FlakyStore(tmp_path / "usage.db", failing={1, 2, 3}))
    with caplog.at_level(logging.ERROR, logger="usage_monitor.store"):
        await run_writes(async_store, *(snap(i, T0 + timedelta(seconds=i)) for i in (1, 2, 3)))
    assert async_store.last_error is not None
    assert "full" in async_store.last_error
    assert len(caplog.records) == 1


@pytest.mark.anyio
async def test_async_successful_write_clears_last_error(tmp_path: Path) -> None:
    """A write that works after failures ends the episode."""
    async_store = AsyncSnapshotStore(FlakyStore(tmp_path / "usage.db", failing={1}))
    await run_writes(async_store, snap(1), snap(2, T0 + timedelta(seconds=1)))
    assert async_store.last_error is None
    assert seqs(async_store.store) == [2]


@pytest.mark.anyio
async def test_async_unopenable_database_does_not_crash_the_writer(tmp_path: Path) -> None:
    """If the database cannot be opened, run() still starts and reports the error."""
    (tmp_path / "file").write_text("")
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "file" / "usage.db"))
    await run_writes(async_store, snap(1))
    assert async_store.last_error is not None


@pytest.mark.anyio
async def test_async_writer_prunes_as_snapshot_time_passes(tmp_path: Path) -> None:
    """Appending a snapshot prune_every after the last prune folds old detail."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    await run_writes(async_store, snap(1, T0), snap(2, T0 + timedelta(days=8)))
    assert seqs(async_store.store) == [1, 2]
    assert table_count(async_store.store.path, "snapshots") == 1


@pytest.mark.anyio
async def test_async_submit_after_close_is_dropped(tmp_path: Path) -> None:
    """Submitting to a closed store neither raises nor writes."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    await run_writes(async_store)
    async_store.submit(snap(1))
    assert async_store.store.latest(US) is None


@pytest.mark.anyio
async def test_async_submit_after_writer_cancelled_is_dropped(tmp_path: Path) -> None:
    """Submitting after the writer task was cancelled neither raises nor writes."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(async_store.run)
            tg.cancel_scope.cancel()
    async_store.submit(snap(1))
    assert async_store.store.latest(US) is None


# --- Epoch and sequence numbers -----------------------------------------------------------


def make_read_only(path: Path) -> None:
    """Make SQLite refuse writes to ``path`` even for root, which ignores file modes.

    A database header whose write version (byte 18) is above 2 is one that
    SQLite may read but must not write: the same "attempt to write a readonly
    database" as a 0444 file or a read-only mount gives.
    """
    with path.open("r+b") as file:
        file.seek(18)
        file.write(bytes([3]))


def test_epoch_is_made_with_the_database_and_kept(tmp_path: Path) -> None:
    """A new database gets a random epoch, and a reopened one has the same epoch."""
    first = SnapshotStore(tmp_path / "usage.db")
    first.open()
    epoch = first.epoch
    first.close()
    again = SnapshotStore(tmp_path / "usage.db")
    again.open()
    other = SnapshotStore(tmp_path / "other.db")
    other.open()
    assert epoch and again.epoch == epoch
    assert other.epoch and other.epoch != epoch


def test_last_seq_is_the_highest_in_either_table(store: SnapshotStore) -> None:
    """last_seq() is the largest seq in the detailed and the downsampled rows, 0 when empty."""
    assert store.last_seq(US) == 0
    store.append(snap(5, T0 + timedelta(days=9)))
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute(
            "INSERT INTO downsampled (source, bucket_start, fetched_at, seq, readings)"
            " VALUES ('us', 0, 1000000, 9, '{}')"
        )
    assert store.last_seq(US) == 9


def test_last_seq_holds_when_the_newest_body_cannot_be_loaded(store: SnapshotStore) -> None:
    """An unloadable newest snapshot fails latest() with StoreError; last_seq() still counts it."""
    store.append(snap(1))
    store.append(snap(2, T0 + timedelta(seconds=30)))
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute("UPDATE snapshots SET body = '{\"seq\": 2}' WHERE seq = 2")
    with pytest.raises(StoreError):
        store.latest(US)
    assert store.last_seq(US) == 2


def test_read_only_database_is_still_read_with_its_epoch(tmp_path: Path) -> None:
    """A database that cannot be written opens with its epoch and data; writes raise StoreError."""
    path = tmp_path / "usage.db"
    first = SnapshotStore(path)
    first.append(snap(3))
    epoch = first.epoch
    first.close()
    make_read_only(path)
    store = SnapshotStore(path)
    with pytest.raises(StoreError, match="readonly"):
        store.open()
    assert (store.epoch, store.last_seq(US), store.latest(US)) == (epoch, 3, snap(3))
    with pytest.raises(StoreError, match="readonly"):
        store.append(snap(4))


# --- Reading errors -----------------------------------------------------------------------


def _year_10000(conn: sqlite3.Connection) -> None:
    # Written by an older version before times were clamped: 9999-12-31T23:59:59-14:00.
    conn.execute("""UPDATE snapshots SET readings = '{"burst":[1.0,null,253402351199000000]}'""")


def _readings_not_json(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE snapshots SET readings = '{\"burst\": [1.0'")


def _body_not_a_snapshot(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE snapshots SET body = '{\"seq\": 0}'")


def _seq_not_a_number(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE snapshots SET seq = 'x'")


@pytest.mark.parametrize(
    ("damage", "read", "cause"),
    [
        (_year_10000, SnapshotStore.history, OverflowError),
        (_readings_not_json, SnapshotStore.history, ValueError),
        (_body_not_a_snapshot, SnapshotStore.latest, ValueError),
        (_seq_not_a_number, SnapshotStore.last_seq, TypeError),
    ],
    ids=[
        "history-time-out-of-range",
        "history-readings-not-json",
        "latest-invalid-body",
        "last-seq-not-a-number",
    ],
)
def test_unreadable_stored_value_is_a_store_error_with_its_cause(
    store: SnapshotStore,
    damage: Callable[[sqlite3.Connection], None],
    read: Callable[[SnapshotStore, str], object],
    cause: type[Exception],
) -> None:
    """A stored value that cannot be read raises StoreError naming and chaining the real error."""
    store.append(snap(1))
    with closing(sqlite3.connect(store.path)) as conn, conn:
        damage(conn)
    with pytest.raises(StoreError) as raised:
        read(store, US)
    assert isinstance(raised.value.__cause__, cause)
    assert type(raised.value.__cause__).__name__ in str(raised.value)


# --- File modes and a database that goes away --------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_directory_is_created_private(tmp_path: Path) -> None:
    """The directory the store creates for its database is 0700."""
    SnapshotStore(tmp_path / "state" / "usage.db").open()
    assert mode(tmp_path / "state") == 0o700


def test_database_and_its_journal_files_are_private(store: SnapshotStore) -> None:
    """The database, its -wal and its -shm are 0600 while the store writes to them."""
    store.append(snap(1))
    paths = [Path(f"{store.path}{suffix}") for suffix in ("", "-wal", "-shm")]
    assert [mode(path) for path in paths] == [0o600, 0o600, 0o600]


def test_existing_database_readable_by_others_is_made_private(tmp_path: Path) -> None:
    """A database left 0644 by an older version is 0600 once opened."""
    path = tmp_path / "usage.db"
    SnapshotStore(path).append(snap(1))
    path.chmod(0o644)
    SnapshotStore(path).open()
    assert mode(path) == 0o600


def test_write_after_the_database_was_deleted_is_a_store_error(store: SnapshotStore) -> None:
    """Deleting the open database makes the next write fail, rather than write to the lost file."""
    store.append(snap(1))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink()
    with pytest.raises(StoreError, match="deleted"):
        store.append(snap(2, T0 + timedelta(seconds=30)))


def test_write_after_the_database_was_replaced_is_a_store_error(store: SnapshotStore) -> None:
    """A different file moved to the database's path makes the next write fail."""
    store.append(snap(1))
    other = SnapshotStore(store.path.with_name("other.db"))
    other.append(snap(1))
    other.close()
    other.path.replace(store.path)
    with pytest.raises(StoreError, match="replaced"):
        store.append(snap(2, T0 + timedelta(seconds=30)))


# --- History at scale ---------------------------------------------------------------------


def fill(
    path: Path, table: str, count: int, start: datetime, every: timedelta, source: str = US
) -> None:
    """Insert ``count`` points of ``source`` into ``table``, every ``every`` from ``start``,
    in one statement."""
    micros = timedelta(microseconds=1)
    extra_column, extra_value = (
        (", body", ", '{}'")
        if table == "snapshots"
        else (", bucket_start", ", :start + n * :every")
    )
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            f"INSERT INTO {table} (source, fetched_at, seq, readings{extra_column})"
            " WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < :count)"
            " SELECT :source, :start + n * :every, n + 1,"
            " json_object('burst', json_array(n % 100, NULL, :start),"
            "             'sustained', json_array(n % 50, NULL, :start))"
            f"{extra_value} FROM i",
            {
                "source": source,
                "count": count,
                "start": (start - EPOCH) // micros,
                "every": every // micros,
            },
        )


def reader_steps(store: SnapshotStore) -> list[int]:
    """A counter of the SQLite virtual machine steps (in hundreds) of the store's reads."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.open()
    assert store._reader is not None
    store._reader.set_progress_handler(count, 100)
    return steps


def test_history_of_a_large_store_is_sampled_in_sql(store: SnapshotStore) -> None:
    """Over 200,000 rows, limit 500 gives 500 points evenly spread in time, the newest last,
    with work that depends on the limit, not on the rows."""
    every = timedelta(seconds=30)
    fill(store.path, "snapshots", 200_000, T0, every)
    steps = reader_steps(store)
    points = store.history(US, limit=500)
    gaps = {b.fetched_at - a.fetched_at for a, b in itertools.pairwise(points)}
    span = every * (200_000 - 1)
    assert len(points) == 500
    assert (points[0].seq, points[-1].seq) == (1, 200_000)
    assert max(gaps) - min(gaps) <= every
    assert abs(min(gaps) - span / 499) <= every
    # A full scan takes about 15 steps a row: 3,000,000 here.
    assert steps[0] * 100 < 400 * 500


def test_prune_with_nothing_to_fold_reads_no_rows(store: SnapshotStore) -> None:
    """Over 200,000 recent rows, a prune finds through the index that nothing is old enough."""
    fill(store.path, "snapshots", 200_000, T0, timedelta(seconds=1))
    store.open()
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    assert store._conn is not None
    store._conn.set_progress_handler(count, 100)
    store.prune(T0)
    assert steps[0] * 100 < 10_000
    assert table_count(store.path, "snapshots") == 200_000


def test_history_spreads_points_over_both_tables(store: SnapshotStore) -> None:
    """Hourly points and detailed ones after them are sampled as one series in time."""
    fill(store.path, "downsampled", 100, T0, timedelta(hours=1))
    fill(store.path, "snapshots", 1_000, T0 + timedelta(hours=100), timedelta(minutes=6))
    points = store.history(US, limit=11)
    times = [p.fetched_at - T0 for p in points]
    assert times == [timedelta(hours=20 * i) for i in range(10)] + [
        timedelta(hours=100, minutes=6 * 999)
    ]


def test_history_with_a_gap_gives_each_point_once(store: SnapshotStore) -> None:
    """Where several sample times fall in a gap, the point after it is returned once."""
    fill(store.path, "snapshots", 10, T0, timedelta(minutes=1))
    store.append(snap(11, T0 + timedelta(days=1)))
    points = store.history(US, limit=5)
    assert [p.seq for p in points] == [1, 11]


def test_history_in_a_range_is_sampled_within_it(store: SnapshotStore) -> None:
    """since and until bound the sampled series, whose ends are the first and last in range."""
    fill(store.path, "snapshots", 1_000, T0, timedelta(minutes=1))
    points = store.history(
        US, since=T0 + timedelta(minutes=100), until=T0 + timedelta(minutes=200), limit=11
    )
    assert [p.seq for p in points] == list(range(101, 202, 10))


def test_history_of_a_small_source_ignores_a_large_one(store: SnapshotStore) -> None:
    """A source of 10 rows next to one of 200,000 reads its own 10, with work that does not
    depend on the other's rows."""
    fill(store.path, "snapshots", 200_000, T0, timedelta(seconds=1), source="big")
    fill(store.path, "snapshots", 10, T0, timedelta(minutes=1))
    steps = reader_steps(store)
    assert seqs(store, US, limit=500) == list(range(1, 11))
    assert steps[0] * 100 < 10_000


def query_plans(store: SnapshotStore, read: Callable[[], object]) -> list[str]:
    """The EXPLAIN QUERY PLAN lines of every query ``read`` runs on the store's reader."""
    store.open()
    assert store._reader is not None
    statements: list[str] = []
    store._reader.set_trace_callback(statements.append)
    try:
        read()
    finally:
        store._reader.set_trace_callback(None)
    queries = [sql for sql in statements if sql.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert queries
    with closing(sqlite3.connect(store.path)) as conn:
        return [row[3] for sql in queries for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


def test_sampled_history_descends_the_source_time_indexes(store: SnapshotStore) -> None:
    """Sampling a source's history searches both tables by (source, fetched_at), never scans."""
    fill(store.path, "downsampled", 100, T0, timedelta(hours=1))
    fill(store.path, "snapshots", 100, T0 + timedelta(hours=100), timedelta(minutes=6))
    plans = query_plans(store, lambda: store.history(US, limit=20))
    assert not [line for line in plans if line.startswith(("SCAN snapshots", "SCAN downsampled"))]
    for table in ("snapshots", "downsampled"):
        index = f"{table}_source_fetched_at"
        assert f"SEARCH {table} USING COVERING INDEX {index} (source=? AND fetched_at>?)" in plans


def test_latest_and_last_seq_descend_the_source_indexes(store: SnapshotStore) -> None:
    """latest() finds a source's last row by (source, id), last_seq() its top by (source, seq)."""
    store.append(snap(1))
    plans = query_plans(store, lambda: (store.latest(US), store.last_seq(US)))
    assert "SEARCH snapshots USING INDEX snapshots_source_id (source=?)" in plans
    assert "SEARCH snapshots USING COVERING INDEX snapshots_source_seq (source=?)" in plans
    assert not [line for line in plans if line.startswith("SCAN snapshots")]


def test_a_slow_read_does_not_hold_up_a_write(store: SnapshotStore) -> None:
    """While a history read is in progress, a write goes through at once."""
    store.append(snap(1))
    inside, release = threading.Event(), threading.Event()

    def block() -> int:
        inside.set()
        release.wait(10)
        return 0

    store.open()
    assert store._reader is not None
    store._reader.set_progress_handler(block, 1)
    reader = threading.Thread(target=store.history, args=(US,))
    reader.start()
    try:
        assert inside.wait(5)
        writer = threading.Thread(target=store.append, args=(snap(2, T0 + timedelta(1)),))
        writer.start()
        writer.join(5)
        written = not writer.is_alive()
    finally:
        release.set()
        reader.join(5)
    assert written
    assert table_count(store.path, "snapshots") == 2


# --- The database lock --------------------------------------------------------------------


def test_database_lock_refuses_a_second_holder_naming_the_first(tmp_path: Path) -> None:
    """A second lock on the same database raises DatabaseInUse with the holder's pid."""
    first = DatabaseLock(tmp_path / "usage.db")
    first.acquire()
    try:
        with pytest.raises(DatabaseInUse) as refused:
            DatabaseLock(tmp_path / "usage.db").acquire()
    finally:
        first.release()
    assert str(refused.value) == (
        f"database {tmp_path / 'usage.db'} is in use by another usage-monitor (pid {os.getpid()})"
    )
    assert mode(first.path) == 0o600


def test_database_lock_is_free_after_release(tmp_path: Path) -> None:
    """Once released, the lock can be taken again."""
    first = DatabaseLock(tmp_path / "usage.db")
    first.acquire()
    first.release()
    second = DatabaseLock(tmp_path / "usage.db")
    second.acquire()
    second.release()


@pytest.mark.anyio
async def test_async_write_running_too_long_shows_as_a_stuck_writer(tmp_path: Path) -> None:
    """A write running past stall_after shows in last_error as a stuck writer until it ends."""
    entered, release = threading.Event(), threading.Event()

    class StuckStore(SnapshotStore):
        def append(self, snapshot: Snapshot) -> None:
            entered.set()
            release.wait(10)
            super().append(snapshot)

    async_store = AsyncSnapshotStore(StuckStore(tmp_path / "usage.db"), stall_after=0.0)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(async_store.run)
            before = async_store.last_error
            async_store.submit(snap(1))
            await anyio.to_thread.run_sync(entered.wait)
            stuck = async_store.last_error
            release.set()
            await async_store.latest(US)
            after = async_store.last_error
            async_store.close()
    assert (before, after) == (None, None)
    assert stuck is not None
    assert stuck.startswith("the store's writer is stuck: a write has been running for ")


# --- Migration from the schema before sources ---------------------------------------------

#: The schema the store wrote before sources (user_version 0), as it was.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY,
    fetched_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    burst_percent REAL NOT NULL,
    sustained_percent REAL NOT NULL,
    burst_reset_at INTEGER NOT NULL,
    sustained_reset_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_fetched_at ON snapshots (fetched_at);
CREATE INDEX IF NOT EXISTS snapshots_seq ON snapshots (seq);
CREATE TABLE IF NOT EXISTS downsampled (
    bucket_start INTEGER PRIMARY KEY,
    fetched_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    burst_percent REAL NOT NULL,
    sustained_percent REAL NOT NULL,
    burst_reset_at INTEGER NOT NULL,
    sustained_reset_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS downsampled_fetched_at ON downsampled (fetched_at);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
OLD_EPOCH = "0123456789abcdef"
OLD_ALERT_STATE = {"burst": {"crossed": [50.0]}, "sustained": {"crossed": []}}


def micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def old_body(snapshot: Snapshot) -> str:
    """The body the old store kept: the snapshot as it was before kinds and meters."""
    return json.dumps(snapshot.model_dump(mode="json", exclude={"kind", "meters"}))


def make_old_database(path: Path, source: str = "default", body: str | None = None) -> None:
    """A database as the store before sources wrote it: an hourly point, three detailed
    ones (the last with ``body`` if given), the epoch and the alert state."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(OLD_SCHEMA)
        with conn:
            conn.execute(
                "INSERT INTO downsampled VALUES (?, ?, 1, 20.0, 2.0, ?, ?)",
                (
                    micros(T0 - timedelta(days=9)),
                    micros(T0 - timedelta(days=9, minutes=-50)),
                    micros(T0 - timedelta(days=8)),
                    micros(T0 + timedelta(days=11)),
                ),
            )
            for seq in (2, 3, 4):
                snapshot = snap(seq, T0 + timedelta(minutes=seq), burst=seq * 10.0, source=source)
                usage = snapshot.usage
                assert isinstance(usage, Usage)
                conn.execute(
                    "INSERT INTO snapshots (fetched_at, seq, burst_percent, sustained_percent,"
                    " burst_reset_at, sustained_reset_at, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        micros(snapshot.fetched_at),
                        seq,
                        usage.burst.used_percent,
                        usage.sustained.used_percent,
                        micros(usage.burst.reset_at),
                        micros(usage.sustained.reset_at),
                        body if body is not None and seq == 4 else old_body(snapshot),
                    ),
                )
            conn.executemany(
                "INSERT INTO state (key, value) VALUES (?, ?)",
                [("epoch", OLD_EPOCH), ("alert_state", json.dumps(OLD_ALERT_STATE))],
            )


def schema_of(path: Path) -> tuple[int, list[str]]:
    """The user_version and the table names of the database at ``path``."""
    with closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        return version, [name for (name,) in tables]


def test_old_database_is_migrated_with_its_history_latest_seq_and_alert_state(
    tmp_path: Path,
) -> None:
    """A database of the schema before sources opens with its epoch, history (hourly and
    detailed), latest snapshot, last seq and alert state under the source its rows name."""
    path = tmp_path / "usage.db"
    make_old_database(path)
    store = SnapshotStore(path)
    store.open()
    points = store.history("default")
    assert [(p.seq, p.burst_percent, p.sustained_percent) for p in points] == [
        (1, 20.0, 2.0),
        (2, 20.0, 5.0),
        (3, 30.0, 5.0),
        (4, 40.0, 5.0),
    ]
    assert (points[0].burst_reset_at, points[0].sustained_reset_at) == (
        T0 - timedelta(days=8),
        T0 + timedelta(days=11),
    )
    assert points[3].meters["burst"] == MeterReading(
        used_percent=40.0, reset_at=T0 + timedelta(minutes=4, hours=6)
    )
    assert store.latest("default") == snap(4, T0 + timedelta(minutes=4), 40.0, source="default")
    assert (store.epoch, store.last_seq("default"), store.sources()) == (
        OLD_EPOCH,
        4,
        ["default"],
    )
    assert store.load_alert_state("default") == OLD_ALERT_STATE
    tables = ["downsampled", "ledger", "ledger_days", "report_deliveries", "reports"]
    assert schema_of(path) == (3, [*tables, "snapshots", "state"])


def test_old_database_rows_go_to_the_source_their_bodies_name(tmp_path: Path) -> None:
    """Detailed rows take the source in their body; hourly rows and the alert state, which
    name none, take that of the newest detailed row."""
    path = tmp_path / "usage.db"
    make_old_database(path, source="us")
    store = SnapshotStore(path)
    assert (store.sources(), seqs(store, "us"), seqs(store, "default")) == (
        ["us"],
        [1, 2, 3, 4],
        [],
    )
    assert store.load_alert_state("us") == OLD_ALERT_STATE
    assert store.load_alert_state("default") == {}


def test_old_row_with_an_unreadable_body_is_migrated_to_the_default_source(
    tmp_path: Path,
) -> None:
    """A body that is not JSON does not stop the migration: its row goes to 'default'."""
    path = tmp_path / "usage.db"
    make_old_database(path, source="us", body="{not json")
    store = SnapshotStore(path)
    assert (seqs(store, "us"), seqs(store, "default")) == ([2, 3], [1, 4])
    assert store.load_alert_state("default") == OLD_ALERT_STATE


def test_failed_migration_leaves_the_old_database_and_is_retried(tmp_path: Path) -> None:
    """A migration that fails (here, a full disk) changes nothing, and the next open does it."""
    path = tmp_path / "usage.db"
    make_old_database(path)

    class FullDisk(SnapshotStore):
        def _connect(self) -> sqlite3.Connection:
            conn = super()._connect()
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages}")
            return conn

    full = FullDisk(path)
    with pytest.raises(StoreError, match="full"):
        full.open()
    full.close()
    assert schema_of(path) == (0, ["downsampled", "snapshots", "state"])
    assert table_count(path, "snapshots") == 3
    store = SnapshotStore(path)
    store.open()
    assert (store.epoch, seqs(store, "default")) == (OLD_EPOCH, [1, 2, 3, 4])


def test_database_of_a_later_schema_is_refused_unchanged(tmp_path: Path) -> None:
    """A database whose user_version is above the store's raises StoreError and is not written."""
    path = tmp_path / "usage.db"
    SnapshotStore(path).append(snap(1))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    store = SnapshotStore(path)
    with pytest.raises(StoreError, match="schema version 99"):
        store.append(snap(2, T0 + timedelta(seconds=30)))
    assert schema_of(path)[0] == 99
    assert table_count(path, "snapshots") == 1


def test_a_saved_value_is_loaded_back(tmp_path: Path) -> None:
    """``save_value`` keeps JSON under a key; ``load_value`` reads it, None for another key."""
    store = SnapshotStore(tmp_path / "usage.db")
    store.save_value("rules", [{"id": "a", "threshold_percent": 80}])
    assert store.load_value("rules") == [{"id": "a", "threshold_percent": 80}]
    assert store.load_value("nothing") is None
