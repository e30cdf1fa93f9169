"""Fixtures shared by the whole suite: a real gateway simulator and a real relay on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import uvicorn
from anyio.abc import TaskGroup, TaskStatus
from pydantic import SecretStr

from common.settings import ENV_PREFIX
from common.tokens import CLIENT_TOKEN_ENV
from monitor.gateway import GatewayClient
from relay.hub import Hub
from relay.server import RelayServer
from relay.settings import Settings
from simulator import GatewaySimulator, SimulatorServer

SIMULATOR_TOKEN = "sim-token"


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Give every test its own home and XDG directories, and no USAGE_MONITOR_* variables.

    Nothing a test does then reads or writes the real user's configuration,
    state or client token, and a variable set in the shell that runs pytest
    changes no test. Subprocesses inherit the same environment.
    """
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for variable, relative in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_STATE_HOME", ".local/state"),
        ("XDG_CACHE_HOME", ".cache"),
    ):
        directory = home / relative
        directory.mkdir(parents=True)
        monkeypatch.setenv(variable, str(directory))
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return home


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run against another uvicorn than the one .ci/uvicorn_compat.py installed."""
    expected = os.environ.get("EXPECT_UVICORN")
    if expected and uvicorn.__version__ != expected:
        raise pytest.UsageError(
            f"EXPECT_UVICORN={expected}, but uvicorn {uvicorn.__version__} was imported "
            f"from {uvicorn.__file__}"
        )


def pytest_report_header() -> str:
    return f"uvicorn {uvicorn.__version__} from {Path(uvicorn.__file__).parent}"


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
async def gateway(simulator_server: SimulatorServer) -> AsyncIterator[GatewayClient]:
    """A gateway client for the simulator."""
    client = GatewayClient(simulator_server.url, lambda: SIMULATOR_TOKEN, timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def relay_settings(
    simulator_server: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings for a relay on an ephemeral loopback port that polls only when asked.

    The client token lives in the test's directory; clients find it through the
    environment, as they find the real one in the user's config directory.
    """
    token_file = tmp_path / "client-token"
    monkeypatch.setenv(CLIENT_TOKEN_ENV, str(token_file))
    return Settings(
        client_token_file=token_file,
        host="127.0.0.1",
        port=0,
        interval=3600,
        gateway_url=simulator_server.url,
        gateway_token=SecretStr(SIMULATOR_TOKEN),
        request_timeout=5,
        database=tmp_path / "usage.db",
    )


class RelayHarness:
    """A relay that a test can stop and start again on the same port.

    The server runs in a task of the fixture's own task group, so a test may
    stop and restart it from its own task.
    """

    def __init__(self, settings: Settings, task_group: TaskGroup) -> None:
        self.settings = settings
        self._task_group = task_group
        self._server: RelayServer | None = None
        self._stop_requested = anyio.Event()
        self._stopped = anyio.Event()

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
        assert self._server is None, "the relay is running"
        self._stop_requested = anyio.Event()
        self._stopped = anyio.Event()
        await self._task_group.start(self._serve)

    async def stop(self) -> None:
        if self._server is not None:
            self._stop_requested.set()
            await self._stopped.wait()

    async def _serve(self, *, task_status: TaskStatus[None]) -> None:
        try:
            async with RelayServer(self.settings) as server:
                self._server = server
                # A restart reuses the port, so clients can find the relay again.
                self.settings = self.settings.model_copy(update={"port": server.port})
                task_status.started()
                await self._stop_requested.wait()
        finally:
            self._server = None
            self._stopped.set()


@asynccontextmanager
async def running_relay(settings: Settings) -> AsyncIterator[RelayHarness]:
    """A relay with ``settings``, serving until the block ends."""
    async with anyio.create_task_group() as task_group:
        harness = RelayHarness(settings, task_group)
        await harness.start()
        try:
            yield harness
        finally:
            await harness.stop()


@pytest.fixture
async def relay(relay_settings: Settings) -> AsyncIterator[RelayHarness]:
    async with running_relay(relay_settings) as harness:
        yield harness
