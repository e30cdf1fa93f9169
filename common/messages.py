"""
Protocol v1, defined once: its constants and a pydantic model of every message.

The request models are the single source of the ops: ``OPS`` and
``REQUEST_MODELS`` are derived from ``ClientMessage``, the relay's parser and
dispatcher (``relay.protocol``) take them from here, and ``python -m
relay.schema`` turns the models into the JSON Schema files in ``docs/schema/``.
The relay builds its frames from pre-encoded fragments; the tests validate
those frames against these models, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .breakdown import Breakdown
from .history import HistoryPoint
from .models import LimitProjected, Snapshot, SourceInfo, Status, ThresholdCrossed, Timestamp
from .reports import ReportEntry, ReportList, UsageReport

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_UNSUPPORTED_DATA",
    "DEFAULT_TOPIC",
    "MAX_HISTORY_POINTS",
    "MESSAGES",
    "OPS",
    "REQUEST_MODELS",
    "SUBPROTOCOL",
    "ClientMessage",
    "ErrorCode",
    "ErrorReply",
    "EventMessage",
    "GetBreakdownRequest",
    "GetHistoryRequest",
    "GetLatestRequest",
    "HistoryQuery",
    "ListReportsRequest",
    "ListSourcesRequest",
    "PingRequest",
    "RefreshRequest",
    "ResultReply",
    "ServerMessage",
    "SourcesResult",
    "SubscribeRequest",
    "UnsubscribeRequest",
    "source_of_topic",
    "topic_of",
]

SUBPROTOCOL: Final = "usage-relay.v1"
#: The default source's topic, as in v1; ``usage:<source>`` is each source's own.
DEFAULT_TOPIC: Final = "usage"
_SOURCE_TOPIC_PREFIX: Final = "usage:"


def topic_of(source: str) -> str:
    """The topic of one source: ``usage:<source>``."""
    return _SOURCE_TOPIC_PREFIX + source


def source_of_topic(topic: str) -> str | None:
    """The source a ``usage:<source>`` topic names; None for ``usage`` and anything else."""
    if topic.startswith(_SOURCE_TOPIC_PREFIX):
        return topic.removeprefix(_SOURCE_TOPIC_PREFIX)
    return None


#: The most history points one ``get_history`` may ask for.
MAX_HISTORY_POINTS: Final = 5000

#: The relay is shutting down; reconnect to the next process.
CLOSE_GOING_AWAY: Final = 1001
#: A binary frame: the protocol is text only.
CLOSE_UNSUPPORTED_DATA: Final = 1003
#: The connection broke a rule that an error reply cannot fix (for example it
#: did not authenticate in time).
CLOSE_POLICY_VIOLATION: Final = 1008
#: A frame over the relay's size limit.
CLOSE_MESSAGE_TOO_BIG: Final = 1009
#: The relay is at its connection limit.
CLOSE_TRY_AGAIN_LATER: Final = 1013
#: The client did not read its frames and its send buffer stayed full.
CLOSE_SLOW_CONSUMER: Final = 4008


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_TOPIC = "unknown_topic"
    NOT_FOUND = "not_found"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    INTERNAL = "internal"


RequestId = Annotated[int | str, Field(description="Chosen by the client, echoed in the reply.")]


# -- requests -----------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: RequestId


class _TopicRequest(_Request):
    topic: str = DEFAULT_TOPIC


class HistoryQuery(BaseModel):
    """The parameters of ``get_history`` and of ``GET /api/v1/usage/history``."""

    since: Timestamp | None = None
    until: Timestamp | None = None
    limit: int = Field(default=500, ge=1, le=MAX_HISTORY_POINTS)

    @classmethod
    def fields_of(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The query's own fields among ``params`` (a request or a URL's query string)."""
        return {name: params[name] for name in HistoryQuery.model_fields if name in params}


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


class GetHistoryRequest(_TopicRequest, HistoryQuery):
    """Extension of v1: stored points in a time range, evenly thinned to ``limit``."""

    op: Literal["get_history"]


class GetBreakdownRequest(_Request):
    """Extension of v1 (``accounting-v1.md`` section 2): usage summed from the hourly ledger.

    The parameters are those of ``GET /api/v1/usage/breakdown``
    (``common.breakdown.parse_breakdown_query``).
    """

    op: Literal["get_breakdown"]
    since: str | None = None
    until: str | None = None
    group_by: str | list[str] | None = None


class ListSourcesRequest(_Request):
    """Extension of v1 (``accounting-v1.md``): every source, its topic, status and snapshot."""

    op: Literal["list_sources"]


class ListReportsRequest(_Request):
    """Extension of v1 (``accounting-v1.md`` section 3): the daily usage reports' states.

    The parameters are those of ``GET /api/v1/reports``: ``since`` a day
    (``YYYY-MM-DD``, default the last 14 closed days), ``source`` a source's name.
    """

    op: Literal["list_reports"]
    since: str | None = None
    source: str | None = None


Request = (
    SubscribeRequest
    | UnsubscribeRequest
    | GetLatestRequest
    | RefreshRequest
    | PingRequest
    | GetHistoryRequest
    | ListSourcesRequest
    | GetBreakdownRequest
    | ListReportsRequest
)
ClientMessage = Annotated[Request, Field(discriminator="op")]

#: Each op's request model, derived from ``Request``: adding an op means adding a model there.
REQUEST_MODELS: Final[dict[str, type[Request]]] = {
    get_args(model.model_fields["op"].annotation)[0]: model for model in get_args(Request)
}
OPS: Final = frozenset(REQUEST_MODELS)


# -- replies --------------------------------------------------------------------------


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


class SourcesResult(BaseModel):
    """The answer of ``list_sources`` and of ``GET /api/v1/sources``."""

    sources: list[SourceInfo]
    timezone: str = Field(description="the IANA zone the relay counts days and resets in")
    default_source: str = Field(description="the source of the topic `usage`")


class ResultReply(BaseModel):
    type: Literal["result"]
    id: RequestId
    ok: Literal[True]
    result: (
        SubscribeResult
        | LatestResult
        | RefreshResult
        | HistoryResult
        | SourcesResult
        | Breakdown
        | ReportList
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


# -- events ---------------------------------------------------------------------------


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


class ReportDeliveredEvent(_Event):
    """Extension of v1: a daily usage report reached every destination."""

    event: Literal["usage.report_delivered"]
    data: ReportEntry


class ReportFailedEvent(_Event):
    """Extension of v1: a destination refused a daily usage report; someone must act."""

    event: Literal["usage.report_failed"]
    data: ReportEntry


EventMessage = Annotated[
    UsageUpdatedEvent
    | UsageStatusEvent
    | ThresholdCrossedEvent
    | LimitProjectedEvent
    | ReportDeliveredEvent
    | ReportFailedEvent,
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
    "sources": SourcesResult,
    "report": UsageReport,
    "reports": ReportList,
    "status": Status,
}
