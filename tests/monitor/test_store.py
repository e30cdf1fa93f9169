"""Tests for monitor.store: SQLite persistence and its non-blocking async wrapper."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from common.models import Snapshot
from monitor.exceptions import StoreError
from monitor.store import AsyncSnapshotStore, SnapshotStore

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def snap(seq: int, at: datetime = T0, burst: float = 10.0, sustained: float = 5.0) -> Snapshot:
    """A snapshot with sequence number ``seq`` taken at ``at``."""
    return Snapshot.model_validate(
        {
            "seq": seq,
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


def seqs(store: SnapshotStore, **kwargs: Any) -> list[int]:
    return [p.seq for p in store.history(**kwargs)]


def table_count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        count: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return count


# --- SnapshotStore ------------------------------------------------------------------------


def test_latest_is_none_in_a_fresh_database(store: SnapshotStore) -> None:
    """A new database has no snapshot."""
    assert store.latest() is None


def test_latest_returns_the_full_snapshot(store: SnapshotStore) -> None:
    """latest() gives back the snapshot as appended, unknown gateway fields included."""
    store.append(snap(1))
    store.append(snap(2, T0 + timedelta(seconds=30)))
    latest = store.latest()
    assert latest == snap(2, T0 + timedelta(seconds=30))
    assert latest.usage.model_extra == {"code_usage_subscribed": True}


def test_latest_survives_a_restart(tmp_path: Path) -> None:
    """A reopened store still knows the last seq."""
    first = SnapshotStore(tmp_path / "usage.db")
    first.append(snap(41))
    first.close()
    assert SnapshotStore(tmp_path / "usage.db").latest() == snap(41)


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
    [point] = store.history()
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
        store.history(limit=0)


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
    assert store.latest() == snap(7)


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
    assert store.load_alert_state() == {}


def test_alert_state_round_trips(store: SnapshotStore) -> None:
    """The last saved alert state is what loads."""
    store.save_alert_state({"burst": {"crossed": [50.0]}})
    store.save_alert_state({"burst": {"crossed": [50.0, 75.0]}})
    assert store.load_alert_state() == {"burst": {"crossed": [50.0, 75.0]}}


def test_unreadable_alert_state_loads_empty(store: SnapshotStore) -> None:
    """Alert state that is not a JSON object is ignored rather than raised."""
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute("INSERT INTO state (key, value) VALUES ('alert_state', '[1, 2')")
    assert store.load_alert_state() == {}


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
    assert store.latest() == snap(1)
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
    """latest(), history() and load_alert_state() work from async code."""
    sync_store = SnapshotStore(tmp_path / "usage.db")
    sync_store.append(snap(5))
    sync_store.save_alert_state({"k": 1})
    async_store = AsyncSnapshotStore(sync_store)
    with anyio.fail_after(5):
        assert await async_store.latest() == snap(5)
        assert [p.seq for p in await async_store.history(limit=10)] == [5]
        assert await async_store.load_alert_state() == {"k": 1}


@pytest.mark.anyio
async def test_async_reads_see_every_write_submitted_before_them(tmp_path: Path) -> None:
    """A read issued right after submit() waits for that write, so it reads its own writes."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(async_store.run)
            for i in (1, 2, 3):
                async_store.submit(snap(i, T0 + timedelta(seconds=i)))
            latest = await async_store.latest()
            points = await async_store.history(limit=10)
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
            async_store.submit_alert_state(state)
            state["burst"].append(75.0)
            async_store.close()
    assert async_store.store.load_alert_state() == {"burst": [50.0]}


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
    assert async_store.store.latest() is None


@pytest.mark.anyio
async def test_async_submit_after_writer_cancelled_is_dropped(tmp_path: Path) -> None:
    """Submitting after the writer task was cancelled neither raises nor writes."""
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(async_store.run)
            tg.cancel_scope.cancel()
    async_store.submit(snap(1))
    assert async_store.store.latest() is None
