"""The dashboard's "Daily reports" panel in real headless Chromium: against relays played
through Playwright's WebSocket routing, and against a real demo relay."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import BrowserContext, Locator, Page, expect

from .browser import ScriptedRelay
from .test_dashboard import (
    DEMO_TIMEZONE,
    MODULE_ORIGIN,
    MODULE_WS_URL,
    DemoRelay,
    anyio_backend,
    browser,
    context,
    demo_relay,
    module_page,
    open_demo_dashboard,
    open_sources_dashboard,
    several_sources,
)

__all__ = ["anyio_backend", "browser", "context", "demo_relay", "module_page"]  # fixtures

pytestmark = pytest.mark.anyio

SOURCES = ["us", "eu", "router", "team"]
#: The 14 closed days before :data:`~.test_dashboard.SCRIPTED_NOW` (Nov 22) in London.
DAYS = [str(date(2026, 11, 8) + timedelta(days=offset)) for offset in range(14)]
REFUSED = "report_url answered 422 Unprocessable Entity: unknown field 'coverage'"


def report_entry(
    source: str,
    day: str,
    state: str = "delivered",
    *,
    attempts: int = 1,
    last_error: str | None = None,
) -> dict[str, Any]:
    """One (source, day) of a report list, delivered 30 minutes after the day closed."""
    delivered_at = f"{date.fromisoformat(day) + timedelta(days=1)}T00:30:04Z"
    delivery = {
        "state": state,
        "attempts": attempts,
        "last_error": last_error,
        "delivered_at": delivered_at if state == "delivered" else None,
    }
    return {
        "report_id": f"{source}:{day}",
        "source": source,
        "usage_day": day,
        "state": state,
        "saved": True,
        "attempts": attempts,
        "last_error": last_error,
        "delivered_at": delivery["delivered_at"],
        "destinations": {"report_url": delivery},
    }


def report_list(changes: dict[tuple[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every source's report of every day delivered, but eu's first day (eu had no data
    yet), us's Nov 20 refused, team's Nov 21 pending; ``changes`` replace entries."""
    entries = {(source, day): report_entry(source, day) for day in DAYS for source in SOURCES}
    del entries["eu", DAYS[0]]
    entries["us", "2026-11-20"] = report_entry(
        "us", "2026-11-20", "failed", attempts=3, last_error=REFUSED
    )
    entries["team", "2026-11-21"] = report_entry(
        "team", "2026-11-21", "pending", attempts=2, last_error="connection refused"
    )
    entries.update(changes or {})
    return {
        "timezone": "Europe/London",
        "destinations": ["report_url"],
        "reports": list(entries.values()),
    }


async def open_reports_dashboard(page: Page, relay: ScriptedRelay) -> Locator:
    """Open the scripted dashboard and return the report grid once it is drawn."""
    await open_sources_dashboard(page, relay)
    await expect(page.get_by_test_id("reports")).to_have_attribute("data-state", "ready")
    return page.get_by_test_id("reports-grid")


def cell(grid: Locator, source: str, day: str) -> Locator:
    """The grid's cell of ``source``'s report of ``day``."""
    return grid.locator(f'td[data-source="{source}"][data-day="{day}"]')


async def test_panel_lists_the_last_14_closed_days_by_source_with_each_state(
    module_page: Page,
) -> None:
    """The panel asks list_reports since 14 days ago; a row per source, a column per day."""
    relay = ScriptedRelay(several_sources(), reports=report_list())
    grid = await open_reports_dashboard(module_page, relay)
    assert [{k: v for k, v in r.items() if k != "id"} for r in relay.sent("list_reports")] == [
        {"op": "list_reports", "since": "2026-11-08"}
    ]
    await expect(grid).to_have_attribute("data-layout", "days-as-columns")
    await expect(grid.locator("thead th[data-day]")).to_have_count(14)
    await expect(grid.locator("thead th[data-day]").first).to_have_attribute("data-day", DAYS[0])
    await expect(grid.locator("tbody th")).to_have_text(SOURCES)
    await expect(grid.locator("td.report-cell")).to_have_count(56)
    await expect(grid.locator('td[data-state="delivered"]')).to_have_count(53)
    expected = {
        ("us", "2026-11-20"): ("failed", "✕failed"),
        ("team", "2026-11-21"): ("pending", "…pending"),
        ("eu", DAYS[0]): ("none", "—no report"),
        ("router", "2026-11-21"): ("delivered", "✓delivered"),
    }
    for (source, day), (state, text) in expected.items():
        await expect(cell(grid, source, day)).to_have_attribute("data-state", state)
        await expect(cell(grid, source, day)).to_have_text(text)
    await expect(module_page.get_by_test_id("reports-summary")).to_have_text(
        "53 delivered, 1 pending, 1 failed"
    )
    await expect(module_page.get_by_test_id("reports-range")).to_have_text(
        "Nov 8 to Nov 21, days in Europe/London; to report_url"
    )


