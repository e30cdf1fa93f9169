"""
Clients of the usage relay: the async Python client, the one-line formatter for
status bars, the live terminal view and the ``usage-monitor`` command.
"""

from .client import (
    DEFAULT_URL,
    RECONNECT_BACKOFF,
    AlertReceived,
    ConnectionChanged,
    ConnectionState,
    RelayClient,
    RelayEvent,
    SnapshotReceived,
    SourceList,
    SourcesReceived,
    StatusReceived,
    topic_for,
)
from .exceptions import (
    GatewayUnavailable,
    ProtocolError,
    RateLimited,
    RelayClientError,
    RelayUnavailable,
    RequestFailed,
    RequestTimeout,
    Unauthorized,
    UnknownSource,
)
from .format import reset_label, status_line
from .reports import ReportsClient

__all__ = [
    "DEFAULT_URL",
    "RECONNECT_BACKOFF",
    "AlertReceived",
    "ConnectionChanged",
    "ConnectionState",
    "GatewayUnavailable",
    "ProtocolError",
    "RateLimited",
    "RelayClient",
    "RelayClientError",
    "RelayEvent",
    "RelayUnavailable",
    "ReportsClient",
    "RequestFailed",
    "RequestTimeout",
    "SnapshotReceived",
    "SourceList",
    "SourcesReceived",
    "StatusReceived",
    "Unauthorized",
    "UnknownSource",
    "reset_label",
    "status_line",
    "topic_for",
]
