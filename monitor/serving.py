"""Serve an ASGI app with uvicorn inside the current event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import uvicorn
from anyio.abc import TaskGroup

from .lifetime import TaskGroupOwner

__all__ = ["BackgroundServer"]

#: The longest the hook and uvicorn's own shutdown may take together.
SHUTDOWN_TIMEOUT = 10.0


class BackgroundServer(TaskGroupOwner):
    """``async with BackgroundServer(config) as server:`` serves until the block ends.

    Entering returns once the socket listens (``OSError`` if it cannot);
    ``server.url`` then names it, which matters with port 0. ``stop()`` may be
    called earlier, from any task, to take the server down mid-way.
    ``before_shutdown`` runs once the server stops accepting work and before
    uvicorn closes the remaining connections, so an app can say goodbye its own
    way. Several servers may run in one process: none touches signal handlers.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        before_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.url = ""
        self._server = uvicorn.Server(config)
        self._before_shutdown = before_shutdown
        self._stopped = anyio.Event()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Stop serving and wait until every connection is closed; idempotent."""
        self._server.should_exit = True
        await self._stopped.wait()

    async def _start(self, task_group: TaskGroup) -> None:
        # uvicorn's serve() would also take over SIGINT/SIGTERM and cannot say
        # when it listens; its public steps are used instead.
        server = self._server
        if not self.config.loaded:
            self.config.load()
        server.lifespan = self.config.lifespan_class(self.config)
        try:
            await server.startup()
        except SystemExit:  # how uvicorn reports a failed bind or a failed lifespan
            raise OSError(f"could not serve on {self.config.host}:{self.config.port}") from None
        if server.should_exit:  # the lifespan failed after binding
            await server.shutdown()
            raise OSError("the application failed to start")
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        task_group.start_soon(self._serve_until_stopped)

    async def _stop(self) -> None:
        await self.stop()

    async def _serve_until_stopped(self) -> None:
        try:
            await self._server.main_loop()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_TIMEOUT):
                if self._before_shutdown is not None:
                    await self._before_shutdown()
                await self._server.shutdown()
            self._stopped.set()
