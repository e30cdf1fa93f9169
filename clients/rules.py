"""
The relay's alert rules over HTTP (``accounting-v1.md``, section 4), for ``usage-monitor alerts``.

The relay is named by its WebSocket URL, as everywhere in the clients; its
HTTP API lives at the same host and port. The client token goes along as
``Authorization: Bearer``, read from the user's files for a relay on this
machine, as ``RelayClient`` does. Errors raise the client's exceptions: an
error body becomes the ``RequestFailed`` of its code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx

from .client import bearer_headers
from .exceptions import ProtocolError, RelayUnavailable, Unauthorized, request_failed

__all__ = ["AlertRulesClient", "http_base_url"]

_PATH: Final = "/api/v1/usage/alerts"
_SCHEMES: Final = {"ws": "http", "wss": "https"}


def http_base_url(ws_url: str) -> str:
    """``ws://host:port/ws`` → ``http://host:port`` (a path before ``/ws`` is kept)."""
    parts = urlsplit(ws_url)
    scheme = _SCHEMES.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.removesuffix('/').removesuffix('/ws')}"


class AlertRulesClient:
    """List, add and remove the alert rules of the relay at ``ws_url``."""

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

    async def list(self) -> list[dict[str, Any]]:
        """The rules, webhook URLs redacted by the relay."""
        answer = await self._call("GET", _PATH)
        rules = answer.get("rules") if isinstance(answer, dict) else None
        if not isinstance(rules, list):
            raise ProtocolError("the relay's list of alert rules has no 'rules'")
        return rules

    async def add(
        self,
        threshold_percent: float,
        *,
        source: str | None = None,
        meter: str | None = None,
        webhook_url: str | None = None,
    ) -> dict[str, Any]:
        """Add a rule; the relay's answer (the rule, with its ``id``)."""
        body: dict[str, Any] = {"threshold_percent": threshold_percent}
        for name, value in (("source", source), ("meter", meter), ("webhook_url", webhook_url)):
            if value is not None:
                body[name] = value
        rule = await self._call("POST", _PATH, body)
        if not isinstance(rule, dict) or not isinstance(rule.get("id"), str):
            raise ProtocolError("the relay's new alert rule has no id")
        return rule

    async def remove(self, rule_id: str) -> None:
        await self._call("DELETE", f"{_PATH}/{quote(rule_id, safe='')}")

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        headers = self._auth_headers()
        try:
            async with httpx.AsyncClient(base_url=self._base, timeout=self._timeout) as client:
                response = await client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise RelayUnavailable(f"cannot reach the relay at {self.url}: {reason}") from None
        if response.status_code == 204:
            return None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.is_success:
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            raise request_failed(error["code"], str(error.get("message", "")), error.get("data"))
        if response.status_code in (401, 403):
            raise Unauthorized("unauthorized", f"HTTP {response.status_code}")
        if response.status_code in (404, 405):
            raise ProtocolError("this relay has no alert rules (too old?)")
        raise ProtocolError(f"the relay answered HTTP {response.status_code}")

    def _auth_headers(self) -> dict[str, str]:
        host = urlsplit(self._base).hostname or ""
        return bearer_headers(host, self._token, self._token_file)
