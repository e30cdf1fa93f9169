"""Fixtures of the simulator tests: a clock moved by hand, a simulator, its server and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from simulator import GatewaySimulator, SimulatorServer
from tests.clocks import FakeClock

#: A Sunday, half a second past noon UTC.
START = datetime(2026, 11, 22, 12, 0, 0, 500_000, tzinfo=UTC)
USAGE_PATH = "/v1/usage/posthog_code"
OPENROUTER_PATH = "/api/v1/key"
LITELLM_PATH = "/key/info"
#: Each dialect's usage endpoint.
PATHS = {"posthog": USAGE_PATH, "openrouter": OPENROUTER_PATH, "litellm": LITELLM_PATH}
AUTH = {"Authorization": "Bearer sim-token"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


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
