"""
The relay's alert rules over HTTP (``accounting-v1.md``, section 4), for ``usage-monitor alerts``.

Requests, credentials and errors as for every HTTP client here
(``clients.http_api``).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from .exceptions import ProtocolError
from .http_api import RelayHttpClient

__all__ = ["AlertRulesClient"]

_PATH: Final = "/api/v1/usage/alerts"


class AlertRulesClient(RelayHttpClient):
    """List, add and remove the alert rules of the relay at ``ws_url``."""

    feature = "alert rules"

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
        response = await self._request(method, path, json=body)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProtocolError("the relay's answer is not JSON") from None
