"""
The relay's HTTP API, as the clients that speak it share it: where it is, how they
authenticate, and what its failures become.

The relay is named by its WebSocket URL, as everywhere in the clients; its
HTTP API lives at the same host and port. The client token goes along as
``Authorization: Bearer``, read from the user's files for a relay on this
machine, as ``RelayClient`` does. Errors raise the client's exceptions: an
error body becomes the ``RequestFailed`` of its code, with the relay's message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import httpx

from .client import bearer_headers
from .exceptions import ProtocolError, RelayUnavailable, Unauthorized, request_failed

__all__ = ["RelayHttpClient", "http_base_url"]

_SCHEMES: Final = {"ws": "http", "wss": "https"}


def http_base_url(ws_url: str) -> str:
    """``ws://host:port/ws`` → ``http://host:port`` (a path before ``/ws`` is kept)."""
    parts = urlsplit(ws_url)
    scheme = _SCHEMES.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.removesuffix('/').removesuffix('/ws')}"


class RelayHttpClient:
    """Requests to the HTTP API of the relay at ``ws_url``, each answered within ``timeout``
    seconds unless the request says otherwise."""

    #: What a relay without these endpoints lacks, as the error that says so puts it.
    feature: ClassVar[str] = "this API"

    def __init__(
        self,
        ws_url: str,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = ws_url
        self._base = http_base_url(ws_url)
        self._token = token
        self._token_file = token_file
        self._timeout = timeout

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        answer_within: float | None = None,
    ) -> httpx.Response:
        """The relay's answer when it is a success; every failure as the client's exceptions."""
        host = urlsplit(self._base).hostname or ""
        headers = bearer_headers(host, self._token, self._token_file)
        limit = self._timeout if answer_within is None else answer_within
        try:
            async with httpx.AsyncClient(base_url=self._base, timeout=limit) as client:
                response = await client.request(
                    method, path, json=json, params=params, headers=headers
                )
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise RelayUnavailable(f"cannot reach the relay at {self.url}: {reason}") from None
        if response.is_success:
            return response
        try:
            answer = response.json()
        except ValueError:
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            data = error.get("data")
            message = str(error.get("message", ""))
            raise request_failed(error["code"], message, data if isinstance(data, dict) else None)
        if response.status_code in (401, 403):
            raise Unauthorized("unauthorized", f"HTTP {response.status_code}")
        if response.status_code in (404, 405):
            raise ProtocolError(f"this relay has no {self.feature} (too old?)")
        raise ProtocolError(f"the relay answered HTTP {response.status_code}")
