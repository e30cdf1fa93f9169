"""Attacks from web pages, in real headless Chromium: hijacking and DNS rebinding fail.

The victim has the dashboard open, so the browser holds the relay's cookie. Cookies
ignore ports, so a page on another loopback port is "same-site" and its requests to
the relay carry that cookie: only the Origin check stands between it and the data.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from common.serving import BackgroundServer
from simulator import GatewaySimulator

from ..conftest import RelayHarness
from .browser import CHROMIUM_ARGS, find_chromium, launch_chromium

pytestmark = pytest.mark.anyio

TIMEOUT_MS = 10_000
#: A name that Chromium resolves to loopback, as a rebinding attacker's DNS would.
REBOUND_NAME = "rebind.attacker.test"

expect.set_options(timeout=TIMEOUT_MS)

TRY_WEBSOCKET = """(url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => { resolve({ opened: true }); ws.close(); };
    ws.onclose = (event) => resolve({ opened: false, code: event.code });
})"""

TRY_REFRESH = """async (url) => {
    await fetch(url, { method: 'POST', mode: 'no-cors', credentials: 'include' });
    try {
        const response = await fetch(url, { method: 'POST', credentials: 'include' });
        return { read: true, status: response.status };
    } catch (error) {
        return { read: false };
    }
}"""


@asynccontextmanager
async def attacker_site() -> AsyncIterator[str]:
    """Another web server on loopback, as any local program or dev server could be."""

    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>cute cats</title><p>nothing to see")

    app = Starlette(routes=[Route("/", page)])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    async with BackgroundServer(config) as server:
        yield server.url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as browser:
        yield browser


async def open_dashboard(page: Page, relay: RelayHarness) -> None:
    await page.goto(f"{relay.url}/")
    await expect(page.locator("body")).to_have_attribute("data-connection", "open")


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a")]


async def test_page_on_another_origin_cannot_open_the_relays_websocket(
    browser: Browser, relay: RelayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A page on another loopback port gets no WebSocket (403 at the handshake)."""
    caplog.set_level(logging.INFO, logger="usage_monitor")
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    async with attacker_site() as attacker:
        await open_dashboard(await context.new_page(), relay)
        page = await context.new_page()
        await page.goto(f"{attacker}/")
        with anyio.fail_after(TIMEOUT_MS / 1000):
            outcome = await page.evaluate(TRY_WEBSOCKET, relay.ws_url)
    await context.close()
    assert outcome == {"opened": False, "code": 1006}  # what a browser shows for a refused upgrade
    assert f"refused a WebSocket handshake from origin '{attacker}'" in refusals(caplog)


async def test_page_on_another_origin_cannot_spend_gateway_quota(
    browser: Browser, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Cross-origin POSTs to the refresh API are refused and reach no gateway."""
    await relay.hub.monitor.refresh_now()  # the relay's first poll is over
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    async with attacker_site() as attacker:
        await open_dashboard(await context.new_page(), relay)
        served = simulator.requests_served
        page = await context.new_page()
        await page.goto(f"{attacker}/")
        with anyio.fail_after(TIMEOUT_MS / 1000):
            outcome = await page.evaluate(TRY_REFRESH, f"{relay.url}/api/v1/usage/refresh")
    await context.close()
    assert outcome == {"read": False}
    assert simulator.requests_served == served


async def test_dashboard_on_the_relays_own_origin_works(
    browser: Browser, relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """The same browser, on the relay's own origin, connects with its cookie and shows data."""
    simulator.set_usage(burst_percent=42.0)
    await relay.hub.monitor.refresh_now()
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await open_dashboard(page, relay)
    await expect(page.get_by_test_id("daily-percent")).to_have_text("42%")
    cookies = await context.cookies(relay.url)
    await context.close()
    assert [(c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [(True, "Strict", "/")]


async def test_rebound_name_gets_403_for_the_page_and_the_websocket(
    relay: RelayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """DNS rebinding: a name that now points at loopback reaches neither page nor socket."""
    caplog.set_level(logging.INFO, logger="usage_monitor")
    port = relay.server.port
    rules = f"--host-resolver-rules=MAP {REBOUND_NAME} 127.0.0.1"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=find_chromium(), args=[*CHROMIUM_ARGS, rules]
        )
        try:
            page = await browser.new_page()
            response = await page.goto(f"http://{REBOUND_NAME}:{port}/")
            assert response is not None
            with anyio.fail_after(TIMEOUT_MS / 1000):
                outcome = await page.evaluate(TRY_WEBSOCKET, f"ws://{REBOUND_NAME}:{port}/ws")
        finally:
            await browser.close()
    assert response.status == 403
    assert outcome == {"opened": False, "code": 1006}
    host = f"'{REBOUND_NAME}:{port}'"
    assert f"refused a request for Host {host}" in refusals(caplog)
    assert f"refused a WebSocket handshake for Host {host}" in refusals(caplog)
