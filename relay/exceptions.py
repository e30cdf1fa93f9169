"""
Exceptions raised by the relay.

The tree::

    RelayError
    └── RequestError         a request that gets an error reply; carries the
                             protocol's error ``code``, the request ``id`` and
                             optional ``data``

A ``RequestError`` never ends a connection: the relay answers it and keeps
serving, over WebSocket and HTTP alike. Conditions that do end a connection (a
binary frame, an oversized frame) are close codes, named in
``common.messages``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RelayError", "RequestError"]


class RelayError(Exception):
    """Base class of every exception raised by the relay."""


class RequestError(RelayError):
    """A request that cannot be served; answered with an error reply."""

    def __init__(
        self,
        code: str,
        message: str,
        request_id: int | str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.data = data

    def answering(self, request_id: int | str | None) -> RequestError:
        """The same error, as the reply to request ``request_id``."""
        return RequestError(self.code, self.message, request_id, self.data)
