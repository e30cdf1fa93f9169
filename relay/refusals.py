"""
``Refusals``: a log of refusals that stays a few lines long however many come.

A crowd of clients, hostile or just misconfigured, can be refused thousands of
times a second; a line each would fill the disk and bury everything else. The
first refusal after a quiet minute (or the first few, ``burst``) is logged at
once, in full; the ones after it are only counted, by kind, and told as one
line a minute for as long as they go on:

    refused 1204 more connections in the last minute: 1100 closed with 503, over
    the cap of 128 connections still sending a request; 104 closed with 408, no
    complete request within 10 s
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Final

from .limits import Clock

__all__ = ["Refusals"]

logger = logging.getLogger("usage_monitor.relay")

#: Seconds between two lines of one ``Refusals``.
INTERVAL: Final = 60.0


class Refusals:
    """Logs the first ``burst`` refusals at once, then at most one line a minute with the counts.

    ``what`` names what is refused in the summary line ("connections").
    The summary is written when the minute is over, by a timer on the running
    event loop; without a loop it waits for the next refusal. ``flush()``
    writes it at once (when a server stops, say).
    """

    def __init__(
        self,
        what: str,
        *,
        burst: int = 1,
        interval: float = INTERVAL,
        clock: Clock = time.monotonic,
    ) -> None:
        self.what = what
        self._burst = burst
        #: Refusals logged in full in the current minute.
        self._logged = 0
        self._interval = interval
        self._clock = clock
        self._counts: Counter[str] = Counter()
        #: When the current minute ends; None while it is quiet.
        self._window_end: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def log(self, kind: str, message: str, *args: object) -> None:
        """A refusal of this ``kind`` (a phrase for the summary); ``message % args`` says it all."""
        if self._window_end is not None and self._clock() >= self._window_end:
            self._end_window()
        if self._window_end is None:
            self._open_window()
        elif self._logged >= self._burst:
            self._counts[kind] += 1
            return
        self._logged += 1
        logger.warning(message, *args)

    def flush(self) -> None:
        """Write what was counted now, and end the minute."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._summarize()
        self._window_end = None

    def _open_window(self) -> None:
        self._logged = 0
        self._window_end = self._clock() + self._interval
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the next refusal ends the minute
            return
        self._timer = loop.call_later(self._interval, self._end_window)

    def _end_window(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._summarize():
            self._open_window()  # still refusing: stay at a line a minute
            self._logged = self._burst
        else:
            self._window_end = None

    def _summarize(self) -> bool:
        """Log the counted refusals as one line; False if there were none."""
        if not self._counts:
            return False
        total = sum(self._counts.values())
        details = "; ".join(f"{count} {kind}" for kind, count in self._counts.most_common())
        logger.warning("refused %d more %s in the last minute: %s", total, self.what, details)
        self._counts.clear()
        return True
