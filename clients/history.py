"""
The ``usage-monitor history`` view: a compact table and a sparkline per window.

``render_history`` is pure (the caller passes ``now`` and, for tests, the time
zone), like the rest of the formatting.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from common.history import HistoryPoint, thin_evenly
from common.text import WINDOW_LABELS, percent_label

from .format import clock_label, sparkline

__all__ = ["render_history"]

#: Rows of the table: enough to see the trend, few enough to read at a glance.
_TABLE_ROWS = 12
#: Characters of each sparkline.
_SPARK_WIDTH = 48


def render_history(
    points: Sequence[HistoryPoint], now: datetime, tz: tzinfo | None = None
) -> RenderableType:
    """Draw ``points`` (oldest first, at least one) as of ``now``; times are shown in ``tz``."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Time")
    table.add_column(WINDOW_LABELS["burst"], justify="right")
    table.add_column(WINDOW_LABELS["sustained"], justify="right")
    for point in thin_evenly(points, _TABLE_ROWS):
        table.add_row(
            clock_label(point.fetched_at, now, tz),
            percent_label(point.burst_percent),
            percent_label(point.sustained_percent),
        )

    sparks = Table.grid(padding=(0, 1))
    sparks.add_column(min_width=8)
    sparks.add_column()
    sparks.add_column()
    series = (
        (WINDOW_LABELS["burst"], [point.burst_percent for point in points]),
        (WINDOW_LABELS["sustained"], [point.sustained_percent for point in points]),
    )
    for label, values in series:
        line = sparkline(thin_evenly(values, _SPARK_WIDTH))
        summary = f"peak {percent_label(max(values))} · now {percent_label(values[-1])}"
        sparks.add_row(Text(label, "bold"), Text(line, "cyan"), Text(summary, "dim"))

    first, last = points[0].fetched_at, points[-1].fetched_at
    span = Text(
        f"{len(points)} points from {clock_label(first, now, tz)} to {clock_label(last, now, tz)}",
        "dim",
    )
    return Group(table, sparks, span)
