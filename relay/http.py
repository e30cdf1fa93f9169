"""HTTP endpoints for scripts and health checks; same semantics as the WebSocket ops.

The usage endpoints answer for the default source, or for the one named by
``?source=NAME``; an unknown name is a 404 with the ``unknown_topic`` error.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from common.messages import ErrorCode
from monitor.exceptions import StoreError, UsageMonitorError

from .exceptions import RequestError
from .hub import Hub, Topic
from .middleware import is_authenticated
from .protocol import FrameEncoder, echo, encode_error, gateway_unavailable, parse_history_query
from .state import serving_state

__all__ = ["breakdown", "error_response", "healthz", "history", "latest", "refresh", "sources"]

_JSON = "application/json"

logger = logging.getLogger("usage_monitor.relay")


def _hub(request: Request) -> Hub:
    return serving_state(request).hub


def _topic(hub: Hub, request: Request) -> Topic:
    """The topic of ``?source=`` (default: the default source); raises ``RequestError``."""
    name = request.query_params.get("source")
    topic = hub.topic(name)
    if topic is None:
        assert name is not None  # the default source always has a topic
        raise RequestError(ErrorCode.UNKNOWN_TOPIC, f"unknown source {echo(name)}")
    return topic


async def healthz(request: Request) -> Response:
    """200 while the relay serves; the monitor's state tells how fresh the data is.

    Open to anyone who passed the Host check, so without credentials it tells
    only the state, nothing about usage or errors.
    """
    hub = _hub(request)
    if not is_authenticated(request.scope):
        return Response(
            f'{{"ok":true,"status":{{"state":"{hub.monitor.status.state}"}}}}', media_type=_JSON
        )
    status = hub.encoder.status_json(hub.monitor.status)
    every = ",".join(
        f"{json.dumps(name)}:{hub.encoder.status_json(monitor.status)}"
        for name, monitor in hub.monitors.items()
    )
    # A full or read-only disk does not stop the relay, but it is reported here.
    storage = json.dumps({"ok": hub.storage_error is None, "last_error": hub.storage_error})
    reports = hub.reports
    due = json.dumps(
        {"pending": 0, "failed": 0, "last_error": None}
        if reports is None
        else {
            "pending": reports.pending,
            "failed": reports.failed,
            "last_error": reports.last_error,
        }
    )
    roles = f'"cluster":{json.dumps(hub.cluster)},"polling":{json.dumps(hub.polling_sources())}'
    return Response(
        f'{{"ok":true,"status":{status},"sources":{{{every}}},"storage":{storage},'
        f'"reports":{due},{roles}}}',
        media_type=_JSON,
    )


async def sources(request: Request) -> Response:
    return Response(_hub(request).sources_json(), media_type=_JSON)


async def latest(request: Request) -> Response:
    hub = _hub(request)
    try:
        topic = _topic(hub, request)
    except RequestError as error:
        return error_response(error)
    return Response(topic.encoder.state(topic.monitor, with_topic=False), media_type=_JSON)


async def history(request: Request) -> Response:
    hub = _hub(request)
    try:
        topic = _topic(hub, request)
        query = parse_history_query(request.query_params)
        points = await hub.history_json(topic.encoder.topic, query)
    except RequestError as error:
        return error_response(error)
    except StoreError:
        return error_response(RequestError(ErrorCode.INTERNAL, "history is unavailable"))
    return Response(f'{{"points":{points}}}', media_type=_JSON)


async def breakdown(request: Request) -> Response:
    """Usage summed from the hourly ledger, grouped as ``group_by`` asks."""
    hub = _hub(request)
    try:
        body = await hub.breakdown_json(request.query_params)
    except RequestError as error:
        return error_response(error)
    except StoreError:
        return error_response(RequestError(ErrorCode.INTERNAL, "the breakdown is unavailable"))
    return Response(body, media_type=_JSON)


async def refresh(request: Request) -> Response:
    hub = _hub(request)
    try:
        topic = _topic(hub, request)
        snapshot = await hub.refresh_now(topic.encoder.topic)
    except RequestError as error:
        return error_response(error)
    except UsageMonitorError as exc:
        return error_response(
            gateway_unavailable(str(exc), topic.monitor.get_latest()), topic.encoder
        )
    return Response(f'{{"latest":{topic.encoder.snapshot_json(snapshot)}}}', media_type=_JSON)


#: The HTTP status of each error code an endpoint here may answer with.
_STATUS: Final = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_TOPIC: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UPSTREAM_UNAVAILABLE: 503,
}


def error_response(error: RequestError, encoder: FrameEncoder | None = None) -> Response:
    """The error body a WebSocket client would get, with the matching HTTP status.

    ``encoder`` (a topic's) splices in a snapshot it has encoded already.
    """
    headers = {}
    retry_after = (error.data or {}).get("retry_after")
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return Response(
        encoder.error(error) if encoder is not None else encode_error(error),
        status_code=_STATUS[ErrorCode(error.code)],
        headers=headers,
        media_type=_JSON,
    )
