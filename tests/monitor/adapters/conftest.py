"""Fixtures of the adapter tests: a simulator on a clock moved by hand, a zone other than UTC."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import anyio
import pytest

from monitor.adapters import Adapter, Reading
from monitor.gateway import GatewayClient
from simulator import GatewaySimulator, SimulatorServer
from tests.clocks import FakeClock

#: A Wednesday, half a second past noon UTC.
START = datetime(2026, 11, 18, 12, 0, 0, 500_000, tzinfo=UTC)
TOKEN = "sk-adapter-TOKEN-must-never-leak-0123"
#: Put into hostile values: a message that contains it echoed a value from outside.
MARKER = "XYZZY"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def sim(clock: FakeClock) -> GatewaySimulator:
    return GatewaySimulator(token=TOKEN, clock=clock)


@pytest.fixture
async def server(sim: GatewaySimulator) -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(sim) as server:
        yield server


async def poll(
    server: SimulatorServer, adapter: Adapter, clock: FakeClock, *, token: str = TOKEN
) -> Reading:
    """One ``fetch`` of the simulator in ``adapter``'s dialect, received at ``clock``'s now."""
    client = GatewayClient(server.url, lambda: token, adapter, timeout=5, clock=clock)
    try:
        with anyio.fail_after(5):
            return await client.fetch()
    finally:
        await client.aclose()


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone is America/New_York for the test, UTC-5 in November."""
    with monkeypatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        # Monday 02:00 UTC is still Sunday in New York: the zone really changed.
        assert datetime(2026, 11, 23, 2, tzinfo=UTC).astimezone().day == 22
        yield
    time.tzset()
