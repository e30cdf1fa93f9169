"""The PostHog adapter against the simulator's ``/v1/usage/{product}``."""

from __future__ import annotations

import pytest

from common.models import Usage
from monitor.adapters import PostHogAdapter
from simulator import GatewaySimulator, SimulatorServer

from .conftest import FakeClock, poll

pytestmark = pytest.mark.anyio


async def test_the_reading_keeps_the_whole_usage_object(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """PostHog's answer is kept as a ``Usage``, fields the model does not define included."""
    reading = await poll(server, PostHogAdapter(), clock)
    assert isinstance(reading.usage, Usage)
    assert reading.usage.model_extra == {
        "ai_credits": {"exhausted": False, "used_usd": 0.0, "limit_usd": 20.0}
    }


async def test_the_windows_are_the_daily_and_monthly_meters(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """``burst`` and ``sustained`` become percent meters "Daily" and "Monthly"."""
    sim.set_usage(burst_percent=37.5, sustained_percent=12.1)
    reading = await poll(server, PostHogAdapter(), clock)
    assert reading.kind == "posthog"
    assert [(m.id, m.label, m.unit, m.used_percent, m.used) for m in reading.meters] == [
        ("burst", "Daily", "percent", 37.5, None),
        ("sustained", "Monthly", "percent", 12.1, None),
    ]


def test_the_product_cannot_leave_its_path() -> None:
    """A product with a slash or a dot-dot is quoted into one path segment."""
    assert PostHogAdapter("../admin").path == "/v1/usage/..%2Fadmin"
