"""Access control: Host and Origin checks, the client token, its file and the dashboard cookie."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import ValidationError
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

import relay.middleware as security
from clients.client import RelayClient
from clients.exceptions import Unauthorized
from common.exceptions import ClientTokenError
from common.hosts import LOOPBACK_NAMES, host_name
from common.messages import CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER
from common.tokens import CLIENT_TOKEN_ENV, load_or_create_client_token, read_client_token
from relay.peers import find_socket_owner, peer_is_same_user
from relay.policy import (
    SecurityPolicy,
    bearer_token,
    host_allowed,
    normalize_origin,
    origin_allowed,
    own_origins,
)
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


# -- Host names and origins (pure) -------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8765", "127.0.0.1"),
        ("LocalHost:8765", "localhost"),
        ("localhost.:8765", "localhost"),
        ("[::1]:8765", "::1"),
        ("[::1]", "::1"),
        ("rebind.example.com:8765", "rebind.example.com"),
        ("[::1]evil", None),
        ("[::1", None),
        ("", None),
    ],
)
def test_host_name_strips_port_and_brackets(header: str, name: str | None) -> None:
    """A Host header's name is lowercased, without port, brackets or trailing dot."""
    assert host_name(header) == name


@pytest.mark.parametrize("header", ["127.0.0.1:8765", "localhost:1", "[::1]:8765", "localhost"])
def test_loopback_hosts_are_allowed(header: str) -> None:
    """Loopback names pass the Host check on any port."""
    assert host_allowed(header, LOOPBACK_NAMES)


@pytest.mark.parametrize("header", ["attacker.example:8765", "127.0.0.1.nip.io", "", None])
def test_other_hosts_are_refused(header: str | None) -> None:
    """A rebinding name, an empty Host and a missing one fail the Host check."""
    assert not host_allowed(header, LOOPBACK_NAMES)


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("HTTP://LOCALHOST:8765/", "http://localhost:8765"),
        ("http://localhost:80", "http://localhost"),
        ("https://example.com:443", "https://example.com"),
        ("http://[::1]:8765", "http://[::1]:8765"),
        ("null", None),
        ("file://", None),
        ("http://localhost:8765/path", None),
        ("http://user@localhost:8765", None),
        ("http://localhost:99999", None),
    ],
)
def test_origins_are_normalized(origin: str, normalized: str | None) -> None:
    """Origins compare as lowercase scheme://host[:port] without a default port."""
    assert normalize_origin(origin) == normalized


def test_own_origins_cover_every_loopback_name() -> None:
    """The relay's own origins are its loopback names on its port."""
    assert own_origins(LOOPBACK_NAMES, 8765) == {
        "http://127.0.0.1:8765",
        "http://localhost:8765",
        "http://[::1]:8765",
    }


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://localhost:8765", True),
        ("http://localhost:8766", False),
        ("http://attacker.example", False),
        ("null", False),
    ],
)
def test_origin_check(origin: str | None, allowed: bool) -> None:
    """No Origin passes (not a browser); only the allow-listed origins do otherwise."""
    assert origin_allowed(origin, own_origins(LOOPBACK_NAMES, 8765)) is allowed


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None)],
)
def test_bearer_token_is_read_from_the_header(header: str, token: str | None) -> None:
    """Only the Bearer scheme carries the client token."""
    assert bearer_token(header) == token


def test_policy_allows_the_configured_host_and_extras() -> None:
    """A configured host and allowed_hosts join the loopback names; a wildcard does not."""
    settings = Settings(
        host="0.0.0.0", allow_remote=True, allowed_hosts=("Relay.LAN",), allowed_origins=("x://y",)
    )
    with pytest.raises(ValueError, match="allowed_origins"):
        SecurityPolicy.from_settings(settings, "token")
    settings = settings.model_copy(update={"allowed_origins": ("https://ui.lan/",)})
    policy = SecurityPolicy.from_settings(settings, "token")
    assert policy.allowed_hosts == LOOPBACK_NAMES | {"relay.lan"}
    assert policy.origins(8765) >= {"http://relay.lan:8765", "https://ui.lan"}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "relay.lan"])
