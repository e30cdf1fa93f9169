"""Desktop notifications from ``watch``: a fake notify-send first on PATH records its arguments."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from clients import RelayClient, RelayEvent, StatusReceived
from clients.watch import notify_desktop, watch
from simulator import GatewaySimulator
from tests.conftest import RelayHarness

pytestmark = pytest.mark.anyio

TIMEOUT = 10


@pytest.fixture
def notify_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file a fake notify-send appends its arguments to, one per line."""
    log = tmp_path / "notify-send.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "notify-send"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{log}"\n', encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


async def test_watch_sends_each_alert_to_notify_send(
    notify_log: Path,
    relay: RelayHarness,
    simulator: GatewaySimulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An alert from the relay runs notify-send with a title and the alert's text."""
    notified = anyio.Event()
    subscribed = anyio.Event()

    async def notify(text: str) -> None:
        await notify_desktop(text)
        notified.set()

    with anyio.fail_after(TIMEOUT):
        async with RelayClient(relay.ws_url) as client, anyio.create_task_group() as tg:
            events = client.events

            async def signalling_events(
                *args: Any, **kwargs: Any
            ) -> AsyncGenerator[RelayEvent, None]:
                # Alerts are not replayed, so the threshold is crossed only once watch listens.
                async for event in events(*args, **kwargs):
                    if isinstance(event, StatusReceived):
                        subscribed.set()
                    yield event

            monkeypatch.setattr(client, "events", signalling_events)
            tg.start_soon(watch, client, Console(file=io.StringIO()), notify)
            await subscribed.wait()
            simulator.set_usage(burst_percent=95.0)
            await client.refresh()
            await notified.wait()
            tg.cancel_scope.cancel()
    logged = await anyio.Path(notify_log).read_text(encoding="utf-8")
    assert logged.splitlines() == [
        "Usage monitor",
        "Daily usage crossed 90% (now 95%).",
    ]


async def test_no_notify_send_is_skipped_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the platform has no notify-send, notifying does nothing and raises nothing."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with anyio.fail_after(TIMEOUT):
        await notify_desktop("Daily usage crossed 90% (now 95%).")
