"""The daily report scheduler against a real store and a real HTTP receiver, on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from common.backoff import Backoff
from common.breakdown import BreakdownQuery
from common.models import SourceKind
from common.reports import ReportEntry, idempotency_key
from monitor.destinations import DirectoryDestination, ReportDestination, UrlDestination
from monitor.reporting import ReportRefused, ReportScheduler, ReportSource
from monitor.store import AsyncSnapshotStore, SnapshotStore
from simulator.history import simulated_history
from simulator.receiver import ReceiverServer, ReportReceiver
from tests.clocks import FakeClock

pytestmark = pytest.mark.anyio

UTC_ZONE = ZoneInfo("UTC")
#: Ten minutes between polls keeps ten days of history small.
INTERVAL = 600.0
#: 2026-12-11 01:00 UTC: the ten days from 1 to 10 December are closed.
NOW = datetime(2026, 12, 11, 1, 0, tzinfo=UTC)
FIRST_DAY = date(2026, 12, 1)
SOURCES = [ReportSource("us", "posthog", INTERVAL), ReportSource("router", "openrouter", INTERVAL)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncSnapshotStore]:
    async_store = AsyncSnapshotStore(SnapshotStore(tmp_path / "usage.db"))
    async with anyio.create_task_group() as task_group:
        await task_group.start(async_store.run)
        yield async_store
        async_store.close()


@pytest.fixture
async def receiver() -> AsyncIterator[ReceiverServer]:
    async with ReceiverServer(ReportReceiver()) as server:
        yield server


async def seed(
    store: AsyncSnapshotStore, name: str, kind: SourceKind, *, start: datetime, end: datetime
) -> None:
    days = (end - start) / timedelta(days=1)
    snapshots, _ = simulated_history(
        name,
        kind,
        end=end,
        days=round(days),
        interval=INTERVAL,
        usd_per_hour=2.0,
        epoch="e",
    )
    await store.append_many(snapshots)


def sent_keys(receiver: ReportReceiver) -> dict[str, set[bytes]]:
    return receiver.bodies_by_key()


class Scheduled:
    """A scheduler with a fake clock, its destinations, and what it announced."""

    def __init__(
        self,
        store: AsyncSnapshotStore,
        destinations: list[ReportDestination],
        *,
        zone: ZoneInfo = UTC_ZONE,
        sources: list[ReportSource] = SOURCES,
        now: datetime = NOW,
        **options: Any,
    ) -> None:
        self.clock = FakeClock(now)
        self.delivered: list[ReportEntry] = []
        self.failed: list[ReportEntry] = []
        self.scheduler = ReportScheduler(
            store,
            sources,
            zone=zone,
            destinations=destinations,
            clock=self.clock,
            on_delivered=self.delivered.append,
            on_failed=self.failed.append,
            **{"backoff": Backoff(initial=0.0, maximum=0.0), **options},
        )


@pytest.fixture
async def seeded(store: AsyncSnapshotStore) -> AsyncSnapshotStore:
    """Both sources polled every ten minutes from 1 December 01:00 to 11 December 01:00."""
    for source in SOURCES:
        await seed(
            store, source.name, source.kind, start=datetime(2026, 12, 1, tzinfo=UTC), end=NOW
        )
    return store


@pytest.fixture
async def url(receiver: ReceiverServer) -> AsyncIterator[UrlDestination]:
    destination = UrlDestination(receiver.url + "/reports", timeout=2.0)
    yield destination
    await destination.aclose()


def days_of(first: date, count: int) -> list[date]:
    return [first + timedelta(days=offset) for offset in range(count)]


async def test_ten_closed_days_give_ten_reports_per_source_under_one_key_each(
    seeded: AsyncSnapshotStore, receiver: ReceiverServer, url: UrlDestination
) -> None:
    """Ten closed days of two sources: twenty reports, each key once, oldest first."""
    run = Scheduled(seeded, [url], concurrency=1)
    with anyio.fail_after(20):
        await run.scheduler.catch_up()
    expected = [idempotency_key(s.name, day) for day in days_of(FIRST_DAY, 10) for s in SOURCES]
    assert [request.key for request in receiver.receiver.requests] == expected
    assert all(len(bodies) == 1 for bodies in sent_keys(receiver.receiver).values())
    assert (run.scheduler.pending, run.scheduler.failed) == (0, 0)
    assert len(run.delivered) == 20


async def test_a_report_counts_what_the_breakdown_counts_for_its_day(
    seeded: AsyncSnapshotStore, receiver: ReceiverServer, url: UrlDestination
) -> None:
    """Each report's consumed, polls and failed polls equal the breakdown by source and day."""
    with anyio.fail_after(20):
        await Scheduled(seeded, [url]).scheduler.catch_up()
        breakdown = await seeded.breakdown(
            BreakdownQuery(
                since=datetime(2026, 12, 1, tzinfo=UTC),
                until=datetime(2026, 12, 11, tzinfo=UTC),
                group_by=("source", "day"),
                timezone="UTC",
            ),
            UTC_ZONE,
        )
    rows = {(row.source, row.day): row for row in breakdown.breakdown}
    reports = receiver.receiver.reports()
    assert len(reports) == len(rows) == 20
    for report in reports.values():
        row = rows[(report["source"], report["usage_day"])]
        assert report["consumed"] == pytest.approx(row.consumed.model_dump())
        assert (report["polls"], report["failed_polls"]) == (row.polls, row.failed_polls)
        # The history starts at 01:00 on the first day: an hour of it is not covered.
        first_day = report["usage_day"] == FIRST_DAY.isoformat()
        assert report["coverage"] == (round(23 / 24, 4) if first_day else 1.0)


