"""
HTTP client for the gateway's usage endpoint.

This is the one place where httpx errors, HTTP statuses and invalid bodies are
translated into the monitor's own exceptions (see ``monitor.exceptions``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal

import httpx
from pydantic import ValidationError

from common.models import Usage, utc_now

from .exceptions import (
    UpstreamAuthError,
    UpstreamInvalidResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = [
    "DEFAULT_PRODUCT",
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
    """Fetches one product's usage from the gateway, with a timeout on every request."""

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        *,
        product: str = DEFAULT_PRODUCT,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.product = product
        self._token = token
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "usage-monitor"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch_usage(self) -> Usage:
        """GET the usage object; raise an ``UpstreamError`` subclass on any failure."""
        authorization = f"Bearer {self._token()}"
        try:
            response = await self._client.get(
                f"/v1/usage/{self.product}", headers={"Authorization": authorization}
            )
        except httpx.TimeoutException as exc:
            raise UpstreamUnavailable(f"gateway timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"gateway unreachable ({type(exc).__name__})") from None
        received_at = utc_now()
        return _usage_from_response(response, received_at)


def _usage_from_response(response: httpx.Response, received_at: datetime) -> Usage:
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
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        raise UpstreamInvalidResponse("gateway sent a body that is not JSON") from None
    try:
        return Usage.model_validate(body, context={"received_at": received_at})
    except ValidationError as exc:
        raise UpstreamInvalidResponse(
            f"gateway sent an invalid usage object: {_summarise(exc)}"
        ) from None


def _summarise(exc: ValidationError) -> str:
    """Name the failing fields without echoing the values, which come from outside."""
    errors = exc.errors(include_input=False, include_url=False)
    fields = sorted({".".join(str(part) for part in error["loc"]) or "body" for error in errors})
    return f"{len(errors)} error(s) in {', '.join(fields[:5])}"
