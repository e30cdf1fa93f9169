"""
Alert delivery to a webhook (Slack-compatible JSON POST).

Alerts are queued without blocking the poll loop and posted by one task, with a
timeout on every request and capped, jittered retries. The URL often embeds a
secret (Slack's do), so it is never logged.

An alert may have a destination of its own: ``route`` (for example
``RuleBook.webhook_for``, an alert rule's webhook) names it, and the
configured ``url`` takes the others; an alert with neither is not posted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import httpx
from anyio.abc import TaskStatus

from common.backoff import Backoff
from common.models import Alert
from common.text import alert_text

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
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, Alert]](
            max_pending
        )

    def observe(self, event: MonitorEvent) -> None:
        if isinstance(event, AlertRaised):
            url = (self._route(event.alert) if self._route is not None else None) or self._url
            if url is None:
                return
            try:
                self._send.send_nowait((url, event.alert))
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
            async for url, alert in self._receive:
                await self._deliver(client, url, alert)

    async def _deliver(self, client: httpx.AsyncClient, url: str, alert: Alert) -> None:
        payload = {
            "text": alert_text(alert),
            "event": f"usage.{alert.kind}",
            "data": alert.model_dump(mode="json"),
        }
        for attempt in range(1, self._attempts + 1):
            try:
                response = await client.post(url, json=payload)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}"
            if attempt < self._attempts:
                await anyio.sleep(self._backoff.delay(attempt))
        rule = getattr(alert, "rule", None)
        whose = "" if rule is None else f" of alert rule {rule}"
        logger.warning(
            "webhook delivery%s failed after %d attempts (%s)", whose, self._attempts, problem
        )
