"""``serve --demo``: four simulated sources of every kind, whose usage moves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from relay.demo import DEMO_SOURCES
from relay.settings import Settings
from tests.conftest import RelayHarness, running_relay

pytestmark = pytest.mark.anyio


@pytest.fixture
async def demo(relay_settings: Settings) -> AsyncIterator[RelayHarness]:
    async with running_relay(relay_settings.model_copy(update={"demo": True})) as harness:
        yield harness


async def test_the_demo_polls_four_sources_of_every_kind(demo: RelayHarness) -> None:
    """PostHog US and EU, an OpenRouter key and a LiteLLM budget, each polled fine."""
    with anyio.fail_after(10):
        snapshots = [await monitor.refresh_now() for monitor in demo.hub.monitors.values()]
    assert [(s.source, s.kind) for s in snapshots] == [
        ("us", "posthog"),
        ("eu", "posthog"),
        ("router", "openrouter"),
        ("team", "litellm"),
    ]
    assert list(DEMO_SOURCES) == [s.source for s in snapshots]
    assert demo.hub.default_source == "us"


async def test_the_demo_usage_grows_between_polls(demo: RelayHarness) -> None:
    """Simulated activity spends between two polls, so the meters move."""
    with anyio.fail_after(10):
        first = await demo.hub.refresh_now("usage:router")
        second = await demo.hub.refresh_now("usage:router")
    before, after = first.meter("limit"), second.meter("limit")
    assert before is not None and after is not None
    assert before.used is not None and after.used is not None and after.used > before.used
