"""Points of stored usage history, as the relay sends them and the clients draw them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel

from .models import Snapshot, Timestamp

__all__ = ["HistoryPoint", "MeterReading", "thin_evenly"]

_T = TypeVar("_T")


class MeterReading(BaseModel):
    """One meter's value at one point of history (see ``common.models.Meter``)."""

    used_percent: float | None = None
    used: float | None = None
    reset_at: Timestamp | None = None


class HistoryPoint(BaseModel):
    """One point of one source's usage history, detailed or downsampled.

    ``meters`` holds every meter of the snapshot by id. The four flat fields
    are the PostHog windows as the first version of ``get_history`` sent
    them; they are filled for ``posthog`` sources only.
    """

    fetched_at: Timestamp
    seq: int
    meters: dict[str, MeterReading]
    burst_percent: float | None = None
    sustained_percent: float | None = None
    burst_reset_at: Timestamp | None = None
    sustained_reset_at: Timestamp | None = None

    @classmethod
    def of(cls, fetched_at: datetime, seq: int, meters: dict[str, MeterReading]) -> HistoryPoint:
        """A point, with the flat PostHog fields filled when its meters are PostHog's windows."""
        burst, sustained = meters.get("burst"), meters.get("sustained")
        return cls(
            fetched_at=fetched_at,
            seq=seq,
            meters=meters,
            burst_percent=burst.used_percent if burst else None,
            sustained_percent=sustained.used_percent if sustained else None,
            burst_reset_at=burst.reset_at if burst else None,
            sustained_reset_at=sustained.reset_at if sustained else None,
        )

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> HistoryPoint:
        return cls.of(
            snapshot.fetched_at,
            snapshot.seq,
            {
                meter.id: MeterReading(
                    used_percent=meter.used_percent, used=meter.used, reset_at=meter.reset_at
                )
                for meter in snapshot.meters
            },
        )


def thin_evenly(items: Sequence[_T], limit: int) -> list[_T]:
    """At most ``limit`` items spread evenly from the first to the last; the last is always kept."""
    if len(items) <= limit:
        return list(items)
    # Count the picks back from the newest so that rounding never drops it.
    step = (len(items) - 1) / max(limit - 1, 1)
    return [items[len(items) - 1 - round(i * step)] for i in reversed(range(limit))]
