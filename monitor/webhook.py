"""
Alert delivery to a webhook (Slack-compatible JSON POST).

Alerts are queued without blocking the poll loop and posted by one task, with a
timeout on every request and capped, jittered retries. The URL often embeds a
secret (Slack's do), so it is never logged.

A daily usage report that a destination refused is posted too
(``report_failed``), to the configured URL.

An alert may have a destination of its own: ``route`` (for example
``RuleBook.webhook_for``, an alert rule's webhook) names it, and the
configured ``url`` takes the others; an alert with neither is not posted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from anyio.abc import TaskStatus

from common.backoff import Backoff
from common.models import Alert
from common.reports import ReportEntry
from common.text import alert_text, report_failed_text

from .service import AlertRaised, MonitorEvent

__all__ = ["WebhookNotifier"]

logger = logging.getLogger("usage_monitor.webhook")


class WebhookNotifier:
    """Posts every alert to ``route(alert)`` or else ``url``; use ``observe`` as a monitor
    observer and run ``run``."""

    def __init__(
        self,
        url: str | None,
        *,
        route: Callable[[Alert], str | None] | None = None,
        timeout: float = 5.0,
        attempts: int = 4,
        backoff: Backoff | None = None,
        max_pending: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._route = route
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        self._transport = transport
        self._send, self._receive = anyio.create_memory_object_stream[_Delivery](max_pending)

    def observe(self, event: MonitorEvent) -> None:
        if isinstance(event, AlertRaised):
            alert = event.alert
            url = (self._route(alert) if self._route is not None else None) or self._url
            payload = {
                "text": alert_text(alert),
                "event": f"usage.{alert.kind}",
                "data": alert.model_dump(mode="json"),
            }
            rule = getattr(alert, "rule", None)
            self._queue(url, payload, "" if rule is None else f" of alert rule {rule}")

    def report_failed(self, entry: ReportEntry) -> None:
        """Post ``usage.report_failed`` for a report a destination refused."""
        payload = {
            "text": report_failed_text(entry),
            "event": "usage.report_failed",
            "data": entry.model_dump(mode="json"),
        }
        self._queue(self._url, payload, f" of report {entry.report_id}")

    def _queue(self, url: str | None, payload: dict[str, Any], what: str) -> None:
        if url is None:
            return
        try:
            self._send.send_nowait(_Delivery(url, payload, what))
        except anyio.WouldBlock:
            logger.warning("webhook is falling behind; alert dropped")

    def close(self) -> None:
        """Let ``run`` deliver what is queued and return."""
        self._send.close()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with (
            httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client,
            self._receive,
        ):
            task_status.started()
            async for delivery in self._receive:
                await self._deliver(client, delivery)

    async def _deliver(self, client: httpx.AsyncClient, delivery: _Delivery) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                response = await client.post(delivery.url, json=delivery.payload)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}"
            if attempt < self._attempts:
                await anyio.sleep(self._backoff.delay(attempt))
        logger.warning(
            "webhook delivery%s failed after %d attempts (%s)",
            delivery.what,
            self._attempts,
            problem,
        )


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One webhook post: where, what, and how the log names it when it fails."""

    url: str
    payload: dict[str, Any]
    what: str
