"""
Async client of the usage relay (wire protocol v1, with the sources of
``accounting-v1.md``).

One WebSocket connection per client, opened on first use. A single reader task
per connection routes replies to the request waiting for them (by request id)
and events to every live ``events()`` / ``subscribe()`` iterator that listens
to their topic. One-shot requests fail fast with ``RelayUnavailable`` when the
relay is down; the iterators instead reconnect with capped, jittered
exponential backoff and subscribe again to every topic they follow, so a
long-running view survives relay restarts.

Every call about usage takes ``source``: None is the relay's default source
(topic ``usage``, as in v1), a name is that source (topic ``usage:<name>``).
A name the relay does not serve raises ``UnknownSource``.

Runs on anyio's asyncio backend (the ``websockets`` client is asyncio-only)::

    async with RelayClient("ws://127.0.0.1:8765/ws") as client:
        print(await client.get_latest())
        for source in (await client.list_sources()).sources:
            print(source.name, source.latest)
        async for event in client.events(every_source=True):
            ...
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import BaseModel, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from common.backoff import Backoff
from common.breakdown import Breakdown
from common.exceptions import ClientTokenError
from common.history import HistoryPoint
from common.hosts import is_loopback_host
from common.lifetime import TaskGroupOwner
from common.messages import DEFAULT_TOPIC, SUBPROTOCOL, SourcesResult, topic_of
from common.models import Alert, LimitProjected, Snapshot, SourceInfo, Status, ThresholdCrossed
from common.reports import ReportList
from common.tokens import read_client_token

from .exceptions import (
    ProtocolError,
    RateLimited,
    RelayUnavailable,
    RequestFailed,
    RequestTimeout,
    Unauthorized,
    UnknownSource,
    request_failed,
)

__all__ = [
    "DEFAULT_URL",
    "RECONNECT_BACKOFF",
    "REFRESH_TIMEOUT",
    "AlertReceived",
    "ConnectionChanged",
    "ConnectionState",
    "RelayClient",
    "RelayEvent",
    "SnapshotReceived",
    "SourceList",
    "SourcesReceived",
    "StatusReceived",
    "bearer_headers",
    "topic_for",
]

DEFAULT_URL: Final = "ws://127.0.0.1:8765/ws"
#: 0.5 s doubling up to 10 s; half of each delay is random ("equal jitter"), so
#: clients dropped together by a relay restart do not all come back at once.
RECONNECT_BACKOFF: Final = Backoff(initial=0.5, maximum=10.0, factor=2.0, jitter=0.5)
#: A refresh waits for a gateway poll, which the relay gives up on after its own
#: upstream timeout (10 s by default): waiting longer lets the relay's answer,
#: success or ``upstream_unavailable``, arrive instead of a bare client timeout.
REFRESH_TIMEOUT: Final = 30.0
#: Leaving the client waits this long at most for the closing handshake.
_CLOSE_TIMEOUT: Final = 2.0

logger = logging.getLogger("usage_monitor.client")


class _RedactAuthorization(logging.Filter):
    """websockets logs each handshake header at DEBUG; the bearer token must not follow."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 2:
            name, _ = record.args
            if isinstance(name, str) and name.lower() == "authorization":
                record.args = (name, "[redacted]")
        return True


_websocket_logger = logging.getLogger("usage_monitor.client.websocket")
_websocket_logger.addFilter(_RedactAuthorization())

_Model = TypeVar("_Model", bound=BaseModel)
#: The events prefix of a source's topic (``usage:<name>``).
_SOURCE_TOPIC = topic_of("")


def topic_for(source: str | None) -> str:
    """The topic of ``source``: ``usage`` for None (the default source), else ``usage:<source>``."""
    return DEFAULT_TOPIC if source is None else topic_of(source)


def _source_of(topic: object) -> tuple[bool, str | None]:
    """(True, source) for ``usage`` (None) and ``usage:<source>``; (False, None) otherwise."""
    if topic == DEFAULT_TOPIC:
        return True, None
    if isinstance(topic, str) and topic.startswith(_SOURCE_TOPIC) and topic != _SOURCE_TOPIC:
        return True, topic.removeprefix(_SOURCE_TOPIC)
    return False, None


@dataclass(frozen=True, slots=True)
class SourceList:
    """What ``list_sources`` answers: every source in the relay's order, the zone it counts
    days in and the source behind the topic ``usage``."""

    sources: tuple[SourceInfo, ...]
    timezone: str
    default_source: str

    @property
    def names(self) -> list[str]:
        return [source.name for source in self.sources]

    def get(self, name: str) -> SourceInfo | None:
        return next((source for source in self.sources if source.name == name), None)


