"""HTTP endpoints for scripts and health checks; same semantics as the WebSocket ops."""

from __future__ import annotations

import json
import logging
import math

from starlette.requests import Request
from starlette.responses import Response

from common.messages import ErrorCode
from monitor.exceptions import StoreError, UsageMonitorError

from .exceptions import RequestError
from .hub import Hub
from .limits import RateLimiter, Verdict
from .middleware import is_authenticated
from .protocol import parse_history_query
from .state import serving_state

__all__ = ["healthz", "history", "latest", "refresh"]

_JSON = "application/json"

logger = logging.getLogger("usage_monitor.relay")


def _hub(request: Request) -> Hub:
    return serving_state(request).hub


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
    # A full or read-only disk does not stop the relay, but it is reported here.
    storage = json.dumps({"ok": hub.storage_error is None, "last_error": hub.storage_error})
    return Response(f'{{"ok":true,"status":{status},"storage":{storage}}}', media_type=_JSON)


async def latest(request: Request) -> Response:
    hub = _hub(request)
    return Response(hub.encoder.state(hub.monitor, with_topic=False), media_type=_JSON)


async def history(request: Request) -> Response:
    hub = _hub(request)
    try:
        query = parse_history_query(request.query_params)
        points = await hub.history_json(query)
    except RequestError as error:
        return Response(hub.encoder.error(error), status_code=400, media_type=_JSON)
    except StoreError:
        unavailable = RequestError(ErrorCode.INTERNAL, "history is unavailable")
        return Response(hub.encoder.error(unavailable), status_code=500, media_type=_JSON)
    return Response(f'{{"points":{points}}}', media_type=_JSON)


async def refresh(request: Request, limiter: RateLimiter | None = None) -> Response:
    hub = _hub(request)
    if limiter is not None and limiter.check() is not Verdict.ALLOWED:
        return _rate_limited(hub, limiter)
    try:
        snapshot = await hub.monitor.refresh_now()
    except UsageMonitorError as exc:
        error = RequestError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"the gateway could not be polled: {exc}",
            data={"latest": hub.monitor.get_latest()},
        )
        return Response(hub.encoder.error(error), status_code=503, media_type=_JSON)
    return Response(f'{{"latest":{hub.encoder.snapshot_json(snapshot)}}}', media_type=_JSON)


def _rate_limited(hub: Hub, limiter: RateLimiter) -> Response:
    if limiter.episode_started:
        logger.warning("HTTP refreshes are over their rate limit; answering 429")
    retry_after = limiter.retry_after()
    error = RequestError(
        ErrorCode.RATE_LIMITED,
        f"too many refreshes; retry in {retry_after:.3g} s",
        data={"retry_after": round(retry_after, 3)},
    )
    headers = {"Retry-After": str(math.ceil(retry_after))}
    return Response(hub.encoder.error(error), status_code=429, headers=headers, media_type=_JSON)
