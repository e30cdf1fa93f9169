"""Tests of SimulatorServer: serving a simulator over real loopback sockets and stopping it."""

from __future__ import annotations

import anyio
import httpx
import pytest

from simulator import Failure, GatewaySimulator, SimulatorServer

from .conftest import AUTH, USAGE_PATH, usage


@pytest.mark.anyio
async def test_stop_drops_waiting_requests(
    sim: GatewaySimulator, server: SimulatorServer, client: httpx.AsyncClient
) -> None:
    """Stopping the server drops held and timing-out requests instead of hanging."""
    sim.inject(Failure.TIMEOUT)
    errors: list[type[Exception]] = []

    async def fetch() -> None:
        try:
            await usage(client)
        except httpx.HTTPError as exc:
            errors.append(type(exc))

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)
            await sim.wait_for_requests(1)
            sim.hold()
            tg.start_soon(fetch)
            await sim.wait_for_requests(2)
            await server.stop()
    assert errors == [httpx.RemoteProtocolError, httpx.RemoteProtocolError]


@pytest.mark.anyio
async def test_several_servers_in_one_process() -> None:
    """Two servers run side by side on their own ports with their own state."""
    first, second = GatewaySimulator(), GatewaySimulator(user_id=99)
    async with (
        SimulatorServer(first) as a,
        SimulatorServer(second) as b,
        httpx.AsyncClient(headers=AUTH) as client,
    ):
        assert a.url != b.url
        assert (await client.get(b.url + USAGE_PATH)).json()["user_id"] == 99
    assert (first.requests_served, second.requests_served) == (0, 1)


@pytest.mark.anyio
async def test_port_in_use_raises_oserror(server: SimulatorServer) -> None:
    """A port that is taken makes entering the server raise OSError."""
    port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        async with SimulatorServer(GatewaySimulator(), port=port):
            pass
