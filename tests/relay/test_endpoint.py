"""The relay's /ws endpoint over real loopback sockets."""

from __future__ import annotations

import json
from datetime import datetime

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from common.history import HistoryPoint
from common.messages import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    SUBPROTOCOL,
)
from monitor.store import AsyncSnapshotStore
from relay.limits import MAX_FRAME_BYTES
from relay.protocol import Session
from simulator import Failure, GatewaySimulator
from tests.conftest import RelayHarness

from .wire import connect, next_event, reply_to, request, subscribe_with_snapshot

pytestmark = pytest.mark.anyio


async def test_subprotocol_is_selected_when_offered(relay: RelayHarness) -> None:
    """A client offering usage-relay.v1 gets it back in the handshake."""
    async with connect(relay.ws_url, subprotocols=[SUBPROTOCOL]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == SUBPROTOCOL


async def test_client_without_subprotocol_is_accepted(relay: RelayHarness) -> None:
    """A client offering no subprotocol is served too."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            assert (await request(ws, "ping"))["result"] == {"pong": True}


async def test_subscribe_reply_carries_snapshot_and_status(relay: RelayHarness) -> None:
    """After the first poll, subscribe answers with the snapshot and status ok."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await subscribe_with_snapshot(ws)
            reply = await request(ws, "subscribe")
    result = reply["result"]
    assert reply["ok"] is True
    assert result["topic"] == "usage"
    assert result["latest"]["seq"] == 1
    assert result["status"]["state"] == "ok"


async def test_one_refresh_updates_every_subscriber_with_one_request(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Two clients subscribe, one refreshes; both get the same snapshot from one request."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as first, connect(relay.ws_url) as second:
            await subscribe_with_snapshot(first)
            await subscribe_with_snapshot(second)
            served = simulator.requests_served
            simulator.set_usage(burst_percent=55.5)
            reply = await request(first, "refresh")
            pushed = await next_event(second, "usage.updated")
    assert simulator.requests_served == served + 1
    assert pushed["data"] == reply["result"]["latest"]
    assert pushed["data"]["usage"]["burst"]["used_percent"] == 55.5


async def test_refresh_reply_follows_the_event_on_the_same_connection(
    relay: RelayHarness,
) -> None:
    """The refreshing client also receives the usage.updated event for its poll."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await subscribe_with_snapshot(ws)
            await ws.send(json.dumps({"id": "r", "op": "refresh"}))
            event = await next_event(ws, "usage.updated")
            reply = await reply_to(ws, "r")
    assert reply["result"]["latest"] == event["data"]


async def test_unsubscribed_client_gets_no_events(relay: RelayHarness) -> None:
    """After unsubscribe, a refresh reply arrives but no usage.updated event."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await subscribe_with_snapshot(ws)
            assert (await request(ws, "unsubscribe"))["result"] == {"topic": "usage"}
            await ws.send(json.dumps({"id": "r", "op": "refresh"}))
            message = json.loads(await ws.recv())
    assert message["type"] == "result"
    assert message["id"] == "r"


async def test_get_latest_returns_snapshot_and_status(relay: RelayHarness) -> None:
    """get_latest answers with the cached snapshot, without subscribing."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            snapshot = await subscribe_with_snapshot(ws)
            reply = await request(ws, "get_latest")
    assert reply["result"]["latest"] == snapshot
    assert reply["result"]["status"]["state"] == "ok"


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        ("not json", "bad_request", None),
        ('{"id": 4, "op": 5}', "bad_request", 4),
        ('{"id": 5, "op": "subscirbe"}', "unknown_op", 5),
        ('{"id": 6, "op": "subscribe", "topic": "weather"}', "unknown_topic", 6),
    ],
)
async def test_bad_requests_get_an_error_and_the_connection_stays_open(
    relay: RelayHarness, frame: str, code: str, request_id: int | None
) -> None:
    """A wrong request gets the documented error code; the next request is still served."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await ws.send(frame)
            reply = await reply_to(ws, request_id)
            assert (await request(ws, "ping"))["ok"] is True
    assert reply["ok"] is False
    assert reply["error"]["code"] == code


async def test_failed_refresh_answers_upstream_unavailable_with_last_snapshot(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh that cannot poll answers upstream_unavailable carrying the last good snapshot."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            snapshot = await subscribe_with_snapshot(ws)
            simulator.inject(Failure.SERVER_ERROR)
            reply = await request(ws, "refresh")
    assert reply["error"]["code"] == "upstream_unavailable"
    assert reply["error"]["data"]["latest"] == snapshot


async def test_status_change_reaches_subscribers_before_the_failed_refresh_reply(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A failed poll pushes usage.status degraded to subscribers, ahead of the error reply."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await subscribe_with_snapshot(ws)
            simulator.inject(Failure.SERVER_ERROR)
            await ws.send('{"id": "r", "op": "refresh"}')
            frames = []
            while not frames or frames[-1]["type"] != "result":
                frames.append(json.loads(await ws.recv()))
    states = [frame["data"]["state"] for frame in frames if frame.get("event") == "usage.status"]
    assert states[-1] == "degraded"


async def test_a_bug_answers_internal_and_keeps_serving(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception while handling a request answers internal and the connection stays open."""

    def broken(self: Session, text: str) -> str:
        raise RuntimeError("secret detail")

    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            with monkeypatch.context() as patch:
                patch.setattr(Session, "receive", broken)
                await ws.send('{"id": 1, "op": "ping"}')
                reply = json.loads(await ws.recv())
            assert (await request(ws, "ping"))["ok"] is True
    assert reply["error"]["code"] == "internal"
    assert "secret" not in reply["error"]["message"]


async def test_binary_frame_closes_with_1003(relay: RelayHarness) -> None:
    """The protocol is text only: a binary frame closes the connection with 1003."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await ws.send(b'{"id": 1, "op": "ping"}')
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_UNSUPPORTED_DATA


async def test_oversized_frame_closes_with_1009(relay: RelayHarness) -> None:
    """A frame over the size limit closes the connection with 1009."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url, max_size=None) as ws:
            await ws.send("x" * (MAX_FRAME_BYTES + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_MESSAGE_TOO_BIG


async def test_shutdown_closes_clients_with_going_away(relay: RelayHarness) -> None:
    """Stopping the relay closes every client with 1001 so that they reconnect."""
    with anyio.fail_after(10):
        async with connect(relay.ws_url) as ws:
            await subscribe_with_snapshot(ws)
            await relay.stop()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_GOING_AWAY


async def test_a_connection_runs_one_history_query_at_a_time(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second get_history while the first still reads is refused; the first is answered."""
    started, release = anyio.Event(), anyio.Event()
    read = AsyncSnapshotStore.history

    async def held_read(
        self: AsyncSnapshotStore,
        source: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[HistoryPoint]:
        started.set()
        await release.wait()
        return await read(self, source, since, until, limit)

    monkeypatch.setattr(AsyncSnapshotStore, "history", held_read)
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await ws.send(json.dumps({"id": "first", "op": "get_history"}))
            await started.wait()
            second = await request(ws, "get_history")
            release.set()
            first = await reply_to(ws, "first")
    assert second["error"]["code"] == "rate_limited"
    assert first["ok"] is True
