"""
Client-side framing of each server's protocol, for the load generator.

Each framing knows the WebSocket path, what to send to subscribe, how to
phrase a request, and how to sort an incoming frame without decoding all of
it: a regular expression finds the snapshot's ``seq``, so the cost per frame
stays a few microseconds whatever the server. Nothing is added to any
server's frames: latency is matched by ``seq``.
"""

from __future__ import annotations

import json
import re
from enum import IntEnum
from typing import ClassVar

__all__ = ["FRAMINGS", "Framing", "Kind", "seq_of"]

_SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')
_TYPE = re.compile(rb'"type"\s*:\s*"(\w+)"')
_OK = re.compile(rb'"ok"\s*:\s*(true|false)')
_TRPC_HEAD = re.compile(rb'^\{"id"\s*:\s*(\d+)\s*,\s*"(result|error)"')
_CALL_ID = re.compile(rb'"call_id"\s*:\s*"([^"]+)"')
_NOTIFY = re.compile(rb'"method"\s*:\s*"notify"')


class Kind(IntEnum):
    """What an incoming frame is, as far as the load generator cares."""

    IGNORE = 0
    DATA = 1  # a snapshot pushed to a subscriber (the first one may be the subscribe ack)
    REPLY_OK = 2  # a successful reply to a request (subscribe, get_latest, refresh)
    REPLY_ERR = 3  # an error reply


def seq_of(payload: bytes) -> int:
    """The first ``seq`` in a frame (0 if none)."""
    match = _SEQ.search(payload)
    return int(match.group(1)) if match else 0


class Framing:
    """Base: the bare protocol of the broadcast peer (every frame is a snapshot)."""

    name = "raw"
    path = "/"
    subprotocol: str | None = None
    ops: frozenset[str] = frozenset()

    def subscribe(self) -> bytes | None:
        return None

    def request(self, op: str, request_id: int) -> bytes:
        raise NotImplementedError(f"{self.name} has no request/reply ops")

    def classify(self, payload: bytes) -> tuple[Kind, int, bytes | None]:
        """Return (kind, seq, answer): ``answer`` is a frame to send back, if any."""
        return Kind.DATA, seq_of(payload), None


class RelayFraming(Framing):
    """Our relay: protocol v1 (docs in shared/spec/protocol-v1.md)."""

    name = "relay"
    path = "/ws"
    subprotocol = "usage-relay.v1"
    ops = frozenset({"get_latest", "refresh"})

    def subscribe(self) -> bytes:
        return b'{"id":1,"op":"subscribe","topic":"usage"}'

    def request(self, op: str, request_id: int) -> bytes:
        return json.dumps({"id": request_id, "op": op, "topic": "usage"}).encode()

    def classify(self, payload: bytes) -> tuple[Kind, int, bytes | None]:
        match = _TYPE.search(payload)
        kind = match.group(1) if match else b""
        if kind == b"event":
            if b"usage.updated" in payload:
                return Kind.DATA, seq_of(payload), None
            return Kind.IGNORE, 0, None
        if kind == b"result":
            ok = _OK.search(payload)
            good = ok is not None and ok.group(1) == b"true"
            return (Kind.REPLY_OK if good else Kind.REPLY_ERR), 0, None
        return Kind.IGNORE, 0, None


class TrpcFraming(Framing):
    """tRPC v11 over WebSocket: JSON-RPC-like messages, subscription id 1."""

    name = "trpc"
    path = "/"
    ops = frozenset({"get_latest", "refresh"})
    _procedures: ClassVar[dict[str, tuple[str, str]]] = {
        "get_latest": ("query", "latest"),
        "refresh": ("mutation", "refresh"),
    }

    def subscribe(self) -> bytes:
        return b'{"id":1,"method":"subscription","params":{"path":"usage","input":null}}'

    def request(self, op: str, request_id: int) -> bytes:
        method, path = self._procedures[op]
        message = {"id": request_id, "method": method, "params": {"path": path, "input": None}}
        return json.dumps(message).encode()

    def classify(self, payload: bytes) -> tuple[Kind, int, bytes | None]:
        match = _TRPC_HEAD.match(payload)
        if match is None:
            return Kind.IGNORE, 0, None
        is_result = match.group(2) == b"result"
        if match.group(1) == b"1":
            if is_result and b'"type":"data"' in payload:
                return Kind.DATA, seq_of(payload), None
            return (Kind.IGNORE if is_result else Kind.REPLY_ERR), 0, None
        return (Kind.REPLY_OK if is_result else Kind.REPLY_ERR), 0, None


class PubSubFraming(Framing):
    """fastapi-websocket-pubsub: fastapi-websocket-rpc messages; notify must be answered."""

    name = "pubsub"
    path = "/pubsub"

    def subscribe(self) -> bytes:
        return (
            b'{"request":{"method":"subscribe","arguments":{"topics":["usage"]},'
            b'"call_id":"bench-subscribe"}}'
        )

    def classify(self, payload: bytes) -> tuple[Kind, int, bytes | None]:
        if _NOTIFY.search(payload):
            call_id = _CALL_ID.findall(payload)
            answer = None
            if call_id:
                answer = (
                    b'{"response":{"result":"None","result_type":"str","call_id":"'
                    + call_id[-1]
                    + b'"}}'
                )
            return Kind.DATA, seq_of(payload), answer
        if b'"response":{' in payload or b'"response": {' in payload:
            ok = b'"result":true' in payload or b'"result": true' in payload
            return (Kind.REPLY_OK if ok else Kind.REPLY_ERR), 0, None
        return Kind.IGNORE, 0, None


FRAMINGS: dict[str, Framing] = {
    framing.name: framing for framing in (Framing(), RelayFraming(), TrpcFraming(), PubSubFraming())
}
