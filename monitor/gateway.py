"""
HTTP client for the gateway's usage endpoint.

This is the one place where httpx errors, HTTP statuses and invalid bodies are
translated into the monitor's own exceptions (see ``monitor.exceptions``), and
where the gateway's answers are bounded: one deadline on the whole request, a
size cap on the body read as a stream, strict JSON numbers, and limits on what
passes through from fields the models do not define.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

import anyio
import httpx
from pydantic import ValidationError

from common.models import BUCKETS, Usage, UsageWindow, utc_now

from .exceptions import (
    UpstreamAuthError,
    UpstreamInvalidResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_PRODUCT",
    "MAX_TEXT_CHARS",
    "MAX_UNKNOWN_BYTES",
    "MAX_UNKNOWN_DEPTH",
    "REGION_URLS",
    "GatewayClient",
    "Region",
    "TokenProvider",
    "parse_retry_after",
    "token_from_file",
]

Region = Literal["us", "eu"]

REGION_URLS: dict[str, str] = {
    "us": "https://gateway.us.posthog.com",
    "eu": "https://gateway.eu.posthog.com",
}
DEFAULT_PRODUCT = "posthog_code"

#: The largest body read from the gateway (the relay's ``max_response_bytes``).
DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024
#: Fields the models do not define are kept, stored and relayed, up to this
#: much encoded JSON in all ...
MAX_UNKNOWN_BYTES: Final = 16 * 1024
#: ... and nesting lists and objects at most this deep, each.
MAX_UNKNOWN_DEPTH: Final = 10
#: The longest ``product`` or ``user_id`` string kept.
MAX_TEXT_CHARS: Final = 256

_USAGE_FIELDS: Final = frozenset(Usage.model_fields)
# resets_in_seconds is read into reset_at and dropped, never passed on.
_WINDOW_FIELDS: Final = frozenset({*UsageWindow.model_fields, "resets_in_seconds"})
_TEXT_FIELDS: Final = ("product", "user_id")

#: Returns the current bearer token. Called before every request so that a
#: rotated token (for example a rewritten token file) is picked up; raises
#: ``UpstreamAuthError`` when there is no token to send.
TokenProvider = Callable[[], str]


def token_from_file(path: Path) -> TokenProvider:
    """A provider that reads ``path`` before every request.

    A missing, unreadable or empty file is an ``UpstreamAuthError`` that names
    the file: the monitor goes to ``auth_error`` and keeps trying slowly, so a
    token written later is picked up without a restart.
    """

    def read() -> str:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UpstreamAuthError(
                f"cannot read the gateway token file {path}: {reason}"
            ) from None
        if not token:
            raise UpstreamAuthError(f"the gateway token file {path} is empty")
        return token

    return read


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for, or None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    # A "-0000" zone (RFC 5322: UTC, local offset unknown) parses as a naive datetime.
    return max(0.0, (when.replace(tzinfo=when.tzinfo or UTC) - utc_now()).total_seconds())


class GatewayClient:
    """Fetches one product's usage from the gateway, within bounds of time and size.

    One deadline, ``timeout`` seconds, covers the whole request: connecting,
    the headers and the whole body. The body is read as a stream and refused
    as soon as it passes ``max_response_bytes``, so a huge, endless or
    dripping answer costs at most that much memory and that much time. What
    the gateway adds beyond the known fields is kept, but only within
    ``MAX_UNKNOWN_BYTES`` and ``MAX_UNKNOWN_DEPTH``.
    """

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        *,
        product: str = DEFAULT_PRODUCT,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not 0 < timeout < math.inf:
            raise ValueError("timeout must be a positive number of seconds")
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be positive")
        self.base_url = base_url.rstrip("/")
        self.product = product
        self._token = token
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={
                "Accept": "application/json",
                # The body is counted as it arrives on the wire, so it must not
                # be compressed: a small compressed chunk may inflate to gigabytes.
                "Accept-Encoding": "identity",
                "User-Agent": "usage-monitor",
            },
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch_usage(self) -> Usage:
        """GET the usage object; raise an ``UpstreamError`` subclass on any failure."""
        token = self._token()
        try:
            with anyio.fail_after(self._timeout):
                body = await self._get(f"Bearer {token}")
        except TimeoutError:
            raise UpstreamUnavailable(
                f"gateway timed out after {self._timeout:g} s (request_timeout)"
            ) from None
        except httpx.TimeoutException as exc:
            raise UpstreamUnavailable(f"gateway timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"gateway unreachable ({type(exc).__name__})") from None
        return _usage_from_body(body, received_at=utc_now(), secret=token)

    async def _get(self, authorization: str) -> bytes:
        """The body of a 200 answer, read within the size bound; other statuses raise."""
        async with self._client.stream(
            "GET", f"/v1/usage/{self.product}", headers={"Authorization": authorization}
        ) as response:
            _check_status(response)
            return await self._read_body(response)

    async def _read_body(self, response: httpx.Response) -> bytes:
        """The body, refused as soon as it is announced or found to pass the bound."""
        limit = self._max_response_bytes
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise UpstreamInvalidResponse(
                "gateway sent a compressed body (Content-Encoding), which was not asked for"
            )
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large()
        body = bytearray()
        # Chunks come as they arrive on the socket (at most 64 KiB each); with no
        # Content-Encoding nothing inflates them.
        async for chunk in response.aiter_bytes():
            if len(body) + len(chunk) > limit:
                raise self._too_large()
            body += chunk
        return bytes(body)

    def _too_large(self) -> UpstreamInvalidResponse:
        return UpstreamInvalidResponse(
            f"gateway sent a body larger than {_size(self._max_response_bytes)} "
            "(max_response_bytes)"
        )


def _check_status(response: httpx.Response) -> None:
    """Raise the monitor's exception for any status but 200; the body is never read."""
    status = response.status_code
    if status in (401, 403):
        raise UpstreamAuthError(f"gateway refused the credentials (HTTP {status})")
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        advice = f", retry after {retry_after:g} s" if retry_after is not None else ""
        raise UpstreamRateLimited(
            f"gateway rate limited the monitor (HTTP 429{advice})", retry_after
        )
    if status >= 500:
        raise UpstreamUnavailable(f"gateway error (HTTP {status})")
    if status != 200:
        raise UpstreamInvalidResponse(f"unexpected gateway status (HTTP {status})")


