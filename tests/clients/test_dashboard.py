"""The dashboard and the browser client, in real headless Chromium against a real relay,
a demo relay with several sources, and relays played through Playwright's WebSocket routing."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Error,
    Locator,
    Page,
    Route,
    WebSocketRoute,
    expect,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from common.models import Snapshot
from common.tokens import CLIENT_TOKEN_ENV, read_client_token
from monitor.store import SnapshotStore
from relay.app import WEB_ROOT
from simulator import Failure, GatewaySimulator

from ..conftest import RelayHarness
from ..relay.process import RelayProcess
from .browser import (
    ScriptedRelay,
    launch_chromium,
    meter,
    posthog_snapshot,
    save_dashboard_screenshot,
    usd_snapshot,
)

pytestmark = pytest.mark.anyio

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
SUBPROTOCOL = Subprotocol("usage-relay.v1")
#: An origin that Playwright serves from clients/web, for tests that only import modules.
MODULE_ORIGIN = "http://dashboard.test"
#: Where pages on that origin open their WebSocket, which a scripted relay answers.
MODULE_WS_URL = MODULE_ORIGIN.replace("http", "ws", 1) + "/ws"
#: The clock of the pages that talk to a scripted relay.
SCRIPTED_NOW = "2026-11-22T12:00:30Z"
#: The demo relay's zone, other than the browser's (Europe/Berlin).
DEMO_TIMEZONE = "America/New_York"
TIMEOUT_MS = 10_000
#: What the dashboard and the terminal must print, one table for both languages.
LABEL_CASES: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "label_cases.json").read_text(encoding="utf-8")
)

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so that one browser serves every test here."""
    return "asyncio"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as browser:
        yield browser


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile in a fixed zone and locale; fails the test on any uncaught page error."""
    context = await browser.new_context(
        locale="en-US",
        timezone_id="Europe/Berlin",
        viewport={"width": 900, "height": 900},
        color_scheme="light",
    )
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[Error] = []
    context.on("weberror", lambda web_error: errors.append(web_error.error))
    yield context
    await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
async def module_page(context: BrowserContext) -> Page:
    """A blank page on an origin that serves clients/web, to import its modules without a relay."""

    async def serve_web_root(route: Route) -> None:
        path = urlsplit(route.request.url).path.lstrip("/")
        if path:
            await route.fulfill(path=WEB_ROOT / path)
        else:
            await route.fulfill(
                body="<!doctype html><title>modules</title>", content_type="text/html"
            )

    await context.route(f"{MODULE_ORIGIN}/**", serve_web_root)
    page = await context.new_page()
    await page.goto(f"{MODULE_ORIGIN}/")
    return page


@pytest.fixture
async def loopback_page(context: BrowserContext, relay: RelayHarness) -> Page:
    """A page on the relay's loopback origin: Chromium's local network access checks let
    only such a page dial the fake relays on other loopback ports."""
    page = await context.new_page()
    await page.goto(f"{relay.url}/usage-client.js")
    return page


#: Defines ``window.openUsageClient(setup)`` in the page: a second ``UsageClient``,
#: passed to ``setup`` before it starts, resolved once its connection is open.
OPEN_CLIENT = """
window.openUsageClient = async (setup = () => {}) => {
    const { UsageClient } = await import('./usage-client.js');
    const client = new UsageClient();
    setup(client);
    await new Promise((resolve) => {
        client.addEventListener('statechange', () => client.state === 'open' && resolve());
        client.start();
    });
    return client;
};
"""


async def open_dashboard(context: BrowserContext, relay: RelayHarness) -> Page:
    """Open the dashboard the relay serves and wait until it has subscribed."""
    page = await context.new_page()
    await page.add_init_script(OPEN_CLIENT)
    await page.goto(f"{relay.url}/")
    await expect(page.locator("body")).to_have_attribute("data-connection", "open")
    return page


async def refresh_over_websocket(relay: RelayHarness) -> dict[str, Any]:
    """Ask the relay for a refresh as another (non-browser) client would; return the reply."""
    token = read_client_token(relay.settings.client_token_file)
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(
        relay.ws_url, subprotocols=[SUBPROTOCOL], additional_headers=headers
    ) as websocket:
        await websocket.send(json.dumps({"id": "other-client", "op": "refresh"}))
        with anyio.fail_after(TIMEOUT_MS / 1000):
            reply: dict[str, Any] = json.loads(await websocket.recv())
    assert reply["ok"], reply
    return reply


async def evaluate(page: Page, script: str, arg: Any = None) -> Any:
    """``page.evaluate`` with a deadline, for scripts that wait on the network."""
    with anyio.fail_after(TIMEOUT_MS / 1000):
        return await page.evaluate(script, arg)


def fake_snapshot(seq: int) -> dict[str, Any]:
    window = {"used_percent": float(seq), "reset_at": "2026-11-23T00:00:00Z", "exceeded": False}
    return {
        "seq": seq,
        "source": "default",
        "fetched_at": f"2026-11-22T12:00:{seq:02d}Z",
        "usage": {
            "product": "posthog_code",
            "user_id": 1234,
            "burst": window,
            "sustained": window,
            "is_rate_limited": False,
            "is_pro": False,
            "billing_period_end": None,
        },
    }


async def answer_subscribe(websocket: ServerConnection, latest: dict[str, Any] | None) -> None:
    """Play the relay's part of the handshake: reply to the client's subscribe request."""
    request = json.loads(await websocket.recv())
    assert request["op"] == "subscribe", request
    result = {"topic": "usage", "latest": latest, "status": {"state": "ok"}}
    await websocket.send(
        json.dumps({"type": "result", "id": request["id"], "ok": True, "result": result})
    )


async def open_scripted_dashboard(
    page: Page,
    latest: dict[str, Any],
    events: Sequence[tuple[str, dict[str, Any]]] = (),
) -> None:
    """Open the dashboard on ``page`` against a relay played through Playwright's WebSocket
    routing: it answers subscribe with ``latest`` and then sends ``events``, answers pings
    and has no history."""
    results: dict[str, Any] = {
        "subscribe": {"topic": "usage", "latest": latest, "status": {"state": "ok"}},
        "get_history": {"points": []},
        "ping": {"pong": True},
    }

    def answer(ws: WebSocketRoute, message: str | bytes) -> None:
        request = json.loads(message)
        reply: dict[str, Any] = {"type": "result", "id": request["id"]}
        if request["op"] in results:
            reply.update(ok=True, result=results[request["op"]])
        else:  # list_sources, say: this relay is from before sources
            reply.update(ok=False, error={"code": "unknown_op", "message": request["op"]})
        ws.send(json.dumps(reply))
        if request["op"] == "subscribe":
            for event, data in events:
                ws.send(
                    json.dumps({"type": "event", "topic": "usage", "event": event, "data": data})
                )

    await page.route_web_socket(MODULE_WS_URL, lambda ws: ws.on_message(lambda m: answer(ws, m)))
    await page.goto(f"{MODULE_ORIGIN}/index.html")
    await expect(page.locator("body")).to_have_attribute("data-connection", "open")


def alert_notices(page: Page) -> Locator:
    """The texts of the alert notices, found the way assistive technology finds them."""
    return page.get_by_role("status", name="Alerts").get_by_test_id("alert-text")


def rising_history(latest: Snapshot, hours: int = 8) -> list[Snapshot]:
    """Snapshots every 10 minutes up to 10 minutes ago, in ``latest``'s windows: Daily rises
    7 %/h to 74 % now, Monthly 0.1 %/h to 12.1 % now."""
    now = datetime.now(UTC)
    history = []
    for seq, minutes_ago in enumerate(range(hours * 60, 0, -10), start=latest.seq + 1):
        hours_ago = minutes_ago / 60
        usage = latest.usage.model_copy(
            update={
                "burst": latest.usage.burst.model_copy(
                    update={"used_percent": round(74 - 7 * hours_ago, 2)}
                ),
                "sustained": latest.usage.sustained.model_copy(
                    update={"used_percent": round(12.1 - 0.1 * hours_ago, 2)}
                ),
            }
        )
        fetched_at = now - timedelta(minutes=minutes_ago)
        history.append(Snapshot(seq=seq, fetched_at=fetched_at, usage=usage))
    return history


async def restart_over_rising_history(
    relay: RelayHarness, simulator: GatewaySimulator, tmp_path: Path
) -> int:
    """Restart the relay on a database holding only :func:`rising_history`, with the gateway
    continuing the trend, as if the relay had been running all day; return the stored count."""
    latest = await relay.hub.monitor.refresh_now()
    await relay.stop()
    database = tmp_path / "rising.db"
    store = SnapshotStore(database)
    history = rising_history(latest)
    for snapshot in history:
        store.append(snapshot)
    store.close()
    simulator.set_usage(burst_percent=74.0, sustained_percent=12.1)
    relay.settings = relay.settings.model_copy(update={"database": database})
    await relay.start()
    return len(history)


async def test_page_bootstraps_with_the_simulators_numbers(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """On connecting, the page shows the relay's latest snapshot and the dominant summary."""
    simulator.set_usage(burst_percent=37.5, sustained_percent=12.1)
    await relay.hub.monitor.refresh_now()
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("37%")
    await expect(page.get_by_test_id("monthly-percent")).to_have_text("12%")
    await expect(page.get_by_test_id("summary")).to_have_text(
        re.compile(r"^37% used · Resets in 2[34]h( \d+m)?$")
    )
    await expect(page.get_by_test_id("daily-meter")).to_have_attribute("aria-valuenow", "37.5")


