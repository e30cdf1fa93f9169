"""
The relay's WebSocket protocol, version 1, without any I/O.

This module parses and validates client messages, tracks one connection's
subscriptions (to any of the relay's topics: ``usage`` and ``usage:<source>``)
and produces the exact frames to send. The Starlette endpoint in
``relay.endpoint`` only moves text between the socket and a ``Session``.

The ops, their parameters and the close codes are defined once, in
``common.messages``: a request is parsed into its op's model and dispatched on
that model's class, so an op cannot be known to one and unknown to the other.

Frames are built from pre-encoded JSON fragments: a snapshot is serialised once
per update (``FrameEncoder``) and the same text is reused in every event and
reply that carries it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, assert_never

from pydantic import ValidationError

from common.messages import (
    CLOSE_POLICY_VIOLATION,
    DEFAULT_TOPIC,
    MAX_HISTORY_POINTS,
    REQUEST_MODELS,
    ErrorCode,
    GetBreakdownRequest,
    GetHistoryRequest,
    GetLatestRequest,
    HistoryQuery,
    ListReportsRequest,
    ListSourcesRequest,
    PingRequest,
    RefreshRequest,
    Request,
    SubscribeRequest,
    UnsubscribeRequest,
)
from common.models import Snapshot, Status

from .exceptions import RequestError
from .limits import ConnectionLimiters, RateLimiter, Verdict

__all__ = [
    "Action",
    "BreakdownRequested",
    "CloseConnection",
    "FrameEncoder",
    "HistoryRequested",
    "MonitorView",
    "RefreshRequested",
    "ReportsRequested",
    "Session",
    "SourcesRequested",
    "TopicView",
    "echo",
    "encode_error",
    "gateway_unavailable",
    "parse_history_query",
    "parse_request",
    "rate_limited",
]

logger = logging.getLogger("usage_monitor.relay")

_MAX_ID_LENGTH: Final = 128
_MAX_ECHO: Final = 40

RequestId = int | str


def parse_history_query(
    params: Mapping[str, Any], request_id: RequestId | None = None
) -> HistoryQuery:
    """The history parameters among ``params``; raise ``RequestError`` naming what is wrong."""
    try:
        return HistoryQuery.model_validate(HistoryQuery.fields_of(params))
    except ValidationError as exc:
        raise _invalid_history_parameters(exc, request_id) from None


def _invalid_history_parameters(exc: ValidationError, request_id: RequestId | None) -> RequestError:
    names = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
    return RequestError(
        ErrorCode.BAD_REQUEST,
        f"invalid get_history parameter(s): {', '.join(names)} "
        f"(since/until: ISO 8601 with a time zone; limit: 1 to {MAX_HISTORY_POINTS})",
        request_id,
    )


class MonitorView(Protocol):
    """What a session reads from the monitor, synchronously."""

    @property
    def status(self) -> Status: ...

    def get_latest(self) -> Snapshot | None: ...


class TopicView(Protocol):
    """One topic a session may use: the monitor of its source and the topic's encoder."""

    @property
    def monitor(self) -> MonitorView: ...

    @property
    def encoder(self) -> FrameEncoder: ...


@dataclass(frozen=True, slots=True)
class RefreshRequested:
    """The adapter must poll the topic's monitor, then call ``refresh_succeeded`` or
    ``refresh_failed``."""

    request_id: RequestId
    topic: str


@dataclass(frozen=True, slots=True)
class HistoryRequested:
    """The adapter must read the topic's history, then call ``history_result``."""

    request_id: RequestId
    query: HistoryQuery
    topic: str


@dataclass(frozen=True, slots=True)
class BreakdownRequested:
    """The adapter must sum the ledger as ``request`` asks, then answer with the breakdown."""

    request_id: RequestId
    request: GetBreakdownRequest


@dataclass(frozen=True, slots=True)
class ReportsRequested:
    """The adapter must read the daily reports' states, then answer with the list."""

    request_id: RequestId
    request: ListReportsRequest


@dataclass(frozen=True, slots=True)
class SourcesRequested:
    """The adapter must answer with the relay's sources (``FrameEncoder.result``)."""

    request_id: RequestId


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """The adapter must send what is queued, then close with ``code``: no reply can help."""

    code: int
    reason: str


Action = (
    str
    | RefreshRequested
    | HistoryRequested
    | BreakdownRequested
    | ReportsRequested
    | SourcesRequested
    | CloseConnection
)


def echo(value: str) -> str:
    """Quote client text in an error message, shortened so a reply never grows with the input."""
    return repr(value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "…")


