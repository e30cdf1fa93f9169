"""Burn rate, projection and threshold alerts from a simulator scenario with known growth."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from common.models import LimitProjected, ThresholdCrossed
from monitor.alerts import ThresholdTracker
from monitor.forecast import Forecaster
from monitor.foresight import Foresight
from monitor.gateway import GatewayClient
from monitor.service import AlertRaised, UsageMonitorService
from simulator import GatewaySimulator, SimulatorServer
from tests.clocks import FakeClock

pytestmark = pytest.mark.anyio

START = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
STEP = timedelta(minutes=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def scenario(
    clock: FakeClock,
) -> AsyncIterator[tuple[GatewaySimulator, UsageMonitorService, list[AlertRaised]]]:
    """A simulator and a monitor on the fake clock, collecting every alert raised."""
    simulator = GatewaySimulator(token="t", clock=clock)
    alerts: list[AlertRaised] = []

    def collect(event: object) -> None:
        if isinstance(event, AlertRaised):
            alerts.append(event)

    async with SimulatorServer(simulator) as server:
        gateway = GatewayClient(server.url, lambda: "t", timeout=5)
        monitor = UsageMonitorService(
            gateway,
            interval=3600,
            foresight=Foresight(Forecaster(), ThresholdTracker()),
            observers=[collect],
            clock=clock,
        )
        async with monitor:
            await simulator.wait_for_requests(1)
            await monitor.refresh_now()
            alerts.clear()
            yield simulator, monitor, alerts
        await gateway.aclose()


async def step(clock: FakeClock, monitor: UsageMonitorService, change: Callable[[], None]) -> None:
    clock.now += STEP
    change()
    await monitor.refresh_now()


async def test_burn_rate_matches_known_growth(
    clock: FakeClock,
    scenario: tuple[GatewaySimulator, UsageMonitorService, list[AlertRaised]],
) -> None:
    """Spending 1 % of the daily cap every ten minutes is a burn rate of 6 % per hour."""
    simulator, monitor, _ = scenario
    with anyio.fail_after(10):
        for _ in range(6):
            await step(clock, monitor, lambda: simulator.spend(1.0))
    derived = monitor.get_latest().derived  # type: ignore[union-attr]
    assert derived is not None
    assert derived["burst"].burn_rate_percent_per_hour == pytest.approx(6.0, rel=0.01)
    assert derived["sustained"].burn_rate_percent_per_hour == pytest.approx(0.6, rel=0.01)


async def test_projection_says_when_the_window_fills(
    clock: FakeClock,
    scenario: tuple[GatewaySimulator, UsageMonitorService, list[AlertRaised]],
) -> None:
    """At 6 %/h from 6 %, the daily window fills in about 15 h 40 m, before its reset."""
    simulator, monitor, alerts = scenario
    with anyio.fail_after(10):
        for _ in range(6):
            await step(clock, monitor, lambda: simulator.spend(1.0))
    derived = monitor.get_latest().derived  # type: ignore[union-attr]
    assert derived is not None
    assert derived["burst"].limit_before_reset is True
    expected = clock.now + timedelta(hours=(100 - 6) / 6)
    assert derived["burst"].projected_limit_at is not None
    assert abs(derived["burst"].projected_limit_at - expected) < timedelta(minutes=5)
    projected = [a.alert for a in alerts if isinstance(a.alert, LimitProjected)]
    assert [alert.bucket for alert in projected].count("burst") == 1


async def test_a_jump_past_several_thresholds_alerts_only_the_highest(
    clock: FakeClock,
    scenario: tuple[GatewaySimulator, UsageMonitorService, list[AlertRaised]],
) -> None:
    """Going from 40 % to 95 % raises one alert, for 90 %."""
    simulator, monitor, alerts = scenario
    with anyio.fail_after(10):
        await step(clock, monitor, lambda: simulator.set_usage(burst_percent=40))
        await step(clock, monitor, lambda: simulator.set_usage(burst_percent=95))
        await step(clock, monitor, lambda: simulator.set_usage(burst_percent=96))
    crossed = [a.alert for a in alerts if isinstance(a.alert, ThresholdCrossed)]
    assert [(alert.bucket, alert.threshold) for alert in crossed] == [("burst", 90.0)]


async def test_a_new_window_alerts_again(
    clock: FakeClock,
    scenario: tuple[GatewaySimulator, UsageMonitorService, list[AlertRaised]],
) -> None:
    """After the daily window resets, crossing 50 % alerts once more."""
    simulator, monitor, alerts = scenario
    with anyio.fail_after(10):
        await step(clock, monitor, lambda: simulator.set_usage(burst_percent=55))
        clock.now += timedelta(days=1)
        await step(clock, monitor, lambda: simulator.set_usage(burst_percent=55))
    crossed = [a.alert for a in alerts if isinstance(a.alert, ThresholdCrossed)]
    assert [(alert.bucket, alert.threshold) for alert in crossed] == [
        ("burst", 50.0),
        ("burst", 50.0),
    ]
    assert crossed[1].reset_at > crossed[0].reset_at


async def test_two_alerts_from_one_poll_both_reach_a_subscriber(
    clock: FakeClock,
    scenario: tuple[GatewaySimulator, UsageMonitorService, list[AlertRaised]],
) -> None:
    """Alerts are never replaced: a poll crossing thresholds in both windows delivers both."""
    simulator, monitor, _ = scenario
    with anyio.fail_after(10), monitor.subscribe() as subscription:
        await step(
            clock, monitor, lambda: simulator.set_usage(burst_percent=95, sustained_percent=60)
        )
        crossed: list[ThresholdCrossed] = []
        while len(crossed) < 2:
            event = await subscription.receive()
            if isinstance(event, AlertRaised) and isinstance(event.alert, ThresholdCrossed):
                crossed.append(event.alert)
    assert sorted((alert.bucket, alert.threshold) for alert in crossed) == [
        ("burst", 90.0),
        ("sustained", 50.0),
    ]
