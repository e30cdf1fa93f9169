"""
Exceptions raised by the relay.

The tree::

    RelayError
    └── ProtocolError        a request that gets an error reply; carries the
                             protocol's error ``code``, the request ``id`` and
                             optional ``data``

A ``ProtocolError`` never ends a connection: the relay answers it and keeps
serving. Conditions that do end one (a binary frame, an oversized frame) are
close codes, named in ``relay.protocol``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProtocolError", "RelayError"]


class RelayError(Exception):
    """Base class of every exception raised by the relay."""


class ProtocolError(RelayError):
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
