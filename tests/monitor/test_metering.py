"""Tests for monitor.metering: the ledger's arithmetic, on snapshots and on a simulated gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from common.models import Meter, Snapshot
from monitor.exceptions import UpstreamError
from monitor.gateway import GatewayClient
from monitor.metering import LedgerRow, Metering, Observation, accumulate, hour_of
from monitor.service import MonitorEvent, PollFailed, UsageMonitorService, UsageUpdated
from monitor.store import SnapshotStore
from simulator import Failure, GatewaySimulator, SimulatorServer
from tests.clocks import FakeClock

T0 = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
RESET = T0 + timedelta(days=1)


def observe(metering: Metering, at: datetime, **meters: Observation) -> list[LedgerRow]:
    return metering.observe(at, meters)


def pct(value: float, reset_at: datetime = RESET) -> Observation:
    return Observation("percent", used_percent=value, reset_at=reset_at)


def usd(used: float, limit: float | None = None) -> Observation:
    return Observation("usd", used=used, used_percent=None if limit is None else used / limit * 100)


def rows(metering: Metering, *polls: tuple[datetime, dict[str, Observation]]) -> list[LedgerRow]:
    deltas = [delta for at, meters in polls for delta in metering.observe(at, meters)]
    return list(accumulate(deltas).values())


def test_first_observation_counts_nothing() -> None:
    """A meter's first poll books a poll, its peak and close, and nothing consumed."""
    (delta,) = observe(Metering("us"), T0, burst=pct(40.0))
    assert (delta.consumed, delta.consumed_percent, delta.polls, delta.resets) == (0, 0, 1, 0)
    assert (delta.peak_used_percent, delta.close_used_percent) == (40.0, 40.0)


def test_rises_add_up_within_the_hour() -> None:
    """Rises of used_percent are summed; peak is the highest, close the last."""
    (row,) = rows(
        Metering("us"),
        (T0, {"burst": pct(10.0)}),
        (T0 + timedelta(minutes=20), {"burst": pct(15.0)}),
        (T0 + timedelta(minutes=40), {"burst": pct(17.5)}),
    )
    assert (row.consumed, row.consumed_percent, row.polls) == (7.5, 7.5, 3)
    assert (row.peak_used_percent, row.close_used_percent) == (17.5, 17.5)


def test_usd_meter_consumes_dollars_and_percent_of_its_limit() -> None:
    """A usd meter with a limit: consumed in dollars, consumed_percent in points of the limit."""
    (_, row) = rows(
        Metering("router"),
        (T0, {"limit": usd(10.0, 50.0)}),
        (T0 + timedelta(hours=1), {"limit": usd(15.0, 50.0)}),
    )
    assert (row.unit, row.consumed, row.consumed_percent) == ("usd", 5.0, pytest.approx(10.0))


def test_usd_meter_without_a_limit_has_no_percent() -> None:
    """A meter with no limit has no percentage: consumed_percent and peak are None."""
    (row,) = rows(
        Metering("router"),
        (T0, {"spend": usd(1.0)}),
        (T0 + timedelta(minutes=5), {"spend": usd(3.0)}),
    )
    assert (row.consumed, row.consumed_percent, row.peak_used_percent) == (2.0, None, None)


def test_reset_in_the_middle_of_an_hour_counts_from_zero() -> None:
    """A drop is a reset: the new value counts from zero, and resets is 1."""
    (row,) = rows(
        Metering("us"),
        (T0, {"burst": pct(90.0)}),
        (T0 + timedelta(minutes=20), {"burst": pct(96.0)}),
        (T0 + timedelta(minutes=30), {"burst": pct(2.0, RESET + timedelta(days=1))}),
        (T0 + timedelta(minutes=50), {"burst": pct(5.0, RESET + timedelta(days=1))}),
    )
    assert (row.consumed, row.resets, row.peak_used_percent, row.close_used_percent) == (
        6.0 + 2.0 + 3.0,
        1,
        96.0,
        5.0,
    )


def test_reset_at_moved_to_a_later_window_is_a_reset_without_a_drop() -> None:
    """A new window whose usage is already above the last reading: the whole value counts."""
    metering = Metering("us")
    observe(metering, T0, burst=pct(10.0))
    (delta,) = observe(metering, T0 + timedelta(minutes=10), burst=pct(12.0, RESET + timedelta(1)))
    assert (delta.consumed, delta.resets) == (12.0, 1)


def test_reset_at_jitter_is_no_reset() -> None:
    """A reset_at that moves within RESET_JITTER is the same window."""
    metering = Metering("us")
    observe(metering, T0, burst=pct(10.0))
    later = RESET + timedelta(seconds=90)
    (delta,) = observe(metering, T0 + timedelta(minutes=10), burst=pct(12.0, later))
    assert (delta.consumed, delta.resets) == (2.0, 0)


def test_gap_books_the_rise_to_the_hour_it_was_observed_in() -> None:
    """Three hours without polls invent no rows: the rise across them is in the next poll's hour."""
    found = rows(
        Metering("us"),
        (T0 + timedelta(minutes=50), {"burst": pct(10.0)}),
        (T0 + timedelta(hours=4, minutes=10), {"burst": pct(40.0)}),
    )
    assert [(row.hour, row.consumed, row.polls) for row in found] == [
        (T0, 0.0, 1),
        (T0 + timedelta(hours=4), 30.0, 1),
    ]


