"""Headless Chromium for the dashboard tests: finding it, launching it, screenshots,
and relays played through Playwright's WebSocket routing.

The tests drive Debian's Chromium through Playwright; Playwright's own browser
download is not used (the machines have no network for it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright

from tests.programs import require_program

__all__ = [
    "CHROMIUM_ARGS",
    "ScriptedRelay",
    "find_chromium",
    "launch_chromium",
    "meter",
    "posthog_snapshot",
    "save_dashboard_screenshot",
    "usd_snapshot",
]

#: Headless and quiet: the machine has no network, and without these flags
#: Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str:
    """Return the path of the system's Chromium; fail under CI, skip elsewhere, when missing."""
    return require_program("chromium", "Chromium", "chromium")


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    """Launch headless Chromium for the length of the block."""
    executable = find_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def save_dashboard_screenshot(page: Page, path: Path) -> Path:
    """Save a full-page PNG of the dashboard once it is connected and showing numbers."""
    await page.locator("body[data-connection='open']").wait_for()
    await page.get_by_test_id("daily-percent").filter(has_text="%").wait_for()
    await page.evaluate("document.fonts.ready.then(() => undefined)")
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=path, full_page=True, animations="disabled")
    return path


def meter(
    meter_id: str,
    label: str,
    unit: str = "percent",
    *,
    used: float | None = None,
    limit: float | None = None,
    used_percent: float | None = None,
    reset_at: str | None = "2026-11-23T00:00:00Z",
    exceeded: bool = False,
) -> dict[str, Any]:
    """One meter of a snapshot, as the relay sends it."""
    return {
        "id": meter_id,
        "label": label,
        "unit": unit,
        "used": used,
        "limit": limit,
        "used_percent": used_percent,
        "reset_at": reset_at,
        "exceeded": exceeded,
    }


def posthog_snapshot(
    source: str,
    seq: int,
    burst: float,
    sustained: float,
    *,
    fetched_at: str = "2026-11-22T12:00:00Z",
    burst_reset_at: str = "2026-11-23T00:00:00Z",
    sustained_reset_at: str = "2026-12-01T00:00:00Z",
) -> dict[str, Any]:
    """A PostHog source's snapshot: its v1 ``usage`` and its two meters."""
    windows = {
        "burst": {"used_percent": burst, "reset_at": burst_reset_at, "exceeded": burst >= 100},
        "sustained": {
            "used_percent": sustained,
            "reset_at": sustained_reset_at,
            "exceeded": sustained >= 100,
        },
    }
    return {
        "seq": seq,
        "source": source,
        "kind": "posthog",
        "fetched_at": fetched_at,
        "usage": {
            "product": "posthog_code",
            "user_id": 1234,
            **windows,
            "is_rate_limited": False,
            "is_pro": False,
            "billing_period_end": None,
        },
        "meters": [
            meter("burst", "Daily", used_percent=burst, reset_at=burst_reset_at),
            meter("sustained", "Monthly", used_percent=sustained, reset_at=sustained_reset_at),
        ],
    }


def usd_snapshot(
    source: str,
    kind: str,
    seq: int,
    meters: list[dict[str, Any]],
    *,
    fetched_at: str = "2026-11-22T12:00:00Z",
) -> dict[str, Any]:
    """An OpenRouter or LiteLLM source's snapshot with these meters."""
    return {
        "seq": seq,
        "source": source,
        "kind": kind,
        "fetched_at": fetched_at,
        "usage": {},
        "meters": meters,
    }


