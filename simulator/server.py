"""Simulators served over real HTTP on loopback, in the current event loop."""

from __future__ import annotations

import anyio
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from common.serving import BackgroundServer

from .failures import STOPPING_KEY
from .gateway import GatewaySimulator

__all__ = ["LoopbackServer", "SimulatorServer"]


class LoopbackServer(BackgroundServer):
    """Serves a simulator's ``app`` with uvicorn in the current event loop.

    ``async with LoopbackServer(app) as server:`` returns once the socket listens;
    ``server.url`` is then e.g. ``http://127.0.0.1:54321``. Leaving the block (or
    ``stop()``, to take the simulated service down mid-test) makes held, slow and
    timing-out requests drop their connections (they wait on the event under
    ``STOPPING_KEY`` in their scope), then shuts uvicorn down.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._served = app
        self._stopping = anyio.Event()
        config = uvicorn.Config(
            self._app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            interface="asgi3",  # a bound method fools uvicorn's auto-detection
            lifespan="off",  # the app has no startup or shutdown work
            proxy_headers=False,  # nothing sits in front of a loopback test server
            ws="none",
            # A backstop only: our own stop signal ends long requests well before this.
            timeout_graceful_shutdown=5,
        )
        super().__init__(config, before_shutdown=self._drop_waiting_requests)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[STOPPING_KEY] = self._stopping
        await self._served(scope, receive, send)

    async def _drop_waiting_requests(self) -> None:
        self._stopping.set()


class SimulatorServer(LoopbackServer):
    """A gateway simulator served over HTTP: ``async with SimulatorServer(sim) as server:``."""

    def __init__(
        self, simulator: GatewaySimulator, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = simulator
        super().__init__(simulator.app, host=host, port=port)
