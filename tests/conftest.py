"""Fixtures shared by the whole suite: a real gateway simulator and a real relay on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from pydantic import SecretStr

from monitor.simulator import GatewaySimulator, SimulatorServer
from relay.hub import Hub
from relay.server import RelayServer
from relay.settings import Settings

SIMULATOR_TOKEN = "sim-token"


@pytest.fixture
def anyio_backend() -> str:
    """Run every async test on asyncio, the backend uvicorn serves on."""
    return "asyncio"


@pytest.fixture
async def simulator_server() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(GatewaySimulator(token=SIMULATOR_TOKEN)) as server:
        yield server


@pytest.fixture
def simulator(simulator_server: SimulatorServer) -> GatewaySimulator:
    return simulator_server.simulator


@pytest.fixture
def relay_settings(simulator_server: SimulatorServer) -> Settings:
    """Settings for a relay on an ephemeral loopback port that polls only when asked."""
    return Settings(
        host="127.0.0.1",
        port=0,
        interval=3600,
        gateway_url=simulator_server.url,
        gateway_token=SecretStr(SIMULATOR_TOKEN),
        request_timeout=5,
    )


class RelayHarness:
    """A relay that a test can stop and start again on the same port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stack: AsyncExitStack | None = None
        self._server: RelayServer | None = None

    @property
    def server(self) -> RelayServer:
        assert self._server is not None, "the relay is stopped"
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    @property
    def hub(self) -> Hub:
        return self.server.hub

    async def start(self) -> None:
        assert self._stack is None, "the relay is running"
        stack = AsyncExitStack()
        self._server = await stack.enter_async_context(RelayServer(self.settings))
        # A restart reuses the port, so clients can find the relay again.
        self.settings = self.settings.model_copy(update={"port": self._server.port})
        self._stack = stack

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


@pytest.fixture
async def relay(relay_settings: Settings) -> AsyncIterator[RelayHarness]:
    harness = RelayHarness(relay_settings)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
