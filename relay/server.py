"""Running the relay under uvicorn, from the command line or inside a test."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

import anyio
import uvicorn
from anyio.abc import TaskGroup
from starlette.applications import Starlette

from common.exceptions import ClientTokenError
from common.messages import CLOSE_GOING_AWAY
from common.serving import BackgroundServer, ServerStartError
from monitor.exceptions import DatabaseInUse
from monitor.store import DatabaseLock

from .app import create_app
from .guard import AcceptErrors, ConnectionGuard
from .hub import Hub
from .openfiles import RESERVE, fit_max_connections, raise_open_file_limit
from .refusals import Refusals
from .settings import Settings
from .state import relay_state

__all__ = ["RelayServer", "run", "uvicorn_config"]

logger = logging.getLogger("usage_monitor.relay")


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


#: What uvicorn and websockets (through uvicorn's logger) log at INFO for every WebSocket.
_CONNECTION_LINES_LOGGED = (
    '%s - "WebSocket %s"',  # uvicorn: accepted, or refused with a status
    "connection open",
    "connection closed",
    "connection rejected (",
    "HTTP response sent (",
)


class ConnectionLinesAtDebug(logging.Filter):
    """uvicorn and websockets log lines at INFO for every WebSocket opened, closed or
    refused: a crowd would write several each. They are kept for DEBUG; refusals are
    counted in the relay's own lines, a line a minute (``relay.refusals``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        per_connection = isinstance(record.msg, str) and record.msg.startswith(
            _CONNECTION_LINES_LOGGED
        )
        if per_connection and record.levelno == logging.INFO:
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_CONNECTION_LINES = ConnectionLinesAtDebug()


def fit_to_open_files(settings: Settings) -> Settings:
    """``settings`` with ``max_connections`` lowered to fit the open-file limit, if it must be.

    Raises the soft limit to the hard one first; logs both changes.
    """
    open_files = raise_open_file_limit()
    if open_files is None:
        return settings
    wanted, unauthenticated = settings.max_connections, settings.max_unauthenticated
    fitted = fit_max_connections(wanted, unauthenticated, open_files)
    if fitted == wanted:
        return settings
    logger.warning(
        "max_connections lowered from %d to %d to fit the open-file limit of %d, "
        "which also holds %d files for the relay and 2 x %d unauthenticated connections",
        wanted,
        fitted,
        open_files,
        RESERVE,
        unauthenticated,
    )
    return settings.model_copy(update={"max_connections": fitted})


class RelayServer(BackgroundServer):
    """The relay served in the current event loop; clients get 1001 when it stops.

    It holds its database's lock while it runs: entering raises
    ``DatabaseInUse`` when another relay has the same database.
    """

    def __init__(self, settings: Settings, *, log_level: str = "warning") -> None:
        logging.getLogger("uvicorn.error").addFilter(_CLIENT_FAULTS)  # a repeat is ignored
        logging.getLogger("uvicorn.error").addFilter(_CONNECTION_LINES)
        settings = fit_to_open_files(settings)
        self.app = create_app(settings)
        self._database_lock = DatabaseLock(settings.database_path())
        super().__init__(
            uvicorn_config(self.app, settings, log_level=log_level),
            before_shutdown=self._say_goodbye,
        )
        # Connections still sending their request are bounded in number and time;
        # the guard's refusals and failed accepts share a line a minute.
        self._guard = ConnectionGuard(
            max_pending=settings.max_unauthenticated,
            header_timeout=settings.header_timeout,
            refusals=Refusals("connections"),
        )
        self._guard.install(self.config)
        self._accept_errors = AcceptErrors(self._guard.refusals)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"

    @property
    def hub(self) -> Hub:
        state = relay_state(self.app)
        assert state is not None, "the relay is not running"
        return state.hub

    async def _start(self, task_group: TaskGroup) -> None:
        self._database_lock.acquire()
        self._accept_errors.install(asyncio.get_running_loop())
        try:
            await super()._start(task_group)
        except BaseException:
            self._accept_errors.uninstall()
            self._database_lock.release()
            raise

    async def _stop(self) -> None:
        try:
            await super()._stop()
        finally:
            self._accept_errors.uninstall()
            self._guard.refusals.flush()
            self._database_lock.release()

    async def _say_goodbye(self) -> None:
        state = relay_state(self.app)
        if state is not None:
            # Connections that arrive from now on are closed with 1001 at once.
            state.shutting_down = True
            await state.hub.close_all(CLOSE_GOING_AWAY, "relay shutting down")
            state.hub.refusals.flush()


def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; a relay that cannot start says why in one line, exit 2."""
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
                # What start-up made lives as long as the process: kept out of the
                # collector's view, a full collection (which a burst of work such as a
                # report catch-up brings on) no longer stalls every client for ~100 ms.
                gc.freeze()
                logging.getLogger("usage_monitor.relay").info(
                    "relay listening on %s (dashboard at %s/)", server.ws_url, server.url
                )
                async for _ in signals:
                    return

    try:
        anyio.run(serve)
    except (ServerStartError, DatabaseInUse) as exc:
        print(f"usage-monitor: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
