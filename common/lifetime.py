"""Objects whose background tasks live exactly as long as an ``async with`` block."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

__all__ = ["TaskGroupOwner"]


class TaskGroupOwner:
    """Owns a task group for the span of ``async with obj:``.

    Subclasses start their tasks in ``_start`` and may wind them down gracefully
    in ``_stop``; whatever still runs afterwards is cancelled. ``_task_group`` is
    the group while the block runs, and None before and after. An exception
    raised inside the block comes out as itself, not wrapped in an exception
    group, because the group is closed only after its tasks were stopped.
    """

    _task_group: TaskGroup | None = None

    async def _start(self, task_group: TaskGroup) -> None:
        """Start the background tasks; return once they are ready."""

    async def _stop(self) -> None:
        """Ask the background tasks to finish; they are cancelled afterwards."""

    async def __aenter__(self) -> Self:
        task_group = self._task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await self._start(task_group)
        except BaseException:
            self._task_group = None
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        assert task_group is not None, "__aexit__ without __aenter__"
        try:
            await self._stop()
        finally:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