class ScriptedRelay:
    """A relay with sources, played through Playwright's WebSocket routing on a page.

    It answers ``list_sources``, ``subscribe``, ``unsubscribe``, ``get_latest``,
    ``refresh`` (a new snapshot of that source, one seq higher, also sent as
    ``usage.updated`` to the topic's subscribers), ``get_history`` (no points),
    ``get_breakdown`` (with ``breakdown``, whatever the query; ``unknown_op``
    without one, as a relay without a ledger), ``list_reports`` (with
    ``reports``, whatever the query; ``unknown_op`` without one, as a relay
    without reports) and ``ping``; keeps every request each connection sent in
    ``requests``; and can publish events (``usage.report_failed``, ...) and drop
    connections. ``list_sources=False`` plays a relay from before sources,
    which answers that op ``unknown_op``.
    """

    def __init__(
        self,
        snapshots: Iterable[dict[str, Any]],
        *,
        timezone: str = "Europe/London",
        list_sources: bool = True,
        breakdown: dict[str, Any] | None = None,
        reports: dict[str, Any] | None = None,
    ) -> None:
        self.latest = {snapshot["source"]: deepcopy(snapshot) for snapshot in snapshots}
        self.default_source = next(iter(self.latest), "default")
        self.timezone = timezone
        self.list_sources = list_sources
        self.breakdown = deepcopy(breakdown)
        self.reports = deepcopy(reports)
        #: Every request, in order: one list per connection.
        self.requests: list[list[dict[str, Any]]] = []
        self._connections: list[tuple[WebSocketRoute, set[str]]] = []

    async def install(self, page: Page, ws_url: str) -> None:
        """Serve the WebSockets that ``page`` opens to ``ws_url``."""
        await page.route_web_socket(ws_url, self._connect)

    def ops(self, op: str) -> list[str]:
        """The topics of every ``op`` request so far, over all connections."""
        return [r.get("topic", "usage") for rs in self.requests for r in rs if r["op"] == op]

    def sent(self, op: str) -> list[dict[str, Any]]:
        """Every ``op`` request so far, over all connections, in order."""
        return [r for requests in self.requests for r in requests if r["op"] == op]

    def publish(self, source: str, event: str, data: dict[str, Any]) -> None:
        """Send an event about ``source`` to every connection subscribed to one of its topics."""
        for ws, topics in self._connections:
            for topic in topics & set(self._topics_of(source)):
                message = {"type": "event", "topic": topic, "event": event, "data": data}
                ws.send(json.dumps(message))

    def update(self, snapshot: dict[str, Any]) -> None:
        """Make ``snapshot`` its source's latest and publish it."""
        self.latest[snapshot["source"]] = deepcopy(snapshot)
        self.publish(snapshot["source"], "usage.updated", snapshot)

    async def drop_connections(self) -> None:
        """Close every open connection, as a relay that restarts would."""
        connections, self._connections = self._connections, []
        for ws, _ in connections:
            await ws.close(code=1012, reason="restarting")

    def _topics_of(self, source: str) -> list[str]:
        topics = [f"usage:{source}"]
        return [*topics, "usage"] if source == self.default_source else topics

    def _source_of(self, topic: str) -> str | None:
        if topic == "usage":
            return self.default_source
        name = topic.removeprefix("usage:")
        return name if topic.startswith("usage:") and name in self.latest else None

    def _kind(self, source: str) -> str:
        kind: str = self.latest[source].get("kind", "posthog")
        return kind

    def _connect(self, ws: WebSocketRoute) -> None:
        requests: list[dict[str, Any]] = []
        topics: set[str] = set()
        self.requests.append(requests)
        self._connections.append((ws, topics))
        ws.on_message(lambda message: self._answer(ws, topics, requests, message))

    def _answer(
        self,
        ws: WebSocketRoute,
        topics: set[str],
        requests: list[dict[str, Any]],
        message: str | bytes,
    ) -> None:
        request = json.loads(message)
        requests.append(request)
        op, topic = request["op"], request.get("topic", "usage")
        source = self._source_of(topic)
        status = {"state": "ok", "consecutive_failures": 0, "last_error": None}

        def reply(result: dict[str, Any] | None = None, error: str | None = None) -> None:
            body: dict[str, Any] = {"type": "result", "id": request["id"]}
            if error is None:
                body.update(ok=True, result=result)
            else:
                body.update(ok=False, error={"code": error, "message": f"{error}: {op}"})
            ws.send(json.dumps(body))

        if op == "ping":
            reply({"pong": True})
        elif op == "list_sources":
            if not self.list_sources:
                reply(error="unknown_op")
                return
            sources = [
                {
                    "name": name,
                    "kind": self._kind(name),
                    "topic": f"usage:{name}",
                    "status": status,
                    "latest": latest,
                }
                for name, latest in self.latest.items()
            ]
            reply(
                {
                    "sources": sources,
                    "timezone": self.timezone,
                    "default_source": self.default_source,
                }
            )
        elif op == "get_breakdown":
            if self.breakdown is None:
                reply(error="unknown_op")
            else:
                reply(self.breakdown)
        elif op == "list_reports":
            if self.reports is None:
                reply(error="unknown_op")
            else:
                reply(self.reports)
        elif op not in {"subscribe", "unsubscribe", "get_latest", "refresh", "get_history"}:
            reply(error="unknown_op")
        elif source is None:
            reply(error="unknown_topic")
        elif op == "subscribe":
            topics.add(topic)
            reply({"topic": topic, "latest": self.latest[source], "status": status})
        elif op == "unsubscribe":
            topics.discard(topic)
            reply({"topic": topic})
        elif op == "get_latest":
            reply({"latest": self.latest[source], "status": status})
        elif op == "get_history":
            reply({"points": []})
        else:
            snapshot = deepcopy(self.latest[source])
            snapshot["seq"] += 1
            reply({"latest": snapshot})
            self.update(snapshot)
