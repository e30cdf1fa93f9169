"""SecurityMiddleware on a live relay: Host and Origin checks, the client token and the cookie."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from clients.client import RelayClient
from clients.exceptions import Unauthorized
from common.messages import CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER
from common.tokens import read_client_token
from relay import middleware
from relay.server import RelayServer
from relay.settings import Settings
from simulator import GatewaySimulator
from tests.conftest import RelayHarness

from .wire import auth_headers, connect, raw_client, reply_to, request

pytestmark = pytest.mark.anyio

#: Long enough for a test to talk to an unauthenticated connection, short to wait for.
GRACE = 1.0


@pytest.fixture
def relay_settings(relay_settings: Settings) -> Settings:
    return relay_settings.model_copy(update={"auth_grace_period": GRACE})


@asynccontextmanager
async def relay_with(settings: Settings, **changes: Any) -> AsyncIterator[RelayServer]:
    """A second relay with some settings changed, for the length of the block."""
    async with RelayServer(settings.model_copy(update=changes)) as server:
        yield server


def dashboard_cookie(response: httpx.Response) -> tuple[str, str]:
    name, _, value = response.headers["set-cookie"].partition(";")[0].partition("=")
    return name, value


# -- the checks on a live relay --------------------------------------------------------


async def test_websocket_from_a_foreign_origin_gets_403(relay: RelayHarness) -> None:
    """Cross-site WebSocket hijacking: another origin is refused before the upgrade."""
    with anyio.fail_after(5), pytest.raises(InvalidStatus) as refused:
        await connect(relay.ws_url, origin=Origin("http://attacker.example"))
    assert refused.value.response.status_code == 403


async def test_a_refused_handshake_logs_no_error(
    relay: RelayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 at the handshake is the client's fault: the refusal is logged, nothing at ERROR."""
    caplog.set_level(logging.INFO)
    uvicorn_logger = logging.getLogger("uvicorn")  # it does not propagate to the root logger
    uvicorn_logger.addHandler(caplog.handler)
    try:
        with anyio.fail_after(5), pytest.raises(InvalidStatus) as refused:
            await connect(relay.ws_url, origin=Origin("http://attacker.example"))
        await relay.stop()  # every line about the connection is written by now
    finally:
        uvicorn_logger.removeHandler(caplog.handler)
    assert refused.value.response.status_code == 403
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "refused a WebSocket handshake from origin 'http://attacker.example'" in caplog.messages


async def test_websocket_from_another_local_port_gets_403(relay: RelayHarness) -> None:
    """A page on another loopback port is another origin, though it shares the cookies."""
    port = relay.server.port
    with anyio.fail_after(5), pytest.raises(InvalidStatus) as refused:
        await connect(relay.ws_url, origin=Origin(f"http://127.0.0.1:{port + 1}"))
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "[::1]"])
async def test_websocket_from_the_relays_own_origin_is_served(
    relay: RelayHarness, name: str
) -> None:
    """The dashboard's origin, under any loopback name, may connect."""
    origin = Origin(f"http://{name}:{relay.server.port}")
    with anyio.fail_after(5):
        async with connect(relay.ws_url, origin=origin) as ws:
            assert (await request(ws, "ping"))["ok"] is True


async def test_extra_allowed_origin_may_connect(relay_settings: Settings) -> None:
    """An origin listed in allowed_origins passes the check."""
    extra = "https://usage.example"
    with anyio.fail_after(10):
        async with (
            relay_with(relay_settings, allowed_origins=(extra,)) as server,
            connect(server.ws_url, origin=Origin(extra)) as ws,
        ):
            assert (await request(ws, "ping"))["ok"] is True


async def test_websocket_with_a_rebinding_host_gets_403(relay: RelayHarness) -> None:
    """DNS rebinding: a handshake whose Host names another site is refused."""
    host = f"rebind.attacker.example:{relay.server.port}"
    with anyio.fail_after(5):
        async with raw_client(relay.ws_url, headers={"Host": host}) as client:
            assert client.status == 403


@pytest.mark.parametrize("path", ["/", "/healthz", "/api/v1/usage/latest"])
async def test_http_with_a_rebinding_host_gets_403(relay: RelayHarness, path: str) -> None:
    """A rebound name reaches no page, not even the health check."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            response = await client.get(path, headers={"Host": "attacker.example"})
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


async def test_cross_origin_refresh_post_gets_403(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A form or fetch POST from another origin cannot spend gateway quota."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            await client.post("/api/v1/usage/refresh")
            served = simulator.requests_served
            response = await client.post(
                "/api/v1/usage/refresh", headers={"Origin": "http://attacker.example"}
            )
    assert response.status_code == 403
    assert simulator.requests_served == served


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic c2VjcmV0"])
async def test_api_without_the_token_gets_401(
    relay: RelayHarness, authorization: str | None
) -> None:
    """The HTTP API answers 401 with the protocol's unauthorized error."""
    headers = {"Authorization": authorization} if authorization else {}
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=headers) as client:
            response = await client.get("/api/v1/usage/latest")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthorized"


