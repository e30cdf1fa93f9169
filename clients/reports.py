"""
The relay's daily usage reports over HTTP (``accounting-v1.md``, section 3), for
``usage-monitor reports`` and ``usage-monitor report``.

- ``list``: ``GET /api/v1/reports``, every (source, usage day) due and its state;
- ``get``: ``GET /api/v1/reports/<source>/<day>``, a report as saved and delivered;
- ``deliver``: ``POST /api/v1/reports/<source>/<day>``, build (if not saved) and
  deliver that report now, under the same ``Idempotency-Key`` as ever.

Requests, credentials and errors as for every HTTP client here
(``clients.http_api``): ``bad_request`` for a day the relay refuses to report,
``unknown_topic`` (``UnknownSource``) for a source it does not serve,
``not_found`` for a report not saved yet.
"""

from __future__ import annotations

from datetime import date
from typing import Final, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from common.reports import ReportEntry, ReportList, UsageReport

from .exceptions import ProtocolError
from .http_api import RelayHttpClient

__all__ = ["DELIVER_TIMEOUT", "ReportsClient"]

_PATH: Final = "/api/v1/reports"
#: A delivery waits for every destination, which the relay gives up on after its own
#: ``report_timeout`` (10 s by default) each: waiting longer lets its answer arrive.
DELIVER_TIMEOUT: Final = 30.0

_Model = TypeVar("_Model", bound=BaseModel)


class _Delivered(BaseModel):
    """The answer of ``POST /api/v1/reports/<source>/<day>``."""

    report: UsageReport
    entry: ReportEntry


class ReportsClient(RelayHttpClient):
    """List, read and deliver now the daily usage reports of the relay at ``ws_url``."""

    feature = "daily usage reports"

    async def list(self, since: date | None = None, source: str | None = None) -> ReportList:
        """The state of every (source, usage day) due from ``since`` (default: the relay's,
        the last 14 closed days), of ``source`` (default: every source), oldest first."""
        params: dict[str, str] = {}
        if since is not None:
            params["since"] = since.isoformat()
        if source is not None:
            params["source"] = source
        return _parsed(ReportList, (await self._request("GET", _PATH, params=params)).content)

    async def get(self, source: str, day: date) -> UsageReport:
        """The report of ``source`` for the usage ``day`` exactly as saved; ``RequestFailed``
        with code ``not_found`` while there is none."""
        return _parsed(UsageReport, (await self._request("GET", _report_path(source, day))).content)

    async def deliver(self, source: str, day: date) -> tuple[UsageReport, ReportEntry]:
        """Build (if not saved) and deliver the report of ``source`` for ``day`` now, to
        every destination; the report and its state after this delivery.

        A day the relay will not report (still open, before ``reports_since`` or
        before the source's first data) raises ``RequestFailed`` with code
        ``bad_request`` and the relay's reason as ``message``.
        """
        answer = await self._request(
            "POST", _report_path(source, day), answer_within=DELIVER_TIMEOUT
        )
        delivered = _parsed(_Delivered, answer.content)
        return delivered.report, delivered.entry


def _report_path(source: str, day: date) -> str:
    return f"{_PATH}/{quote(source, safe='')}/{day.isoformat()}"


def _parsed(model: type[_Model], body: bytes) -> _Model:
    try:
        return model.model_validate_json(body)
    except ValidationError:
        raise ProtocolError(f"the relay sent an invalid {model.__name__}") from None