async def test_hover_titles_carry_attempts_last_error_and_delivery_time(
    module_page: Page,
) -> None:
    """A failed cell's title names its attempts and last error; a delivered one, when (London)."""
    relay = ScriptedRelay(several_sources(), reports=report_list())
    grid = await open_reports_dashboard(module_page, relay)
    await expect(cell(grid, "us", "2026-11-20")).to_have_attribute(
        "title",
        "us, usage day Nov 20\n"
        "Failed: a destination refused it; it waits for someone to act\n"
        f"3 attempts\nLast error: {REFUSED}",
    )
    # 00:30 UTC is 00:30 in London, 01:30 in the browser's Berlin.
    await expect(cell(grid, "router", "2026-11-21")).to_have_attribute(
        "title",
        "router, usage day Nov 21\nDelivered Nov 22, 12:30 AM (Europe/London)\n1 attempt",
    )


async def test_report_events_make_the_page_read_the_list_again_once_per_burst(
    module_page: Page,
) -> None:
    """A burst of report events (a catch-up) brings one new read, and its failed cell turns red."""
    relay = ScriptedRelay(several_sources(), reports=report_list())
    grid = await open_reports_dashboard(module_page, relay)
    failed = report_entry("team", "2026-11-21", "failed", attempts=3, last_error=REFUSED)
    relay.reports = report_list({("team", "2026-11-21"): failed})
    for entry in relay.reports["reports"]:
        if entry["state"] == "delivered":
            relay.publish(entry["source"], "usage.report_delivered", entry)
    relay.publish("team", "usage.report_failed", failed)
    await expect(cell(grid, "team", "2026-11-21")).to_have_attribute("data-state", "failed")
    await expect(module_page.get_by_test_id("reports-summary")).to_have_text(
        "53 delivered, 0 pending, 2 failed"
    )
    assert len(relay.sent("list_reports")) == 2


async def test_panel_is_read_again_when_the_day_changes_in_the_relays_zone(
    module_page: Page,
) -> None:
    """Past midnight in the relay's zone the panel asks for the 14 days ending yesterday."""
    await module_page.clock.install(time=datetime(2026, 11, 22, 23, 59, 0, tzinfo=UTC))
    relay = ScriptedRelay(several_sources(), reports=report_list())
    await relay.install(module_page, MODULE_WS_URL)
    await module_page.goto(f"{MODULE_ORIGIN}/index.html")
    range_text = module_page.get_by_test_id("reports-range")
    await expect(range_text).to_have_text(re.compile("^Nov 8 to Nov 21,"))
    await module_page.clock.fast_forward("02:00")
    await expect(range_text).to_have_text(re.compile("^Nov 9 to Nov 22,"))
    assert [request["since"] for request in relay.sent("list_reports")] == [
        "2026-11-08",
        "2026-11-09",
    ]


async def test_panel_is_hidden_against_a_relay_without_reports(module_page: Page) -> None:
    """A relay that answers list_reports unknown_op shows no reports panel."""
    relay = ScriptedRelay(several_sources())
    await open_sources_dashboard(module_page, relay)
    panel = module_page.get_by_test_id("reports")
    await expect(panel).to_have_attribute("data-state", "unsupported")
    await expect(panel).to_be_hidden()
    assert len(relay.sent("list_reports")) == 1


async def test_panel_fits_a_phone_screen_with_the_days_as_rows(module_page: Page) -> None:
    """At 360 px wide the days become rows and the whole panel fits without side scrolling."""
    await module_page.set_viewport_size({"width": 360, "height": 740})
    relay = ScriptedRelay(several_sources(), reports=report_list())
    grid = await open_reports_dashboard(module_page, relay)
    await expect(grid).to_have_attribute("data-layout", "days-as-rows")
    await expect(grid.locator("tbody th[data-day]")).to_have_count(14)
    await expect(grid.locator("thead th[data-source]")).to_have_text(SOURCES)
    await grid.scroll_into_view_if_needed()
    assert await module_page.evaluate("document.documentElement.scrollWidth") <= 360
    for test_id in ("reports", "reports-frame", "reports-grid", "reports-summary"):
        box = await module_page.get_by_test_id(test_id).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, test_id


async def test_demo_relay_reports_of_14_days_of_its_4_sources_are_delivered(
    context: BrowserContext, demo_relay: DemoRelay
) -> None:
    """The demo delivers its seeded days' reports to its report_dir; the page shows them all."""
    page = await context.new_page()
    await open_demo_dashboard(page, demo_relay)
    # Delivered in the background after start: the events bring them to the page.
    await expect(page.get_by_test_id("reports-summary")).to_have_text(
        "56 delivered, 0 pending, 0 failed", timeout=30_000
    )
    grid = page.get_by_test_id("reports-grid")
    await expect(grid.locator("tbody th")).to_have_text(SOURCES)
    today = datetime.now(ZoneInfo(DEMO_TIMEZONE)).date()
    days = [str(today - timedelta(days=back)) for back in range(14, 0, -1)]
    headings = grid.locator("thead th[data-day]")
    await expect(headings).to_have_count(14)
    shown = await headings.evaluate_all("(cells) => cells.map((cell) => cell.dataset.day)")
    assert shown == days
    await expect(grid.locator('td.report-cell[data-state="delivered"]')).to_have_count(56)
    await expect(page.get_by_test_id("reports-range")).to_have_text(
        re.compile(f"days in {DEMO_TIMEZONE}; to report_dir$")
    )
