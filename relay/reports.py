"""
HTTP endpoints of the daily usage reports (``accounting-v1.md``, section 3).

- ``GET /api/v1/reports?since=&source=``: every (source, usage day) due and
  its state (``common.reports.ReportList``), as the ``list_reports`` op.
- ``GET /api/v1/reports/{source}/{day}``: the report exactly as saved and
  delivered; 404 ``not_found`` while it is not built.
- ``POST /api/v1/reports/{source}/{day}``: build (if not saved) and deliver
  that report now to every destination, whatever its state, through the
  scheduler's own path and key; what ``usage-monitor report --day`` asks.
  Answers ``{"report": ..., "entry": ...}``; 400 for a day that is still
  open, before ``reports_since`` or before the source's first data.

``SecurityMiddleware`` has checked the bearer token already, and refused with
403 a request from a foreign ``Origin``.
"""

from __future__ import annotations

import logging
from datetime import date

from starlette.requests import Request
from starlette.responses import Response

from common.messages import ErrorCode
from monitor.exceptions import StoreError
from monitor.reporting import ReportRefused, ReportScheduler

from .exceptions import RequestError
from .http import error_response
from .protocol import echo
from .state import serving_state

__all__ = ["deliver_report", "get_report", "list_reports"]

logger = logging.getLogger("usage_monitor.relay")

_JSON = "application/json"


async def list_reports(request: Request) -> Response:
    try:
        body = await serving_state(request).hub.reports_json(request.query_params)
    except RequestError as error:
        return error_response(error)
    except StoreError as exc:
        logger.error("the report list is unavailable: %s", exc)
        return error_response(RequestError(ErrorCode.INTERNAL, "the report list is unavailable"))
    return Response(body, media_type=_JSON)


async def get_report(request: Request) -> Response:
    try:
        scheduler, source, day = _report_of(request)
        body = await scheduler.saved_report(source, day)
    except RequestError as error:
        return error_response(error)
    except StoreError as exc:
        logger.error("a saved report is unavailable: %s", exc)
        return error_response(RequestError(ErrorCode.INTERNAL, "the report is unavailable"))
    if body is None:
        return error_response(
            RequestError(ErrorCode.NOT_FOUND, f"no report of {source} for {day} is saved yet")
        )
    return Response(body, media_type=_JSON)


async def deliver_report(request: Request) -> Response:
    try:
        scheduler, source, day = _report_of(request)
        report, entry = await scheduler.deliver_now(source, day)
    except RequestError as error:
        return error_response(error)
    except ReportRefused as exc:
        return error_response(RequestError(ErrorCode.BAD_REQUEST, str(exc)))
    except StoreError as exc:
        logger.error("the report of %s for %s was not made: %s", source, day, exc)
        return error_response(RequestError(ErrorCode.INTERNAL, "the report cannot be saved"))
    logger.info("the report %s was delivered on request: %s", entry.report_id, entry.state)
    return Response(
        f'{{"report":{report.model_dump_json()},"entry":{entry.model_dump_json()}}}',
        media_type=_JSON,
    )


def _report_of(request: Request) -> tuple[ReportScheduler, str, date]:
    """The scheduler, and the source and day the path names; raises ``RequestError``."""
    hub = serving_state(request).hub
    source: str = request.path_params["source"]
    text: str = request.path_params["day"]
    if hub.reports is None:
        raise RequestError(ErrorCode.NOT_FOUND, "the relay makes no reports")
    if source not in hub.monitors:
        raise RequestError(ErrorCode.UNKNOWN_TOPIC, f"unknown source {echo(source)}")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise RequestError(
            ErrorCode.BAD_REQUEST, f"{echo(text)} is not a day (YYYY-MM-DD)"
        ) from None
    return hub.reports, source, day
