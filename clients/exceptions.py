"""
Exceptions raised by the relay client.

The tree::

    RelayClientError
    ├── RelayUnavailable            cannot connect, or the connection dropped mid-request
    ├── RequestTimeout              no reply within the client's request timeout
    ├── ProtocolError               the relay sent a reply that protocol v1 does not allow
    └── RequestFailed               an error reply; carries ``code``, ``message``, ``data``
        ├── GatewayUnavailable      ``upstream_unavailable``: a refresh got no snapshot;
        │                           ``latest`` is the last good one or None
        ├── RateLimited             ``rate_limited``
        ├── UnknownSource           ``unknown_topic``: the relay serves no such source
        └── Unauthorized            ``unauthorized``, or the handshake was refused (401/403)

Any other error code raises ``RequestFailed`` itself, so codes the relay adds
later still reach the caller with their code intact.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from common.models import Snapshot

__all__ = [
    "GatewayUnavailable",
    "ProtocolError",
    "RateLimited",
    "RelayClientError",
    "RelayUnavailable",
    "RequestFailed",
    "RequestTimeout",
    "Unauthorized",
    "UnknownSource",
    "request_failed",
]


class RelayClientError(Exception):
    """Base class of every exception raised by the relay client."""


class RelayUnavailable(RelayClientError):
    """The relay cannot be reached, or the connection was lost before the reply came."""


class RequestTimeout(RelayClientError):
    """The relay did not answer a request in time."""


class ProtocolError(RelayClientError):
    """The relay answered with something that does not follow protocol v1."""


class RequestFailed(RelayClientError):
    """The relay answered a request with an error reply."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data: dict[str, Any] = data or {}


class GatewayUnavailable(RequestFailed):
    """A refresh could not get a snapshot from the gateway."""

    @property
    def latest(self) -> Snapshot | None:
        """The last good snapshot the relay holds, if it sent a valid one."""
        raw = self.data.get("latest")
        if raw is None:
            return None
        try:
            return Snapshot.model_validate(raw)
        except ValidationError:
            return None


class RateLimited(RequestFailed):
    """The relay refused the request because this client sends too many."""


class Unauthorized(RequestFailed):
    """The relay refused this client's credentials."""


class UnknownSource(RequestFailed):
    """The relay serves no source (topic) by the name the request gave."""


_BY_CODE: dict[str, type[RequestFailed]] = {
    "upstream_unavailable": GatewayUnavailable,
    "rate_limited": RateLimited,
    "unauthorized": Unauthorized,
    "unknown_topic": UnknownSource,
}


def request_failed(code: str, message: str, data: dict[str, Any] | None = None) -> RequestFailed:
    """Build the most specific ``RequestFailed`` for an error reply's code."""
    return _BY_CODE.get(code, RequestFailed)(code, message, data)