def test_poll_on_an_hour_boundary_belongs_to_the_hour_it_starts() -> None:
    """A poll at exactly 01:00:00 is in the 01:00 hour, once."""
    assert hour_of(T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)
    assert hour_of(T0 + timedelta(hours=1) - timedelta(microseconds=1)) == T0


def test_seeded_metering_counts_the_rise_since_the_last_stored_value() -> None:
    """Seeded with the last stored snapshot, the first poll after a restart counts its rise."""
    (delta,) = observe(Metering("us", {"burst": pct(10.0)}), T0, burst=pct(14.0))
    assert delta.consumed == 4.0


def test_failed_poll_counts_for_each_meter_last_seen() -> None:
    """A failed poll adds one failed poll to each meter of the last poll, and nothing else."""
    metering = Metering("us")
    assert metering.failed_poll(T0) == []
    observe(metering, T0, burst=pct(1.0), sustained=pct(2.0))
    failed = metering.failed_poll(T0 + timedelta(minutes=5))
    assert [(row.meter, row.failed_polls, row.polls, row.consumed) for row in failed] == [
        ("burst", 1, 0, 0.0),
        ("sustained", 1, 0, 0.0),
    ]


def test_snapshot_meters_are_observed() -> None:
    """observe_snapshot reads each meter of a snapshot."""
    snapshot = Snapshot(
        seq=1,
        source="router",
        kind="openrouter",
        fetched_at=T0,
        usage={},
        meters=[Meter(id="spend", label="Spend", unit="usd", used=2.5)],
    )
    (delta,) = Metering("router").observe_snapshot(snapshot)
    assert (delta.source, delta.meter, delta.unit, delta.hour) == ("router", "spend", "usd", T0)


# --- A simulated gateway on a fake clock ----------------------------------------------------


Polled = tuple[FakeClock, GatewaySimulator, UsageMonitorService, SnapshotStore]


@pytest.fixture
async def polled(tmp_path: Path) -> AsyncIterator[Polled]:
    """A simulator polled (by hand) on a fake clock, each snapshot and each failed poll
    written to a real store as the relay does."""
    clock = FakeClock(T0)
    simulator = GatewaySimulator(token="t", burst_limit_usd=100.0, clock=clock)
    store = SnapshotStore(tmp_path / "usage.db")

    def write(event: MonitorEvent) -> None:
        if isinstance(event, UsageUpdated):
            store.append(event.snapshot)
        elif isinstance(event, PollFailed):
            store.record_failed_poll(event.source, event.at)

    async with SimulatorServer(simulator) as server:
        gateway = GatewayClient(server.url, lambda: "t", timeout=5, clock=clock)
        monitor = UsageMonitorService(
            gateway, interval=3600, source="us", observers=[write], clock=clock
        )
        async with monitor:
            await simulator.wait_for_requests(1)  # the first poll, at T0
            yield clock, simulator, monitor, store
        await gateway.aclose()
    store.close()


def burst_rows(store: SnapshotStore) -> list[tuple[datetime, float, int, int]]:
    return [
        (row.hour, round(row.consumed, 9), row.polls, row.failed_polls)
        for row in store.ledger_rows("us")
        if row.meter == "burst"
    ]


@pytest.mark.anyio
async def test_known_growth_is_booked_hour_by_hour(polled: Polled) -> None:
    """1 % of the daily cap spent every ten minutes: 5 points in the first hour (its first poll
    counts nothing), 6 in the next, each poll on the hour counted once, in its own hour."""
    clock, simulator, monitor, store = polled
    with anyio.fail_after(10):
        for _ in range(12):
            clock.advance(minutes=10)
            simulator.spend(1.0)
            await monitor.refresh_now()
    assert burst_rows(store) == [
        (T0, 5.0, 6, 0),
        (T0 + timedelta(hours=1), 6.0, 6, 0),
        (T0 + timedelta(hours=2), 1.0, 1, 0),
    ]


@pytest.mark.anyio
async def test_failed_polls_of_the_simulator_are_counted(polled: Polled) -> None:
    """Two polls the gateway fails are two failed polls of the hour, for each meter."""
    clock, simulator, monitor, store = polled
    simulator.inject(Failure.SERVER_ERROR, count=2)
    with anyio.fail_after(10):
        for _ in range(2):
            clock.advance(minutes=10)
            with pytest.raises(UpstreamError):
                await monitor.refresh_now()
    assert [(row.meter, row.polls, row.failed_polls) for row in store.ledger_rows("us")] == [
        ("burst", 1, 2),
        ("sustained", 1, 2),
    ]


@pytest.mark.anyio
async def test_a_window_reset_in_the_middle_of_an_hour_counts_from_zero(polled: Polled) -> None:
    """The simulator's windows start afresh at 00:30: the hour books the rise before, one reset,
    and the spend after it from zero."""
    clock, simulator, monitor, store = polled
    with anyio.fail_after(10):
        for minute in (10, 20, 30, 40):
            clock.advance(minutes=10)
            if minute == 30:
                simulator.reset_windows()
            simulator.spend(2.0)
            await monitor.refresh_now()
    (burst,) = [row for row in store.ledger_rows("us") if row.meter == "burst"]
    assert (round(burst.consumed, 9), burst.resets, burst.close_used_percent) == (8.0, 1, 4.0)