async def test_refresh_by_another_client_updates_the_page_without_reload(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh asked for by another client reaches the open page as a live event."""
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
    await page.evaluate("window.notReloaded = true")
    simulator.set_usage(burst_percent=64.2, sustained_percent=20.0)
    await refresh_over_websocket(relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("64%")
    await expect(page.get_by_test_id("monthly-percent")).to_have_text("20%")
    assert await page.evaluate("window.notReloaded === true")


async def test_refresh_button_makes_exactly_one_upstream_request(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """One click on the refresh button costs the gateway one request and shows the result."""
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
    served = simulator.requests_served
    simulator.set_usage(burst_percent=12.5)
    await page.get_by_test_id("refresh-button").click()
    await expect(page.get_by_test_id("refresh-outcome")).to_have_text("Updated")
    await expect(page.get_by_test_id("daily-percent")).to_have_text("12%")
    assert simulator.requests_served == served + 1


async def test_refresh_button_is_disabled_while_the_refresh_is_in_flight(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """The button stays disabled until the relay answers the refresh."""
    page = await open_dashboard(context, relay)
    button = page.get_by_test_id("refresh-button")
    await expect(button).to_be_enabled()
    simulator.hold()
    await button.click()
    await expect(button).to_be_disabled()
    await expect(page.get_by_test_id("refresh-outcome")).to_have_text("Refreshing…")
    simulator.release()
    await expect(page.get_by_test_id("refresh-outcome")).to_have_text("Updated")
    await expect(button).to_be_enabled()


async def test_failed_refresh_says_gateway_unavailable_and_keeps_last_good_data(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh that the gateway fails reports it and leaves the numbers as they were."""
    simulator.set_usage(burst_percent=42.0)
    await relay.hub.monitor.refresh_now()
    page = await open_dashboard(context, relay)
    simulator.inject(Failure.SERVER_ERROR, count=50)
    await page.get_by_test_id("refresh-button").click()
    await expect(page.get_by_test_id("refresh-outcome")).to_have_text(
        "Gateway unavailable — showing last good data"
    )
    await expect(page.get_by_test_id("daily-percent")).to_have_text("42%")


async def test_degraded_monitor_shows_the_status_banner(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """When polls fail, a banner says the data shown is the last good data."""
    page = await open_dashboard(context, relay)
    banner = page.get_by_test_id("status-banner")
    await expect(banner).to_be_hidden()
    simulator.inject(Failure.SERVER_ERROR, count=50)
    await page.get_by_test_id("refresh-button").click()
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Gateway unavailable — showing last good data")


async def test_page_shows_reconnecting_and_recovers_when_the_relay_restarts(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """The page flags the lost relay, reconnects by itself and shows the restarted relay's data."""
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
    await relay.stop()
    banner = page.get_by_test_id("connection-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("reconnecting")
    simulator.set_usage(burst_percent=45.0)
    await relay.start()
    await expect(banner).to_be_hidden()
    await expect(page.locator("body")).to_have_attribute("data-connection", "open")
    # The new relay process counts seq from 1 again; its snapshot must still show.
    await expect(page.get_by_test_id("daily-percent")).to_have_text("45%")


async def test_window_at_100_percent_shows_limit_reached(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A full daily window is marked "Limit reached"; the monthly one is not."""
    simulator.set_usage(burst_percent=100.0, sustained_percent=40.0)
    await relay.hub.monitor.refresh_now()
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("100%")
    await expect(page.get_by_test_id("daily-limit")).to_have_text("Limit reached")
    await expect(page.get_by_test_id("daily-limit")).to_be_visible()
    await expect(page.get_by_test_id("monthly-limit")).to_be_hidden()
    await expect(page.get_by_test_id("summary")).to_contain_text("Daily limit reached · Resets in")


async def test_chart_adds_a_reading_for_every_update(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Each snapshot adds a reading to the chart, whose label summarises both buckets."""
    page = await open_dashboard(context, relay)
    chart = page.get_by_test_id("usage-chart")
    await expect(chart).to_have_attribute("data-points", "1")
    for burst in (25.0, 50.0):
        simulator.set_usage(burst_percent=burst, sustained_percent=burst / 5)
        await refresh_over_websocket(relay)
    await expect(chart).to_have_attribute("data-points", "3")
    await expect(chart).to_have_attribute("role", "img")
    await expect(chart).to_have_attribute(
        "aria-label", re.compile(r"3 readings .*: Daily 0% to 50%, Monthly 0% to 10%\.$")
    )


async def test_dashboard_fits_a_phone_screen(
    browser: Browser, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """At 360 px wide the page needs no horizontal scrolling."""
    phone = await browser.new_context(viewport={"width": 360, "height": 740})
    try:
        page = await open_dashboard(phone, relay)
        await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    finally:
        await phone.close()


async def test_meter_cards_are_built_per_window_and_named_by_their_headings(
    module_page: Page,
) -> None:
    """The page builds one card per window, in order, each meter named by its card's heading."""
    await open_scripted_dashboard(module_page, fake_snapshot(5))
    windows = module_page.get_by_role("region", name="Usage windows")
    await expect(windows.get_by_role("heading")).to_have_text(["Daily", "Monthly"])
    await expect(windows.locator(".meter-card")).to_have_count(2)
    for bucket, name in (("burst", "Daily"), ("sustained", "Monthly")):
        card = windows.locator(f'.meter-card[data-bucket="{bucket}"]')
        await expect(card.get_by_role("meter", name=name)).to_have_attribute(
            "data-testid", f"{name.lower()}-meter"
        )


async def test_formatting_follows_the_shared_label_cases(module_page: Page) -> None:
    """Names, percents, burn rates, reset labels and the binding window follow label_cases.json."""
    printed = await module_page.evaluate(
        """async (cases) => {
            const {
                BUCKET_NAMES, dominantBucket, formatBurnRate, formatPercent, formatResetLabel,
            } = await import('./format.js');
            return {
                window_labels: BUCKET_NAMES,
                percent: cases.percent.map(([value]) => [value, formatPercent(value)]),
                burn_rate: cases.burn_rate.map(([rate]) => [rate, formatBurnRate(rate)]),
                reset: cases.reset.map((c) => ({
                    ...c, label: formatResetLabel(c.reset_at, Date.parse(c.now), c.time_zone),
                })),
                dominant: cases.dominant.map((c) => ({ ...c, dominant: dominantBucket(c) })),
            };
        }""",
        LABEL_CASES,
    )
    # Whole lists of [input, output] pairs, so that a failure shows every mismatch at once.
    assert printed == {key: LABEL_CASES[key] for key in printed}


async def test_percent_of_not_a_number_is_zero(module_page: Page) -> None:
    """A NaN (which JSON, and so the shared table, cannot hold) reads as nothing used."""
    label = await module_page.evaluate(
        "async () => (await import('./format.js')).formatPercent(Number.NaN)"
    )
    assert label == "0%"


async def test_reset_label_defaults_to_the_browsers_time_zone(module_page: Page) -> None:
    """Without a zone, a reset date is in the browser's own zone (Europe/Berlin here)."""
    label = await module_page.evaluate(
        """async () => {
            const { formatResetLabel } = await import('./format.js');
            return formatResetLabel('2026-12-01T00:00:00Z', Date.parse('2026-11-22T12:00:00Z'));
        }"""
    )
    assert label == "Resets Dec 1 at 1:00 AM"


async def test_status_banner_texts_name_each_state(module_page: Page) -> None:
    """Every state but ok has a human banner text; ok has none."""
    texts = await module_page.evaluate(
        """async () => {
            const { describeStatus } = await import('./format.js');
            const states = ['ok', 'starting', 'degraded', 'auth_error', 'stopped'];
            return Object.fromEntries(states.map((state) => [
                state, describeStatus({ state, consecutive_failures: 2, last_error: 'HTTP 503' }),
            ]));
        }"""
    )
    assert texts == {
        "ok": None,
        "starting": "Waiting for the first reading from the gateway…",
        "degraded": "Gateway unavailable — showing last good data; "
        "the last 2 polls failed (HTTP 503).",
        "auth_error": "The gateway refused the monitor's credentials — showing last good data. "
        "Update the token to resume.",
        "stopped": "The monitor has stopped — the data shown is no longer updated.",
    }


async def test_client_drops_snapshots_whose_seq_is_not_newer(loopback_page: Page) -> None:
    """After seq 5 the client ignores 4 and a repeated 5, then delivers 6."""

    async def relay(websocket: ServerConnection) -> None:
        await answer_subscribe(websocket, fake_snapshot(5))
        for seq in (4, 5, 6):
            event = {"type": "event", "topic": "usage", "event": "usage.updated"}
            await websocket.send(json.dumps({**event, "data": fake_snapshot(seq)}))
        await websocket.wait_closed()

    async with serve(relay, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = server.sockets[0].getsockname()[1]
        delivered = await evaluate(
            loopback_page,
            """async (url) => {
                const { UsageClient } = await import('./usage-client.js');
                const client = new UsageClient(url);
                const seqs = [];
                await new Promise((resolve) => {
                    client.addEventListener('snapshot', ({ detail }) => {
                        seqs.push(detail.seq);
                        if (detail.seq === 6) resolve();
                    });
                    client.start();
                });
                client.close();
                return seqs;
            }""",
            f"ws://127.0.0.1:{port}/ws",
        )
    assert delivered == [5, 6]


async def test_client_starts_counting_again_when_the_epoch_changes(loopback_page: Page) -> None:
    """A snapshot of a new epoch is delivered even with a lower seq; then seq rules again."""

    async def relay(websocket: ServerConnection) -> None:
        await answer_subscribe(websocket, {**fake_snapshot(40), "epoch": "old"})
        for seq, epoch in ((1, "new"), (1, "new"), (2, "new")):
            event = {"type": "event", "topic": "usage", "event": "usage.updated"}
            data = {**fake_snapshot(seq), "epoch": epoch}
            await websocket.send(json.dumps({**event, "data": data}))
        await websocket.wait_closed()

    async with serve(relay, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = server.sockets[0].getsockname()[1]
        delivered = await evaluate(
            loopback_page,
            """async (url) => {
                const { UsageClient } = await import('./usage-client.js');
                const client = new UsageClient(url);
                const seen = [];
                await new Promise((resolve) => {
                    client.addEventListener('snapshot', ({ detail }) => {
                        seen.push([detail.epoch, detail.seq]);
                        if (detail.seq === 2) resolve();
                    });
                    client.start();
                });
                client.close();
                return seen;
            }""",
            f"ws://127.0.0.1:{port}/ws",
        )
    assert delivered == [["old", 40], ["new", 1], ["new", 2]]


async def test_client_reconnects_when_pings_go_unanswered(loopback_page: Page) -> None:
    """A relay that stops answering the protocol's ping is treated as dead and redialled."""
    connections = 0

    async def silent_relay(websocket: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await answer_subscribe(websocket, None)
        await websocket.wait_closed()

    async with serve(silent_relay, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = server.sockets[0].getsockname()[1]
        states = await evaluate(
            loopback_page,
            """async (url) => {
                const { UsageClient } = await import('./usage-client.js');
                const client = new UsageClient(url, {
                    pingIntervalMs: 100, pingTimeoutMs: 200, reconnectDelayMs: 50,
                });
                const states = [];
                await new Promise((resolve) => {
                    client.addEventListener('statechange', ({ detail }) => {
                        states.push(detail.state);
                        if (states.filter((state) => state === 'open').length === 2) resolve();
                    });
                    client.start();
                });
                client.close();
                return states;
            }""",
            f"ws://127.0.0.1:{port}/ws",
        )
    assert states == ["connecting", "open", "reconnecting", "open", "closed"]
    assert connections == 2


async def test_client_refresh_rejects_with_the_relays_error_code(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """``refresh()`` rejects with code ``upstream_unavailable`` and the last good snapshot."""
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
    simulator.inject(Failure.SERVER_ERROR, count=50)
    error = await evaluate(
        page,
        """async () => {
            const client = await window.openUsageClient();
            try {
                await client.refresh();
                return null;
            } catch (error) {
                return { name: error.name, code: error.code, seq: error.data?.latest?.seq };
            } finally {
                client.close();
            }
        }""",
    )
    assert error == {"name": "UsageRequestError", "code": "upstream_unavailable", "seq": 1}


async def test_chart_is_filled_from_stored_history_after_a_reload(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A reloaded page charts the relay's stored readings, not only those since it loaded."""
    page = await open_dashboard(context, relay)
    chart = page.get_by_test_id("usage-chart")
    await expect(chart).to_have_attribute("data-points", "1")
    for burst in (25.0, 50.0):
        simulator.set_usage(burst_percent=burst)
        await relay.hub.monitor.refresh_now()
    await expect(chart).to_have_attribute("data-points", "3")
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-connection", "open")
    await expect(page.get_by_role("heading", name="Last 24 hours")).to_be_visible()
    await expect(chart).to_have_attribute("data-points", "3")
    await expect(chart).to_have_attribute("aria-label", re.compile(r"Daily 0% to 50%"))


async def test_threshold_crossing_shows_one_alert_notice(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A jump from 0 to 95 % shows one "crossed 90%" notice; a later reading adds none."""
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
    simulator.set_usage(burst_percent=95.0)
    await relay.hub.monitor.refresh_now()
    await expect(alert_notices(page)).to_have_text(["Daily usage crossed 90% (now 95%)"])
    simulator.set_usage(burst_percent=96.0)
    await relay.hub.monitor.refresh_now()
    await expect(page.get_by_test_id("daily-percent")).to_have_text("96%")
    await expect(alert_notices(page)).to_have_text(["Daily usage crossed 90% (now 95%)"])


async def test_dismissing_an_alert_removes_its_notice_and_keeps_focus_in_the_list(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Dismiss removes that notice only (newest first) and focuses the next Dismiss button."""
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
    notices = alert_notices(page)
    simulator.set_usage(burst_percent=95.0)
    await relay.hub.monitor.refresh_now()
    await expect(notices).to_have_text(["Daily usage crossed 90% (now 95%)"])
    simulator.set_usage(sustained_percent=60.0)
    await relay.hub.monitor.refresh_now()
    await expect(notices).to_have_text(
        ["Monthly usage crossed 50% (now 60%)", "Daily usage crossed 90% (now 95%)"]
    )
    dismiss = page.get_by_role("button", name="Dismiss")
    await dismiss.first.click()
    await expect(notices).to_have_text(["Daily usage crossed 90% (now 95%)"])
    await expect(dismiss).to_be_focused()
    await expect(dismiss).to_have_accessible_description("Daily usage crossed 90% (now 95%)")


async def test_alert_of_a_window_that_has_reset_is_not_shown(module_page: Page) -> None:
    """An alert whose window reset before it is shown is left out of the notices."""
    await module_page.clock.set_fixed_time("2026-11-22T12:00:30Z")
    alert = {"kind": "threshold_crossed", "bucket": "burst", "threshold": 50.0}
    events = [
        ("usage.threshold_crossed", {**alert, "used_percent": 51, "reset_at": "2026-11-22T00:00Z"}),
        ("usage.threshold_crossed", {**alert, "used_percent": 52, "reset_at": "2026-11-23T00:00Z"}),
    ]
    await open_scripted_dashboard(module_page, fake_snapshot(5), events)
    await expect(alert_notices(module_page)).to_have_text(["Daily usage crossed 50% (now 52%)"])


async def test_meters_show_burn_rate_and_projection_from_the_derived_block(
    module_page: Page,
) -> None:
    """Each meter shows its window's burn rate and when (or whether) it hits the limit."""
    await module_page.clock.set_fixed_time("2026-11-22T12:00:30Z")
    snapshot = {
        **fake_snapshot(5),
        "derived": {
            "burst": {
                "burn_rate_percent_per_hour": 4.2,
                "projected_limit_at": "2026-11-22T14:40:00Z",
                "limit_before_reset": True,
            },
            "sustained": {
                "burn_rate_percent_per_hour": 0.04,
                "projected_limit_at": None,
                "limit_before_reset": False,
            },
        },
    }
    await open_scripted_dashboard(module_page, snapshot)
    await expect(module_page.get_by_test_id("daily-forecast")).to_have_text(
        "+4.2%/h · Limit at 3:40 PM, before reset"
    )
    await expect(module_page.get_by_test_id("daily-forecast")).to_have_class(
        re.compile("is-warning")
    )
    await expect(module_page.get_by_test_id("monthly-forecast")).to_have_text(
        "+0.0%/h · Not before reset"
    )


async def test_meters_show_no_forecast_before_there_is_a_burn_rate(
    context: BrowserContext, relay: RelayHarness
) -> None:
    """A fresh relay derives no burn rate yet, and the meters show no forecast or placeholder."""
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
    latest = relay.hub.monitor.get_latest()
    assert latest is not None and latest.derived is not None
    assert latest.derived["burst"].burn_rate_percent_per_hour is None
    for name in ("daily", "monthly"):
        await expect(page.get_by_test_id(f"{name}-forecast")).to_be_hidden()
        await expect(page.get_by_test_id(f"{name}-burn-rate")).to_have_text("")
        await expect(page.get_by_test_id(f"{name}-outlook")).to_have_text("")


async def test_meters_show_the_forecast_a_restarted_relay_derives_from_stored_history(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    """After a restart over hours of rising usage, Daily shows its rate and the limit ahead."""
    await restart_over_rising_history(relay, simulator, tmp_path)
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-burn-rate")).to_have_text("+7.0%/h")
    await expect(page.get_by_test_id("daily-outlook")).to_have_text(
        re.compile(r"^Limit (at|on \w{3} \d{1,2} at) \d{1,2}:\d{2} [AP]M, before reset$")
    )
    await expect(page.get_by_test_id("monthly-burn-rate")).to_have_text("+0.1%/h")
    await expect(page.get_by_test_id("monthly-outlook")).to_have_text("Not before reset")


async def test_forecast_texts_follow_the_rules(module_page: Page) -> None:
    """Burn rates have a sign and one decimal; the outlook names the local time or says not."""
    texts = await module_page.evaluate(
        """async () => {
            const { formatForecast } = await import('./format.js');
            const now = Date.parse('2026-11-22T12:00:00Z');
            const forecast = (rate, at = null) => formatForecast(
                { burn_rate_percent_per_hour: rate, projected_limit_at: at,
                  limit_before_reset: at !== null },
                now, 'Europe/Berlin',
            );
            return {
                noBlock: formatForecast(null, now),
                noRate: forecast(null),
                today: forecast(4.25, '2026-11-22T14:40:00Z'),
                tomorrow: forecast(12, '2026-11-23T08:05:00Z'),
                flat: forecast(-0.04),
                falling: forecast(-1.26),
            };
        }"""
    )
    assert texts == {
        "noBlock": None,
        "noRate": None,
        "today": {
            "rate": "+4.3%/h",
            "outlook": "Limit at 3:40 PM, before reset",
            "limitBeforeReset": True,
        },
        "tomorrow": {
            "rate": "+12.0%/h",
            "outlook": "Limit on Nov 23 at 9:05 AM, before reset",
            "limitBeforeReset": True,
        },
        "flat": {"rate": "+0.0%/h", "outlook": "Not before reset", "limitBeforeReset": False},
        "falling": {"rate": "-1.3%/h", "outlook": "Not before reset", "limitBeforeReset": False},
    }


async def test_alert_texts_name_the_window_and_what_happened(module_page: Page) -> None:
    """Threshold alerts say what was crossed and where usage is; projections say when."""
    texts = await module_page.evaluate(
        """async () => {
            const { describeAlert } = await import('./format.js');
            const now = Date.parse('2026-11-22T12:00:00Z');
            const reset_at = '2026-11-23T00:00:00Z';
            return [
                { kind: 'threshold_crossed', bucket: 'burst', threshold: 90, used_percent: 95.3,
                  reset_at },
                { kind: 'threshold_crossed', bucket: 'sustained', threshold: 50, used_percent: 50,
                  reset_at },
                { kind: 'limit_projected', bucket: 'burst', projected_at: '2026-11-22T14:40:00Z',
                  burn_rate_percent_per_hour: 12.5, reset_at },
                { kind: 'limit_projected', bucket: 'sustained',
                  projected_at: '2026-11-25T07:00:00Z', burn_rate_percent_per_hour: 1.5,
                  reset_at: '2026-12-01T00:00:00Z' },
            ].map((alert) => describeAlert(alert, now, 'Europe/Berlin'));
        }"""
    )
    assert texts == [
        "Daily usage crossed 90% (now 95%)",
        "Monthly usage crossed 50% (now 50%)",
        "Daily usage is on track to reach its limit at 3:40 PM, before it resets",
        "Monthly usage is on track to reach its limit on Nov 25 at 8:00 AM, before it resets",
    ]


async def test_client_emits_each_alert_as_an_alert_event(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A threshold crossing reaches the client as an ``alert`` event with the alert's fields."""
    page = await open_dashboard(context, relay)
    await evaluate(
        page,
        """async () => {
            await window.openUsageClient((client) => {
                window.alertReceived = new Promise((resolve) => {
                    client.addEventListener('alert', ({ detail }) => resolve(detail));
                });
            });
        }""",
    )
    simulator.set_usage(burst_percent=76.0)
    snapshot = await relay.hub.monitor.refresh_now()
    alert = await evaluate(page, "window.alertReceived")
    assert datetime.fromisoformat(alert.pop("reset_at")) == snapshot.usage.burst.reset_at
    # Relays with sources add the alert's source and the meter's label.
    assert alert.pop("source", snapshot.source) == snapshot.source
    assert alert.pop("label", "Daily") == "Daily"
    # Relays with alert rules add the rule that fired it: none for a configured threshold.
    assert alert.pop("rule", None) is None
    assert alert == {
        "kind": "threshold_crossed",
        "bucket": "burst",
        "threshold": 75.0,
        "used_percent": 76.0,
    }


async def test_client_get_history_returns_the_stored_points(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """``getHistory()`` resolves with the relay's stored points in the range, oldest first."""
    page = await open_dashboard(context, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("0%")
    for burst in (20.0, 30.0):
        simulator.set_usage(burst_percent=burst)
        await relay.hub.monitor.refresh_now()
    points = await evaluate(
        page,
        """async () => {
            const client = await window.openUsageClient();
            try {
                const since = new Date(Date.now() - 3_600_000);
                return await client.getHistory({ since, limit: 10 });
            } finally {
                client.close();
            }
        }""",
    )
    assert [(point["seq"], point["burst_percent"]) for point in points] == [
        (1, 0.0),
        (2, 20.0),
        (3, 30.0),
    ]


async def test_screenshot_of_the_dashboard(
    context: BrowserContext, relay: RelayHarness, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    """The dashboard after a day of rising usage and a threshold alert; `make screenshots`
    keeps it in docs/images."""
    stored = await restart_over_rising_history(relay, simulator, tmp_path)
    page = await open_dashboard(context, relay)
    await page.set_viewport_size({"width": 800, "height": 600})
    await expect(page.get_by_test_id("daily-outlook")).to_contain_text("before reset")
    simulator.set_usage(burst_percent=76.0, sustained_percent=12.1)
    await relay.hub.monitor.refresh_now()
    await expect(alert_notices(page)).to_have_text(["Daily usage crossed 75% (now 76%)"])
    # The stored readings, the poll after the restart and the one just made.
    await expect(page.get_by_test_id("usage-chart")).to_have_attribute(
        "data-points", str(stored + 2)
    )
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / SCREENSHOT.name
    path = await save_dashboard_screenshot(page, target)
    assert path.stat().st_size > 10_000


# -- several sources -----------------------------------------------------------------------


def several_sources() -> list[dict[str, Any]]:
    """Two PostHog sources, an OpenRouter key with a limit and a LiteLLM key with a budget."""
    return [
        posthog_snapshot("us", 5, 37.5, 12.1),
        posthog_snapshot("eu", 3, 64.0, 40.0),
        usd_snapshot(
            "router",
            "openrouter",
            7,
            [
                meter(
                    "limit",
                    "Key limit",
                    "usd",
                    used=12.5,
                    limit=50.0,
                    used_percent=25.0,
                    reset_at="2026-12-01T00:00:00Z",
                ),
                meter("today", "Today", "usd", used=3.1),
                meter("month", "Month", "usd", used=1234.5, reset_at="2026-12-01T00:00:00Z"),
            ],
        ),
        usd_snapshot(
            "team",
            "litellm",
            2,
            [
                meter(
                    "budget",
                    "Budget",
                    "usd",
                    used=80.0,
                    limit=100.0,
                    used_percent=80.0,
                    reset_at=None,
                )
            ],
        ),
    ]


async def open_sources_dashboard(page: Page, relay: ScriptedRelay) -> None:
    """Open the dashboard on ``page`` at :data:`SCRIPTED_NOW` against the scripted ``relay``
    and wait until every source's group shows its snapshot."""
    await page.clock.set_fixed_time(SCRIPTED_NOW)
    await relay.install(page, MODULE_WS_URL)
    await page.goto(f"{MODULE_ORIGIN}/index.html")
    await expect(page.locator("body")).to_have_attribute("data-connection", "open")
    await expect(page.get_by_test_id("source").get_by_test_id("freshness")).to_have_text(
        ["updated 30 s ago"] * len(relay.latest)
    )


def source_group(page: Page, name: str) -> Locator:
    """The group of the source ``name``."""
    return page.locator(f'[data-testid="source"][data-source="{name}"]')


async def test_each_source_has_a_group_with_its_name_kind_status_and_meters(
    module_page: Page,
) -> None:
    """Every source the relay lists gets a group, in order, naming its kind, state and meters."""
    await open_sources_dashboard(module_page, ScriptedRelay(several_sources()))
    groups = module_page.get_by_test_id("source")
    await expect(groups.get_by_test_id("source-name")).to_have_text(["us", "eu", "router", "team"])
    await expect(groups.get_by_test_id("source-kind")).to_have_text(
        ["PostHog", "PostHog", "OpenRouter", "LiteLLM"]
    )
    await expect(groups.get_by_test_id("source-state")).to_have_text(["OK"] * 4)
    meters = {"us": ["Daily", "Monthly"], "router": ["Key limit", "Today", "Month"]}
    for name, labels in meters.items():
        await expect(source_group(module_page, name).get_by_role("heading", level=3)).to_have_text(
            labels
        )
    await expect(source_group(module_page, "eu").get_by_test_id("daily-percent")).to_have_text(
        "64%"
    )


async def test_usd_meters_read_as_dollars_with_a_bar_only_under_a_limit(module_page: Page) -> None:
    """A usd meter with a limit has a bar and "$12.50 of $50.00"; one without reads "$3.10"."""
    await open_sources_dashboard(module_page, ScriptedRelay(several_sources()))
    router = source_group(module_page, "router")
    await expect(router.get_by_test_id("key-limit-percent")).to_have_text("25%")
    await expect(router.get_by_test_id("key-limit-amount")).to_have_text("$12.50 of $50.00")
    await expect(router.get_by_role("meter", name="Key limit")).to_have_attribute(
        "aria-valuenow", "25"
    )
    await expect(router.get_by_test_id("today-percent")).to_have_text("$3.10")
    await expect(router.get_by_test_id("today-meter")).to_be_hidden()
    await expect(router.get_by_test_id("today-amount")).to_be_hidden()
    await expect(router.get_by_test_id("month-percent")).to_have_text("$1,234.50")
    team = source_group(module_page, "team")
    await expect(team.get_by_test_id("budget-amount")).to_have_text("$80.00 of $100.00")
    await expect(team.get_by_test_id("source-summary")).to_have_text("80% used")


async def test_a_sources_refresh_button_refreshes_that_source_only(module_page: Page) -> None:
    """Each group's button sends one refresh for its own source's topic, and reports there."""
    relay = ScriptedRelay(several_sources())
    await open_sources_dashboard(module_page, relay)
    await module_page.get_by_role("button", name="Refresh router now").click()
    router = source_group(module_page, "router")
    await expect(router.get_by_test_id("refresh-outcome")).to_have_text("Updated")
    await expect(source_group(module_page, "us").get_by_test_id("refresh-outcome")).to_have_text("")
    assert relay.ops("refresh") == ["usage:router"]


async def test_reset_labels_are_in_the_relays_time_zone(module_page: Page) -> None:
    """A reset a week away reads in the zone list_sources names, not the browser's."""
    relay = ScriptedRelay(several_sources(), timezone=DEMO_TIMEZONE)
    await open_sources_dashboard(module_page, relay)
    # 2026-12-01T00:00Z: Dec 1 at 1:00 AM in Berlin, Nov 30 at 7:00 PM in New York.
    monthly = source_group(module_page, "us").get_by_test_id("monthly-reset")
    await expect(monthly).to_have_text("Resets Nov 30 at 7:00 PM")


async def test_alerts_on_a_page_of_several_sources_name_their_source(module_page: Page) -> None:
    """An alert names its source and meter; one of a meter that never resets stays shown."""
    relay = ScriptedRelay(several_sources())
    await open_sources_dashboard(module_page, relay)
    alert = {"kind": "threshold_crossed", "source": "team", "bucket": "budget", "label": "Budget"}
    relay.publish(
        "team",
        "usage.threshold_crossed",
        {**alert, "threshold": 75, "used_percent": 80.0, "reset_at": None},
    )
    await expect(alert_notices(module_page)).to_have_text(
        ["team: Budget usage crossed 75% (now 80%)"]
    )


async def test_single_source_relay_keeps_the_page_as_it_was(module_page: Page) -> None:
    """With one source the page has no group header and heads itself with its summary."""
    relay = ScriptedRelay([posthog_snapshot("default", 5, 37.5, 12.1)])
    await open_sources_dashboard(module_page, relay)
    await expect(module_page.get_by_test_id("sources")).to_have_attribute("data-layout", "single")
    await expect(module_page.get_by_test_id("source-name")).to_be_hidden()
    await expect(module_page.get_by_test_id("chart-source")).to_be_hidden()
    await expect(module_page.get_by_test_id("product")).to_have_text("Product: posthog_code")
    await expect(module_page.get_by_test_id("summary")).to_have_text("37% used · Resets in 11h 59m")
    await expect(module_page.get_by_role("button", name="Refresh now")).to_be_enabled()


async def test_sources_stack_on_a_phone_screen(module_page: Page) -> None:
    """At 360 px wide every group is shown in full, one under another, without side scrolling."""
    await module_page.set_viewport_size({"width": 360, "height": 740})
    await open_sources_dashboard(module_page, ScriptedRelay(several_sources()))
    assert await module_page.evaluate("document.documentElement.scrollWidth") <= 360
    boxes = []
    for group in await module_page.get_by_test_id("source").all():
        await expect(group).to_be_visible()
        box = await group.bounding_box()
        assert box is not None
        boxes.append(box)
    assert len(boxes) == 4
    assert all(box["x"] >= 0 and box["x"] + box["width"] <= 360 for box in boxes)
    tops = [box["y"] for box in boxes]
    assert tops == sorted(tops) and len(set(tops)) == 4


async def test_chart_draws_the_percent_meters_of_the_chosen_source(module_page: Page) -> None:
    """The chart shows the first source's meters, and another's once chosen, with its history."""
    relay = ScriptedRelay(several_sources())
    await open_sources_dashboard(module_page, relay)
    legend = module_page.get_by_test_id("chart-legend").locator("li")
    await expect(legend).to_have_text(["Daily", "Monthly"])
    await module_page.get_by_label("Source").select_option("router")
    await expect(legend).to_have_text(["Key limit"])
    await expect(module_page.get_by_test_id("usage-chart")).to_have_attribute(
        "aria-label", re.compile(r"1 reading .*: Key limit 25% to 25%\.$")
    )
    assert relay.ops("get_history") == ["usage:us", "usage:router"]


# -- the browser client and sources ---------------------------------------------------------


#: Defines ``window.followSources(sources, options)`` in a module page: a started client for
#: those sources, resolved once open, which records every event as [type, source, topic, seq].
FOLLOW_SOURCES = """async ([sources, options]) => {
    const { UsageClient } = await import('./usage-client.js');
    const client = new UsageClient(undefined, { sources, ...options });
    window.client = client;
    window.seen = [];
    for (const type of ['snapshot', 'status', 'alert']) {
        client.addEventListener(type, (event) => {
            window.seen.push([type, event.source, event.topic, event.detail.seq ?? null]);
        });
    }
    await new Promise((resolve) => {
        client.addEventListener('statechange', () => client.state === 'open' && resolve());
        client.start();
    });
}"""


async def follow_sources(
    page: Page, relay: ScriptedRelay, sources: list[str], **options: Any
) -> None:
    """Open ``window.client`` on ``page`` for ``sources`` against the scripted ``relay``."""
    await relay.install(page, MODULE_WS_URL)
    await evaluate(page, FOLLOW_SOURCES, [sources, options])


async def test_client_follows_several_sources_and_names_the_source_of_each_event(
    module_page: Page,
) -> None:
    """One connection subscribes to each source; every event says which source it is about."""
    relay = ScriptedRelay(several_sources())
    await follow_sources(module_page, relay, ["us", "router"])
    relay.update({**several_sources()[2], "seq": 8})
    relay.publish("us", "usage.threshold_crossed", {"bucket": "burst", "threshold": 50})
    await module_page.wait_for_function("window.seen.length >= 6")
    seen = await module_page.evaluate("window.seen")
    assert len(relay.requests) == 1
    assert relay.ops("subscribe") == ["usage:us", "usage:router"]
    assert seen == [
        ["snapshot", "us", "usage:us", 5],
        ["status", "us", "usage:us", None],
        ["snapshot", "router", "usage:router", 7],
        ["status", "router", "usage:router", None],
        ["snapshot", "router", "usage:router", 8],
        ["alert", "us", "usage:us", None],
    ]


async def test_client_subscribes_every_topic_again_after_a_reconnect(module_page: Page) -> None:
    """Sources subscribed at start and later are all subscribed again on the next connection."""
    relay = ScriptedRelay(several_sources())
    await follow_sources(module_page, relay, ["us"], reconnectDelayMs=50)
    await evaluate(module_page, "() => window.client.subscribe('team')")
    await module_page.evaluate(
        """() => {
            window.reopened = new Promise((resolve) => {
                window.client.addEventListener('statechange', ({ detail }) => {
                    if (detail.state === 'open') resolve(detail.previous);
                });
            });
        }"""
    )
    await relay.drop_connections()
    assert await evaluate(module_page, "window.reopened") == "reconnecting"
    assert [
        [request.get("topic") for request in requests if request["op"] == "subscribe"]
        for requests in relay.requests
    ] == [["usage:us", "usage:team"], ["usage:us", "usage:team"]]


async def test_client_counts_seq_per_source_and_per_epoch(module_page: Page) -> None:
    """A seq not above its own source's newest is dropped, whatever other sources are at;
    a new epoch starts that source's count again."""
    relay = ScriptedRelay(several_sources())
    await follow_sources(module_page, relay, ["us", "eu"])
    us, eu = several_sources()[:2]  # seq 5 and 3
    for snapshot in (
        {**us, "seq": 4},
        {**eu, "seq": 4},
        {**eu, "seq": 4},
        {**us, "seq": 1, "epoch": "new"},
        {**us, "seq": 1, "epoch": "new"},
        {**us, "seq": 2, "epoch": "new"},
    ):
        relay.update(snapshot)
    await module_page.wait_for_function(
        "window.seen.filter(([type]) => type === 'snapshot').length >= 5"
    )
    snapshots = await module_page.evaluate(
        "window.seen.filter(([type]) => type === 'snapshot').map(([, name, , seq]) => [name, seq])"
    )
    assert snapshots == [["us", 5], ["eu", 3], ["eu", 4], ["us", 1], ["us", 2]]


async def test_client_calls_name_the_source_they_are_about(module_page: Page) -> None:
    """refresh, getHistory and getLatest take a source; listSources tells zone and default."""
    relay = ScriptedRelay(several_sources(), timezone=DEMO_TIMEZONE)
    await follow_sources(module_page, relay, ["router"])
    result = await evaluate(
        module_page,
        """async () => {
            const client = window.client;
            const listing = await client.listSources();
            const refreshed = await client.refresh({ source: 'router' });
            await client.getHistory({ source: 'team', limit: 10 });
            return {
                names: listing.sources.map(({ name }) => name),
                timezone: listing.timezone,
                defaultSource: client.defaultSource,
                refreshed: refreshed.seq,
                latest: client.getLatest({ source: 'router' }).seq,
                notFollowed: client.getLatest({ source: 'team' }),
                status: client.getStatus({ source: 'router' }).state,
            };
        }""",
    )
    assert result == {
        "names": ["us", "eu", "router", "team"],
        "timezone": DEMO_TIMEZONE,
        "defaultSource": "us",
        "refreshed": 8,
        "latest": 8,
        "notFollowed": None,
        "status": "ok",
    }
    assert relay.ops("refresh") == ["usage:router"]
    assert relay.ops("get_history") == ["usage:team"]


async def test_client_subscribing_to_an_unknown_source_rejects_and_forgets_it(
    module_page: Page,
) -> None:
    """subscribe() to a source the relay does not serve rejects with unknown_topic."""
    relay = ScriptedRelay(several_sources())
    await follow_sources(module_page, relay, ["us"])
    result = await evaluate(
        module_page,
        """async () => {
            const error = await window.client.subscribe('nope').catch((error) => error);
            return { code: error.code, topics: window.client.topics };
        }""",
    )
    assert result == {"code": "unknown_topic", "topics": ["usage:us"]}


async def test_usd_amounts_follow_the_shared_label_cases(module_page: Page) -> None:
    """Dollar amounts follow the "usd" cases of label_cases.json."""
    printed = await module_page.evaluate(
        """async (cases) => {
            const { formatUsd } = await import('./format.js');
            return cases.map(([value]) => [value, formatUsd(value)]);
        }""",
        LABEL_CASES["usd"],
    )
    assert printed == LABEL_CASES["usd"]


async def test_dominant_meter_follows_the_shared_label_cases(module_page: Page) -> None:
    """The meter that drives a source's summary follows the "dominant_meter" cases."""
    printed = await module_page.evaluate(
        """async (cases) => {
            const { dominantMeter } = await import('./format.js');
            return cases.map((c) => ({ ...c, dominant: dominantMeter(c.meters).id }));
        }""",
        LABEL_CASES["dominant_meter"],
    )
    assert printed == LABEL_CASES["dominant_meter"]


# -- a demo relay with several sources ------------------------------------------------------


class DemoRelay:
    """``python -m relay --demo`` in a child process, with its client token."""

    def __init__(self, process: RelayProcess, token_file: Path) -> None:
        self.process = process
        self.token_file = token_file

    @property
    def url(self) -> str:
        return self.process.url

    async def seqs(self) -> dict[str, int]:
        """Each source's latest seq, as ``GET /api/v1/sources`` tells an authenticated client."""
        token = read_client_token(self.token_file)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers) as client:
            response = await client.get("/api/v1/sources")
        response.raise_for_status()
        return {source["name"]: source["latest"]["seq"] for source in response.json()["sources"]}


@pytest.fixture(scope="module")
async def demo_relay(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoRelay]:
    """One demo relay for the module, in its own home, polling each source once at start."""
    home = tmp_path_factory.mktemp("demo-home")
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("USAGE_MONITOR_")
    }
    environment.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        USAGE_MONITOR_DATABASE=str(home / "demo.db"),
        USAGE_MONITOR_TIMEZONE=DEMO_TIMEZONE,
        **{CLIENT_TOKEN_ENV: str(home / "client-token")},
    )
    args = ["--demo", "--host", "127.0.0.1", "--port", "0", "--interval", "3600"]
    process = await anyio.to_thread.run_sync(RelayProcess.start, args, environment)
    try:
        yield DemoRelay(process, home / "client-token")
    finally:
        await anyio.to_thread.run_sync(process.stop)


async def open_demo_dashboard(page: Page, relay: DemoRelay) -> None:
    """Open the demo relay's dashboard on ``page`` and wait until every source shows data."""
    await page.goto(f"{relay.url}/")
    await expect(page.locator("body")).to_have_attribute("data-connection", "open")
    await expect(page.get_by_test_id("source")).to_have_count(4)
    freshness = page.get_by_test_id("source").get_by_test_id("freshness")
    await expect(freshness).to_have_text([re.compile("^updated ")] * 4)


async def test_demo_relay_shows_a_group_per_source_with_its_meters(
    context: BrowserContext, demo_relay: DemoRelay
) -> None:
    """The demo's four sources each get a group with their kind and meters."""
    page = await context.new_page()
    await open_demo_dashboard(page, demo_relay)
    groups = page.get_by_test_id("source")
    await expect(groups.get_by_test_id("source-name")).to_have_text(["us", "eu", "router", "team"])
    await expect(groups.get_by_test_id("source-kind")).to_have_text(
        ["PostHog", "PostHog", "OpenRouter", "LiteLLM"]
    )
    for name in ("us", "eu"):
        cards = source_group(page, name).get_by_role("heading", level=3)
        await expect(cards).to_have_text(["Daily", "Monthly"])
        percent = source_group(page, name).get_by_test_id("daily-percent")
        await expect(percent).to_have_text(re.compile(r"^\d+(\.\d)?%$"))
    router = source_group(page, "router")
    await expect(router.get_by_role("heading", level=3).first).to_have_text("Key limit")
    amounts = router.locator(".meter-card .percent")
    await expect(amounts.nth(1)).to_have_text(re.compile(r"^\$[\d,]+\.\d\d$"))
    team = source_group(page, "team").locator(".meter-card")
    await expect(team).to_have_count(1)


async def test_demo_relay_refresh_button_polls_its_source_only(
    context: BrowserContext, demo_relay: DemoRelay
) -> None:
    """A group's button sends one refresh for its topic; only that source's seq rises."""
    sent: list[dict[str, Any]] = []
    page = await context.new_page()
    page.on(
        "websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(json.loads(frame)))
    )
    await open_demo_dashboard(page, demo_relay)
    before = await demo_relay.seqs()
    await page.get_by_role("button", name="Refresh eu now").click()
    await expect(source_group(page, "eu").get_by_test_id("refresh-outcome")).to_have_text("Updated")
    assert [frame.get("topic") for frame in sent if frame["op"] == "refresh"] == ["usage:eu"]
    assert await demo_relay.seqs() == {**before, "eu": before["eu"] + 1}


# -- usage by day ----------------------------------------------------------------------------


def breakdown_row(
    source: str,
    day: str,
    usd: float | None,
    percent: float | None,
    polls: int = 2880,
    failed_polls: int = 0,
) -> dict[str, Any]:
    """One row of a breakdown grouped by source and day, as the relay sends it."""
    consumed = {"usd": usd, "percent": percent}
    counts = {"polls": polls, "failed_polls": failed_polls}
    return {"source": source, "day": day, "consumed": consumed, **counts}


#: What the scripted relay's ledger holds for the 14 days up to :data:`SCRIPTED_NOW` (London).
BY_DAY_ROWS = [
    breakdown_row("us", "2026-11-20", None, 41.5, failed_polls=3),
    breakdown_row("us", "2026-11-22", None, 12.0, polls=1440),
    breakdown_row("eu", "2026-11-21", None, 20.25),
    breakdown_row("router", "2026-11-09", 1.5, 3.0),
    breakdown_row("router", "2026-11-20", 4.25, 8.5),
    breakdown_row("router", "2026-11-22", 0.75, 1.5, polls=1440),
    breakdown_row("team", "2026-11-20", 2.0, 2.0),
    breakdown_row("team", "2026-11-21", 0.0, 0.0, failed_polls=2880),
]


def by_day_breakdown(rows: list[dict[str, Any]] = BY_DAY_ROWS) -> dict[str, Any]:
    """A breakdown grouped by source and day over ``rows``, with their totals."""
    usd = [row["consumed"]["usd"] for row in rows if row["consumed"]["usd"] is not None]
    percent = [row["consumed"]["percent"] for row in rows if row["consumed"]["percent"] is not None]
    return {
        "period": {"start": "2026-11-09T00:00:00Z", "end": "2026-11-22T12:00:30Z"},
        "timezone": "Europe/London",
        "group_by": ["source", "day"],
        "breakdown": rows,
        "totals": {
            "consumed": {"usd": sum(usd), "percent": sum(percent)},
            "polls": sum(row["polls"] for row in rows),
            "failed_polls": sum(row["failed_polls"] for row in rows),
        },
    }


async def open_by_day_dashboard(page: Page, relay: ScriptedRelay) -> Locator:
    """Open the scripted dashboard and return the by-day chart once its bars are drawn."""
    await open_sources_dashboard(page, relay)
    chart = page.get_by_test_id("by-day-chart")
    await expect(chart).to_have_attribute("data-bars", re.compile(r"^\d+$"))
    return chart


async def bars_of(chart: Locator) -> list[dict[str, Any]]:
    """The chart's bar segments: source, day, value and drawn box, in drawing order."""
    bars: list[dict[str, Any]] = await chart.locator("rect.day-bar").evaluate_all(
        """(rects) => rects.map((rect) => {
            const box = rect.getBoundingClientRect();
            return {
                source: rect.dataset.source,
                day: rect.dataset.day,
                value: Number(rect.dataset.value),
                y: box.y,
                height: box.height,
            };
        })"""
    )
    return bars


async def test_by_day_asks_the_relay_for_the_last_14_days_by_source_and_day(
    module_page: Page,
) -> None:
    """The view asks get_breakdown from the day 13 days before today (the relay's zone)."""
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    await open_by_day_dashboard(module_page, relay)
    requests = relay.sent("get_breakdown")
    assert [{k: v for k, v in r.items() if k != "id"} for r in requests] == [
        {"op": "get_breakdown", "since": "2026-11-09", "group_by": ["source", "day"]}
    ]
    await expect(module_page.get_by_test_id("by-day-range")).to_have_text(
        "Nov 9 to Nov 22, days in Europe/London"
    )


async def test_by_day_chart_stacks_one_bar_per_day_and_source_in_dollars(
    module_page: Page,
) -> None:
    """With usd meters about, the bars are dollars: one per source and day, stacked, to scale."""
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    chart = await open_by_day_dashboard(module_page, relay)
    await expect(chart).to_have_attribute("data-unit", "usd")
    await expect(module_page.get_by_test_id("by-day-axis")).to_have_text("$ per day")
    await expect(module_page.get_by_role("radio", name="$")).to_be_checked()
    bars = await bars_of(chart)
    assert [(bar["source"], bar["day"], bar["value"]) for bar in bars] == [
        ("router", "2026-11-09", 1.5),
        ("router", "2026-11-20", 4.25),
        ("team", "2026-11-20", 2.0),
        ("router", "2026-11-22", 0.75),
    ]
    per_unit = [bar["height"] / bar["value"] for bar in bars]
    assert max(per_unit) == pytest.approx(min(per_unit), rel=1e-3)
    router, team = bars[1], bars[2]
    assert team["y"] + team["height"] == pytest.approx(router["y"], abs=0.01)
    await expect(chart.locator("text.day")).to_have_count(14)


async def test_by_day_unit_switch_shows_percent_points(module_page: Page) -> None:
    """Choosing "% points" draws every source's percent-point rises, the axis renamed."""
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    chart = await open_by_day_dashboard(module_page, relay)
    await module_page.get_by_role("radio", name="% points").check()
    await expect(chart).to_have_attribute("data-unit", "percent")
    await expect(module_page.get_by_test_id("by-day-axis")).to_have_text("% points per day")
    bars = await bars_of(chart)
    drawn = {(bar["source"], bar["day"]): bar["value"] for bar in bars}
    expected = {
        (row["source"], row["day"]): row["consumed"]["percent"]
        for row in BY_DAY_ROWS
        if row["consumed"]["percent"]
    }
    assert drawn == expected and len(bars) == 7
    per_unit = [bar["height"] / bar["value"] for bar in bars]
    assert max(per_unit) == pytest.approx(min(per_unit), rel=1e-3)


async def test_by_day_legend_names_each_source_in_the_relays_order(module_page: Page) -> None:
    """The legend has one item per source, coloured as its bars."""
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    chart = await open_by_day_dashboard(module_page, relay)
    legend = module_page.get_by_test_id("by-day-legend").locator("li")
    await expect(legend).to_have_text(["us", "eu", "router", "team"])
    await expect(legend.nth(2)).to_have_class(re.compile(r"\bsource-2\b"))
    await expect(chart.locator('rect[data-source="router"]').first).to_have_class(
        re.compile(r"\bsource-2\b")
    )


async def test_by_day_totals_sum_each_source_over_the_14_days(module_page: Page) -> None:
    """The totals table gives each source's dollars, percent points and polls, then all's."""
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    await open_by_day_dashboard(module_page, relay)
    totals = module_page.get_by_test_id("by-day-totals")
    await expect(totals.locator("tbody tr")).to_have_text(
        [
            "us—53.5 pts4,320 (3 failed)",
            "eu—20.3 pts2,880",
            "router$6.5013.0 pts7,200",
            "team$2.002.0 pts5,760 (2,880 failed)",
        ]
    )
    await expect(totals.locator("tfoot tr")).to_have_text(
        "All sources$8.5088.8 pts20,160 (2,883 failed)"
    )


async def test_by_day_csv_download_holds_the_breakdown_rows(module_page: Page) -> None:
    """Download CSV saves one line per breakdown row, with the API's numbers."""
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    await open_by_day_dashboard(module_page, relay)
    async with module_page.expect_download() as download_info:
        await module_page.get_by_role("button", name="Download CSV").click()
    download = await download_info.value
    assert download.suggested_filename == "usage-by-day-2026-11-09-to-2026-11-22.csv"
    text = (await anyio.Path(await download.path()).read_bytes()).decode()
    assert text.startswith(",".join(CSV_HEADER) + "\r\n")
    assert parse_csv(text) == BY_DAY_ROWS


#: The header of the dashboard's CSV download.
CSV_HEADER = ["day", "source", "consumed_usd", "consumed_percent", "polls", "failed_polls"]


def parse_csv(text: str) -> list[dict[str, Any]]:
    """The dashboard's CSV read back into breakdown rows (an empty amount is null)."""

    def amount(field: str) -> float | None:
        return None if field == "" else float(field)

    return [
        {
            "source": line["source"],
            "day": line["day"],
            "consumed": {
                "usd": amount(line["consumed_usd"]),
                "percent": amount(line["consumed_percent"]),
            },
            "polls": int(line["polls"]),
            "failed_polls": int(line["failed_polls"]),
        }
        for line in csv.DictReader(io.StringIO(text, newline=""))
    ]


async def test_by_day_view_fits_a_phone_screen(module_page: Page) -> None:
    """At 360 px wide the chart, its legend, totals and button fit without side scrolling."""
    await module_page.set_viewport_size({"width": 360, "height": 740})
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    await open_by_day_dashboard(module_page, relay)
    section = module_page.get_by_test_id("by-day")
    await section.scroll_into_view_if_needed()
    assert await module_page.evaluate("document.documentElement.scrollWidth") <= 360
    for test_id in ("by-day", "by-day-chart", "by-day-totals", "by-day-csv"):
        box = await module_page.get_by_test_id(test_id).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, test_id


async def test_by_day_view_is_hidden_against_a_relay_without_a_ledger(module_page: Page) -> None:
    """A relay that answers get_breakdown unknown_op shows no by-day view."""
    relay = ScriptedRelay(several_sources())
    await open_sources_dashboard(module_page, relay)
    section = module_page.get_by_test_id("by-day")
    await expect(section).to_have_attribute("data-state", "unsupported")
    await expect(section).to_be_hidden()
    assert len(relay.sent("get_breakdown")) == 1


async def test_by_day_is_read_again_when_the_day_changes_in_the_relays_zone(
    module_page: Page,
) -> None:
    """Past midnight in the relay's zone the view asks for the 14 days ending on the new day."""
    await module_page.clock.install(time=datetime(2026, 11, 22, 23, 59, 0, tzinfo=UTC))
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    await relay.install(module_page, MODULE_WS_URL)
    await module_page.goto(f"{MODULE_ORIGIN}/index.html")
    chart = module_page.get_by_test_id("by-day-chart")
    await expect(chart).to_have_attribute("data-bars", "4")
    await module_page.clock.fast_forward("02:00")
    range_text = module_page.get_by_test_id("by-day-range")
    await expect(range_text).to_have_text("Nov 10 to Nov 23, days in Europe/London")
    assert [request["since"] for request in relay.sent("get_breakdown")] == [
        "2026-11-09",
        "2026-11-10",
    ]


async def test_by_day_is_read_again_every_five_minutes_not_on_every_update(
    module_page: Page,
) -> None:
    """Live updates leave the view alone; five minutes later it is read again."""
    await module_page.clock.install(time=datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC))
    relay = ScriptedRelay(several_sources(), breakdown=by_day_breakdown())
    await relay.install(module_page, MODULE_WS_URL)
    await module_page.goto(f"{MODULE_ORIGIN}/index.html")
    section = module_page.get_by_test_id("by-day")
    await expect(section).to_have_attribute("data-state", "ready")
    for seq in (6, 7):
        relay.update(posthog_snapshot("us", seq, 40.0 + seq, 12.1))
    us = source_group(module_page, "us").get_by_test_id("daily-percent")
    await expect(us).to_have_text("47%")
    assert len(relay.sent("get_breakdown")) == 1
    relay.breakdown = by_day_breakdown(BY_DAY_ROWS[:3])
    await module_page.clock.fast_forward("05:00")
    # The new answer has percent points only: three bars of them.
    await expect(module_page.get_by_test_id("by-day-chart")).to_have_attribute("data-bars", "3")
    assert len(relay.sent("get_breakdown")) == 2


async def test_demo_relay_by_day_chart_shows_14_days_of_the_demo_sources(
    context: BrowserContext, demo_relay: DemoRelay
) -> None:
    """The demo's seeded ledger gives every one of the 14 days bars of its sources."""
    page = await context.new_page()
    await open_demo_dashboard(page, demo_relay)
    chart = page.get_by_test_id("by-day-chart")
    await expect(page.get_by_test_id("by-day")).to_have_attribute("data-state", "ready")
    await page.get_by_role("radio", name="% points").check()
    await expect(chart).to_have_attribute("data-unit", "percent")
    bars = await bars_of(chart)
    today = datetime.now(ZoneInfo(DEMO_TIMEZONE)).date()
    days = {str(today - timedelta(days=back)) for back in range(14)}
    assert {bar["day"] for bar in bars} == days
    assert {bar["source"] for bar in bars} == {"us", "eu", "router", "team"}
    await expect(page.get_by_test_id("by-day-totals").locator("tbody th")).to_have_text(
        ["us", "eu", "router", "team"]
    )


async def test_demo_relay_by_day_csv_holds_the_numbers_of_the_breakdown_api(
    context: BrowserContext, demo_relay: DemoRelay
) -> None:
    """The CSV download equals GET /api/v1/usage/breakdown for the same 14 days."""
    page = await context.new_page()
    await open_demo_dashboard(page, demo_relay)
    await expect(page.get_by_test_id("by-day")).to_have_attribute("data-state", "ready")
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download CSV").click()
    download = await download_info.value
    name = download.suggested_filename
    match = re.fullmatch(r"usage-by-day-(\d{4}-\d\d-\d\d)-to-\d{4}-\d\d-\d\d\.csv", name)
    assert match is not None, name
    text = (await anyio.Path(await download.path()).read_bytes()).decode()
    token = read_client_token(demo_relay.token_file)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=demo_relay.url, headers=headers) as client:
        response = await client.get(
            "/api/v1/usage/breakdown", params={"since": match[1], "group_by": "source,day"}
        )
    response.raise_for_status()
    rows = response.json()["breakdown"]
    assert len(rows) >= 4 * 14
    assert parse_csv(text) == rows
