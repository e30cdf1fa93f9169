"""
The relay's open files: the most it may have, and the connection cap that fits in them.

Every connection is an open file. A process often starts with a soft limit of
1,024 open files under a much higher hard one, so the relay raises its soft
limit to the hard one as it starts, and fits ``max_connections`` into what it
then has: besides its authenticated connections it keeps room for the files
that are not connections (``RESERVE``: the database and its journal, the
gateway and webhook clients, the log, the listening socket, the event loop,
worker threads) and for both groups of unauthenticated connections (each up to
``max_unauthenticated``: those still sending their request, WebSockets in
their grace period). A crowd then meets a cap, answered at once, before it
meets the open-file limit, where every ``accept()`` fails.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["RESERVE", "fit_max_connections", "raise_open_file_limit"]

logger = logging.getLogger("usage_monitor.relay")

#: Open files kept for everything that is not a client connection.
RESERVE: Final = 100
#: Tried when the hard limit is unlimited: Linux's default ceiling (fs.nr_open), macOS's.
_UNLIMITED_TRIES: Final = (1 << 20, 10_240)


def raise_open_file_limit() -> int | None:
    """Raise the soft limit on open files to the hard one; the soft limit after, None if none.

    Logs the change; a limit that cannot be raised is left as it is.
    """
    try:
        import resource
    except ImportError:  # not on this platform (Windows)
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited:
        return None
    tries = _UNLIMITED_TRIES if hard == unlimited else (hard,)
    for target in tries:
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            continue
        logger.info("raised the open-file limit from %d to %d", soft, target)
        return target
    return soft


def fit_max_connections(max_connections: int, max_unauthenticated: int, open_files: int) -> int:
    """The authenticated connections that fit in ``open_files`` besides everything else (>= 1)."""
    room = open_files - RESERVE - 2 * max_unauthenticated
    return max(1, min(max_connections, room))
