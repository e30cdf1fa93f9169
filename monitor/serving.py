"""Serve an ASGI app with uvicorn inside the current event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import anyio
import uvicorn
from anyio.abc import TaskGroup, TaskStatus

__all__ = ["BackgroundServer"]

#: The longest the hooks and uvicorn's own shutdown may take together.
SHUTDOWN_TIMEOUT = 10.0


class BackgroundServer:
    """``async with BackgroundServer(config) as server:`` serves until the block ends.

    Entering returns once the socket listens; ``server.url`` then names it (useful
    with port 0). ``before_shutdown`` runs after the server stops accepting work
    and before uvicorn closes the remaining connections, so an app can say
    goodbye its own way. Several servers may run in one process: none of them
    touches signal handlers.
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
        self._task_group: TaskGroup | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            await self._task_group.start(self._serve)
        except BaseException as exc:
            await self._task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None, "__aexit__ without __aenter__"
        self._server.should_exit = True
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def _serve(self, *, task_status: TaskStatus[None]) -> None:
        # uvicorn's serve() would also take over SIGINT/SIGTERM; its public
        # steps are used instead so the owner decides when to stop.
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
        try:
            task_status.started()
            await server.main_loop()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_TIMEOUT):
                if self._before_shutdown is not None:
                    await self._before_shutdown()
                await server.shutdown()
