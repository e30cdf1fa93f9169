"""
HTTP client for a source's usage endpoint, whatever its dialect.

This is the one place where httpx errors, HTTP statuses and bodies that are
not JSON are translated into the monitor's own exceptions (see
``monitor.exceptions``), and where a gateway's answers are bounded: one
deadline on the whole request, a size cap on the body read as a stream, and
strict JSON numbers. What the JSON must say is the dialect's business: an
``Adapter`` (``monitor.adapters``) reads it into a ``Reading``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

import anyio
import httpx

from common.models import SourceKind, utc_now

from .adapters.base import Adapter, Reading
from .adapters.fields import size
from .adapters.posthog import (
    DEFAULT_PRODUCT,
    MAX_TEXT_CHARS,
    MAX_UNKNOWN_BYTES,
    MAX_UNKNOWN_DEPTH,
    PostHogAdapter,
)
from .exceptions import (
    UpstreamAuthError,
    UpstreamInvalidResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_PRODUCT",
    "DEFAULT_URLS",
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

#: PostHog's gateway by region (a ``posthog`` source's ``url`` beats its ``region``).
REGION_URLS: dict[str, str] = {
    "us": "https://gateway.us.posthog.com",
    "eu": "https://gateway.eu.posthog.com",
}
#: The base URL of a source of another kind without a ``url``; a kind that is
#: missing here (``litellm``: everyone runs their own proxy) needs one.
DEFAULT_URLS: dict[SourceKind, str] = {
    "openrouter": "https://openrouter.ai",
}

#: The largest body read from the gateway (the relay's ``max_response_bytes``).
DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024

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
    """Polls one source's usage endpoint, within bounds of time and size.

    ``adapter`` is the source's dialect: the path to ask and how to read the
    answer (PostHog's default product when omitted). One deadline, ``timeout``
    seconds, covers the whole request: connecting, the headers and the whole
    body. The body is read as a stream and refused as soon as it passes
    ``max_response_bytes``, so a huge, endless or dripping answer costs at
    most that much memory and that much time. ``clock`` says when an answer
    arrived, which the adapters count resets from (tests pass a fake one).
    """

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        adapter: Adapter | None = None,
        *,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not 0 < timeout < math.inf:
            raise ValueError("timeout must be a positive number of seconds")
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be positive")
        self.base_url = base_url.rstrip("/")
        self.adapter: Adapter = adapter if adapter is not None else PostHogAdapter()
        self._token = token
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._clock = clock
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

    async def fetch(self) -> Reading:
        """GET the source's usage and read it; any failure raises an ``UpstreamError`` subclass."""
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
        received_at = self._clock()
        return self.adapter.read(_parse_json(body), received_at=received_at, secret=token)

    async def _get(self, authorization: str) -> bytes:
        """The body of a 200 answer, read within the size bound; other statuses raise."""
        async with self._client.stream(
            "GET", self.adapter.path, headers={"Authorization": authorization}
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
            f"gateway sent a body larger than {size(self._max_response_bytes)} (max_response_bytes)"
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