async def test_healthz_without_the_token_tells_only_the_state(relay: RelayHarness) -> None:
    """/healthz stays open but says nothing about usage or errors without credentials."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url) as client:
            response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "status": {"state": relay.hub.monitor.status.state}}


async def test_websocket_without_credentials_gets_unauthorized_then_1008(
    relay: RelayHarness,
) -> None:
    """Every request gets unauthorized, then the grace period ends with 1008."""
    with anyio.fail_after(GRACE + 5):
        async with websockets_connect(relay.ws_url) as ws:
            await ws.send('{"id": 1, "op": "subscribe"}')
            subscribe = await reply_to(ws, 1)
            await ws.send("not json")
            garbage = await reply_to(ws, None)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert subscribe["error"]["code"] == garbage["error"]["code"] == "unauthorized"
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_POLICY_VIOLATION


async def test_a_wrong_token_is_unauthorized(relay: RelayHarness) -> None:
    """A bearer that is not the client token authenticates nothing."""
    headers = {"Authorization": "Bearer " + "A" * 43}
    with anyio.fail_after(5):
        async with websockets_connect(relay.ws_url, additional_headers=headers) as ws:
            reply = await request(ws, "get_latest")
    assert reply["error"]["code"] == "unauthorized"


async def test_unauthenticated_subscriber_gets_no_events(relay: RelayHarness) -> None:
    """An unauthorized subscribe registers nothing: refreshes by others are not pushed."""
    with anyio.fail_after(GRACE + 5):
        async with websockets_connect(relay.ws_url) as stranger, connect(relay.ws_url) as user:
            await stranger.send('{"id": 1, "op": "subscribe"}')
            await reply_to(stranger, 1)
            assert (await request(user, "refresh"))["ok"] is True
            with pytest.raises(ConnectionClosed):
                while True:
                    frame = json.loads(await stranger.recv())
                    assert frame["type"] != "event", frame


async def test_dashboard_page_sets_a_strict_httponly_cookie(relay: RelayHarness) -> None:
    """Serving the dashboard sets the session cookie: HttpOnly, SameSite=Strict, Path=/."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url) as client:
            page = await client.get("/")
            script = await client.get("/usage-client.js")
    attributes = {part.strip().lower() for part in page.headers["set-cookie"].split(";")[1:]}
    assert attributes == {"path=/", "httponly", "samesite=strict"}
    assert "set-cookie" not in script.headers
    token = read_client_token()
    assert token is not None
    assert token not in page.headers["set-cookie"]


async def test_dashboard_cookie_authenticates_websocket_and_api(relay: RelayHarness) -> None:
    """The cookie alone lets the browser's requests through, like the bearer token."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url) as client:
            name, value = dashboard_cookie(await client.get("/"))
            latest = await client.get("/api/v1/usage/latest")
        headers = {"Cookie": f"{name}={value}"}
        async with websockets_connect(relay.ws_url, additional_headers=headers) as ws:
            reply = await request(ws, "get_latest")
    assert latest.status_code == 200
    assert reply["ok"] is True


async def test_no_cookie_for_another_users_process(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local process of another user gets the page but no cookie."""
    monkeypatch.setattr(middleware, "peer_is_same_user", lambda client, server: False)
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url) as client:
            page = await client.get("/")
    assert page.status_code == 200
    assert "set-cookie" not in page.headers


async def test_python_client_finds_the_token_by_itself(relay: RelayHarness) -> None:
    """RelayClient() without a token reads the relay's token file for a loopback relay."""
    with anyio.fail_after(5):
        async with RelayClient(relay.ws_url) as client:
            status = await client.status()
    assert status.state in {"starting", "ok"}


async def test_python_client_with_a_wrong_token_is_unauthorized(relay: RelayHarness) -> None:
    """A wrong explicit token raises Unauthorized, which retrying cannot fix."""
    with anyio.fail_after(5):
        async with RelayClient(relay.ws_url, token="wrong") as client:
            with pytest.raises(Unauthorized):
                await client.get_latest()


async def test_connection_over_the_limit_is_closed_with_1013(relay_settings: Settings) -> None:
    """max_connections caps open connections; the next one is told to try later."""
    with anyio.fail_after(10):
        async with (
            relay_with(relay_settings, max_connections=1) as server,
            connect(server.ws_url) as first,
            connect(server.ws_url) as second,
        ):
            with pytest.raises(ConnectionClosed) as closed:
                await second.recv()
            assert (await request(first, "ping"))["ok"] is True
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_TRY_AGAIN_LATER
