"""Running the relay under uvicorn, from the command line or inside a test."""

from __future__ import annotations

import logging
import signal
import sys

import anyio
import uvicorn
from starlette.applications import Starlette

from common.exceptions import ClientTokenError
from common.messages import CLOSE_GOING_AWAY
from common.serving import BackgroundServer

from .app import create_app
from .hub import Hub
from .settings import Settings
from .state import relay_state

__all__ = ["RelayServer", "run", "uvicorn_config"]


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
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        # Nothing sits in front of the relay: X-Forwarded-* from a local process
        # must not change who the client is.
        proxy_headers=False,
        server_header=False,
        # Compression would cost hundreds of KiB per connection to save a few
        # hundred bytes per update; see docs/performance.md.
        ws_per_message_deflate=False,
    )


class ClientFaultsAreNotErrors(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 as an ERROR with a traceback; it is the
    client's fault (answered with 1007), so it is logged as one INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.getMessage().startswith("Invalid UTF-8"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
            record.msg, record.args = "a client sent invalid UTF-8; closed with 1007", ()
        return True


_CLIENT_FAULTS = ClientFaultsAreNotErrors()


class RelayServer(BackgroundServer):
    """The relay served in the current event loop; clients get 1001 when it stops."""

    def __init__(self, settings: Settings, *, log_level: str = "warning") -> None:
        logging.getLogger("uvicorn.error").addFilter(_CLIENT_FAULTS)  # a repeat is ignored
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
        state = relay_state(self.app)
        assert state is not None, "the relay is not running"
        return state.hub

    async def _say_goodbye(self) -> None:
        state = relay_state(self.app)
        if state is not None:
            # Connections that arrive from now on are closed with 1001 at once.
            state.shutting_down = True
            await state.hub.close_all(CLOSE_GOING_AWAY, "relay shutting down")


def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The monitor logs each failed poll itself; a line per successful request is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    try:
        relay = RelayServer(settings, log_level="info")
    except ClientTokenError as exc:
        print(f"usage-monitor: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    async def serve() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with relay as server:
                logging.getLogger("usage_monitor.relay").info(
                    "relay listening on %s (dashboard at %s/)", server.ws_url, server.url
                )
                async for _ in signals:
                    return

    anyio.run(serve)