def parse_request(text: str, topics: Container[str] = (DEFAULT_TOPIC,)) -> Request:
    """Validate one text frame into its op's model; raise ``RequestError`` if it is wrong."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise RequestError(ErrorCode.BAD_REQUEST, "message is not valid JSON") from None
    if not isinstance(message, dict):
        raise RequestError(ErrorCode.BAD_REQUEST, "message must be a JSON object")

    request_id = message.get("id")
    if request_id is None:
        raise RequestError(ErrorCode.BAD_REQUEST, "missing field 'id'")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        raise RequestError(ErrorCode.BAD_REQUEST, "'id' must be an integer or a string")
    if isinstance(request_id, str) and len(request_id) > _MAX_ID_LENGTH:
        raise RequestError(ErrorCode.BAD_REQUEST, f"'id' is longer than {_MAX_ID_LENGTH}")
    if isinstance(request_id, int) and not -(2**63) <= request_id < 2**63:
        raise RequestError(ErrorCode.BAD_REQUEST, "'id' does not fit in 64 bits")

    op = message.get("op")
    if not isinstance(op, str):
        raise RequestError(ErrorCode.BAD_REQUEST, "'op' must be a string", request_id)
    model = REQUEST_MODELS.get(op)
    if model is None:
        raise RequestError(ErrorCode.UNKNOWN_OP, f"unknown op {echo(op)}", request_id)

    topic = message.get("topic", DEFAULT_TOPIC)
    if not isinstance(topic, str):
        raise RequestError(ErrorCode.BAD_REQUEST, "'topic' must be a string", request_id)
    if "topic" in model.model_fields and topic not in topics:
        raise RequestError(ErrorCode.UNKNOWN_TOPIC, f"unknown topic {echo(topic)}", request_id)
    try:
        return model.model_validate(message)
    except ValidationError as exc:
        if issubclass(model, HistoryQuery):
            raise _invalid_history_parameters(exc, request_id) from None
        raise RequestError(ErrorCode.BAD_REQUEST, f"invalid {op} request", request_id) from None


def rate_limited(
    limiter: RateLimiter, what: str, request_id: RequestId | None = None
) -> RequestError:
    """The error for a request ``limiter`` refused: the rate allowed, and when to try again."""
    retry_after = round(limiter.retry_after(), 3)
    return RequestError(
        ErrorCode.RATE_LIMITED,
        f"too many {what}: at most {limiter.bucket.rate.describe()}; retry in {retry_after:g} s",
        request_id,
        {"retry_after": retry_after},
    )


def gateway_unavailable(
    reason: str, latest: Snapshot | None, request_id: RequestId | None = None
) -> RequestError:
    """The error of a refresh whose poll failed; it carries the last good snapshot."""
    return RequestError(
        ErrorCode.UPSTREAM_UNAVAILABLE,
        f"the gateway could not be polled: {reason}",
        request_id,
        {"latest": latest},
    )


def encode_error(error: RequestError, value_json: Callable[[object], str] = json.dumps) -> str:
    """The error reply for ``error``, over WebSocket and HTTP alike.

    ``value_json`` encodes the values of ``error.data``; a ``FrameEncoder``
    passes its own, which splices in a snapshot it has already encoded.
    """
    fields = [f'"code":{json.dumps(error.code)}', f'"message":{json.dumps(error.message)}']
    if error.data is not None:
        data = ",".join(
            f"{json.dumps(key)}:{value_json(value)}" for key, value in error.data.items()
        )
        fields.append(f'"data":{{{data}}}')
    request_id = json.dumps(error.request_id)
    return f'{{"type":"result","id":{request_id},"ok":false,"error":{{{",".join(fields)}}}}}'


class FrameEncoder:
    """Builds frames, serialising each snapshot and status only once."""

    def __init__(self, topic: str = DEFAULT_TOPIC) -> None:
        self.topic = topic
        self._topic_json = json.dumps(topic)
        self._snapshot: tuple[Snapshot | None, str] = (None, "null")
        self._status: tuple[Status | None, str] = (None, "null")

    def snapshot_json(self, snapshot: Snapshot | None) -> str:
        cached, text = self._snapshot
        if snapshot is not cached:
            text = "null" if snapshot is None else snapshot.model_dump_json()
            self._snapshot = (snapshot, text)
        return text

    def status_json(self, status: Status) -> str:
        cached, text = self._status
        if status is not cached:
            text = status.model_dump_json()
            self._status = (status, text)
        return text

    def event(self, event: str, data_json: str) -> str:
        return f'{{"type":"event","topic":{self._topic_json},"event":"{event}","data":{data_json}}}'

    def updated(self, snapshot: Snapshot) -> str:
        return self.event("usage.updated", self.snapshot_json(snapshot))

    def status_event(self, status: Status) -> str:
        return self.event("usage.status", self.status_json(status))

    @staticmethod
    def result(request_id: RequestId, result_json: str) -> str:
        return f'{{"type":"result","id":{json.dumps(request_id)},"ok":true,"result":{result_json}}}'

    def error(self, error: RequestError) -> str:
        return encode_error(error, self._value_json)

    def state(self, monitor: MonitorView, *, with_topic: bool) -> str:
        """The result of ``subscribe`` (with the topic) and of ``get_latest``."""
        latest = self.snapshot_json(monitor.get_latest())
        status = self.status_json(monitor.status)
        topic = f'"topic":{self._topic_json},' if with_topic else ""
        return f'{{{topic}"latest":{latest},"status":{status}}}'

    def _value_json(self, value: object) -> str:
        if value is None or isinstance(value, Snapshot):
            return self.snapshot_json(value)
        return json.dumps(value)


class Session:
    """One connection's view of the protocol: its subscriptions and its replies.

    ``topics`` are the relay's topics; ``usage`` (the default source) must be
    among them, and answers what concerns no topic.

    A session that is not ``authenticated`` answers every frame with
    ``unauthorized``. With ``limiters``, a frame over the request rate gets
    ``rate_limited`` (every frame counts, even one that does not parse), a
    refresh over the refresh rate too, and a client that keeps flooding is
    closed with 1008.
    """

    def __init__(
        self,
        topics: Mapping[str, TopicView],
        peer: str = "client",
        *,
        authenticated: bool = True,
        limiters: ConnectionLimiters | None = None,
    ) -> None:
        self._topics = topics
        self._encoder = topics[DEFAULT_TOPIC].encoder
        self._peer = peer
        self._limiters = limiters
        self.authenticated = authenticated
        #: The topics this connection is subscribed to.
        self.subscribed: frozenset[str] = frozenset()

    def receive(self, text: str) -> Action:
        """Handle one text frame: return the reply frame, or the adapter's next step."""
        verdict = self._limiters.requests.check() if self._limiters else Verdict.ALLOWED
        if verdict is Verdict.FLOODING:
            logger.warning("%s kept sending over its request rate limit; closing", self._peer)
            return CloseConnection(CLOSE_POLICY_VIOLATION, "too many requests")
        try:
            request = parse_request(text, self._topics)
            if verdict is Verdict.LIMITED or not self.authenticated:
                return self._refuse(request.id, verdict)
            if isinstance(request, RefreshRequest) and self._limiters is not None:
                refreshes = self._limiters.refreshes
                if refreshes.check() is not Verdict.ALLOWED:
                    return self._rate_limited(request.id, "refreshes", refreshes)
            return self.handle(request)
        except RequestError as error:
            if verdict is Verdict.LIMITED or not self.authenticated:
                return self._refuse(error.request_id, verdict)
            logger.info("%s sent a bad request: %s: %s", self._peer, error.code, error.message)
            return self._encoder.error(error)

    def _refuse(self, request_id: RequestId | None, verdict: Verdict) -> str:
        if verdict is Verdict.LIMITED:
            assert self._limiters is not None
            return self._rate_limited(request_id, "requests", self._limiters.requests)
        message = (
            "this connection is not authenticated: send the client token as "
            "'Authorization: Bearer <token>' (see `usage-monitor token`)"
        )
        return self._encoder.error(RequestError(ErrorCode.UNAUTHORIZED, message, request_id))

    def _rate_limited(self, request_id: RequestId | None, what: str, limiter: RateLimiter) -> str:
        if limiter.episode_started:  # one log line per episode, not one per frame
            logger.warning(
                "%s is over its rate limit for %s (%s); answering rate_limited",
                self._peer,
                what,
                limiter.bucket.rate.describe(),
            )
        return self._encoder.error(rate_limited(limiter, what, request_id))

    def handle(self, request: Request) -> Action:
        match request:
            case SubscribeRequest():
                # Registration and the snapshot in the reply happen in one
                # synchronous step, so no update can fall between them.
                self.subscribed |= {request.topic}
                view = self._topics[request.topic]
                state = view.encoder.state(view.monitor, with_topic=True)
                return FrameEncoder.result(request.id, state)
            case UnsubscribeRequest():
                self.subscribed -= {request.topic}
                return FrameEncoder.result(request.id, f'{{"topic":{json.dumps(request.topic)}}}')
            case GetLatestRequest():
                view = self._topics[request.topic]
                state = view.encoder.state(view.monitor, with_topic=False)
                return FrameEncoder.result(request.id, state)
            case RefreshRequest():
                return RefreshRequested(request.id, request.topic)
            case GetHistoryRequest():
                return HistoryRequested(request.id, request, request.topic)
            case ListSourcesRequest():
                return SourcesRequested(request.id)
            case GetBreakdownRequest():
                return BreakdownRequested(request.id, request)
            case ListReportsRequest():
                return ReportsRequested(request.id, request)
            case PingRequest():
                return FrameEncoder.result(request.id, '{"pong":true}')
            case _:
                assert_never(request)

    def refresh_succeeded(self, request_id: RequestId, topic: str, snapshot: Snapshot) -> str:
        encoder = self._topics[topic].encoder
        return FrameEncoder.result(request_id, f'{{"latest":{encoder.snapshot_json(snapshot)}}}')

    @staticmethod
    def history_result_json(points_json: str) -> str:
        """The result of ``get_history`` around the points."""
        return f'{{"points":{points_json}}}'

    def refresh_failed(self, request_id: RequestId, topic: str, reason: str) -> str:
        view = self._topics[topic]
        error = gateway_unavailable(reason, view.monitor.get_latest(), request_id)
        return view.encoder.error(error)
