"""
Daily usage reports (``accounting-v1.md``, section 3): the report and its delivery state.

A ``UsageReport`` counts one source's usage over one *usage day*, a calendar
day in the relay's ``timezone`` (23 or 25 hours when summer time starts or
ends). It is built once the day has closed, saved, and delivered to every
destination: ``report_url`` (an HTTP POST under the ``Idempotency-Key`` that
``idempotency_key`` gives, the same on every retry) and ``report_dir`` (a
file per source and day). ``ReportEntry`` is the state of one (source, day)
as ``GET /api/v1/reports``, the ``list_reports`` op, the CLI and the events
``usage.report_delivered`` and ``usage.report_failed`` show it.
"""

from __future__ import annotations

from datetime import date
from typing import Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .breakdown import Consumed
from .models import MeterUnit, SourceKind, Timestamp

__all__ = [
    "DESTINATIONS",
    "REPORT_STATES",
    "REPORT_VERSION",
    "DeliveryState",
    "Destination",
    "ReportDelivery",
    "ReportEntry",
    "ReportList",
    "ReportMeter",
    "ReportPeriod",
    "ReportState",
    "UsageReport",
    "idempotency_key",
    "report_id",
]

#: The version of the report's shape; a receiver may tell later shapes by it.
REPORT_VERSION: Final = 1

#: Where reports go: an HTTP endpoint, a directory.
Destination = Literal["report_url", "report_dir"]
DESTINATIONS: Final[tuple[Destination, ...]] = get_args(Destination)

#: One destination's state: ``failed`` waits for someone to act (a 4xx answer);
#: ``pending`` is retried by itself.
DeliveryState = Literal["pending", "delivered", "failed"]
#: A (source, day) is ``failed`` when a destination failed, else ``pending`` while
#: one is pending (or the report is not built yet), else ``delivered``.
ReportState = DeliveryState
REPORT_STATES: Final[tuple[ReportState, ...]] = get_args(ReportState)


def report_id(source: str, usage_day: date) -> str:
    """``<source>:<usage_day>``: what names one report."""
    return f"{source}:{usage_day.isoformat()}"


def idempotency_key(source: str, usage_day: date) -> str:
    """The ``Idempotency-Key`` of a report's POST, the same on every retry and re-run."""
    return f"usage-report:{report_id(source, usage_day)}"


class _Model(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, frozen=True)


class ReportPeriod(_Model):
    """The usage day in UTC: its local midnight to the next."""

    start: Timestamp
    end: Timestamp


class ReportMeter(_Model):
    """One meter over the day, summed from its ledger hours."""

    id: str
    unit: MeterUnit
    consumed: float = Field(description="the rises of the meter's value over the day, its unit")
    peak_used_percent: float | None
    close_used_percent: float | None = Field(description="at the day's last poll")
    resets: int


class UsageReport(_Model):
    """One source's usage over one usage day; the body every destination receives."""

    report_id: str
    version: int = REPORT_VERSION
    source: str
    kind: SourceKind
    usage_day: date
    timezone: str
    period: ReportPeriod
    meters: list[ReportMeter]
    consumed: Consumed
    polls: int
    failed_polls: int
    coverage: float = Field(
        ge=0, le=1, description="the fraction of the day covered by successful polls"
    )
    generated_at: Timestamp


class ReportDelivery(_Model):
    """The state of one report at one destination."""

    state: DeliveryState
    attempts: int = 0
    last_error: str | None = None
    delivered_at: Timestamp | None = None


class ReportEntry(_Model):
    """One (source, usage day): its report's state over every configured destination.

    ``attempts`` counts the tries at every destination; ``last_error`` is the
    latest error of one still pending or failed; ``delivered_at`` is when the
    last destination took it. ``saved`` tells whether the report is built.
    """

    report_id: str
    source: str
    usage_day: date
    state: ReportState
    saved: bool
    attempts: int = 0
    last_error: str | None = None
    delivered_at: Timestamp | None = None
    destinations: dict[Destination, ReportDelivery] = Field(default_factory=dict)


class ReportList(_Model):
    """The answer of ``GET /api/v1/reports`` and of the ``list_reports`` op."""

    timezone: str
    destinations: list[Destination]
    reports: list[ReportEntry] = Field(description="by usage day, then by source")
