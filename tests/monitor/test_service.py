"""The monitor service, polling the real gateway simulator over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import pytest

from common.backoff import Backoff
from common.models import Alert, Snapshot, utc_now
from monitor.adapters import Reading
from monitor.alerts import ThresholdTracker
from monitor.exceptions import (
    MonitorNotRunning,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from monitor.forecast import Forecaster
from monitor.foresight import Foresight
from monitor.gateway import GatewayClient
from monitor.service import (
    MAX_RETRY_AFTER,
    StatusChanged,
    Subscription,
    UsageMonitorService,
    UsageUpdated,
)
from simulator import Failure, GatewaySimulator

pytestmark = pytest.mark.anyio

#: Long enough that only the first poll and explicit refreshes happen in a test.
QUIET = 3600.0
#: Retries come almost at once, so failure tests do not wait.
FAST_BACKOFF = Backoff(initial=0.01, maximum=0.01, jitter=0.0)


@pytest.fixture
async def monitor(gateway: GatewayClient) -> AsyncIterator[UsageMonitorService]:
    """A running monitor whose first poll has finished."""
    service = UsageMonitorService(gateway, interval=QUIET)
    with service.subscribe() as subscription:
        async with service:
            with anyio.fail_after(5):
                await next_update(subscription)
            yield service


async def next_update(subscription: Subscription) -> UsageUpdated:
    while True:
        event = await subscription.receive()
        if isinstance(event, UsageUpdated):
            return event


async def next_state(subscription: Subscription, state: str) -> StatusChanged:
    while True:
        event = await subscription.receive()
        if isinstance(event, StatusChanged) and event.status.state == state:
            return event


async def test_successful_poll_is_cached_and_emitted(gateway: GatewayClient) -> None:
    """The first poll starts at once; its snapshot is emitted and cached."""
    service = UsageMonitorService(gateway, interval=QUIET)
    with anyio.fail_after(5), service.subscribe() as subscription:
        async with service:
            update = await next_update(subscription)
            assert update.snapshot.seq == 1
            assert service.get_latest() == update.snapshot


async def test_failed_poll_emits_nothing_and_latest_stays_none(
    gateway: GatewayClient, simulator: GatewaySimulator
) -> None:
    """A gateway failure emits no update and leaves the cache empty."""
    simulator.inject(Failure.SERVER_ERROR)
    service = UsageMonitorService(gateway, interval=QUIET)
    with anyio.fail_after(5), service.subscribe() as subscription:
        async with service:
            changed = await next_state(subscription, "degraded")
            assert changed.status.consecutive_failures == 1
            assert service.get_latest() is None
        events = [event async for event in subscription]
    assert not any(isinstance(event, UsageUpdated) for event in events)


async def test_refresh_now_polls_and_returns_the_snapshot(
    monitor: UsageMonitorService, simulator: GatewaySimulator
) -> None:
    """refresh_now() makes a new request and returns the snapshot it produced."""
    with anyio.fail_after(5):
        simulator.set_usage(burst_percent=42.0)
        snapshot = await monitor.refresh_now()
    assert snapshot.usage.burst.used_percent == 42.0
    assert monitor.get_latest() == snapshot
    assert simulator.requests_served == 2


async def test_concurrent_refreshes_share_one_request(
    monitor: UsageMonitorService, simulator: GatewaySimulator
) -> None:
    """Fifty refreshes that arrive together cause exactly one upstream request."""
    with anyio.fail_after(10):
        served_before = simulator.requests_served
        simulator.hold()
        results = []

        async def refresh() -> None:
            results.append(await monitor.refresh_now())

        async with anyio.create_task_group() as task_group:
            for _ in range(50):
                task_group.start_soon(refresh)
            await simulator.wait_for_requests(served_before + 1)
            simulator.release()
    assert simulator.requests_served == served_before + 1
    assert len({snapshot.seq for snapshot in results}) == 1


async def test_refresh_joins_the_scheduled_poll_in_flight(
    gateway: GatewayClient, simulator: GatewaySimulator
) -> None:
    """A refresh during the first (scheduled) poll gets that poll's snapshot."""
    simulator.hold()
    with anyio.fail_after(5):
        async with UsageMonitorService(gateway, interval=QUIET) as service:
            await simulator.wait_for_requests(1)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(service.refresh_now)
                simulator.release()
            assert service.get_latest() is not None
            assert service.get_latest().seq == 1  # type: ignore[union-attr]
    assert simulator.requests_served == 1


async def test_failure_keeps_the_last_good_snapshot(
    monitor: UsageMonitorService, simulator: GatewaySimulator
) -> None:
    """A failed refresh raises and leaves the cached snapshot in place."""
    good = monitor.get_latest()
    with anyio.fail_after(5):
        simulator.inject(Failure.MALFORMED)
        with pytest.raises(UpstreamError):
            await monitor.refresh_now()
    assert monitor.get_latest() == good
    assert monitor.status.state == "degraded"


