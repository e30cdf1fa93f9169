"""
Exceptions raised by the monitor.

The tree::

    UsageMonitorError
    ├── UpstreamError                 a poll of the gateway did not give a snapshot
    │   ├── UpstreamUnavailable       connection failure, timeout or 5xx
    │   ├── UpstreamRateLimited       429; carries ``retry_after``
    │   ├── UpstreamAuthError         401 or 403, or no readable credentials at all
    │   └── UpstreamInvalidResponse   a status or body the gateway dialect does not allow
    ├── StoreError                    the database could not be opened, read or written
    │   └── ClusterUnavailable        the cluster's Redis cannot be reached or refused a command
    ├── DatabaseInUse                 another process holds the database's lock
    ├── MonitorNotRunning             the service was asked to poll outside its lifetime
    └── LeaseLost                     another relay of the cluster polls the source now

Messages never contain the gateway token: they name the failure, the status
code and at most a short, sanitised excerpt of what went wrong.
"""

from __future__ import annotations

__all__ = [
    "ClusterUnavailable",
    "DatabaseInUse",
    "LeaseLost",
    "MonitorNotRunning",
    "StoreError",
    "UpstreamAuthError",
    "UpstreamError",
    "UpstreamInvalidResponse",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
    "UsageMonitorError",
]


class UsageMonitorError(Exception):
    """Base class of every exception raised by the monitor."""


class UpstreamError(UsageMonitorError):
    """A poll of the gateway failed; the last good snapshot stays in place."""


class UpstreamUnavailable(UpstreamError):
    """The gateway could not be reached, timed out, or answered with a 5xx."""


class UpstreamRateLimited(UpstreamError):
    """The gateway answered 429; ``retry_after`` is its advice in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamAuthError(UpstreamError):
    """The gateway refused the credentials (401 or 403), or there were none to send."""


class UpstreamInvalidResponse(UpstreamError):
    """The gateway answered with an unexpected status or a body that does not validate."""


class StoreError(UsageMonitorError):
    """The database could not be opened, read or written (disk full, read-only, ...)."""


class ClusterUnavailable(StoreError):
    """The cluster's Redis could not be reached, or refused a command; the message never
    holds its URL (which may carry a password)."""


class DatabaseInUse(UsageMonitorError):
    """Another usage-monitor holds the database's lock; the message names its pid."""


class MonitorNotRunning(UsageMonitorError):
    """``refresh_now()`` was called while the service is not running."""


class LeaseLost(UsageMonitorError):
    """This relay no longer holds the source's lease: its poll was not published."""