def test_settings_refuse_a_remote_host_without_allow_remote(host: str) -> None:
    """Binding off loopback needs allow_remote."""
    with pytest.raises(ValidationError, match="allow_remote"):
        Settings(host=host)
    assert Settings(host=host, allow_remote=True).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_settings_accept_loopback_hosts(host: str) -> None:
    """Any loopback address or "localhost" needs no flag."""
    assert Settings(host=host).host == host


# -- the client token file -----------------------------------------------------------


def test_token_is_created_private_on_first_start(tmp_path: Path) -> None:
    """The first start writes a 256-bit url-safe token, mode 0600, in a 0700 directory."""
    path = tmp_path / "config" / "client-token"
    token = load_or_create_client_token(path)
    assert len(token) == 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["client-token"]


def test_token_survives_restarts(tmp_path: Path) -> None:
    """Later starts read the same token back."""
    path = tmp_path / "client-token"
    assert load_or_create_client_token(path) == load_or_create_client_token(path)


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """A token that other users could have read is not used."""
    path = tmp_path / "client-token"
    load_or_create_client_token(path)
    path.chmod(0o644)
    with pytest.raises(ClientTokenError, match="other users"):
        load_or_create_client_token(path)


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    """The relay does not follow a symlink in place of its token file."""
    target = tmp_path / "elsewhere"
    load_or_create_client_token(target)
    (tmp_path / "client-token").symlink_to(target)
    with pytest.raises(ClientTokenError):
        load_or_create_client_token(tmp_path / "client-token")


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    """A file without a token says to delete it."""
    path = tmp_path / "client-token"
    path.touch(mode=0o600)
    with pytest.raises(ClientTokenError, match="delete it"):
        load_or_create_client_token(path)


def test_clients_read_the_token_from_the_env_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_client_token() follows USAGE_MONITOR_CLIENT_TOKEN_FILE, None if absent."""
    path = tmp_path / "client-token"
    monkeypatch.setenv(CLIENT_TOKEN_ENV, str(path))
    assert read_client_token() is None
    token = load_or_create_client_token(path)
    assert read_client_token() == token


async def test_a_relay_with_an_unsafe_token_file_does_not_start(
    relay_settings: Settings, tmp_path: Path
) -> None:
    """Building the app fails with ClientTokenError rather than serve with a leaked token."""
    path = tmp_path / "shared-token"
    path.write_text("x" * 43)
    path.chmod(0o644)
    with pytest.raises(ClientTokenError):
        RelayServer(relay_settings.model_copy(update={"client_token_file": path}))


# -- who is at the other end (Linux) --------------------------------------------------


def test_socket_owner_is_found_in_a_proc_table() -> None:
    """The uid column of the matching local/remote pair is returned."""
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000\n"
        "   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001\n"
    )
    assert find_socket_owner(table, "0100007F:D431", "0100007F:1F90") == 1001
    assert find_socket_owner(table, "0100007F:D432", "0100007F:1F90") is None


def test_a_loopback_peer_of_this_user_is_recognised() -> None:
    """A loopback connection made by this process belongs to this user."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux's /proc/net/tcp")
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        assert peer_is_same_user(client.getsockname(), server.getsockname()) is True
        assert peer_is_same_user(("127.0.0.1", 1), server.getsockname()) is False


# -- the checks on a live relay --------------------------------------------------------


async def test_websocket_from_a_foreign_origin_gets_403(relay: RelayHarness) -> None:
    """Cross-site WebSocket hijacking: another origin is refused before the upgrade."""
    with anyio.fail_after(5), pytest.raises(InvalidStatus) as refused:
        await connect(relay.ws_url, origin=Origin("http://attacker.example"))
    assert refused.value.response.status_code == 403


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
    monkeypatch.setattr(security, "peer_is_same_user", lambda client, server: False)
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


async def test_relay_started_with_defaults_binds_loopback_only(relay: RelayHarness) -> None:
    """The default host is loopback: the listening socket is not reachable from elsewhere."""
    assert Settings.model_fields["host"].default == "127.0.0.1"
    assert relay.url.startswith("http://127.0.0.1:")
