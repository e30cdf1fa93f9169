"""TaskGroupOwner: background tasks that live exactly as long as an ``async with`` block."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus

from common.lifetime import TaskGroupOwner

pytestmark = pytest.mark.anyio


class Worker(TaskGroupOwner):
    """Starts one background task in ``_start`` that runs until it is cancelled."""

    def __init__(self, fail_start: bool = False) -> None:
        self.fail_start = fail_start
        self.running = anyio.Event()
        self.cancelled = anyio.Event()
        self.running_at_stop: bool | None = None

    async def _start(self, task_group: TaskGroup) -> None:
        await task_group.start(self._work)
        if self.fail_start:
            raise RuntimeError("start failed")

    async def _stop(self) -> None:
        self.running_at_stop = self.running.is_set() and not self.cancelled.is_set()

    async def _work(self, *, task_status: TaskStatus[None]) -> None:
        self.running.set()
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()


async def test_background_tasks_are_cancelled_when_the_block_ends() -> None:
    """A task started in _start runs inside the block and is cancelled when it ends."""
    worker = Worker()
    with anyio.fail_after(5):
        async with worker:
            assert worker.running.is_set()
            assert not worker.cancelled.is_set()
    assert worker.cancelled.is_set()


async def test_the_task_group_exists_only_inside_the_block() -> None:
    """_task_group is the running group inside the block and None before and after."""
    worker = Worker()
    assert worker._task_group is None
    with anyio.fail_after(5):
        async with worker:
            assert worker._task_group is not None
    assert worker._task_group is None


async def test_stop_runs_before_the_tasks_are_cancelled() -> None:
    """_stop sees the background tasks still running, so it can wind them down gracefully."""
    worker = Worker()
    with anyio.fail_after(5):
        async with worker:
            pass
    assert worker.running_at_stop is True


async def test_an_exception_in_the_block_comes_out_as_itself() -> None:
    """An error raised inside the block is not wrapped in an ExceptionGroup."""
    worker = Worker()
    with anyio.fail_after(5), pytest.raises(Exception) as raised:
        async with worker:
            raise LookupError("from the block")
    assert type(raised.value) is LookupError
    assert str(raised.value) == "from the block"
    assert worker.cancelled.is_set()


async def test_a_failing_start_leaves_nothing_running_and_reraises() -> None:
    """When _start raises, the tasks it started are cancelled and its error comes out as itself."""
    worker = Worker(fail_start=True)
    with anyio.fail_after(5), pytest.raises(Exception) as raised:
        async with worker:
            pytest.fail("the block must not run when _start failed")
    assert type(raised.value) is RuntimeError
    assert worker.running.is_set()
    assert worker.cancelled.is_set()
    assert worker._task_group is None
