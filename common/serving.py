"""Serve an ASGI app with uvicorn inside the current event loop, through its public API."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import cast

import anyio
import uvicorn
from anyio.abc import TaskGroup
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .lifetime import TaskGroupOwner

__all__ = ["BackgroundServer", "ServerStartError"]

#: The longest the goodbye hook and uvicorn's own shutdown may take together.
SHUTDOWN_TIMEOUT = 10.0


class ServerStartError(OSError):
    """The server could not start: the socket could not be bound, or the app's startup failed."""


class _Server(uvicorn.Server):
    """``uvicorn.Server`` that leaves the process's signal handlers alone.

    Its ``serve()`` would install SIGINT/SIGTERM handlers for the time it runs
    and raise the signal again afterwards; the process that embeds it owns its
    signals (``usage-monitor serve`` listens with anyio), and several servers
    run side by side in one process.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BackgroundServer(TaskGroupOwner):
    """``async with BackgroundServer(config) as server:`` serves until the block ends.

    Entering binds the socket itself (``ServerStartError`` naming the cause if
    it cannot), starts ``uvicorn.Server.serve`` on it, and returns once the
    app's lifespan startup is complete (at once for an app without one);
    ``server.url`` then names the socket, which matters with port 0.
    ``stop()`` may be called earlier, from any task, to take the server down
    mid-way. ``before_shutdown`` runs when stopping begins, before uvicorn
    closes the remaining connections, so an app can say goodbye its own way.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        before_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.url = ""
        self._before_shutdown = before_shutdown
        self._startup_failure: str | None = None
        self._ready = anyio.Event()
        self._stop_requested = False
        self._stopped = anyio.Event()
        if isinstance(config.app, str | type):
            raise TypeError("BackgroundServer serves an app object, not an import string or class")
        # The app is wrapped to learn when its lifespan startup ends, the moment to return.
        config.app = self._watch_lifespan(cast(ASGIApp, config.app))
        self._server = _Server(config)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Say goodbye, stop serving and wait until every connection is closed; idempotent."""
        if not self._stop_requested:
            self._stop_requested = True
            if self._before_shutdown is not None and self._started():
                with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_TIMEOUT):
                    await self._before_shutdown()
            self._server.should_exit = True
        await self._stopped.wait()

    async def _start(self, task_group: TaskGroup) -> None:
        sock = self._bind()
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if self.config.lifespan == "off":
            self._ready.set()
        task_group.start_soon(self._serve, sock)
        await self._ready.wait()
        if self._startup_failure is not None:
            raise ServerStartError(f"the application failed to start: {self._startup_failure}")

    async def _stop(self) -> None:
        await self.stop()

    def _bind(self) -> socket.socket:
        config = self.config
        try:
            family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((config.host, config.port))
                sock.listen(config.backlog)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ServerStartError(
                f"cannot listen on {config.host}:{config.port}: {reason}"
            ) from None
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        try:
            with sock:
                await self._server.serve(sockets=[sock])
        except SystemExit:  # how some uvicorn versions report a failed lifespan startup
            self._startup_failure = self._startup_failure or "its lifespan startup failed"
        finally:
            if not self._ready.is_set():
                self._startup_failure = self._startup_failure or "it stopped while starting"
                self._ready.set()
            self._stopped.set()

    def _started(self) -> bool:
        return self._ready.is_set() and self._startup_failure is None

    def _watch_lifespan(self, app: ASGIApp) -> ASGIApp:
        async def watched(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "lifespan":
                await app(scope, receive, send)
                return

            async def watched_send(message: Message) -> None:
                await send(message)
                if message["type"] == "lifespan.startup.failed":
                    # Starlette sends the traceback; its last line names the error.
                    text = str(message.get("message") or "").strip()
                    self._startup_failure = text.splitlines()[-1] if text else "unknown error"
                    self._ready.set()
                elif message["type"] == "lifespan.startup.complete":
                    self._ready.set()

            try:
                await app(scope, receive, watched_send)
            finally:
                if not self._ready.is_set():
                    self._startup_failure = "its lifespan ended before it started"
                    self._ready.set()

        return watched
