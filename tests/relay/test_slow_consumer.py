"""Slow and dead peers: conflation, the 4008 close, and keepalive pings."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from common.messages import CLOSE_SLOW_CONSUMER
from common.models import Snapshot
from monitor.service import UsageMonitorService, UsageUpdated
from relay.hub import Hub, Outbox
from relay.server import RelayServer
from relay.settings import Settings
from tests.conftest import RelayHarness

from .wire import CLOSE, PING, RawClient, RawFrame, connect, next_event, raw_client, request

pytestmark = pytest.mark.anyio

#: A stuck client is given this long to take a frame before it counts as stuck.
SEND_TIMEOUT = 0.5
#: Extra bytes per snapshot (the gateway may add fields), so that buffers fill fast.
PADDING = 60_000
#: RFC 6455's code for "the server met an unexpected condition": uvicorn's keepalive timeout.
CLOSE_KEEPALIVE_TIMEOUT = 1011


@pytest.fixture
def relay_settings(relay_settings: Settings) -> Settings:
    return relay_settings.model_copy(update={"send_timeout": SEND_TIMEOUT})


def big_snapshot(seq: int) -> Snapshot:
    window = {"used_percent": 10.0, "reset_at": "2026-11-23T00:00:00Z", "exceeded": False}
    usage = {"product": "posthog_code", "user_id": 1, "burst": window, "sustained": window}
    return Snapshot.model_validate(
        {
            "seq": seq,
            "fetched_at": datetime.now(UTC),
            "usage": {**usage, "padding": "x" * PADDING},
        }
    )


@contextmanager
def log_event(text: str) -> Iterator[anyio.Event]:
    """An event set when the relay logs a line containing ``text``."""
    event = anyio.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                event.set()

    handler = Signal()
    relay_logger = logging.getLogger("usage_monitor.relay")
    relay_logger.addHandler(handler)
    try:
        yield event
    finally:
        relay_logger.removeHandler(handler)


async def frames_until_close(client: RawClient) -> tuple[list[RawFrame], RawFrame]:
    frames = []
    while (frame := await client.next_frame()) is not None:
        if frame.opcode == CLOSE:
            return frames, frame
        frames.append(frame)
    raise AssertionError("the relay dropped the connection without a close frame")


async def test_stuck_reader_is_closed_with_4008_while_others_get_every_update(
    relay: RelayHarness,
) -> None:
    """One client stops reading; the others see each update before the next is made."""
    await relay.hub.monitor.refresh_now()  # no poll of the relay's own from here on
    with anyio.fail_after(30), log_event("does not read its frames") as stuck_detected:
        async with (
            connect(relay.ws_url) as first,
            connect(relay.ws_url) as second,
            raw_client(relay.ws_url, receive_buffer=4096) as stuck,
        ):
            for ws in (first, second):
                await request(ws, "subscribe")
            await stuck.send(json.dumps({"id": 1, "op": "subscribe"}))
            assert json.loads((await stuck.next_frame()).text)["ok"]  # type: ignore[union-attr]
            # From here on the stuck client reads nothing.
            seq = 1000
            while not stuck_detected.is_set():
                seq += 1
                relay.hub.publish(UsageUpdated(big_snapshot(seq)))
                for ws in (first, second):
                    assert (await next_event(ws, "usage.updated"))["data"]["seq"] == seq
            frames, close = await frames_until_close(stuck)
            relay.hub.publish(UsageUpdated(big_snapshot(seq + 1)))
            for ws in (first, second):
                assert (await next_event(ws, "usage.updated"))["data"]["seq"] == seq + 1
    assert close.close_code == CLOSE_SLOW_CONSUMER
    seen = [json.loads(frame.text)["data"]["seq"] for frame in frames]
    assert seen == sorted(set(seen))
    assert seen[-1] < seq  # what was published while it was stuck never queued up


class NoGateway:
    async def fetch(self) -> Any:
        raise AssertionError("not polled in this test")


async def test_slow_reader_gets_only_the_newest_snapshot() -> None:
    """Updates that pile up for one connection are replaced by the newest, not queued."""
    hub = Hub([UsageMonitorService(NoGateway())])
    outbox = Outbox()
    hub.connections.add(outbox)
    hub.set_subscribed(outbox, frozenset({"usage"}))
    for seq in (1, 2, 3):
        hub.publish(UsageUpdated(big_snapshot(seq)))
    outbox.close(CLOSE_SLOW_CONSUMER, "end of test")
    sent: list[str] = []

    async def send(frame: str) -> None:
        sent.append(frame)

    with pytest.raises(anyio.EndOfStream):
        await outbox.drain(send)
    assert [json.loads(frame)["data"]["seq"] for frame in sent] == [3]


@asynccontextmanager
async def relay_with(settings: Settings, **changes: Any) -> AsyncIterator[RelayServer]:
    async with RelayServer(settings.model_copy(update=changes)) as server:
        yield server


async def test_peer_that_never_answers_pings_is_dropped(
    relay_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that reads but never pongs is closed (1011) after one ping interval + timeout."""
    async with relay_with(relay_settings, ws_ping_interval=0.2, ws_ping_timeout=0.3) as server:
        dropped = anyio.Event()
        forget = server.hub.forget

        def forget_and_tell(outbox: Outbox) -> None:
            forget(outbox)
            if len(server.hub.connections) == 1:
                dropped.set()

        monkeypatch.setattr(server.hub, "forget", forget_and_tell)
        with anyio.fail_after(5):
            async with connect(server.ws_url) as answering, raw_client(server.ws_url) as dead:
                assert dead.status == 101
                frames, close = await frames_until_close(dead)
                await dropped.wait()
                # The peer that answers pings was pinged as often, and is still served.
                assert (await request(answering, "ping"))["ok"] is True
    assert PING in {frame.opcode for frame in frames}
    assert close.close_code == CLOSE_KEEPALIVE_TIMEOUT
