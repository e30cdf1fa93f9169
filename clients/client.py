"""
Async client of the usage relay (wire protocol v1).

One WebSocket connection per client, opened on first use. A single reader task
per connection routes replies to the request waiting for them (by request id)
and events to every live ``events()`` / ``subscribe()`` iterator. One-shot
requests fail fast with ``RelayUnavailable`` when the relay is down; the
iterators instead reconnect with capped, jittered exponential backoff and
subscribe again, so a long-running view survives relay restarts.

Runs on anyio's asyncio backend (the ``websockets`` client is asyncio-only)::

    async with RelayClient("ws://127.0.0.1:8765/ws") as client:
        print(await client.get_latest())
        async for snapshot in client.subscribe():
            ...
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from datetime import datetime
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
from common.exceptions import ClientTokenError
from common.history import HistoryPoint
from common.hosts import is_loopback_host
from common.lifetime import TaskGroupOwner
from common.messages import DEFAULT_TOPIC, SUBPROTOCOL
from common.models import Alert, LimitProjected, Snapshot, Status, ThresholdCrossed
from common.tokens import read_client_token

from .exceptions import (
    ProtocolError,
    RateLimited,
    RelayUnavailable,
    RequestTimeout,
    Unauthorized,
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
    "StatusReceived",
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


class ConnectionState(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class SnapshotReceived:
    """A snapshot newer than any this iterator yielded before."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class StatusReceived:
    """The monitor's status, from a subscribe reply or a ``usage.status`` event."""

    status: Status


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    """The iterator's connection came up, or went down (``error`` says why)."""

    state: ConnectionState
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AlertReceived:
    """A ``usage.threshold_crossed`` or ``usage.limit_projected`` event."""

    alert: Alert


RelayEvent = SnapshotReceived | StatusReceived | AlertReceived | ConnectionChanged


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


_InboxItem = SnapshotReceived | StatusReceived | AlertReceived | _Lost


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
        self._inboxes: set[MemoryObjectSendStream[_InboxItem]] = set()

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

    async def get_latest(self) -> Snapshot | None:
        """The relay's current snapshot, or None before its first successful poll."""
        result = await self._request("get_latest")
        return _latest(result)

    async def status(self) -> Status:
        """The monitor's current status."""
        result = await self._request("get_latest")
        return _validate(Status, result.get("status"))

    async def refresh(self) -> Snapshot:
        """Ask the relay to poll the gateway now and return the snapshot of that poll.

        Raises ``UpstreamUnavailable`` (with ``latest``) when the poll fails.
        """
        result = await self._request("refresh", answer_within=self._refresh_timeout)
        return _validate(Snapshot, result.get("latest"))

    async def history(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[HistoryPoint]:
        """Stored points in ``[since, until]``, oldest first, evenly thinned to ``limit``."""
        params = {
            "since": None if since is None else since.isoformat(),
            "until": None if until is None else until.isoformat(),
            "limit": limit,
        }
        points = (await self._request("get_history", params)).get("points")
        if not isinstance(points, list):
            raise ProtocolError("the relay sent an invalid history")
        return [_validate(HistoryPoint, point) for point in points]

    async def subscribe(self) -> AsyncGenerator[Snapshot, None]:
        """Yield the current snapshot, then every newer one, across reconnections."""
        async with aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, SnapshotReceived):
                    yield event.snapshot

    async def events(self) -> AsyncGenerator[RelayEvent, None]:
        """Yield connection changes, statuses, snapshots and alerts, reconnecting forever.

        Snapshots are yielded only when their ``seq`` is above the last one
        yielded for the same source, or when their ``epoch`` differs from it
        (the relay's store was replaced, and its count started again). Ends
        when the client is closed; raises
        ``Unauthorized`` if the relay refuses the credentials, which retrying
        cannot fix. Events wait in an unbounded buffer until read, so keep
        iterating or close the iterator (``contextlib.aclosing``).
        """
        self._require_open()
        send, inbox = anyio.create_memory_object_stream[_InboxItem](math.inf)
        self._inboxes.add(send)
        newest: dict[str, tuple[str | None, int]] = {}
        reported: ConnectionState | None = None
        attempt = 0
        try:
            while self._task_group is not None:
                if attempt:
                    await anyio.sleep(self._backoff.delay(attempt))
                try:
                    connection = await self._connect()
                    result = await self._request_on(connection, "subscribe")
                    status = _validate(Status, result.get("status"))
                    latest = _latest(result)
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
                yield StatusReceived(status)
                if latest is not None and _is_newer(latest, newest):
                    yield SnapshotReceived(latest)
                async for item in inbox:
                    if isinstance(item, _Lost):
                        if item.connection is connection:
                            reported = ConnectionState.DISCONNECTED
                            yield ConnectionChanged(reported, item.error)
                            # Wait even before the first retry: a relay restart drops
                            # every client at once, and the jitter spreads them out.
                            attempt = 1
                            break
                    elif not isinstance(item, SnapshotReceived) or _is_newer(item.snapshot, newest):
                        yield item
        finally:
            self._inboxes.discard(send)
            send.close()
            inbox.close()

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
        """``token``, else for a relay on this machine the token it keeps in the user's files."""
        token = self._token
        if token is None and is_loopback_host(parse_uri(self.url).host):
            try:
                token = read_client_token(self._token_file)
            except ClientTokenError as exc:
                raise Unauthorized("unauthorized", str(exc)) from None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _require_open(self) -> TaskGroup:
        if self._task_group is None:
            raise RuntimeError("RelayClient is not open: use it as `async with RelayClient(...)`")
        return self._task_group

    async def _request(
        self,
        op: str,
        params: dict[str, Any] | None = None,
        *,
        answer_within: float | None = None,
    ) -> dict[str, Any]:
        connection = await self._connect()
        return await self._request_on(connection, op, params, answer_within=answer_within)

    async def _request_on(
        self,
        connection: _Connection,
        op: str,
        params: dict[str, Any] | None = None,
        *,
        answer_within: float | None = None,
    ) -> dict[str, Any]:
        """Send ``op``; wait ``answer_within`` s (default: the request timeout) for its reply."""
        request_id = next(self._ids)
        reply = _Reply()
        connection.pending[request_id] = reply
        frame = json.dumps({"id": request_id, "op": op, "topic": DEFAULT_TOPIC, **(params or {})})
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
        for inbox in list(self._inboxes):
            try:
                inbox.send_nowait(item)
            except anyio.BrokenResourceError:
                self._inboxes.discard(inbox)


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


def _parse_event(frame: dict[str, Any]) -> SnapshotReceived | StatusReceived | AlertReceived | None:
    """Parse an event; None for events this client does not know (the relay may add some)."""
    data = frame.get("data")
    try:
        match frame.get("event"):
            case "usage.updated":
                return SnapshotReceived(Snapshot.model_validate(data))
            case "usage.status":
                return StatusReceived(Status.model_validate(data))
            case "usage.threshold_crossed":
                return AlertReceived(ThresholdCrossed.model_validate(data))
            case "usage.limit_projected":
                return AlertReceived(LimitProjected.model_validate(data))
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


def _is_newer(snapshot: Snapshot, newest: dict[str, tuple[str | None, int]]) -> bool:
    """Record ``snapshot`` as the newest of its source if it is.

    ``seq`` only rises within an epoch; a snapshot of another epoch starts the
    count again, whatever its ``seq``.
    """
    epoch, seq = newest.get(snapshot.source, (snapshot.epoch, 0))
    if snapshot.epoch == epoch and snapshot.seq <= seq:
        return False
    newest[snapshot.source] = (snapshot.epoch, snapshot.seq)
    return True
