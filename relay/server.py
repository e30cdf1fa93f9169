"""Running the relay under uvicorn, from the command line or inside a test."""

from __future__ import annotations

import logging
import signal

import anyio
import uvicorn
from starlette.applications import Starlette

from monitor.serving import BackgroundServer

from .app import create_app
from .hub import Hub
from .protocol import CLOSE_GOING_AWAY
from .settings import Settings

__all__ = ["MAX_FRAME_BYTES", "RelayServer", "run", "uvicorn_config"]

#: Requests are tiny; a frame over this closes the connection with 1009.
MAX_FRAME_BYTES = 64 * 1024
#: Keepalive: a peer that does not answer a ping within the timeout is dropped.
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0


def uvicorn_config(app: Starlette, settings: Settings, *, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        # The sans-I/O implementation sends from the caller's task with no extra
        # coroutine per frame, which is the cheapest per-subscriber path.
        ws="websockets-sansio",
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        # Compression would cost hundreds of KiB per connection to save a few
        # hundred bytes per update; see docs/performance.md.
        ws_per_message_deflate=False,
    )


class RelayServer(BackgroundServer):
    """The relay served in the current event loop; clients get 1001 when it stops."""

    def __init__(self, settings: Settings, *, log_level: str = "warning") -> None:
        self.app = create_app(settings)
        super().__init__(
            uvicorn_config(self.app, settings, log_level=log_level),
            before_shutdown=self._say_goodbye,
        )

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.state.hub
        return hub

    async def _say_goodbye(self) -> None:
        hub: Hub | None = getattr(self.app.state, "hub", None)
        if hub is not None:
            await hub.close_all(CLOSE_GOING_AWAY, "relay shutting down")


def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The monitor logs each failed poll itself; a line per successful request is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def serve() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with RelayServer(settings, log_level="info") as server:
                logging.getLogger("usage_monitor.relay").info(
                    "relay listening on %s (dashboard at %s/)", server.ws_url, server.url
                )
                async for _ in signals:
                    return

    anyio.run(serve)
