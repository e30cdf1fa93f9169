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
    StatusReceived,
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
)
from .format import reset_label, status_line

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
    "RequestFailed",
    "RequestTimeout",
    "SnapshotReceived",
    "StatusReceived",
    "Unauthorized",
    "reset_label",
    "status_line",
]
