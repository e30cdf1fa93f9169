"""
HTTP endpoints for the alert rules set at run time (``accounting-v1.md``, section 4).

``POST /api/v1/usage/alerts`` adds a rule and answers 201 with it once it is
saved; ``GET`` lists them; ``DELETE /api/v1/usage/alerts/{id}`` removes one
(204, or 404 for an unknown id). A refused request changes nothing: bad input
is a 400 with the protocol's error body naming the parameter, and a rule that
cannot be saved is a 500. ``SecurityMiddleware`` has already checked the
bearer token, and refused with 403 any request from a foreign ``Origin``.

A rule's ``webhook_url`` is a secret: it is never logged nor echoed in an
error, and the answers show it only as ``scheme://host/…``.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from common.hosts import is_http_url
from common.messages import ErrorCode
from common.models import AlertRule, utc_now
from monitor.adapters import METER_IDS
from monitor.exceptions import StoreError
from monitor.rules import RuleBook, new_rule_id

from .exceptions import RequestError
from .http import error_response
from .protocol import echo
from .state import serving_state

__all__ = [
    "MAX_BODY_BYTES",
    "create_rule",
    "delete_rule",
    "list_rules",
    "rule_book",
    "set_rule_book",
]

logger = logging.getLogger("usage_monitor.relay")

#: The largest body a POST may send.
MAX_BODY_BYTES: Final = 16 * 1024
_MAX_URL_LENGTH: Final = 2048
_JSON = "application/json"

_Threshold = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=100)]
_Name = Annotated[StrictStr, Field(max_length=64)]


class _NewRule(BaseModel):
    """What a POST may send; any other field is refused."""

    model_config = ConfigDict(extra="forbid")

    threshold_percent: _Threshold
    source: _Name | None = None
    meter: _Name | None = None
    webhook_url: Annotated[StrictStr, Field(max_length=_MAX_URL_LENGTH)] | None = None

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        # The message never quotes the URL: it may hold a secret.
        if url is not None and (not is_http_url(url) or any(c.isspace() for c in url)):
            raise ValueError("must be an http or https URL")
        return url


def set_rule_book(app: Starlette, book: RuleBook) -> None:
    """Called by the lifespan: the rule book the endpoints change."""
    app.state.alert_rules = book


def rule_book(request: Request) -> RuleBook:
    book: RuleBook = request.app.state.alert_rules
    return book


async def list_rules(request: Request) -> Response:
    """``{"rules": [...]}``, in the order they were added, webhook URLs redacted."""
    rules = [rule.public() for rule in rule_book(request)]
    return Response(json.dumps({"rules": rules}), media_type=_JSON)


async def create_rule(request: Request) -> Response:
    """201 with the new rule once it is saved; 400 naming what is wrong."""
    book = rule_book(request)
    try:
        new = _validated(await _json_body(request))
        _check_names(request, new)
        rule = AlertRule(
            id=new_rule_id(),
            threshold_percent=new.threshold_percent,
            source=new.source,
            meter=new.meter,
            webhook_url=new.webhook_url,
            created_at=utc_now(),
        )
        await book.add(rule)
    except RequestError as error:
        return error_response(error)
    except ValueError as exc:  # the book is full
        return error_response(_bad(str(exc)))
    except StoreError as exc:
        logger.error("an alert rule was not added: %s", exc)
        return error_response(RequestError(ErrorCode.INTERNAL, "the alert rule cannot be saved"))
    logger.info(
        "alert rule %s added: %s%% of %s, meter %s",
        rule.id,
        f"{rule.threshold_percent:g}",
        rule.source or "every source",
        rule.meter or "any",
    )
    return Response(
        json.dumps(rule.public()),
        status_code=201,
        headers={"Location": f"/api/v1/usage/alerts/{rule.id}"},
        media_type=_JSON,
    )


async def delete_rule(request: Request) -> Response:
    """204 once the rule is gone for good; 404 for an unknown id."""
    rule_id: str = request.path_params["rule_id"]
    try:
        removed = await rule_book(request).remove(rule_id)
    except StoreError as exc:
        logger.error("alert rule %s was not deleted: %s", rule_id, exc)
        return error_response(RequestError(ErrorCode.INTERNAL, "the alert rules cannot be saved"))
    if removed is None:
        return error_response(
            RequestError(ErrorCode.NOT_FOUND, f"unknown alert rule {echo(rule_id)}")
        )
    logger.info("alert rule %s deleted", rule_id)
    return Response(status_code=204)


async def _json_body(request: Request) -> Any:
    """The body as JSON, read no further than ``MAX_BODY_BYTES``."""
    too_large = _bad(f"body: larger than {MAX_BODY_BYTES // 1024} KiB")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdecimal() or int(length) > MAX_BODY_BYTES):
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _bad("body: not valid JSON") from None


def _validated(body: Any) -> _NewRule:
    if not isinstance(body, dict):
        raise _bad("body: must be a JSON object")
    try:
        return _NewRule.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        name = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            raise _bad(f"unknown field {echo(name)}") from None
        if error["type"] == "missing":
            raise _bad(f"{name}: required") from None
        message = str(error["msg"]).removeprefix("Value error, ")
        raise _bad(f"{name}: {message}") from None


def _check_names(request: Request, new: _NewRule) -> None:
    """The source must be served, and the meter one that its kind (or any served kind) has."""
    monitors = serving_state(request).hub.monitors
    if new.source is not None and new.source not in monitors:
        raise _bad(f"source: unknown source {echo(new.source)}; sources: {', '.join(monitors)}")
    if new.meter is None:
        return
    chosen = [monitors[new.source]] if new.source is not None else list(monitors.values())
    meters = sorted({meter for m in chosen for meter in METER_IDS.get(m.kind, ())})
    if new.meter not in meters:
        whose = "" if new.source is None else f" of source {echo(new.source)}"
        raise _bad(f"meter: unknown meter {echo(new.meter)}{whose}; meters: {', '.join(meters)}")


def _bad(message: str) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, message)
