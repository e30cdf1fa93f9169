"""HTTP endpoints for scripts and health checks; same semantics as the WebSocket ops."""

from __future__ import annotations

from typing import cast

from starlette.requests import Request
from starlette.responses import Response

from monitor.exceptions import UsageMonitorError
from monitor.store import StoreError

from .exceptions import ProtocolError
from .hub import Hub
from .protocol import ErrorCode, HistoryQuery

__all__ = ["healthz", "history", "latest", "refresh"]

_JSON = "application/json"


def _hub(request: Request) -> Hub:
    return cast(Hub, request.state.hub)


async def healthz(request: Request) -> Response:
    """200 while the relay serves; the monitor's state tells how fresh the data is."""
    status = _hub(request).encoder.status_json(_hub(request).monitor.status)
    return Response(f'{{"ok":true,"status":{status}}}', media_type=_JSON)


async def latest(request: Request) -> Response:
    hub = _hub(request)
    return Response(hub.encoder.state(hub.monitor, with_topic=False), media_type=_JSON)


async def history(request: Request) -> Response:
    hub = _hub(request)
    try:
        query = HistoryQuery.parse(request.query_params)
        points = await hub.history_json(query)
    except ProtocolError as error:
        return Response(hub.encoder.error(error), status_code=400, media_type=_JSON)
    except StoreError:
        unavailable = ProtocolError(ErrorCode.INTERNAL, "history is unavailable")
        return Response(hub.encoder.error(unavailable), status_code=500, media_type=_JSON)
    return Response(f'{{"points":{points}}}', media_type=_JSON)


async def refresh(request: Request) -> Response:
    hub = _hub(request)
    try:
        snapshot = await hub.monitor.refresh_now()
    except UsageMonitorError as exc:
        error = ProtocolError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"the gateway could not be polled: {exc}",
            data={"latest": hub.monitor.get_latest()},
        )
        return Response(hub.encoder.error(error), status_code=503, media_type=_JSON)
    return Response(f'{{"latest":{hub.encoder.snapshot_json(snapshot)}}}', media_type=_JSON)
