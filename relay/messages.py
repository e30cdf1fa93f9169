"""
Pydantic models of every message of protocol v1, for schemas, docs and clients.

The relay itself builds frames from pre-encoded fragments (``relay.protocol``);
the tests validate those frames against these models, so the two cannot drift
apart, and ``python -m relay.schema`` turns them into the JSON Schema files
shipped in ``docs/schema/``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from monitor.alerts import LimitProjected, ThresholdCrossed
from monitor.models import Snapshot, Status
from monitor.store import HistoryPoint

from .protocol import DEFAULT_TOPIC, MAX_HISTORY_POINTS, ErrorCode

__all__ = [
    "MESSAGES",
    "ClientMessage",
    "ErrorReply",
    "EventMessage",
    "ResultReply",
    "ServerMessage",
]

RequestId = Annotated[int | str, Field(description="Chosen by the client, echoed in the reply.")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: RequestId


class _TopicRequest(_Request):
    topic: str = DEFAULT_TOPIC


class SubscribeRequest(_TopicRequest):
    op: Literal["subscribe"]


class UnsubscribeRequest(_TopicRequest):
    op: Literal["unsubscribe"]


class GetLatestRequest(_TopicRequest):
    op: Literal["get_latest"]


class RefreshRequest(_TopicRequest):
    op: Literal["refresh"]


class PingRequest(_Request):
    op: Literal["ping"]


class GetHistoryRequest(_TopicRequest):
    """Extension of v1: stored points in a time range, evenly thinned to ``limit``."""

    op: Literal["get_history"]
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    limit: int = Field(default=500, ge=1, le=MAX_HISTORY_POINTS)


ClientMessage = Annotated[
    SubscribeRequest
    | UnsubscribeRequest
    | GetLatestRequest
    | RefreshRequest
    | PingRequest
    | GetHistoryRequest,
    Field(discriminator="op"),
]


class SubscribeResult(BaseModel):
    topic: str
    latest: Snapshot | None
    status: Status


class UnsubscribeResult(BaseModel):
    topic: str


class LatestResult(BaseModel):
    latest: Snapshot | None
    status: Status


class RefreshResult(BaseModel):
    latest: Snapshot


class PongResult(BaseModel):
    pong: Literal[True]


class HistoryResult(BaseModel):
    points: list[HistoryPoint]


class ResultReply(BaseModel):
    type: Literal["result"]
    id: RequestId
    ok: Literal[True]
    result: (
        SubscribeResult
        | LatestResult
        | RefreshResult
        | HistoryResult
        | UnsubscribeResult
        | PongResult
    )


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    data: dict[str, Any] | None = Field(
        default=None, description="For upstream_unavailable: {'latest': Snapshot or null}."
    )


class ErrorReply(BaseModel):
    type: Literal["result"]
    id: RequestId | None = Field(description="null when the request could not be parsed at all")
    ok: Literal[False]
    error: ErrorBody


class _Event(BaseModel):
    type: Literal["event"]
    topic: str


class UsageUpdatedEvent(_Event):
    event: Literal["usage.updated"]
    data: Snapshot


class UsageStatusEvent(_Event):
    event: Literal["usage.status"]
    data: Status


class ThresholdCrossedEvent(_Event):
    """Extension of v1: a bucket first crossed a threshold within its window."""

    event: Literal["usage.threshold_crossed"]
    data: ThresholdCrossed


class LimitProjectedEvent(_Event):
    """Extension of v1: at the current burn rate a window reaches 100 % before it resets."""

    event: Literal["usage.limit_projected"]
    data: LimitProjected


EventMessage = Annotated[
    UsageUpdatedEvent | UsageStatusEvent | ThresholdCrossedEvent | LimitProjectedEvent,
    Field(discriminator="event"),
]

ServerMessage = ResultReply | ErrorReply | EventMessage

#: Every message, by the name of its schema file.
MESSAGES: dict[str, Any] = {
    "client-message": ClientMessage,
    "result-reply": ResultReply,
    "error-reply": ErrorReply,
    "event": EventMessage,
    "snapshot": Snapshot,
    "status": Status,
}
