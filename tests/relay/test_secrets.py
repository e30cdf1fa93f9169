"""The gateway token never reaches a client, a log line or an error message."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect as websockets_connect

from common.tokens import read_client_token
from monitor.exceptions import UpstreamError
from relay.fastpath import DirectWriter
from relay.settings import Settings
from simulator import Failure, GatewaySimulator, SimulatorServer
from tests.conftest import RelayHarness

from .wire import auth_headers, connect, reply_to, request

pytestmark = pytest.mark.anyio

#: Unique per run, so that finding it anywhere cannot be a coincidence.
GATEWAY_TOKEN = "gw-" + secrets.token_hex(20)

#: Each way the gateway can fail, played in turn.
FAILURES: list[tuple[Failure, dict[str, Any]]] = [
    (Failure.UNAUTHORIZED, {}),
    (Failure.SERVER_ERROR, {"status": 500}),
    (Failure.SERVER_ERROR, {"status": 403}),
    (Failure.MALFORMED, {}),
    (Failure.TRUNCATED, {}),
    (Failure.INVALID, {}),
    (Failure.RATE_LIMITED, {"retry_after": 0}),  # a longer wait would skip the next polls
    (Failure.DISCONNECT, {}),
]


@pytest.fixture
async def simulator_server() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(GatewaySimulator(token=GATEWAY_TOKEN)) as server:
        yield server


@pytest.fixture
def relay_settings(relay_settings: Settings) -> Settings:
    # Generous refresh limits: this test polls through every channel after every failure.
    return relay_settings.model_copy(
        update={
            "gateway_token": SecretStr(GATEWAY_TOKEN),
            "refreshes_per_minute": 6000.0,
            "refresh_burst": 100,
            "refresh_polls_per_minute": 6000.0,
            "refresh_poll_burst": 100,
        }
    )


@pytest.fixture
def sent_frames(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text frame the relay sends to any client, recorded on the server side.

    Frames leave two ways: through the ASGI send, and, for events to idle
    subscribers, as pre-encoded bytes written straight to the socket.
    """
    frames: list[str] = []
    send_text = WebSocket.send_text
    write = DirectWriter.write

    async def recording_send(self: WebSocket, data: str) -> None:
        frames.append(data)
        await send_text(self, data)

    def recording_write(self: DirectWriter, frame: bytes) -> bool:
        written = write(self, frame)
        if written:
            frames.append(frame.decode("utf-8", "replace"))
        return written

    monkeypatch.setattr(WebSocket, "send_text", recording_send)
    monkeypatch.setattr(DirectWriter, "write", recording_write)
    return frames


async def refresh_through_every_channel(relay: RelayHarness, ws: Any, http: Any) -> None:
    """One failed poll each way a client can ask for one: WebSocket, HTTP, the monitor."""
    reply = await request(ws, "refresh")
    assert reply["ok"] is False
    response = await http.post("/api/v1/usage/refresh")
    assert response.status_code == 503, response.text
    with pytest.raises(UpstreamError):
        await relay.hub.monitor.refresh_now()


async def test_gateway_token_appears_in_no_frame_reply_or_log_line(
    relay: RelayHarness,
    simulator: GatewaySimulator,
    relay_settings: Settings,
    sent_frames: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failures of every kind, a refused token, bad clients and a shutdown: no trace of it."""
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    with anyio.fail_after(30):
        await relay.hub.monitor.refresh_now()
        async with (
            connect(relay.ws_url) as ws,
            websockets_connect(relay.ws_url) as stranger,
            httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as http,
        ):
            await request(ws, "subscribe")
            await stranger.send('{"id": 1, "op": "refresh"}')
            await reply_to(stranger, 1)
            for failure, options in FAILURES:
                simulator.inject(failure, count=3, **options)
                await refresh_through_every_channel(relay, ws, http)
            simulator.set_token("rotated-" + secrets.token_hex(8))  # ours is refused now
            await refresh_through_every_channel(relay, ws, http)
            simulator.set_token(GATEWAY_TOKEN)
            await ws.send("{not json")
            await ws.send(json.dumps({"id": 2, "op": "get_history", "since": "yesterday"}))
            await reply_to(ws, 2)
            assert (await request(ws, "refresh"))["ok"] is True
            for path in ("/healthz", "/api/v1/usage/latest", "/api/v1/usage/history", "/"):
                response = await http.get(path)
                bodies.append(str(response.headers) + response.text)
            bodies.append((await httpx.AsyncClient().get(relay.url + "/healthz")).text)
        await relay.stop()
    database: Path | None = relay_settings.database
    assert database is not None
    places = {
        "frames sent": "\n".join(sent_frames),
        "HTTP responses": "\n".join(bodies),
        "log records": caplog.text + "\n".join(str(vars(r)) for r in caplog.records),
        "settings": repr(relay_settings) + str(relay_settings),
        "database": (await anyio.Path(database).read_bytes()).decode("latin-1"),
    }
    for place, text in places.items():
        assert GATEWAY_TOKEN not in text, f"the gateway token leaked into the {place}"
    assert len(sent_frames) > 20 and len(caplog.records) > 20  # the scenario did run
    assert any("HTTP 401" in frame for frame in sent_frames)


async def test_client_token_is_not_logged(
    relay: RelayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay says where its client token is, never what it is."""
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(10):
        await relay.stop()
        await relay.start()
        async with connect(relay.ws_url) as ws:
            await request(ws, "ping")
    token = read_client_token()
    assert token is not None
    # websockets.client is this test's own client, which logs its request headers at DEBUG.
    relay_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any("client token" in r.getMessage() for r in relay_side)
    assert not any(token in str(vars(r)) or token in r.getMessage() for r in relay_side)
