"""
Alert delivery to a webhook (Slack-compatible JSON POST).

Alerts are queued without blocking the poll loop and posted by one task, with a
timeout on every request and capped, jittered retries. The URL often embeds a
secret (Slack's do), so it is never logged.
"""

from __future__ import annotations

import logging

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
    """Posts every alert to ``url``; use ``observe`` as a monitor observer and run ``run``."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 4,
        backoff: Backoff | None = None,
        max_pending: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        self._transport = transport
        self._send, self._receive = anyio.create_memory_object_stream[Alert](max_pending)

    def observe(self, event: MonitorEvent) -> None:
        if isinstance(event, AlertRaised):
            try:
                self._send.send_nowait(event.alert)
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
            async for alert in self._receive:
                await self._deliver(client, alert)

    async def _deliver(self, client: httpx.AsyncClient, alert: Alert) -> None:
        payload = {
            "text": alert_text(alert),
            "event": f"usage.{alert.kind}",
            "data": alert.model_dump(mode="json"),
        }
        for attempt in range(1, self._attempts + 1):
            try:
                response = await client.post(self._url, json=payload)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}"
            if attempt < self._attempts:
                await anyio.sleep(self._backoff.delay(attempt))
        logger.warning("webhook delivery failed after %d attempts (%s)", self._attempts, problem)
