"""Fan-out of monitor events to WebSocket connections, and the relay-wide budgets.

The hub serves one monitor per source under two kinds of topic: ``usage`` is
the default source (exactly as in v1) and ``usage:<source>`` each source.
Each topic has its own encoder and its own subscribers, so an update is
framed once per topic and a subscriber of one source never hears another.

Besides the fan-out, the hub holds what every connection shares: the budget
of gateway polls that refreshes may start (joining a poll in the air is
free), the number of history queries that may run at once, and the count of
connections, in two groups with a cap each (authenticated ones, and those
without valid credentials), so that neither group can take the other's place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from functools import partial
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

import anyio
from pydantic import TypeAdapter

from common.breakdown import Breakdown, BreakdownError, BreakdownQuery, parse_breakdown_query
from common.history import HistoryPoint
from common.messages import DEFAULT_TOPIC, ErrorCode, HistoryQuery, topic_of
from common.models import Snapshot, SourceKind, Status, utc_now
from common.reports import ReportEntry
from monitor.exceptions import StoreError, UsageMonitorError
from monitor.mailbox import Mailbox
from monitor.reporting import ReportScheduler
from monitor.service import (
    AlertRaised,
    MonitorEvent,
    PollFailed,
    StatusChanged,
    UsageUpdated,
)

from .exceptions import RequestError
from .fastpath import encode_text_frame
from .limits import RateLimiter, Verdict
from .protocol import FrameEncoder, TopicView, echo, rate_limited
from .refusals import Refusals

__all__ = [
    "FrameWriter",
    "HistorySource",
    "Hub",
    "Outbox",
    "RefreshOutcome",
    "SourceMonitor",
    "Topic",
]

logger = logging.getLogger("usage_monitor.relay")

_POINTS = TypeAdapter(list[HistoryPoint])
#: Seconds after which a client refused for lack of a history slot may try again.
HISTORY_RETRY_AFTER: Final = 1.0

#: What a refresh comes to: the poll's snapshot, why the poll failed, or a refusal.
RefreshOutcome = Snapshot | UsageMonitorError | RequestError


class SourceMonitor(Protocol):
    """What the hub serves a source from: its ``UsageMonitorService``, or in a team relay
    its ``relay.cluster.ClusterSource``."""

    @property
    def source(self) -> str: ...

    @property
    def kind(self) -> SourceKind: ...

    @property
    def status(self) -> Status: ...

    @property
    def polling(self) -> bool: ...

    @property
    def holding(self) -> bool: ...

    def get_latest(self) -> Snapshot | None: ...

    def add_observer(self, observer: Callable[[MonitorEvent], None]) -> None: ...

    def refresh_soon(self, on_done: Callable[[Snapshot | UsageMonitorError], None]) -> None: ...

    async def refresh_now(self) -> Snapshot: ...


class HistorySource(Protocol):
    #: Why the last write failed, or None while writes work.
    last_error: str | None

    async def history(
        self, source: str, since: datetime | None, until: datetime | None, limit: int
    ) -> list[HistoryPoint]: ...

    async def breakdown(self, query: BreakdownQuery, zone: tzinfo) -> Breakdown: ...


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


@dataclass(eq=False, slots=True)
class Topic:
    """One topic: its source's monitor, its encoder and the connections subscribed to it."""

    monitor: SourceMonitor
    encoder: FrameEncoder
    subscribers: set[Outbox] = field(default_factory=set)

    def publish(self, event: MonitorEvent) -> None:
        encoder = self.encoder
        match event:
            case UsageUpdated(snapshot):
                frame = encoder.updated(snapshot)
            case StatusChanged(status):
                frame = encoder.status_event(status)
            case AlertRaised(alert):
                frame = encoder.event(f"usage.{alert.kind}", alert.model_dump_json())
            case PollFailed():
                return  # clients learn of failures from the status
        self.fan_out(event.key, frame)

    def fan_out(self, key: Hashable, frame: str) -> None:
        """Queue ``frame`` for every subscriber; a later frame of the same ``key`` replaces it
        for a subscriber that has not read it yet."""
        # Framed once here; every idle subscriber then costs one socket write.
        wire = encode_text_frame(frame)
        # A connection may hear several topics: their events must not replace each other.
        key = (self.encoder.topic, key)
        for outbox in self.subscribers:
            outbox.put_event(key, frame, wire)


