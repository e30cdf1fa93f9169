"""Helpers for talking to the relay with a raw WebSocket client."""

from __future__ import annotations

import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection

_ids = itertools.count(1)


async def request(ws: ClientConnection, op: str, **params: Any) -> dict[str, Any]:
    """Send one request and return its reply, skipping events that arrive first."""
    reply, _ = await request_with_events(ws, op, **params)
    return reply


async def request_with_events(
    ws: ClientConnection, op: str, **params: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send one request; return its reply and the events that arrived before it."""
    request_id = next(_ids)
    await ws.send(json.dumps({"id": request_id, "op": op, **params}))
    return await reply_with_events(ws, request_id)


async def reply_to(ws: ClientConnection, request_id: int | str | None) -> dict[str, Any]:
    reply, _ = await reply_with_events(ws, request_id)
    return reply


async def reply_with_events(
    ws: ClientConnection, request_id: int | str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events = []
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "result" and message["id"] == request_id:
            return message, events
        if message["type"] == "event":
            events.append(message)


async def next_event(ws: ClientConnection, event: str) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "event" and message["event"] == event:
            return message


async def subscribe_with_snapshot(ws: ClientConnection) -> dict[str, Any]:
    """Subscribe and return the current snapshot, waiting for the first poll if needed."""
    reply = await request(ws, "subscribe")
    latest = reply["result"]["latest"]
    if latest is None:
        latest = (await next_event(ws, "usage.updated"))["data"]
    return latest
