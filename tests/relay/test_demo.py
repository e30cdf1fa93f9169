"""``serve --demo``: four simulated sources of every kind, whose usage moves."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import pytest

from common.messages import HistoryQuery
from common.models import utc_now
from common.paths import state_dir
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


async def test_the_demo_seeds_two_weeks_of_history_at_first_start(demo: RelayHarness) -> None:
    """Every demo source starts with 14 days of polls at its interval (here hourly)."""
    with anyio.fail_after(10):
        points = {
            name: await demo.hub.history_json(f"usage:{name}", HistoryQuery(limit=5000))
            for name in DEMO_SOURCES
        }
    counts = {name: len(json.loads(text)) for name, text in points.items()}
    assert all(count >= 14 * 24 for count in counts.values()), counts


async def test_the_seeded_daily_window_resets_every_day(demo: RelayHarness) -> None:
    """The seeded PostHog daily window drops back once a day."""
    with anyio.fail_after(10):
        text = await demo.hub.history_json("usage:us", HistoryQuery(limit=5000))
    daily = [point["burst_percent"] for point in json.loads(text)]
    drops = sum(1 for before, after in itertools.pairwise(daily) if after < before)
    assert drops >= 13


async def test_the_demo_seeds_only_at_first_start(demo: RelayHarness) -> None:
    """A restart goes on numbering the stored history instead of seeding it again."""
    with anyio.fail_after(20):
        before = (await demo.hub.monitors["router"].refresh_now()).seq
        await demo.stop()
        await demo.start()
        after = (await demo.hub.monitors["router"].refresh_now()).seq
    assert before < after <= before + 2


async def test_the_seeded_days_are_in_the_breakdown(demo: RelayHarness) -> None:
    """The breakdown by source and day has the seeded days of every demo source."""
    with anyio.fail_after(10):
        since = (utc_now() - timedelta(days=20)).isoformat()
        text = await demo.hub.breakdown_json({"since": since, "group_by": "source,day"})
    rows = json.loads(text)["breakdown"]
    days = {name: {row["day"] for row in rows if row["source"] == name} for name in DEMO_SOURCES}
    assert all(len(seen) >= 14 for seen in days.values()), days


async def test_the_demo_delivers_the_seeded_days_reports_to_its_report_dir(
    demo: RelayHarness,
) -> None:
    """Every closed seeded day of every demo source lands in the state dir's demo-reports."""
    assert demo.hub.reports is not None
    with anyio.fail_after(20):
        await demo.hub.reports.catch_up()
        listing = await demo.hub.reports.report_list()
    directory = state_dir() / "demo-reports"
    written = {path.relative_to(directory).as_posix() for path in directory.rglob("*.json")}
    assert len(listing.reports) == 14 * len(DEMO_SOURCES)
    assert {entry.state for entry in listing.reports} == {"delivered"}
    assert {f"{e.source}/{e.usage_day}.json" for e in listing.reports} <= written