class Hub:
    """Encodes each monitor event once per topic and queues the same text for its subscribers."""

    def __init__(
        self,
        monitors: Sequence[SourceMonitor],
        *,
        cluster: str | None = None,
        default_source: str | None = None,
        timezone: str = "UTC",
        history: HistorySource | None = None,
        max_connections: int = 10_000,
        max_unauthenticated: int = 128,
        refresh_polls: RateLimiter | None = None,
        max_history_queries: int = 4,
    ) -> None:
        if not monitors:
            raise ValueError("a hub needs at least one monitor")
        self.monitors: dict[str, SourceMonitor] = {m.source: m for m in monitors}
        #: The team relay this relay belongs to; None when it runs alone.
        self.cluster = cluster
        self.default_source = default_source or monitors[0].source
        if self.default_source not in self.monitors:
            raise ValueError(f"the default source {self.default_source!r} has no monitor")
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        self.topics: dict[str, Topic] = {
            topic_of(name): Topic(monitor, FrameEncoder(topic_of(name)))
            for name, monitor in self.monitors.items()
        }
        self.topics[DEFAULT_TOPIC] = Topic(self.monitor, FrameEncoder(DEFAULT_TOPIC))
        #: The topics each source's events go to (the default source has two).
        self._topics_of: dict[str, list[Topic]] = {name: [] for name in self.monitors}
        for topic in self.topics.values():
            self._topics_of[topic.monitor.source].append(topic)
        for name, monitor in self.monitors.items():
            monitor.add_observer(partial(self.publish, source=name))
        self._history = history
        #: The daily usage reports, when the relay makes them.
        self.reports: ReportScheduler | None = None
        self._refresh_polls = refresh_polls
        self.max_history_queries = max_history_queries
        self._history_queries = 0
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        #: Every connection; ``unauthenticated`` are those without valid credentials.
        self.connections: set[Outbox] = set()
        self.unauthenticated: set[Outbox] = set()
        #: Connections refused or closed for their credentials or a cap: a line a minute.
        self.refusals = Refusals("WebSocket connections")
        self._subscriptions: dict[Outbox, frozenset[str]] = {}
        self._all_gone = anyio.Event()

    def publish(self, event: MonitorEvent, source: str | None = None) -> None:
        """Send ``event`` of ``source`` (None: the default source) to each of its topics."""
        for topic in self._topics_of[source or self.default_source]:
            topic.publish(event)

    def publish_report(self, event: str, entry: ReportEntry) -> None:
        """Send a report's ``usage.report_*`` event to the topics of its source; a newer
        state of the same report replaces one a subscriber has not read yet."""
        data = entry.model_dump_json()
        for topic in self._topics_of[entry.source]:
            topic.fan_out(("report", entry.report_id), topic.encoder.event(event, data))

    @property
    def monitor(self) -> SourceMonitor:
        """The default source's monitor: the one behind the topic ``usage``."""
        return self.monitors[self.default_source]

    @property
    def encoder(self) -> FrameEncoder:
        """The encoder of the topic ``usage``, for what concerns no source in particular."""
        return self.topics[DEFAULT_TOPIC].encoder

    def topic(self, source: str | None) -> Topic | None:
        """The topic of ``source`` (None: the default source); None for an unknown source."""
        if source is None:
            return self.topics[DEFAULT_TOPIC]
        return self.topics.get(topic_of(source))

    def views(self) -> Mapping[str, TopicView]:
        """The topics, as a protocol ``Session`` reads them."""
        return self.topics

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

    def set_subscribed(self, outbox: Outbox, topics: frozenset[str]) -> None:
        """Make ``topics`` the topics ``outbox`` hears (called after each of its requests)."""
        before = self._subscriptions.get(outbox, frozenset())
        if topics == before:
            return
        for name in before - topics:
            self.topics[name].subscribers.discard(outbox)
        for name in topics - before:
            self.topics[name].subscribers.add(outbox)
        if topics:
            self._subscriptions[outbox] = topics
        else:
            self._subscriptions.pop(outbox, None)

    def forget(self, outbox: Outbox) -> None:
        self.set_subscribed(outbox, frozenset())
        self.connections.discard(outbox)
        self.unauthenticated.discard(outbox)
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

    def polling_sources(self) -> list[str]:
        """The sources this relay polls now (in a team relay: those whose lease it holds)."""
        return [name for name, monitor in self.monitors.items() if monitor.holding]

    @property
    def storage_error(self) -> str | None:
        """Why snapshots are not being stored right now, if they are not."""
        return self._history.last_error if self._history is not None else None

    def sources_json(self) -> str:
        """The answer of ``list_sources``: every source in order, with its status and snapshot."""
        entries = []
        for name, monitor in self.monitors.items():
            topic = self.topics[topic_of(name)]
            encoder = topic.encoder
            latest = monitor.get_latest()
            kind = latest.kind if latest is not None else monitor.kind
            entries.append(
                f'{{"name":{json.dumps(name)},"kind":"{kind}",'
                f'"topic":{json.dumps(encoder.topic)},'
                f'"status":{encoder.status_json(monitor.status)},'
                f'"latest":{encoder.snapshot_json(latest)}}}'
            )
        return (
            f'{{"sources":[{",".join(entries)}],"timezone":{json.dumps(self.timezone)},'
            f'"default_source":{json.dumps(self.default_source)}}}'
        )

    async def history_json(self, topic: str, query: HistoryQuery) -> str:
        """The stored points of ``topic``'s source that ``query`` asks for, as a JSON array.

        Raises ``StoreError``, or ``RequestError`` (rate_limited) when
        ``max_history_queries`` stored reads are running already.
        """
        store = self._history
        if store is None:
            return "[]"
        source = self.topics[topic].monitor.source
        async with self._stored_read():
            points = await store.history(source, query.since, query.until, query.limit)
        return _POINTS.dump_json(points).decode()

    async def breakdown_json(self, params: Mapping[str, Any]) -> str:
        """The breakdown ``params`` ask for (``common.breakdown``), as JSON.

        Raises ``RequestError`` (bad_request naming the parameter, or
        rate_limited like ``history_json``) or ``StoreError``.
        """
        try:
            query = parse_breakdown_query(params, self.zone, self.timezone, utc_now())
        except BreakdownError as exc:
            raise RequestError(
                ErrorCode.BAD_REQUEST, f"invalid breakdown parameter {exc.parameter}: {exc}"
            ) from None
        store = self._history
        if store is None:
            raise StoreError("the relay keeps no ledger")
        async with self._stored_read():
            breakdown = await store.breakdown(query, self.zone)
        return breakdown.to_json()

    async def reports_json(self, params: Mapping[str, Any]) -> str:
        """The daily reports' states from ``since`` (a day) of ``source`` (a name), as JSON.

        Raises ``RequestError`` (bad_request for a day that is not one,
        unknown_topic for an unknown source, rate_limited like
        ``history_json``) or ``StoreError``.
        """
        reports = self.reports
        if reports is None:
            raise StoreError("the relay makes no reports")
        source = params.get("source")
        if source is not None and source not in self.monitors:
            raise RequestError(ErrorCode.UNKNOWN_TOPIC, f"unknown source {echo(str(source))}")
        since = params.get("since")
        try:
            day = None if since is None else date.fromisoformat(str(since))
        except ValueError:
            raise RequestError(
                ErrorCode.BAD_REQUEST,
                f"invalid reports parameter since: {echo(str(since))} is not a day (YYYY-MM-DD)",
            ) from None
        async with self._stored_read():
            listing = await reports.report_list(day, source)
        return listing.model_dump_json()

    @asynccontextmanager
    async def _stored_read(self) -> AsyncIterator[None]:
        """A slot among the ``max_history_queries`` reads of the store that may run at once."""
        if self._history_queries >= self.max_history_queries:
            raise RequestError(
                ErrorCode.RATE_LIMITED,
                f"the relay is answering {self.max_history_queries} reads of the store already; "
                f"retry in {HISTORY_RETRY_AFTER:g} s",
                data={"retry_after": HISTORY_RETRY_AFTER},
            )
        self._history_queries += 1
        try:
            yield
        finally:
            self._history_queries -= 1

    def refresh_soon(self, topic: str, on_done: Callable[[RefreshOutcome], None]) -> None:
        """``refresh_soon`` of ``topic``'s monitor, within the relay-wide budget of polls
        refreshes may start."""
        monitor = self.topics[topic].monitor
        refusal = self._over_budget(monitor)
        if refusal is None:
            monitor.refresh_soon(on_done)
        else:
            on_done(refusal)

    async def refresh_now(self, topic: str = DEFAULT_TOPIC) -> Snapshot:
        """``refresh_now`` of ``topic``'s monitor within the same budget; raises
        ``RequestError`` past it."""
        monitor = self.topics[topic].monitor
        refusal = self._over_budget(monitor)
        if refusal is not None:
            raise refusal
        return await monitor.refresh_now()

    def _over_budget(self, monitor: SourceMonitor) -> RequestError | None:
        """The refusal for a refresh that would start a poll the budget has no room for.

        Joining the poll in the air costs the gateway nothing, so it is never
        refused; however clients connect and reconnect, refreshes start at
        most the budget's polls a minute, over all sources together.
        """
        limiter = self._refresh_polls
        if limiter is None or monitor.polling or limiter.check() is Verdict.ALLOWED:
            return None
        if limiter.episode_started:
            logger.warning(
                "refreshes are over the relay's budget of gateway polls (%s)",
                limiter.bucket.rate.describe(),
            )
        return rate_limited(limiter, "gateway polls for refreshes, relay-wide")
