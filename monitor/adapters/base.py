"""The interface every gateway dialect implements, and what a poll of a source yields."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from common.models import Meter, SourceKind, Usage

__all__ = ["Adapter", "Reading"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One successful poll of a source, before the monitor numbers it into a snapshot."""

    kind: SourceKind
    #: The source's own answer, validated: PostHog's ``Usage``, or the fields
    #: another dialect's adapter reads, as the source sent them.
    usage: Usage | dict[str, Any]
    meters: list[Meter]


class Adapter(Protocol):
    """One gateway dialect: where to ask, and how to read the answer into meters.

    The HTTP exchange itself (deadline, size bound, statuses, strict JSON) is
    ``monitor.gateway.GatewayClient``'s, the same for every dialect.
    """

    @property
    def kind(self) -> SourceKind: ...

    @property
    def path(self) -> str:
        """The request path under the source's base URL."""
        ...

    def read(self, body: Any, *, received_at: datetime, secret: str) -> Reading:
        """The reading in a parsed JSON ``body``.

        Raises ``UpstreamInvalidResponse`` naming the field that does not fit
        the dialect, never its value nor ``secret`` (the token).
        """
        ...
