"""Fixtures of the simulator tests: a clock moved by hand, a simulator, its server and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from simulator import GatewaySimulator, SimulatorServer

START = datetime(2026, 11, 22, 12, 0, 0, 500_000, tzinfo=UTC)
USAGE_PATH = "/v1/usage/posthog_code"
AUTH = {"Authorization": "Bearer sim-token"}


class FakeClock:
    """A clock the tests move by hand, so windows roll over without sleeping."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> GatewaySimulator:
    return GatewaySimulator(clock=clock)


@pytest.fixture
async def server(sim: GatewaySimulator) -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
async def client(server: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=5) as client:
        yield client


async def usage(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get(USAGE_PATH)