def _usage_from_body(content: bytes, *, received_at: datetime, secret: str) -> Usage:
    body = _parse_json(content)
    _check_pass_through(body, secret)
    try:
        return Usage.model_validate(body, context={"received_at": received_at})
    except ValidationError as exc:
        raise UpstreamInvalidResponse(
            f"gateway sent an invalid usage object: {_summarise(exc)}"
        ) from None


class _NotANumber(Exception):
    """A JSON number that is not a finite number: the gateway's own dialect, refused."""


def _refuse_constant(name: str) -> NoReturn:
    # json.loads calls this for NaN, Infinity and -Infinity only: never an outside value.
    raise _NotANumber(f"gateway sent {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400 reads as inf
        raise _NotANumber("gateway sent a number too large for a double")
    return number


def _parse_json(content: bytes) -> Any:
    """Strict JSON: no NaN or Infinity, no number beyond a double, only valid Unicode."""
    try:
        body = json.loads(content, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotANumber as exc:
        raise UpstreamInvalidResponse(str(exc)) from None
    except (ValueError, RecursionError):
        raise UpstreamInvalidResponse("gateway sent a body that is not JSON") from None
    try:
        # An escaped lone surrogate ("\ud800") is valid JSON but cannot be sent on or stored.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UpstreamInvalidResponse("gateway sent text that is not valid Unicode") from None
    except RecursionError:
        raise UpstreamInvalidResponse("gateway sent a body nested too deeply") from None
    return body


def _check_pass_through(body: Any, secret: str) -> None:
    """Bound what the models keep from outside without a type to hold it to.

    ``product`` and ``user_id`` are short. Fields the models do not define
    (at the top level and in each window) are kept and passed on: their
    encoded size counts together against ``MAX_UNKNOWN_BYTES``, and each one
    nests at most ``MAX_UNKNOWN_DEPTH`` deep. The error names the bound and
    the field, never the value (nor a name that carries ``secret``, the token).
    """
    if not isinstance(body, dict):
        return  # validation refuses it
    for field in _TEXT_FIELDS:
        text = body.get(field)
        if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
            raise UpstreamInvalidResponse(
                f"gateway sent a {field} longer than {MAX_TEXT_CHARS} characters"
            )
    unknown = [("", key, value) for key, value in body.items() if key not in _USAGE_FIELDS]
    for bucket in BUCKETS:
        window = body.get(bucket)
        if isinstance(window, dict):
            unknown += [
                (f"{bucket}.", key, value)
                for key, value in window.items()
                if key not in _WINDOW_FIELDS
            ]
    total = 0
    for prefix, key, value in unknown:
        if _depth(value, MAX_UNKNOWN_DEPTH) > MAX_UNKNOWN_DEPTH:
            raise UpstreamInvalidResponse(
                f"gateway sent an unknown field nested deeper than {MAX_UNKNOWN_DEPTH} levels: "
                f"{prefix}{_printable(key, secret)}"
            )
        total += len(json.dumps(key)) + 1 + len(json.dumps(value))  # "key":value
        if total > MAX_UNKNOWN_BYTES:
            raise UpstreamInvalidResponse(
                f"gateway sent more than {_size(MAX_UNKNOWN_BYTES)} of unknown fields, "
                f"the last one {prefix}{_printable(key, secret)}"
            )


def _depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests lists and objects (0 for a scalar); stops past ``limit``."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _printable(name: str, secret: str) -> str:
    """A field name fit for a message: the gateway chose it, so it may be anything."""
    if not _SAFE_NAME.fullmatch(name) or (secret and secret in name):
        return "(a field with an unprintable name)"
    return name


def _size(count: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


def _summarise(exc: ValidationError) -> str:
    """Name the failing fields without echoing the values, which come from outside."""
    errors = exc.errors(include_input=False, include_url=False)
    fields = sorted({".".join(str(part) for part in error["loc"]) or "body" for error in errors})
    return f"{len(errors)} error(s) in {', '.join(fields[:5])}"
