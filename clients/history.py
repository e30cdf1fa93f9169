"""
The ``usage-monitor history`` view: a compact table and a sparkline per meter.

``render_history`` is pure (the caller passes ``now`` and the time zone),
like the rest of the formatting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from common.history import HistoryPoint, MeterReading, thin_evenly
from common.models import Meter
from common.text import meter_name, percent_label, usd_label

from .format import clock_label, sparkline

__all__ = ["render_history"]

#: Rows of the table: enough to see the trend, few enough to read at a glance.
_TABLE_ROWS = 12
#: Characters of each sparkline.
_SPARK_WIDTH = 48
_MISSING = "—"


@dataclass(frozen=True)
class _Column:
    """One meter of the history: its id, its name, and whether it is read in dollars."""

    meter_id: str
    name: str
    in_usd: bool

    def value(self, reading: MeterReading | None) -> float | None:
        if reading is None:
            return None
        return reading.used if self.in_usd else reading.used_percent

    def spark_values(self, points: Sequence[HistoryPoint]) -> list[float]:
        """Percentages for the sparkline: used_percent where the meter has a limit, else
        the amounts over their own peak (dollars without a limit have no fixed top)."""
        readings = [
            point.meters[self.meter_id] for point in points if self.meter_id in point.meters
        ]
        percents = [r.used_percent for r in readings if r.used_percent is not None]
        if percents:
            return percents
        amounts = [r.used for r in readings if r.used is not None]
        top = max(amounts, default=0.0)
        return [amount / top * 100 if top > 0 else 0.0 for amount in amounts]

    def label(self, value: float | None) -> str:
        if value is None:
            return _MISSING
        return usd_label(value) if self.in_usd else percent_label(value)


def render_history(
    points: Sequence[HistoryPoint],
    now: datetime,
    tz: tzinfo | None = None,
    meters: Sequence[Meter] = (),
) -> RenderableType:
    """Draw ``points`` (oldest first, at least one) as of ``now``; times are shown in ``tz``.

    ``meters`` (the source's latest snapshot's) name the columns and say which
    are read in dollars (their unit is ``usd``); the sparklines show how full
    a meter with a limit is, and a dollar meter without one against its own
    peak. Meters the points hold that ``meters`` does not name are drawn too,
    by id.
    """
    columns = _columns(points, meters)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Time")
    for column in columns:
        table.add_column(column.name, justify="right")
    for point in thin_evenly(points, _TABLE_ROWS):
        cells = [
            column.label(column.value(point.meters.get(column.meter_id))) for column in columns
        ]
        table.add_row(clock_label(point.fetched_at, now, tz), *cells)

    sparks = Table.grid(padding=(0, 1))
    sparks.add_column(min_width=8)
    sparks.add_column()
    sparks.add_column()
    for column in columns:
        values = [
            value
            for point in points
            if (value := column.value(point.meters.get(column.meter_id))) is not None
        ]
        if not values:
            continue
        line = sparkline(thin_evenly(column.spark_values(points), _SPARK_WIDTH))
        summary = f"peak {column.label(max(values))} · now {column.label(values[-1])}"
        sparks.add_row(Text(column.name, "bold"), Text(line, "cyan"), Text(summary, "dim"))

    first, last = points[0].fetched_at, points[-1].fetched_at
    span = Text(
        f"{len(points)} points from {clock_label(first, now, tz)} to {clock_label(last, now, tz)}",
        "dim",
    )
    return Group(table, sparks, span)


def _columns(points: Sequence[HistoryPoint], meters: Sequence[Meter]) -> list[_Column]:
    known = {meter.id: meter for meter in meters}
    ids = list(known)
    for point in points:
        ids.extend(meter_id for meter_id in point.meters if meter_id not in ids)
    columns = []
    for meter_id in ids:
        meter = known.get(meter_id)
        if meter is not None:
            in_usd = meter.unit == "usd"
        else:  # a meter that is no longer reported: read it as its points were
            readings = [point.meters[meter_id] for point in points if meter_id in point.meters]
            in_usd = any(reading.used is not None for reading in readings)
        label = meter.label if meter is not None else None
        columns.append(_Column(meter_id, meter_name(meter_id, label), in_usd))
    return columns
