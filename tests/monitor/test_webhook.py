"""Alert delivery to a webhook served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.backoff import Backoff
from common.models import ThresholdCrossed
from common.serving import BackgroundServer
from monitor.service import AlertRaised
from monitor.webhook import WebhookNotifier

pytestmark = pytest.mark.anyio

ALERT = ThresholdCrossed(
    bucket="burst", threshold=90, used_percent=93.5, reset_at=datetime(2026, 11, 23, tzinfo=UTC)
)


class Receiver:
    """A webhook endpoint that fails its first ``failures`` posts, then records them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts = 0
        self.received: list[dict[str, Any]] = []
        self.got_one = anyio.Event()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            return Response(status_code=502)
        self.received.append(await request.json())
        self.got_one.set()
        return Response(status_code=204)


async def serve(receiver: Receiver) -> AsyncIterator[str]:
    config = uvicorn.Config(receiver.app, host="127.0.0.1", port=0, log_level="warning")
    async with BackgroundServer(config) as server:
        yield f"{server.url}/hook"


@pytest.fixture
async def flaky_receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver(failures=2)
    async for url in serve(receiver):
        yield receiver, url


async def test_alert_is_posted_after_retries(flaky_receiver: tuple[Receiver, str]) -> None:
    """A failing endpoint is retried until it accepts the alert, which arrives once."""
    receiver, url = flaky_receiver
    notifier = WebhookNotifier(url, backoff=Backoff(initial=0.001, maximum=0.001))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            await task_group.start(notifier.run)
            notifier.observe(AlertRaised(ALERT))
            await receiver.got_one.wait()
            notifier.close()
    assert receiver.attempts == 3
    assert receiver.received == [
        {
            "text": "Daily usage crossed 90% (now 93%).",
            "event": "usage.threshold_crossed",
            "data": ALERT.model_dump(mode="json"),
        }
    ]


async def test_delivery_gives_up_after_its_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An endpoint that keeps failing gets a bounded number of attempts and one log line."""
    receiver = Receiver(failures=100)
    async for url in serve(receiver):
        notifier = WebhookNotifier(url, attempts=3, backoff=Backoff(initial=0.001, maximum=0.001))
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                await task_group.start(notifier.run)
                notifier.observe(AlertRaised(ALERT))
                notifier.close()
    assert receiver.attempts == 3
    failures = [r for r in caplog.records if r.name == "usage_monitor.webhook"]
    assert len(failures) == 1
    assert url not in failures[0].getMessage()