class ConnectionState(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class SnapshotReceived:
    """A snapshot newer than any this iterator yielded before for its source.

    ``source`` is the source as the iterator was asked for it: None for the
    default topic ``usage``, else its name (``snapshot.source`` is always the name).
    """

    snapshot: Snapshot
    source: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReceived:
    """A source's monitor status, from a subscribe reply or a ``usage.status`` event;
    ``source`` as in ``SnapshotReceived``."""

    status: Status
    source: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    """The iterator's connection came up, or went down (``error`` says why)."""

    state: ConnectionState
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AlertReceived:
    """A ``usage.threshold_crossed`` or ``usage.limit_projected`` event; ``source`` as in
    ``SnapshotReceived`` (``alert.source`` is always the name)."""

    alert: Alert
    source: str | None = None


@dataclass(frozen=True, slots=True)
class SourcesReceived:
    """The relay's sources, listed on each connection by ``events(every_source=True)``
    before it subscribes to each of them."""

    sources: SourceList


RelayEvent = SnapshotReceived | StatusReceived | AlertReceived | SourcesReceived | ConnectionChanged
#: The events that come from a topic, tagged with its source.
_TopicEvent = SnapshotReceived | StatusReceived | AlertReceived


class _Reply:
    """The slot a request waits on until the reader task fills it."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._outcome: dict[str, Any] | Exception | None = None

    def set(self, outcome: dict[str, Any] | Exception) -> None:
        # A reply that already came is kept when the connection drops right after it.
        if not self._done.is_set():
            self._outcome = outcome
            self._done.set()

    async def wait(self) -> dict[str, Any]:
        await self._done.wait()
        if isinstance(self._outcome, Exception):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome


class _Connection:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: dict[int, _Reply] = {}


@dataclass(frozen=True, slots=True)
class _Lost:
    """Put in every inbox when ``connection`` ends, after its last event."""

    connection: _Connection
    error: str


_InboxItem = _TopicEvent | _Lost


@contextmanager
def _translate_errors(url: str) -> Iterator[None]:
    """The one place where websockets and socket errors become the client's exceptions."""
    try:
        yield
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise Unauthorized(
                "unauthorized", f"the relay refused the credentials (HTTP {status})"
            ) from exc
        raise RelayUnavailable(
            f"the relay at {url} refused the connection (HTTP {status})"
        ) from exc
    except ConnectionClosed as exc:
        raise RelayUnavailable(f"the connection to the relay was lost ({exc})") from exc
    except (WebSocketException, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise RelayUnavailable(f"cannot reach the relay at {url}: {reason}") from exc


def bearer_headers(host: str, token: str | None, token_file: Path | None) -> dict[str, str]:
    """The ``Authorization`` header: ``token``, else for a relay on this machine (``host``
    is loopback) the token it keeps in the user's files; none without either.

    A remote relay's token must be given: the local one is never sent elsewhere.
    """
    if token is None and is_loopback_host(host):
        try:
            token = read_client_token(token_file)
        except ClientTokenError as exc:
            raise Unauthorized("unauthorized", str(exc)) from None
    return {"Authorization": f"Bearer {token}"} if token else {}


class RelayClient(TaskGroupOwner):
    """Talks to one relay; use as ``async with RelayClient(url) as client``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        request_timeout: float = 10.0,
        refresh_timeout: float = REFRESH_TIMEOUT,
        backoff: Backoff = RECONNECT_BACKOFF,
    ) -> None:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {url!r}") from exc
        self.url = url
        self._token = token
        self._token_file = token_file
        self._request_timeout = request_timeout
        self._refresh_timeout = refresh_timeout
        self._backoff = backoff
        self._ids = itertools.count(1)
        self._connection: _Connection | None = None
        self._connect_lock = anyio.Lock()
        #: Each live iterator's inbox, and the sources (None: ``usage``) whose events it takes.
        self._inboxes: dict[MemoryObjectSendStream[_InboxItem], set[str | None]] = {}

    @property
    def connection_state(self) -> ConnectionState:
        if self._connection is None:
            return ConnectionState.DISCONNECTED
        return ConnectionState.CONNECTED

    async def _stop(self) -> None:
        for inbox in self._inboxes:
            inbox.close()
        self._inboxes.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                await connection.ws.close()

    async def list_sources(self) -> SourceList:
        """Every source the relay polls, with its status and latest snapshot.

        A relay older than sources answers ``RequestFailed`` with code ``unknown_op``.
        """
        return _source_list(await self._request("list_sources"))

    async def get_latest(self, source: str | None = None) -> Snapshot | None:
        """The source's current snapshot, or None before its first successful poll."""
        result = await self._request("get_latest", topic=topic_for(source))
        return _latest(result)

    async def status(self, source: str | None = None) -> Status:
        """The source's monitor status."""
        result = await self._request("get_latest", topic=topic_for(source))
        return _validate(Status, result.get("status"))

    async def refresh(self, source: str | None = None) -> Snapshot:
        """Ask the relay to poll the source now and return the snapshot of that poll.

        Raises ``GatewayUnavailable`` (with ``latest``) when the poll fails.
        """
        result = await self._request(
            "refresh", topic=topic_for(source), answer_within=self._refresh_timeout
        )
        return _validate(Snapshot, result.get("latest"))

    async def history(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
        *,
        source: str | None = None,
    ) -> list[HistoryPoint]:
        """The source's stored points in ``[since, until]``, oldest first, evenly thinned
        to ``limit``."""
        params = {
            "since": None if since is None else since.isoformat(),
            "until": None if until is None else until.isoformat(),
            "limit": limit,
        }
        result = await self._request("get_history", params, topic=topic_for(source))
        points = result.get("points")
        if not isinstance(points, list):
            raise ProtocolError("the relay sent an invalid history")
        return [_validate(HistoryPoint, point) for point in points]

    async def breakdown(
        self,
        since: str | None = None,
        until: str | None = None,
        group_by: Sequence[str] = (),
    ) -> Breakdown:
        """Usage summed from the relay's hourly ledger (``accounting-v1.md`` section 2).

        ``since`` and ``until`` are ISO 8601 times with a zone or ``YYYY-MM-DD``
        (a day in the relay's timezone); ``group_by`` any of source, meter,
        hour, day, month. A refused parameter raises ``RequestFailed``.
        """
        params: dict[str, Any] = {"since": since, "until": until, "group_by": list(group_by)}
        return _validate(Breakdown, await self._request("get_breakdown", params))

    async def list_reports(
        self, since: date | None = None, source: str | None = None
    ) -> ReportList:
        """The daily usage reports' states (``accounting-v1.md`` section 3): every (source,
        usage day) due from ``since`` (default: the relay's, the last 14 closed days), of
        ``source`` (default: every source), oldest first.

        A name the relay does not serve raises ``UnknownSource``; a relay older
        than reports ``RequestFailed`` with code ``unknown_op``.
        """
        params = {"since": None if since is None else since.isoformat(), "source": source}
        return _validate(ReportList, await self._request("list_reports", params))

    async def subscribe(
        self,
        source: str | None = None,
        *,
        sources: Iterable[str | None] | None = None,
        every_source: bool = False,
    ) -> AsyncGenerator[Snapshot, None]:
        """Yield the current snapshot of each source, then every newer one, across
        reconnections (the sources as ``events`` takes them)."""
        chosen = self.events(source, sources=sources, every_source=every_source)
        async with aclosing(chosen) as events:
            async for event in events:
                if isinstance(event, SnapshotReceived):
                    yield event.snapshot

    async def events(
        self,
        source: str | None = None,
        *,
        sources: Iterable[str | None] | None = None,
        every_source: bool = False,
    ) -> AsyncGenerator[RelayEvent, None]:
        """Yield connection changes, statuses, snapshots and alerts, reconnecting forever.

        Follows ``source`` (None: the default topic ``usage``), or each of
        ``sources``, or with ``every_source`` every source the relay lists on
        each connection (``SourcesReceived`` comes first; a relay older than
        sources gives its default topic alone). All of them share this
        client's one connection, and every reconnection subscribes to each
        again. Each status, snapshot and alert says which source it is about.

        Snapshots are yielded only when their ``seq`` is above the last one
        yielded for the same source, or when their ``epoch`` differs from it
        (the relay's store was replaced, and its count started again). Ends
        when the client is closed; raises ``Unauthorized`` if the relay
        refuses the credentials, and ``UnknownSource`` for a name it does not
        serve, which retrying cannot fix. Events wait in an unbounded buffer
        until read, so keep iterating or close the iterator
        (``contextlib.aclosing``).
        """
        if sources is not None and (source is not None or every_source):
            raise ValueError("give a source, sources or every_source, not several")
        self._require_open()
        named: list[str | None] = list(dict.fromkeys(sources)) if sources is not None else [source]
        send, inbox = anyio.create_memory_object_stream[_InboxItem](math.inf)
        wanted: set[str | None] = set() if every_source else set(named)
        self._inboxes[send] = wanted
        newest: dict[tuple[str | None, str], tuple[str | None, int]] = {}
        reported: ConnectionState | None = None
        attempt = 0
        try:
            while self._task_group is not None:
                if attempt:
                    await anyio.sleep(self._backoff.delay(attempt))
                listing: SourceList | None = None
                replies: list[tuple[str | None, Status, Snapshot | None]] = []
                try:
                    connection = await self._connect()
                    if every_source:
                        listing = await self._listing_on(connection)
                        named = [None] if listing is None else list(listing.names)
                        wanted.clear()
                        wanted.update(named)
                    for name in named:
                        try:
                            result = await self._request_on(
                                connection, "subscribe", topic=topic_for(name)
                            )
                        except UnknownSource:
                            if every_source:  # gone since it was listed
                                continue
                            raise
                        replies.append(
                            (name, _validate(Status, result.get("status")), _latest(result))
                        )
                except (RelayUnavailable, RequestTimeout, ProtocolError, RateLimited) as exc:
                    if reported is not ConnectionState.DISCONNECTED:
                        reported = ConnectionState.DISCONNECTED
                        yield ConnectionChanged(reported, str(exc))
                    attempt += 1
                    continue
                attempt = 0
                if reported is not ConnectionState.CONNECTED:
                    reported = ConnectionState.CONNECTED
                    yield ConnectionChanged(reported)
                if listing is not None:
                    yield SourcesReceived(listing)
                for name, status, latest in replies:
                    yield StatusReceived(status, name)
                    if latest is not None and _is_newer(latest, name, newest):
                        yield SnapshotReceived(latest, name)
                async for item in inbox:
                    if isinstance(item, _Lost):
                        if item.connection is connection:
                            reported = ConnectionState.DISCONNECTED
                            yield ConnectionChanged(reported, item.error)
                            # Wait even before the first retry: a relay restart drops
                            # every client at once, and the jitter spreads them out.
                            attempt = 1
                            break
                    elif item.source not in wanted:
                        continue  # a topic another iterator follows, or one dropped since
                    elif not isinstance(item, SnapshotReceived) or _is_newer(
                        item.snapshot, item.source, newest
                    ):
                        yield item
        finally:
            self._inboxes.pop(send, None)
            send.close()
            inbox.close()

    async def _listing_on(self, connection: _Connection) -> SourceList | None:
        """The relay's sources; None from a relay that does not know ``list_sources``."""
        try:
            return _source_list(await self._request_on(connection, "list_sources"))
        except RequestFailed as exc:
            if exc.code == "unknown_op":
                return None
            raise

    async def _connect(self) -> _Connection:
        async with self._connect_lock:
            if self._connection is not None:
                return self._connection
            task_group = self._require_open()
            with _translate_errors(self.url):
                ws = await connect(
                    self.url,
                    subprotocols=[Subprotocol(SUBPROTOCOL)],
                    additional_headers=self._auth_headers(),
                    open_timeout=self._request_timeout,
                    logger=_websocket_logger,
                )
            connection = _Connection(ws)
            self._connection = connection
            task_group.start_soon(self._read, connection)
            return connection

    def _auth_headers(self) -> dict[str, str]:
        return bearer_headers(parse_uri(self.url).host, self._token, self._token_file)

    def _require_open(self) -> TaskGroup:
        if self._task_group is None:
            raise RuntimeError("RelayClient is not open: use it as `async with RelayClient(...)`")
        return self._task_group

    async def _request(
        self,
        op: str,
        params: dict[str, Any] | None = None,
        *,
        topic: str | None = None,
        answer_within: float | None = None,
    ) -> dict[str, Any]:
        connection = await self._connect()
        return await self._request_on(
            connection, op, params, topic=topic, answer_within=answer_within
        )

    async def _request_on(
        self,
        connection: _Connection,
        op: str,
        params: dict[str, Any] | None = None,
        *,
        topic: str | None = None,
        answer_within: float | None = None,
    ) -> dict[str, Any]:
        """Send ``op`` (about ``topic``, for the ops that take one); wait ``answer_within`` s
        (default: the request timeout) for its reply."""
        request_id = next(self._ids)
        reply = _Reply()
        connection.pending[request_id] = reply
        about = {} if topic is None else {"topic": topic}
        frame = json.dumps({"id": request_id, "op": op, **about, **(params or {})})
        limit = self._request_timeout if answer_within is None else answer_within
        try:
            with anyio.fail_after(limit):
                with _translate_errors(self.url):
                    await connection.ws.send(frame)
                return await reply.wait()
        except TimeoutError:
            raise RequestTimeout(f"the relay did not answer {op!r} within {limit:g} s") from None
        finally:
            connection.pending.pop(request_id, None)

    async def _read(self, connection: _Connection) -> None:
        error = "the client closed the connection"
        try:
            async for frame in connection.ws:
                if isinstance(frame, str):
                    self._dispatch(connection, frame)
            error = f"the relay closed the connection ({connection.ws.close_reason or 'no reason'})"
        except ConnectionClosed as exc:
            error = f"the connection to the relay was lost ({exc})"
        finally:
            if self._connection is connection:
                self._connection = None
            for reply in connection.pending.values():
                reply.set(RelayUnavailable(error))
            self._deliver(_Lost(connection, error))

    def _dispatch(self, connection: _Connection, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            logger.warning("ignoring a frame from the relay that is not JSON")
            return
        if not isinstance(frame, dict):
            logger.warning("ignoring a frame from the relay that is not an object")
        elif frame.get("type") == "result":
            request_id = frame.get("id")
            reply = connection.pending.get(request_id) if isinstance(request_id, int) else None
            if reply is not None:
                reply.set(_outcome(frame))
        elif frame.get("type") == "event":
            event = _parse_event(frame)
            if event is not None:
                self._deliver(event)

    def _deliver(self, item: _InboxItem) -> None:
        """Put ``item`` in the inboxes of the iterators that follow its source (``_Lost``: all)."""
        for inbox, wanted in list(self._inboxes.items()):
            if isinstance(item, _Lost) or item.source in wanted:
                try:
                    inbox.send_nowait(item)
                except anyio.BrokenResourceError:
                    self._inboxes.pop(inbox, None)


def _outcome(frame: dict[str, Any]) -> dict[str, Any] | Exception:
    if frame.get("ok") is True and isinstance(frame.get("result"), dict):
        result: dict[str, Any] = frame["result"]
        return result
    error = frame.get("error")
    if frame.get("ok") is False and isinstance(error, dict):
        data = error.get("data")
        return request_failed(
            str(error.get("code")),
            str(error.get("message", "")),
            data if isinstance(data, dict) else None,
        )
    return ProtocolError("the relay sent a malformed result")


def _parse_event(frame: dict[str, Any]) -> _TopicEvent | None:
    """Parse an event, tagged with the source of its topic; None for events this client
    does not know (the relay may add some) and for topics that are not a source's.

    ``usage.report_delivered`` and ``usage.report_failed`` are among those left out:
    a new kind of ``RelayEvent`` would reach code that matches every kind (the
    terminal view's ``apply``) unhandled; ``list_reports`` gives their states.
    """
    known, source = _source_of(frame.get("topic", DEFAULT_TOPIC))
    if not known:
        return None
    data = frame.get("data")
    try:
        match frame.get("event"):
            case "usage.updated":
                return SnapshotReceived(Snapshot.model_validate(data), source)
            case "usage.status":
                return StatusReceived(Status.model_validate(data), source)
            case "usage.threshold_crossed":
                return AlertReceived(ThresholdCrossed.model_validate(data), source)
            case "usage.limit_projected":
                return AlertReceived(LimitProjected.model_validate(data), source)
    except ValidationError:
        logger.warning("ignoring an invalid %s event from the relay", frame.get("event"))
    return None


def _validate(model: type[_Model], value: Any) -> _Model:
    try:
        return model.model_validate(value)
    except ValidationError:
        raise ProtocolError(f"the relay sent an invalid {model.__name__}") from None


def _latest(result: dict[str, Any]) -> Snapshot | None:
    value = result.get("latest")
    return None if value is None else _validate(Snapshot, value)


def _source_list(result: dict[str, Any]) -> SourceList:
    listing = _validate(SourcesResult, result)
    return SourceList(tuple(listing.sources), listing.timezone, listing.default_source)


def _is_newer(
    snapshot: Snapshot,
    source: str | None,
    newest: dict[tuple[str | None, str], tuple[str | None, int]],
) -> bool:
    """Record ``snapshot`` as the newest of its source (as followed: ``source``) if it is.

    ``seq`` rises per source, and only within an epoch; a snapshot of another
    epoch starts the count again, whatever its ``seq``. The default topic is
    kept apart from the source it stands for, and by the snapshot's own
    source, so a relay restarted with another default source is followed too.
    """
    key = (source, snapshot.source)
    epoch, seq = newest.get(key, (snapshot.epoch, 0))
    if snapshot.epoch == epoch and snapshot.seq <= seq:
        return False
    newest[key] = (snapshot.epoch, snapshot.seq)
    return True
