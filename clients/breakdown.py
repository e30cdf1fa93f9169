"""The usage breakdown as people read it: a table with totals, or a CSV for a spreadsheet."""

from __future__ import annotations

import csv
import io

from rich import box
from rich.table import Table

from common.breakdown import Breakdown, BreakdownRow
from common.text import usd_label

__all__ = ["CSV_COLUMNS", "breakdown_csv", "render_breakdown"]

#: The columns after the group keys, in the CSV and the table alike.
CSV_COLUMNS = ("consumed_usd", "consumed_percent", "polls", "failed_polls")


def _keys(row: BreakdownRow, breakdown: Breakdown) -> list[str]:
    return [str(getattr(row, group) or "") for group in breakdown.group_by]


def render_breakdown(breakdown: Breakdown) -> Table:
    """One row per group, and the totals; dollars and percent points apart."""
    period = breakdown.period
    table = Table(
        box=box.SIMPLE,
        title=f"Usage from {period.start:%Y-%m-%d %H:%M} to {period.end:%Y-%m-%d %H:%M} UTC "
        f"(days in {breakdown.timezone})",
    )
    for group in breakdown.group_by:
        table.add_column(group.capitalize())
    for heading in ("Consumed ($)", "Consumed (% points)", "Polls", "Failed polls"):
        table.add_column(heading, justify="right")
    for row in breakdown.breakdown:
        table.add_row(*_keys(row, breakdown), *_figures(row))
    table.add_section()
    labels = ["Total", *[""] * (len(breakdown.group_by) - 1)] if breakdown.group_by else []
    table.add_row(*labels, *_figures(breakdown.totals), style="bold")
    return table


def _figures(row: BreakdownRow) -> list[str]:
    usd, percent = row.consumed.usd, row.consumed.percent
    return [
        "" if usd is None else usd_label(usd),
        "" if percent is None else f"{percent:,.1f}",
        f"{row.polls:,}",
        f"{row.failed_polls:,}",
    ]


def breakdown_csv(breakdown: Breakdown) -> str:
    """The rows as CSV: the group keys, then ``CSV_COLUMNS``; numbers as the relay gave them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*breakdown.group_by, *CSV_COLUMNS])
    for row in breakdown.breakdown:
        usd, percent = row.consumed.usd, row.consumed.percent
        writer.writerow(
            [
                *_keys(row, breakdown),
                "" if usd is None else usd,
                "" if percent is None else percent,
                row.polls,
                row.failed_polls,
            ]
        )
    return out.getvalue()