async def test_status_reports_degraded_then_ok(
    monitor: UsageMonitorService, simulator: GatewaySimulator
) -> None:
    """A failure emits status degraded, and the next good poll emits ok again."""
    with anyio.fail_after(5), monitor.subscribe() as subscription:
        simulator.inject(Failure.SERVER_ERROR)
        with pytest.raises(UpstreamUnavailable):
            await monitor.refresh_now()
        degraded = await subscription.receive()
        await monitor.refresh_now()
        events = [await subscription.receive(), await subscription.receive()]
    assert isinstance(degraded, StatusChanged)
    assert degraded.status.state == "degraded"
    assert isinstance(events[0], UsageUpdated)
    assert isinstance(events[1], StatusChanged)
    assert events[1].status.state == "ok"
    assert events[1].status.consecutive_failures == 0


async def test_unauthorized_enters_auth_error_and_slows_down(
    gateway: GatewayClient, simulator: GatewaySimulator
) -> None:
    """A 401 sets auth_error and schedules the next poll no sooner than the slow interval."""
    simulator.inject(Failure.UNAUTHORIZED)
    service = UsageMonitorService(gateway, interval=1.0, auth_error_interval=600.0)
    with anyio.fail_after(5), service.subscribe() as subscription:
        async with service:
            changed = await next_state(subscription, "auth_error")
    assert changed.status.next_poll_at is not None
    assert changed.status.next_poll_at - utc_now() > timedelta(seconds=500)


async def test_rate_limited_poll_honours_retry_after(
    gateway: GatewayClient, simulator: GatewaySimulator
) -> None:
    """A 429 schedules the next poll no sooner than its Retry-After."""
    simulator.inject(Failure.RATE_LIMITED, retry_after=120)
    service = UsageMonitorService(gateway, interval=1.0, backoff=FAST_BACKOFF)
    with anyio.fail_after(5), service.subscribe() as subscription:
        async with service:
            changed = await next_state(subscription, "degraded")
    assert "429" in (changed.status.last_error or "")
    assert changed.status.next_poll_at is not None
    assert changed.status.next_poll_at - utc_now() > timedelta(seconds=100)


async def test_failed_polls_are_retried_with_backoff_until_recovery(
    gateway: GatewayClient, simulator: GatewaySimulator
) -> None:
    """After failures the monitor retries by itself and returns to ok at the first good poll."""
    simulator.inject(Failure.SERVER_ERROR, count=3)
    service = UsageMonitorService(gateway, interval=QUIET, backoff=FAST_BACKOFF)
    with anyio.fail_after(5), service.subscribe() as subscription:
        async with service:
            update = await next_update(subscription)
    assert simulator.requests_served == 4
    assert update.snapshot.seq == 1


async def test_polls_repeat_on_the_interval(gateway: GatewayClient) -> None:
    """With a short interval, polls keep coming without anyone asking."""
    service = UsageMonitorService(gateway, interval=0.02)
    with anyio.fail_after(5), service.subscribe() as subscription:
        async with service:
            seqs = [(await next_update(subscription)).snapshot.seq for _ in range(3)]
    assert seqs == [1, 2, 3]


async def test_refresh_restarts_the_interval(monitor: UsageMonitorService) -> None:
    """After a refresh the next scheduled poll is a full interval away."""
    with anyio.fail_after(5):
        await monitor.refresh_now()
    assert monitor.status.next_poll_at is not None
    assert monitor.status.next_poll_at - utc_now() > timedelta(seconds=QUIET - 60)


async def test_a_subscriber_that_does_not_read_gets_only_the_newest_snapshot(
    monitor: UsageMonitorService,
) -> None:
    """Unread snapshots are replaced by newer ones instead of piling up."""
    with anyio.fail_after(5), monitor.subscribe() as subscription:
        for _ in range(5):
            await monitor.refresh_now()
        update = await next_update(subscription)
    assert update.snapshot.seq == monitor.get_latest().seq  # type: ignore[union-attr]


async def test_unexpected_fetcher_error_degrades_instead_of_crashing() -> None:
    """A bug in a fetcher is reported as a failed poll and the monitor keeps running."""

    class BrokenFetcher:
        async def fetch(self) -> Reading:
            raise KeyError("bug")

    with anyio.fail_after(5):
        async with UsageMonitorService(BrokenFetcher(), interval=QUIET) as service:
            with pytest.raises(UpstreamError, match="internal error"):
                await service.refresh_now()
            assert service.status.state == "degraded"


async def test_refresh_outside_the_lifetime_is_refused(gateway: GatewayClient) -> None:
    """refresh_now() before start raises MonitorNotRunning."""
    with pytest.raises(MonitorNotRunning):
        await UsageMonitorService(gateway).refresh_now()


