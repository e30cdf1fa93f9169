"""The dashboard and the browser client, in real headless Chromium against a real relay."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
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
from common.tokens import read_client_token
from monitor.store import SnapshotStore
from relay.app import WEB_ROOT
from simulator import Failure, GatewaySimulator

from ..conftest import RelayHarness
from .browser import launch_chromium, save_dashboard_screenshot

pytestmark = pytest.mark.anyio

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
SUBPROTOCOL = Subprotocol("usage-relay.v1")
#: An origin that Playwright serves from clients/web, for tests that only import modules.
MODULE_ORIGIN = "http://dashboard.test"
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
        result = results[request["op"]]
        ws.send(json.dumps({"type": "result", "id": request["id"], "ok": True, "result": result}))
        if request["op"] == "subscribe":
            for event, data in events:
                ws.send(
                    json.dumps({"type": "event", "topic": "usage", "event": event, "data": data})
                )

    ws_url = MODULE_ORIGIN.replace("http", "ws", 1) + "/ws"
    await page.route_web_socket(ws_url, lambda ws: ws.on_message(lambda m: answer(ws, m)))
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
    assert latest.derived.burst.burn_rate_percent_per_hour is None
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
