"""Fan-out of monitor events to WebSocket connections."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from typing import Protocol

import anyio
from pydantic import TypeAdapter

from common.history import HistoryPoint
from common.messages import HistoryQuery
from monitor.mailbox import Mailbox
from monitor.service import (
    AlertRaised,
    MonitorEvent,
    StatusChanged,
    UsageMonitorService,
    UsageUpdated,
)

from .fastpath import encode_text_frame
from .protocol import FrameEncoder

__all__ = ["FrameWriter", "HistorySource", "Hub", "Outbox"]

_POINTS = TypeAdapter(list[HistoryPoint])


class HistorySource(Protocol):
    #: Why the last write failed, or None while writes work.
    last_error: str | None

    async def history(
        self, since: datetime | None, until: datetime | None, limit: int
    ) -> list[HistoryPoint]: ...


class FrameWriter(Protocol):
    """Writes a pre-encoded frame now, or returns False (see ``relay.fastpath``)."""

    def write(self, frame: bytes) -> bool: ...


class Outbox:
    """Frames waiting to be sent on one connection.

    Events are keyed by kind, so a client that reads slowly gets only the newest
    snapshot and the newest status instead of a growing backlog. Replies are
    kept one by one, up to ``max_replies``; past that the client is asking
    faster than it reads and ``overflowed`` is set for the connection to close.
    ``close()`` asks for the connection to end once what is queued has been sent.

    With a ``direct`` writer, a frame for an idle connection skips the queue and
    goes straight to the socket (events as bytes pre-encoded once for everyone).
    It only happens when nothing is queued or being sent, so frames still leave
    in the order they were put.
    """

    def __init__(self, max_replies: int = 256, direct: FrameWriter | None = None) -> None:
        self._mailbox: Mailbox[str] = Mailbox()
        self._replies = 0
        self._max_replies = max_replies
        self._sending = False
        self._direct = direct
        self.overflowed = False
        self.close_request: tuple[int, str] | None = None

    def put_event(self, key: Hashable, frame: str, wire: bytes) -> None:
        """Queue (or write at once) an event; ``wire`` is ``frame`` encoded as a WebSocket frame."""
        writer = self._idle_writer()
        if writer is not None and writer.write(wire):
            return
        self._mailbox.put(key, frame)

    def put_reply(self, frame: str) -> None:
        writer = self._idle_writer()
        if writer is not None and writer.write(encode_text_frame(frame)):
            return
        if len(self._mailbox) >= self._max_replies:
            self.overflowed = True
            self._mailbox.wake()
        else:
            self._replies += 1
            self._mailbox.put(self._replies, frame)

    def _idle_writer(self) -> FrameWriter | None:
        """The direct writer, if a frame may use it now without overtaking another."""
        if self._mailbox or self._sending or self.close_request is not None:
            return None
        return self._direct

    def close(self, code: int, reason: str) -> None:
        self.close_request = (code, reason)
        self._mailbox.wake()

    async def drain(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Send queued frames as they come, one at a time, until the connection must end.

        Raises ``anyio.BrokenResourceError`` after an overflow and
        ``anyio.EndOfStream`` once a requested close is due.
        """
        while True:
            await self._mailbox.wait(lambda: self.overflowed or self.close_request is not None)
            if self.overflowed:
                raise anyio.BrokenResourceError
            if not self._mailbox:
                raise anyio.EndOfStream
            frame = self._mailbox.pop()
            self._sending = True
            try:
                await send(frame)
            finally:
                self._sending = False


class Hub:
    """Encodes each monitor event once and queues the same text for every subscriber."""

    def __init__(
        self,
        monitor: UsageMonitorService,
        *,
        history: HistorySource | None = None,
        max_connections: int = 10_000,
    ) -> None:
        self.monitor = monitor
        self._history = history
        self.encoder = FrameEncoder()
        self.max_connections = max_connections
        self.connections: set[Outbox] = set()
        self._subscribers: set[Outbox] = set()
        self._all_gone = anyio.Event()
        monitor.add_observer(self.publish)

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.max_connections

    def set_subscribed(self, outbox: Outbox, subscribed: bool) -> None:
        if subscribed:
            self._subscribers.add(outbox)
        else:
            self._subscribers.discard(outbox)

    def forget(self, outbox: Outbox) -> None:
        self.connections.discard(outbox)
        self._subscribers.discard(outbox)
        if not self.connections:
            self._all_gone.set()

    async def close_all(self, code: int, reason: str) -> None:
        """Ask every connection to flush and close, and wait until they are gone."""
        if not self.connections:
            return
        if self._all_gone.is_set():  # a new wait; a concurrent caller shares the pending one
            self._all_gone = anyio.Event()
        for outbox in self.connections:
            outbox.close(code, reason)
        await self._all_gone.wait()

    @property
    def storage_error(self) -> str | None:
        """Why snapshots are not being stored right now, if they are not."""
        return self._history.last_error if self._history is not None else None

    async def history_json(self, query: HistoryQuery) -> str:
        """The stored points ``query`` asks for, as a JSON array; raises ``StoreError``."""
        if self._history is None:
            return "[]"
        points = await self._history.history(query.since, query.until, query.limit)
        return _POINTS.dump_json(points).decode()

    def publish(self, event: MonitorEvent) -> None:
        match event:
            case UsageUpdated(snapshot):
                frame = self.encoder.updated(snapshot)
            case StatusChanged(status):
                frame = self.encoder.status_event(status)
            case AlertRaised(alert):
                frame = self.encoder.event(f"usage.{alert.kind}", alert.model_dump_json())
        # Framed once here; every idle subscriber then costs one socket write.
        wire = encode_text_frame(frame)
        key = event.key
        for outbox in self._subscribers:
            outbox.put_event(key, frame, wire)
