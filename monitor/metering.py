"""
The arithmetic of the hourly metering ledger (``accounting-v1.md``, section 2); no I/O.

The ledger has one row per (source, meter, UTC hour). ``Metering`` remembers,
for each meter of one source, its last observation, and turns every poll into
one ``LedgerRow`` per meter: the *delta* of that poll, to be added to the row
of the poll's hour (``LedgerRow.add``, or the store's upsert, which does the
same in SQL).

- A poll belongs to the UTC hour ``fetched_at`` falls in; a poll exactly on an
  hour boundary belongs to the hour it starts.
- ``consumed`` is the rise of ``used`` (of ``used_percent`` where ``used`` is
  None); ``consumed_percent`` the rise of ``used_percent`` (None for a meter
  without a percentage, that is without a limit).
- A drop, or a ``reset_at`` that moved to a later window (by more than
  ``RESET_JITTER``), is a reset: ``resets`` + 1, and the new value counts from
  zero (its whole value is consumed).
- The first observation of a meter counts nothing: there is no earlier value.
- A gap invents nothing: the rise across it is booked to the hour in which it
  was observed, and the hours of the gap have no rows (so no polls).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from common.models import Meter, MeterUnit, Snapshot

from .forecast import RESET_JITTER

__all__ = [
    "HOUR",
    "LedgerKey",
    "LedgerRow",
    "Metering",
    "Observation",
    "accumulate",
    "hour_of",
]

HOUR = timedelta(hours=1)

#: (source, meter, hour): what identifies a ledger row.
LedgerKey = tuple[str, str, datetime]


def hour_of(at: datetime) -> datetime:
    """The start of the UTC hour ``at`` (aware, in UTC) falls in."""
    return at.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the ledger remembers of one meter at one poll."""

    unit: MeterUnit
    used: float | None = None
    used_percent: float | None = None
    reset_at: datetime | None = None

    @classmethod
    def of(cls, meter: Meter) -> Observation:
        return cls(meter.unit, meter.used, meter.used_percent, meter.reset_at)

    @property
    def value(self) -> float | None:
        """What ``consumed`` measures: ``used``, or ``used_percent`` where it is None."""
        return self.used if self.used is not None else self.used_percent


@dataclass(slots=True)
class LedgerRow:
    """One row of the ledger, or the delta of one poll to be added to one."""

    source: str
    meter: str
    hour: datetime
    unit: MeterUnit
    consumed: float = 0.0
    consumed_percent: float | None = None
    peak_used_percent: float | None = None
    close_used_percent: float | None = None
    resets: int = 0
    polls: int = 0
    failed_polls: int = 0

    @property
    def key(self) -> LedgerKey:
        return self.source, self.meter, self.hour

    def add(self, later: LedgerRow) -> None:
        """Add the delta of a later poll of the same meter and hour (as the store's upsert)."""
        self.unit = later.unit
        self.consumed = self.consumed + later.consumed
        if later.consumed_percent is not None:
            self.consumed_percent = (self.consumed_percent or 0.0) + later.consumed_percent
        if later.peak_used_percent is not None:
            self.peak_used_percent = (
                later.peak_used_percent
                if self.peak_used_percent is None
                else max(self.peak_used_percent, later.peak_used_percent)
            )
        if later.close_used_percent is not None:
            self.close_used_percent = later.close_used_percent
        self.resets += later.resets
        self.polls += later.polls
        self.failed_polls += later.failed_polls


def _moved_later(reset_at: datetime | None, before: datetime | None) -> bool:
    """Whether ``reset_at`` names a later window than ``before`` did."""
    return reset_at is not None and before is not None and reset_at - before > RESET_JITTER


def _rise(value: float | None, before: float | None, reset: bool) -> float | None:
    """What a value that went from ``before`` to ``value`` adds (None: it has no value)."""
    if value is None:
        return None
    if before is None:
        return 0.0
    if reset:
        return value
    return max(value - before, 0.0)


class Metering:
    """The ledger arithmetic of one source: its meters' last observations, and each poll's
    deltas.

    ``last`` seeds the observations (the source's last stored snapshot), so a
    restart counts the rise since it.
    """

    def __init__(self, source: str, last: Mapping[str, Observation] | None = None) -> None:
        self.source = source
        self.last: dict[str, Observation] = dict(last or {})

    def copy(self) -> Metering:
        return Metering(self.source, self.last)

    def observe_snapshot(self, snapshot: Snapshot) -> list[LedgerRow]:
        """The deltas of ``snapshot`` (of this source), one per meter; remembers its meters."""
        return self.observe(
            snapshot.fetched_at, {meter.id: Observation.of(meter) for meter in snapshot.meters}
        )

    def observe(self, at: datetime, meters: Mapping[str, Observation]) -> list[LedgerRow]:
        """The deltas of a poll at ``at`` that saw ``meters``; remembers them."""
        hour = hour_of(at)
        deltas = []
        for meter_id, now in meters.items():
            before = self.last.get(meter_id)
            delta = LedgerRow(
                self.source,
                meter_id,
                hour,
                now.unit,
                polls=1,
                peak_used_percent=now.used_percent,
                close_used_percent=now.used_percent,
            )
            if before is None or (now.used is None) != (before.used is None):
                # The first observation (or one of another kind of value): nothing to rise from.
                delta.consumed_percent = None if now.used_percent is None else 0.0
            else:
                value, previous = now.value, before.value
                dropped = value is not None and previous is not None and value < previous
                reset = dropped or _moved_later(now.reset_at, before.reset_at)
                delta.resets = int(reset)
                delta.consumed = _rise(value, previous, reset) or 0.0
                delta.consumed_percent = _rise(now.used_percent, before.used_percent, reset)
            deltas.append(delta)
            self.last[meter_id] = now
        return deltas

    def failed_poll(self, at: datetime) -> list[LedgerRow]:
        """The deltas of a failed poll at ``at``: one failed poll for each meter last seen."""
        hour = hour_of(at)
        return [
            LedgerRow(self.source, meter_id, hour, seen.unit, failed_polls=1)
            for meter_id, seen in self.last.items()
        ]


def accumulate(
    deltas: Iterable[LedgerRow], rows: dict[LedgerKey, LedgerRow] | None = None
) -> dict[LedgerKey, LedgerRow]:
    """The ledger rows the ``deltas`` add up to (added to ``rows`` when given), by key."""
    rows = {} if rows is None else rows
    for delta in deltas:
        row = rows.get(delta.key)
        if row is None:
            rows[delta.key] = replace(delta)
        else:
            row.add(delta)
    return rows
