"""A bounded mailbox that keeps only the newest undelivered item of each kind."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import anyio

__all__ = ["Mailbox"]

_Item = TypeVar("_Item")


class Mailbox(Generic[_Item]):
    """Items keyed by kind, delivered oldest first, at most one per key.

    Putting never blocks: an item replaces an undelivered one with the same key
    and moves behind everything put before it, so delivery follows arrival
    order and a reader that falls behind holds one item per key, not a backlog.
    """

    def __init__(self) -> None:
        self._pending: dict[Hashable, _Item] = {}
        self._wakeup = anyio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, key: Hashable, item: _Item) -> None:
        self._pending.pop(key, None)
        self._pending[key] = item
        self._wakeup.set()

    def wake(self) -> None:
        """Wake the reader, for a reason of its own (see ``wait``)."""
        self._wakeup.set()

    def pop(self) -> _Item:
        """Remove and return the oldest item; the mailbox must not be empty."""
        return self._pending.pop(next(iter(self._pending)))

    async def wait(self, stop: Callable[[], bool]) -> None:
        """Return once an item is there, or ``stop()`` is true after a ``wake()``."""
        while not self._pending and not stop():
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
