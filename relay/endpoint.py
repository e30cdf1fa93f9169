"""The ``/ws`` endpoint: moves text between a WebSocket and a protocol ``Session``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import anyio
from anyio.abc import TaskGroup
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from common.messages import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA,
    SUBPROTOCOL,
    ErrorCode,
    HistoryQuery,
)
from common.models import Snapshot
from monitor.exceptions import StoreError, UsageMonitorError

from .exceptions import RequestError
from .fastpath import DirectWriter
from .hub import HISTORY_RETRY_AFTER, FrameWriter, Hub, Outbox, RefreshOutcome
from .limits import Limits
from .middleware import is_authenticated
from .protocol import (
    BreakdownRequested,
    CloseConnection,
    FrameEncoder,
    HistoryRequested,
    RefreshRequested,
    ReportsRequested,
    RequestId,
    Session,
    SourcesRequested,
)
from .state import RelayState, serving_state

__all__ = ["Connection", "ConnectionConfig", "WebSocketEndpoint"]

logger = logging.getLogger("usage_monitor.relay")

#: How long one frame may take to leave before the client counts as stuck.
SEND_TIMEOUT: Final = 10.0
#: How long the closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT: Final = 2.0
#: How long a connection without valid credentials stays open.
AUTH_GRACE_PERIOD: Final = 3.0


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """What every connection of one relay is allowed; ``limits=None`` means none."""

    limits: Limits | None = field(default_factory=Limits)
    send_timeout: float = SEND_TIMEOUT
    auth_grace_period: float = AUTH_GRACE_PERIOD


DEFAULT_CONFIG: Final = ConnectionConfig()

_ONE_STORED_READ: Final = RequestError(
    ErrorCode.RATE_LIMITED,
    "this connection's read of the store (history, breakdown or reports) is still running; "
    "send the next when it is answered",
    data={"retry_after": HISTORY_RETRY_AFTER},
)


def peer_of(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "client"


class WebSocketEndpoint:
    """The ``/ws`` ASGI app: serves one client per connection.

    The Host, Origin and token checks ran before, in ``SecurityMiddleware``.
    It is a plain ASGI app rather than a Starlette endpoint function because
    the fan-out shortcut (``relay.fastpath``) needs the server's ``receive``.
    """

    def __init__(self, config: ConnectionConfig = DEFAULT_CONFIG) -> None:
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        relay: RelayState = serving_state(websocket)
        hub = relay.hub
        offered = scope.get("subprotocols", [])
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        if relay.shutting_down:
            await _close(websocket, CLOSE_GOING_AWAY, "relay shutting down")
            return
        if _refused(hub, websocket):
            await _close(websocket, CLOSE_TRY_AGAIN_LATER, "too many connections")
            return
        await Connection(websocket, hub, self.config, direct=DirectWriter.attach(receive)).serve()


def _refused(hub: Hub, websocket: WebSocket) -> bool:
    """Whether the group of this connection (with or without valid credentials) is full."""
    if is_authenticated(websocket.scope):
        if not hub.full:
            return False
        count, group = hub.max_connections, "authenticated connections (max_connections)"
    else:
        if not hub.unauthenticated_full:
            return False
        count, group = hub.max_unauthenticated, "connections without valid credentials"
    hub.refusals.log(
        f"closed with 1013, {count} {group} open",
        "refused %s with 1013: %d %s are open",
        peer_of(websocket),
        count,
        group,
    )
    return True


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # The other side may have closed first, which is fine.
    with anyio.move_on_after(CLOSE_TIMEOUT), suppress(RuntimeError, WebSocketDisconnect, OSError):
        await websocket.close(code, reason)


class Connection:
    """One client: a receive loop in the endpoint's task and a sender task beside it."""

    def __init__(
        self,
        websocket: WebSocket,
        hub: Hub,
        config: ConnectionConfig = DEFAULT_CONFIG,
        *,
        direct: FrameWriter | None = None,
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.config = config
        self.peer = peer_of(websocket)
        self.outbox = Outbox(direct=direct)
        # One read of the store (history, breakdown, reports) at a time per connection.
        self._reading_store = False
        self.session = Session(
            hub.views(),
            self.peer,
            authenticated=is_authenticated(websocket.scope),
            limiters=config.limits.limiters() if config.limits else None,
        )

    async def serve(self) -> None:
        self.hub.add(self.outbox, authenticated=self.session.authenticated)
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._send_loop, task_group.cancel_scope)
                if not self.session.authenticated:
                    task_group.start_soon(self._expire)
                await self._receive_loop(task_group)
                task_group.cancel_scope.cancel()
        finally:
            self.hub.forget(self.outbox)

    async def _receive_loop(self, task_group: TaskGroup) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if self.outbox.close_request is not None:
                continue  # closing: what is queued goes out, new requests get the close
            text = message.get("text")
            if text is None:
                logger.info("%s sent a binary frame; closing", self.peer)
                await _close(self.websocket, CLOSE_UNSUPPORTED_DATA, "text frames only")
                return
            try:
                reply = self.session.receive(text)
            except Exception:
                logger.exception("internal error while handling a frame from %s", self.peer)
                reply = self.hub.encoder.error(
                    RequestError(ErrorCode.INTERNAL, "internal error; the request was not served")
                )
            self.hub.set_subscribed(self.outbox, self.session.subscribed)
            match reply:
                case RefreshRequested(request_id, topic):
                    # Answered when the poll lands, with no task per request.
                    self.hub.refresh_soon(topic, partial(self._refreshed, request_id, topic))
                case (
                    HistoryRequested(request_id)
                    | BreakdownRequested(request_id)
                    | ReportsRequested(request_id)
                ) if self._reading_store:
                    self.outbox.put_reply(
                        self.hub.encoder.error(_ONE_STORED_READ.answering(request_id))
                    )
                case HistoryRequested(request_id, query, topic):
                    self._reading_store = True
                    read = partial(self._history, query, topic)
                    task_group.start_soon(self._stored_read, request_id, "history", read)
                case BreakdownRequested(request_id, request):
                    self._reading_store = True
                    params = request.model_dump(include={"since", "until", "group_by"})
                    read = partial(self.hub.breakdown_json, params)
                    task_group.start_soon(self._stored_read, request_id, "breakdown", read)
                case ReportsRequested(request_id, request):
                    self._reading_store = True
                    params = request.model_dump(include={"since", "source"}, exclude_none=True)
                    read = partial(self.hub.reports_json, params)
                    task_group.start_soon(self._stored_read, request_id, "the report list", read)
                case SourcesRequested(request_id):
                    self.outbox.put_reply(FrameEncoder.result(request_id, self.hub.sources_json()))
                case CloseConnection(code, reason):
                    self.outbox.close(code, reason)
                case str():
                    self.outbox.put_reply(reply)

    async def _expire(self) -> None:
        """Close a connection that has no valid credentials once its grace period is over."""
        grace = self.config.auth_grace_period
        self.hub.refusals.log(
            f"closed with 1008, no valid credentials within the grace period of {grace:g} s",
            "%s connected without valid credentials; closing in %g s",
            self.peer,
            grace,
        )
        await anyio.sleep(grace)
        self.outbox.close(CLOSE_POLICY_VIOLATION, "not authenticated")

    def _refreshed(self, request_id: RequestId, topic: str, outcome: RefreshOutcome) -> None:
        match outcome:
            case Snapshot():
                self.outbox.put_reply(self.session.refresh_succeeded(request_id, topic, outcome))
            case RequestError():
                self.outbox.put_reply(self.hub.encoder.error(outcome.answering(request_id)))
            case UsageMonitorError():
                self.outbox.put_reply(self.session.refresh_failed(request_id, topic, str(outcome)))

    async def _history(self, query: HistoryQuery, topic: str) -> str:
        return Session.history_result_json(await self.hub.history_json(topic, query))

    async def _stored_read(
        self, request_id: RequestId, what: str, read: Callable[[], Awaitable[str]]
    ) -> None:
        """Answer with the result ``read`` gives: one such read per connection at a time."""
        try:
            result = await read()
        except RequestError as refused:
            self.outbox.put_reply(self.hub.encoder.error(refused.answering(request_id)))
        except StoreError as exc:
            logger.error("%s unavailable for %s: %s", what, self.peer, exc)
            error = RequestError(ErrorCode.INTERNAL, f"{what} is unavailable", request_id)
            self.outbox.put_reply(self.hub.encoder.error(error))
        else:
            self.outbox.put_reply(FrameEncoder.result(request_id, result))
        finally:
            self._reading_store = False

    async def _send(self, frame: str) -> None:
        with anyio.fail_after(self.config.send_timeout):
            await self.websocket.send_text(frame)

    async def _send_loop(self, scope: anyio.CancelScope) -> None:
        try:
            await self.outbox.drain(self._send)
        except anyio.EndOfStream:
            assert self.outbox.close_request is not None
            await _close(self.websocket, *self.outbox.close_request)
        except (anyio.BrokenResourceError, TimeoutError):
            logger.warning("%s does not read its frames; closing", self.peer)
            await _close(self.websocket, CLOSE_SLOW_CONSUMER, "client too slow")
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the receive loop sees the disconnect too
        scope.cancel()