async def test_a_receiver_down_at_first_gets_every_day_with_one_body_per_key(
    seeded: AsyncSnapshotStore, receiver: ReceiverServer, url: UrlDestination
) -> None:
    """500s then 200s: every day is delivered in the end, each key with the same body."""
    run = Scheduled(seeded, [url])
    receiver.receiver.fail(500)
    with anyio.fail_after(20):
        await run.scheduler.catch_up()
        assert run.scheduler.pending == 20
        assert run.scheduler.last_error is not None
        assert run.scheduler.last_error.startswith("report_url: HTTP 500")
        receiver.receiver.recover()
        await run.scheduler.catch_up()
    assert run.scheduler.pending == 0 and run.scheduler.last_error is None
    assert len(receiver.receiver.accepted) == 20
    assert all(len(bodies) == 1 for bodies in sent_keys(receiver.receiver).values())


async def test_a_refused_report_fails_alone_and_is_announced_once(
    seeded: AsyncSnapshotStore, receiver: ReceiverServer, url: UrlDestination
) -> None:
    """A 400 fails that report only; it is announced once and not sent again by itself."""
    run = Scheduled(seeded, [url], concurrency=1)
    receiver.receiver.fail(400, times=1)
    with anyio.fail_after(20):
        await run.scheduler.catch_up()
        await run.scheduler.catch_up()
    first = idempotency_key("us", FIRST_DAY)
    assert [entry.report_id for entry in run.failed] == ["us:2026-12-01"]
    assert run.failed[0].last_error is not None and "HTTP 400" in run.failed[0].last_error
    assert [r.key for r in receiver.receiver.requests].count(first) == 1
    assert len(receiver.receiver.accepted) == 19
    assert (run.scheduler.pending, run.scheduler.failed) == (0, 1)


async def test_a_report_made_again_by_hand_is_the_same_key_and_body(
    seeded: AsyncSnapshotStore, receiver: ReceiverServer, url: UrlDestination
) -> None:
    """deliver_now on a delivered day sends the same key and body; 409 keeps it delivered."""
    run = Scheduled(seeded, [url])
    with anyio.fail_after(20):
        await run.scheduler.catch_up()
        report, entry = await run.scheduler.deliver_now("us", date(2026, 12, 5))
    key = idempotency_key("us", date(2026, 12, 5))
    answers = [r.status for r in receiver.receiver.requests if r.key == key]
    assert answers == [201, 409]
    assert len(sent_keys(receiver.receiver)[key]) == 1
    assert entry.state == "delivered" and entry.attempts == 2
    assert report.usage_day == date(2026, 12, 5)


async def test_a_destination_that_hangs_times_out_and_the_report_stays_pending(
    seeded: AsyncSnapshotStore, receiver: ReceiverServer
) -> None:
    """A receiver that never answers costs one timeout; the reports wait, saved."""
    receiver.receiver.hang()
    hanging = UrlDestination(receiver.url, timeout=0.3)
    paused = Backoff(initial=60.0, maximum=60.0)
    run = Scheduled(seeded, [hanging], sources=SOURCES[:1], concurrency=1, backoff=paused)
    try:
        with anyio.fail_after(20):
            await run.scheduler.catch_up()
    finally:
        await hanging.aclose()
    assert len(receiver.receiver.requests) == 1  # then the destination is paused
    assert run.scheduler.pending == 10
    assert run.scheduler.last_error == "report_url: no answer within 0.3 s"
    assert await seeded.saved_report("us", FIRST_DAY) is not None


