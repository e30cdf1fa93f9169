"""Fan-out of monitor events to WebSocket connections, and the relay-wide budgets.

Besides the fan-out, the hub holds what every connection shares: the budget
of gateway polls that refreshes may start (joining a poll in the air is
free), the number of history queries that may run at once, and the count of
connections, in two groups with a cap each (authenticated ones, and those
without valid credentials), so that neither group can take the other's place.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from typing import Final, Protocol

import anyio
from pydantic import TypeAdapter

from common.history import HistoryPoint
from common.messages import ErrorCode, HistoryQuery
from common.models import Snapshot
from monitor.exceptions import UsageMonitorError
from monitor.mailbox import Mailbox
from monitor.service import (
    AlertRaised,
    MonitorEvent,
    StatusChanged,
    UsageMonitorService,
    UsageUpdated,
)

from .exceptions import RequestError
from .fastpath import encode_text_frame
from .limits import RateLimiter, Verdict
from .protocol import FrameEncoder, rate_limited
from .refusals import Refusals

__all__ = ["FrameWriter", "HistorySource", "Hub", "Outbox", "RefreshOutcome"]

logger = logging.getLogger("usage_monitor.relay")

_POINTS = TypeAdapter(list[HistoryPoint])
#: Seconds after which a client refused for lack of a history slot may try again.
HISTORY_RETRY_AFTER: Final = 1.0

#: What a refresh comes to: the poll's snapshot, why the poll failed, or a refusal.
RefreshOutcome = Snapshot | UsageMonitorError | RequestError


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
        max_unauthenticated: int = 128,
        refresh_polls: RateLimiter | None = None,
        max_history_queries: int = 4,
    ) -> None:
        self.monitor = monitor
        self._history = history
        self._refresh_polls = refresh_polls
        self.max_history_queries = max_history_queries
        self._history_queries = 0
        self.encoder = FrameEncoder()
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        #: Every connection; ``unauthenticated`` are those without valid credentials.
        self.connections: set[Outbox] = set()
        self.unauthenticated: set[Outbox] = set()
        #: Connections refused or closed for their credentials or a cap: a line a minute.
        self.refusals = Refusals("WebSocket connections")
        self._subscribers: set[Outbox] = set()
        self._all_gone = anyio.Event()
        monitor.add_observer(self.publish)

    @property
    def full(self) -> bool:
        """Authenticated connections are at ``max_connections``."""
        return len(self.connections) - len(self.unauthenticated) >= self.max_connections

    @property
    def unauthenticated_full(self) -> bool:
        """Connections without valid credentials are at ``max_unauthenticated``.

        They have a cap of their own, so they can never take the place of
        authenticated clients, however many come.
        """
        return len(self.unauthenticated) >= self.max_unauthenticated

    def add(self, outbox: Outbox, *, authenticated: bool = True) -> None:
        """Count a new connection, in its group."""
        self.connections.add(outbox)
        if not authenticated:
            self.unauthenticated.add(outbox)

    def set_subscribed(self, outbox: Outbox, subscribed: bool) -> None:
        if subscribed:
            self._subscribers.add(outbox)
        else:
            self._subscribers.discard(outbox)

    def forget(self, outbox: Outbox) -> None:
        self.connections.discard(outbox)
        self.unauthenticated.discard(outbox)
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
        """The stored points ``query`` asks for, as a JSON array.

        Raises ``StoreError``, or ``RequestError`` (rate_limited) when
        ``max_history_queries`` are running already.
        """
        if self._history is None:
            return "[]"
        if self._history_queries >= self.max_history_queries:
            raise RequestError(
                ErrorCode.RATE_LIMITED,
                f"the relay is answering {self.max_history_queries} history queries already; "
                f"retry in {HISTORY_RETRY_AFTER:g} s",
                data={"retry_after": HISTORY_RETRY_AFTER},
            )
        self._history_queries += 1
        try:
            points = await self._history.history(query.since, query.until, query.limit)
        finally:
            self._history_queries -= 1
        return _POINTS.dump_json(points).decode()

    def refresh_soon(self, on_done: Callable[[RefreshOutcome], None]) -> None:
        """``monitor.refresh_soon`` within the relay-wide budget of polls refreshes may start."""
        refusal = self._over_budget()
        if refusal is None:
            self.monitor.refresh_soon(on_done)
        else:
            on_done(refusal)

    async def refresh_now(self) -> Snapshot:
        """``monitor.refresh_now`` within the same budget; raises ``RequestError`` past it."""
        refusal = self._over_budget()
        if refusal is not None:
            raise refusal
        return await self.monitor.refresh_now()

    def _over_budget(self) -> RequestError | None:
        """The refusal for a refresh that would start a poll the budget has no room for.

        Joining the poll in the air costs the gateway nothing, so it is never
        refused; however clients connect and reconnect, refreshes start at
        most the budget's polls a minute.
        """
        limiter = self._refresh_polls
        if limiter is None or self.monitor.polling or limiter.check() is Verdict.ALLOWED:
            return None
        if limiter.episode_started:
            logger.warning(
                "refreshes are over the relay's budget of gateway polls (%s)",
                limiter.bucket.rate.describe(),
            )
        return rate_limited(limiter, "gateway polls for refreshes, relay-wide")

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
