"""Points of stored usage history, as the relay sends them and the clients draw them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel

from .models import Timestamp

__all__ = ["HistoryPoint", "thin_evenly"]

_T = TypeVar("_T")


class HistoryPoint(BaseModel):
    """One point of usage history, detailed or downsampled."""

    fetched_at: Timestamp
    seq: int
    burst_percent: float
    sustained_percent: float
    burst_reset_at: Timestamp
    sustained_reset_at: Timestamp


def thin_evenly(items: Sequence[_T], limit: int) -> list[_T]:
    """At most ``limit`` items spread evenly from the first to the last; the last is always kept."""
    if len(items) <= limit:
        return list(items)
    # Count the picks back from the newest so that rounding never drops it.
    step = (len(items) - 1) / max(limit - 1, 1)
    return [items[len(items) - 1 - round(i * step)] for i in reversed(range(limit))]