async def test_a_report_dir_that_cannot_be_written_keeps_the_reports_saved_and_pending(
    seeded: AsyncSnapshotStore, tmp_path: Path
) -> None:
    """A report_dir that cannot be created: every report saved, pending, the cause told."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    run = Scheduled(seeded, [DirectoryDestination(blocker / "reports")], sources=SOURCES[:1])
    with anyio.fail_after(20):
        await run.scheduler.catch_up()
    assert run.scheduler.pending == 10
    assert run.scheduler.last_error is not None
    assert run.scheduler.last_error.startswith("report_dir: cannot write")
    assert await seeded.saved_report("us", date(2026, 12, 10)) is not None


async def test_report_dir_gets_one_file_per_source_and_day(
    seeded: AsyncSnapshotStore, tmp_path: Path
) -> None:
    """Each report lands as <dir>/<source>/<day>.json, exactly the saved bytes."""
    directory = tmp_path / "reports"
    run = Scheduled(seeded, [DirectoryDestination(directory)])
    with anyio.fail_after(20):
        await run.scheduler.catch_up()
    files = sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*.json"))
    assert len(files) == 20 and files[0] == "router/2026-12-01.json"
    saved = await seeded.saved_report("router", FIRST_DAY)
    assert (directory / "router" / "2026-12-01.json").read_text() == saved


async def test_a_clock_that_jumps_catches_up_forward_and_sends_nothing_twice_backward(
    seeded: AsyncSnapshotStore, receiver: ReceiverServer, url: UrlDestination
) -> None:
    """Three days forward: three more days per source; back again: nothing is sent."""
    run = Scheduled(seeded, [url])
    with anyio.fail_after(20):
        await run.scheduler.catch_up()
        run.clock.advance(days=3)
        await run.scheduler.catch_up()
        assert len(receiver.receiver.accepted) == 26
        run.clock.advance(days=-5)
        await run.scheduler.catch_up()
    assert len(receiver.receiver.requests) == 26
    later = receiver.receiver.reports()[idempotency_key("us", date(2026, 12, 13))]
    assert (later["coverage"], later["polls"]) == (0.0, 0)


async def test_a_day_that_leaves_summer_time_has_25_hours(store: AsyncSnapshotStore) -> None:
    """London's 25 October 2026: a 25-hour period, every hour's polls counted."""
    london = ZoneInfo("Europe/London")
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # midnight of the 25th, summer time
    await seed(store, "us", "posthog", start=start, end=start + timedelta(days=2))
    run = Scheduled(store, [], zone=london, sources=SOURCES[:1], now=start + timedelta(days=2))
    with anyio.fail_after(20):
        report, entry = await run.scheduler.deliver_now("us", date(2026, 10, 25))
    assert report.period.end - report.period.start == timedelta(hours=25)
    assert report.polls == 25 * 6
    assert report.coverage == 1.0
    assert entry.state == "delivered"


async def test_a_source_added_later_gets_reports_from_its_first_data_on(
    store: AsyncSnapshotStore, receiver: ReceiverServer, url: UrlDestination
) -> None:
    """A source whose history starts on 8 December is reported from the 8th only."""
    await seed(store, "us", "posthog", start=datetime(2026, 12, 1, tzinfo=UTC), end=NOW)
    await seed(store, "router", "openrouter", start=datetime(2026, 12, 8, tzinfo=UTC), end=NOW)
    with anyio.fail_after(20):
        await Scheduled(store, [url]).scheduler.catch_up()
    days = sorted(key.rsplit(":", 1)[1] for key in receiver.receiver.accepted if ":router:" in key)
    assert days == ["2026-12-08", "2026-12-09", "2026-12-10"]


@pytest.mark.parametrize(
    ("day", "options", "refusal"),
    [
        (date(2026, 12, 11), {}, "has not closed yet"),
        (date(2026, 11, 30), {}, "nothing before 2026-12-01"),
        (date(2026, 12, 2), {"since": date(2026, 12, 3)}, "reports_since"),
    ],
)
async def test_a_report_by_hand_of_a_day_that_cannot_have_one_is_refused(
    seeded: AsyncSnapshotStore, day: date, options: dict[str, Any], refusal: str
) -> None:
    """An open day, a day before the data or before reports_since: refused, nothing saved."""
    run = Scheduled(seeded, [], **options)
    with anyio.fail_after(10), pytest.raises(ReportRefused, match=refusal):
        await run.scheduler.deliver_now("us", day)
    assert await seeded.saved_report("us", day) is None


async def test_a_report_built_twice_differs_only_in_generated_at(tmp_path: Path) -> None:
    """Two stores of the same polls, reports built hours apart: the same but generated_at."""
    reports = []
    for name, now in (("a", NOW), ("b", NOW + timedelta(hours=5))):
        other = AsyncSnapshotStore(SnapshotStore(tmp_path / f"{name}.db"))
        async with anyio.create_task_group() as task_group:
            await task_group.start(other.run)
            await seed(other, "us", "posthog", start=datetime(2026, 12, 1, tzinfo=UTC), end=NOW)
            with anyio.fail_after(10):
                report, _ = await Scheduled(other, [], now=now).scheduler.deliver_now(
                    "us", date(2026, 12, 3)
                )
            other.close()
        reports.append(report)
    first, second = reports
    assert first.generated_at != second.generated_at
    assert first.model_copy(update={"generated_at": NOW}) == second.model_copy(
        update={"generated_at": NOW}
    )
