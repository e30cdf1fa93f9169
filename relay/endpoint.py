"""The ``/ws`` endpoint: moves text between a WebSocket and a protocol ``Session``."""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import cast

import anyio
from anyio.abc import TaskGroup
from starlette.websockets import WebSocket, WebSocketDisconnect

from monitor.exceptions import UsageMonitorError
from monitor.store import StoreError

from .exceptions import ProtocolError
from .hub import Hub, Outbox
from .protocol import (
    CLOSE_SLOW_CONSUMER,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA,
    SUBPROTOCOL,
    ErrorCode,
    HistoryQuery,
    HistoryRequested,
    RefreshRequested,
    RequestId,
    Session,
)

__all__ = ["websocket_endpoint"]

logger = logging.getLogger("usage_monitor.relay")

#: How long one frame may take to leave before the client counts as stuck.
SEND_TIMEOUT = 10.0
#: How long the closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT = 2.0


def hub_of(websocket: WebSocket) -> Hub:
    return cast(Hub, websocket.state.hub)


def peer_of(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "client"


async def websocket_endpoint(websocket: WebSocket) -> None:
    hub = hub_of(websocket)
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    if hub.full:
        logger.warning("refused %s: %d connections open", peer_of(websocket), hub.max_connections)
        await _close(websocket, CLOSE_TRY_AGAIN_LATER, "too many connections")
        return
    await Connection(websocket, hub).serve()


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # The other side may have closed first, which is fine.
    with anyio.move_on_after(CLOSE_TIMEOUT), suppress(RuntimeError, WebSocketDisconnect, OSError):
        await websocket.close(code, reason)


class Connection:
    """One client: a receive loop in the endpoint's task and a sender task beside it."""

    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.peer = peer_of(websocket)
        self.outbox = Outbox()
        self.session = Session(hub.monitor, hub.encoder, self.peer)

    async def serve(self) -> None:
        self.hub.connections.add(self.outbox)
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._send_loop, task_group.cancel_scope)
                await self._receive_loop(task_group)
                task_group.cancel_scope.cancel()
        finally:
            self.hub.forget(self.outbox)

    async def _receive_loop(self, task_group: TaskGroup) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
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
                    ProtocolError(ErrorCode.INTERNAL, "internal error; the request was not served")
                )
            self.hub.set_subscribed(self.outbox, self.session.subscribed)
            match reply:
                case RefreshRequested(request_id):
                    task_group.start_soon(self._refresh, request_id)
                case HistoryRequested(request_id, query):
                    task_group.start_soon(self._history, request_id, query)
                case str():
                    self.outbox.put_reply(reply)

    async def _refresh(self, request_id: RequestId) -> None:
        try:
            snapshot = await self.hub.monitor.refresh_now()
        except UsageMonitorError as exc:
            self.outbox.put_reply(self.session.refresh_failed(request_id, str(exc)))
        else:
            self.outbox.put_reply(self.session.refresh_succeeded(request_id, snapshot))

    async def _history(self, request_id: RequestId, query: HistoryQuery) -> None:
        try:
            points = await self.hub.history_json(query)
        except StoreError as exc:
            logger.error("history unavailable for %s: %s", self.peer, exc)
            error = ProtocolError(ErrorCode.INTERNAL, "history is unavailable", request_id)
            self.outbox.put_reply(self.hub.encoder.error(error))
        else:
            self.outbox.put_reply(self.session.history_result(request_id, points))

    async def _send_loop(self, scope: anyio.CancelScope) -> None:
        try:
            while True:
                frame = await self.outbox.get()
                with anyio.fail_after(SEND_TIMEOUT):
                    await self.websocket.send_text(frame)
        except anyio.EndOfStream:
            assert self.outbox.close_request is not None
            await _close(self.websocket, *self.outbox.close_request)
        except (anyio.BrokenResourceError, TimeoutError):
            logger.warning("%s does not read its frames; closing", self.peer)
            await _close(self.websocket, CLOSE_SLOW_CONSUMER, "client too slow")
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the receive loop sees the disconnect too
        scope.cancel()