async def test_stopping_reports_stopped_and_ends_subscriptions(
    gateway: GatewayClient,
) -> None:
    """Leaving the service's block emits status stopped and closes every subscription."""
    service = UsageMonitorService(gateway, interval=QUIET)
    with anyio.fail_after(5), service.subscribe() as subscription:
        async with service:
            await next_update(subscription)
        events = [event async for event in subscription]
    assert service.status.state == "stopped"
    assert isinstance(events[-1], StatusChanged)
    assert events[-1].status.state == "stopped"


async def test_absurd_retry_after_is_capped(
    gateway: GatewayClient, simulator: GatewaySimulator
) -> None:
    """A 429 asking for a wait of years delays the next poll by at most the cap."""
    simulator.inject(Failure.RATE_LIMITED, retry_after=1e12)
    service = UsageMonitorService(gateway, interval=1.0, backoff=FAST_BACKOFF)
    with anyio.fail_after(5), service.subscribe() as subscription:
        async with service:
            changed = await next_state(subscription, "degraded")
    assert changed.status.next_poll_at is not None
    assert changed.status.next_poll_at - utc_now() <= timedelta(seconds=MAX_RETRY_AFTER)


async def test_refresh_during_retry_after_does_not_go_upstream(
    monitor: UsageMonitorService, simulator: GatewaySimulator
) -> None:
    """After a 429, refreshes fail at once without a request until Retry-After has passed."""
    simulator.inject(Failure.RATE_LIMITED, retry_after=600)
    with anyio.fail_after(5):
        with pytest.raises(UpstreamRateLimited):
            await monitor.refresh_now()
        served = simulator.requests_served
        with pytest.raises(UpstreamRateLimited, match="wait"):
            await monitor.refresh_now()
    assert simulator.requests_served == served


async def test_refresh_soon_callbacks_share_one_request(
    monitor: UsageMonitorService, simulator: GatewaySimulator
) -> None:
    """Many refresh_soon() calls join one poll, and each callback gets its snapshot."""
    outcomes: list[object] = []
    landed = anyio.Event()

    def on_done(outcome: object) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 50:
            landed.set()

    served = simulator.requests_served
    with anyio.fail_after(5):
        for _ in range(50):
            monitor.refresh_soon(on_done)
        await landed.wait()
    assert simulator.requests_served == served + 1
    assert outcomes == [monitor.get_latest()] * 50


async def test_refresh_soon_reports_a_failed_poll(
    monitor: UsageMonitorService, simulator: GatewaySimulator
) -> None:
    """A failed poll reaches refresh_soon()'s callback as the UpstreamError."""
    simulator.inject(Failure.SERVER_ERROR)
    outcome: list[object] = []
    landed = anyio.Event()

    def on_done(result: object) -> None:
        outcome.append(result)
        landed.set()

    with anyio.fail_after(5):
        monitor.refresh_soon(on_done)
        await landed.wait()
    assert isinstance(outcome[0], UpstreamUnavailable)


async def test_refresh_soon_outside_the_lifetime_answers_at_once(gateway: GatewayClient) -> None:
    """Before start, refresh_soon() calls back at once with MonitorNotRunning."""
    outcome: list[object] = []
    UsageMonitorService(gateway).refresh_soon(outcome.append)
    assert isinstance(outcome[0], MonitorNotRunning)


class BrokenForesight(Foresight):
    """A forecast that fails on every snapshot."""

    def observe(self, snapshot: Snapshot) -> tuple[Snapshot, list[Alert]]:
        raise OverflowError("date value out of range")


async def test_a_failing_forecast_never_stops_polling(
    gateway: GatewayClient, caplog: pytest.LogCaptureFixture
) -> None:
    """When deriving fails, the snapshot goes out without a forecast and polling goes on."""
    foresight = BrokenForesight(Forecaster(), ThresholdTracker())
    service = UsageMonitorService(gateway, interval=QUIET, foresight=foresight)
    with anyio.fail_after(5):
        async with service:
            first = await service.refresh_now()
            second = await service.refresh_now()
            status = service.status
    assert (first.derived, second.seq, status.state) == (None, first.seq + 1, "ok")
    failures = [r for r in caplog.records if "no forecast or alerts" in r.getMessage()]
    assert len(failures) == 2 and not any(r.exc_info for r in failures)


@pytest.mark.parametrize("interval", [0.0, -1.0, float("inf"), float("nan")])
async def test_an_interval_that_is_not_a_positive_number_is_refused(
    gateway: GatewayClient, interval: float
) -> None:
    """An infinite or non-positive interval is refused before anything runs."""
    with pytest.raises(ValueError, match="interval"):
        UsageMonitorService(gateway, interval=interval)
