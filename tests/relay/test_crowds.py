"""Crowds: idle sockets and unauthenticated WebSockets cannot keep real clients out."""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed

from common.messages import CLOSE_TRY_AGAIN_LATER
from relay.server import RelayServer
from relay.settings import Settings
from simulator import SimulatorServer
from tests.conftest import SIMULATOR_TOKEN

from .process import RelayProcess, relay_environment
from .wire import auth_headers, connect, request

pytestmark = pytest.mark.anyio

#: The relay's open-file limit, soft and hard: a common default.
OPEN_FILES = 1024
#: Idle sockets, more than the relay could hold open at that limit.
CROWD = 1100


@asynccontextmanager
async def relay_with(settings: Settings, **changes: Any) -> AsyncIterator[RelayServer]:
    async with RelayServer(settings.model_copy(update=changes)) as server:
        yield server


# -- a real relay process at 1,024 open files ---------------------------------------------------


def limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


@pytest.fixture
def relay_process(
    tmp_path: Path, simulator_server: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RelayProcess]:
    """A relay process with at most 1,024 open files, polling the simulator."""
    env = relay_environment(tmp_path, monkeypatch, gateway_token=SIMULATOR_TOKEN)
    args = ["--port", "0", "--gateway-url", simulator_server.url, "--interval", "3600"]
    relay = RelayProcess.start(args, env, preexec_fn=limit_open_files)
    try:
        yield relay
    finally:
        relay.kill()


@pytest.fixture
def enough_open_files() -> None:
    """This process holds the crowd's sockets: its own limit must allow them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = CROWD + 400
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-file limit ({hard}) cannot hold {CROWD} sockets")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def open_crowd(url: str, count: int) -> list[socket.socket]:
    """``count`` sockets to the relay: half send nothing, half half a request line."""
    parts = urlsplit(url)
    address = (parts.hostname, parts.port)
    loop = asyncio.get_running_loop()
    crowd: list[socket.socket] = []
    for n in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        crowd.append(sock)
        await loop.sock_connect(sock, address)
        if n % 2:
            sock.send(b"GET /heal")
    return crowd


@pytest.mark.usefixtures("enough_open_files")
async def test_a_crowd_of_idle_sockets_does_not_keep_clients_out(
    relay_process: RelayProcess,
) -> None:
    """1,100 idle sockets against 1,024 open files: clients, /healthz and polls still work."""
    crowd: list[socket.socket] = []
    try:
        with anyio.fail_after(30):
            crowd = await open_crowd(relay_process.url, CROWD)
            async with connect(relay_process.ws_url) as ws:
                latest = await request(ws, "get_latest")
                refreshed = await request(ws, "refresh")
            async with httpx.AsyncClient(base_url=relay_process.url) as client:
                health = await client.get("/healthz", headers=auth_headers())
    finally:
        for sock in crowd:
            sock.close()
    assert latest["ok"] is True
    assert refreshed["ok"] is True, refreshed  # the poll reached the gateway
    assert health.status_code == 200
    lines = relay_process.lines_since_start
    assert not [line for line in lines if "Traceback" in line or "ERROR" in line], lines[:20]
    assert len(lines) <= 5, lines[:20]


# -- unauthenticated WebSockets ---------------------------------------------------------------


async def test_cycling_unauthenticated_websockets_leave_room_for_every_client(
    relay_settings: Settings,
) -> None:
    """With max_connections = 20 and a crowd without credentials, all 20 clients get in."""
    crowd_size = 40
    arrived = anyio.Event()
    done = anyio.Event()
    connected = 0

    async def stranger(url: str) -> None:
        nonlocal connected
        while not done.is_set():
            try:
                async with websockets_connect(url) as ws:
                    connected += 1
                    if connected == crowd_size:
                        arrived.set()
                    await ws.wait_closed()  # the grace period ends it, or the cap at once
            except (OSError, ConnectionClosed):
                pass

    with anyio.fail_after(20):
        async with (
            relay_with(
                relay_settings, max_connections=20, max_unauthenticated=30, auth_grace_period=0.5
            ) as server,
            anyio.create_task_group() as crowd,
        ):
            for _ in range(crowd_size):
                crowd.start_soon(stranger, server.ws_url)
            await arrived.wait()
            async with AsyncExitStack() as clients:
                sockets = [
                    await clients.enter_async_context(connect(server.ws_url)) for _ in range(20)
                ]
                replies = [await request(ws, "ping") for ws in sockets]
            done.set()
            crowd.cancel_scope.cancel()
    assert [reply["ok"] for reply in replies] == [True] * 20


async def test_an_unauthenticated_websocket_over_its_cap_gets_1013(
    relay_settings: Settings,
) -> None:
    """Past max_unauthenticated the next stranger is told to try later; clients still get in."""
    with anyio.fail_after(10):
        async with (
            relay_with(relay_settings, max_unauthenticated=1) as server,
            websockets_connect(server.ws_url) as first,
            websockets_connect(server.ws_url) as second,
            connect(server.ws_url) as client,
        ):
            with pytest.raises(ConnectionClosed) as closed:
                await second.recv()
            reply = await request(client, "ping")
            assert (await request(first, "ping"))["error"]["code"] == "unauthorized"
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_TRY_AGAIN_LATER
    assert reply["ok"] is True
