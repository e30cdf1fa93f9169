"""
Burn rate and limit projection for every meter with a percentage.

A ``Forecaster`` keeps a short series of ``(fetched_at, used_percent)`` per
meter of one source, fed by every snapshot (and seeded from stored history at
start-up), and turns it into a ``Derived`` block: how fast each meter fills
and whether it reaches 100 % before it resets. Meters without a limit have no
percentage and no forecast.

A series belongs to one window. It starts afresh when the window's ``reset_at``
moves by more than ``RESET_JITTER`` or when ``used_percent`` drops, so points
from before a reset never bend the slope. A meter that never resets
(``reset_at`` None) has one window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from common.history import HistoryPoint
from common.models import Derived, Snapshot, WindowForecast

__all__ = ["RESET_JITTER", "Forecaster", "same_window"]

# Older gateways send ``resets_in_seconds``; the ``reset_at`` computed from it
# shifts with each poll's latency, so two readings this close are one window.
RESET_JITTER = timedelta(seconds=120)


def same_window(reset_at: datetime | None, other: datetime | None) -> bool:
    """Whether two ``reset_at`` readings identify the same window (None: never resets)."""
    if reset_at is None or other is None:
        return reset_at is other
    return abs(reset_at - other) <= RESET_JITTER


@dataclass
class _Series:
    reset_at: datetime | None
    points: deque[tuple[datetime, float]] = field(default_factory=deque)


class Forecaster:
    """Burn rate over the last ``span``, from at least ``min_spread`` of data."""

    def __init__(
        self,
        *,
        span: timedelta = timedelta(hours=1),
        min_spread: timedelta = timedelta(minutes=5),
    ) -> None:
        self._span = span
        # usage_percent is rounded to 0.1, so a slope over a few polls is mostly noise.
        self._min_spread = min_spread
        self._series: dict[str, _Series] = {}

    def seed(self, points: Iterable[HistoryPoint]) -> None:
        """Replay one source's stored history (oldest first), e.g. the last ``span`` of it."""
        for point in points:
            for meter_id, reading in point.meters.items():
                if reading.used_percent is not None:
                    self._add(meter_id, point.fetched_at, reading.used_percent, reading.reset_at)

    def observe(self, snapshot: Snapshot) -> Derived:
        """Record the snapshot and return the forecast as of its ``fetched_at``."""
        now = snapshot.fetched_at
        forecasts: Derived = {}
        for meter in snapshot.meters:
            if meter.used_percent is None:
                continue
            self._add(meter.id, now, meter.used_percent, meter.reset_at)
            projected = self.projection(meter.id, now)
            forecasts[meter.id] = WindowForecast(
                burn_rate_percent_per_hour=self.burn_rate(meter.id, now),
                projected_limit_at=projected,
                limit_before_reset=projected is not None,
            )
        return forecasts

    def burn_rate(self, meter_id: str, now: datetime) -> float | None:
        """Least-squares slope in percent per hour over ``(now - span, now]``, if enough data."""
        series = self._series.get(meter_id)
        if series is None:
            return None
        points = [(t, p) for t, p in series.points if now - self._span <= t <= now]
        if len(points) < 2 or points[-1][0] - points[0][0] < self._min_spread:
            return None
        hours = [(t - points[0][0]) / timedelta(hours=1) for t, _ in points]
        mean_h = sum(hours) / len(hours)
        mean_p = sum(p for _, p in points) / len(points)
        sxx = sum((h - mean_h) ** 2 for h in hours)
        sxy = sum((h - mean_h) * (p - mean_p) for h, (_, p) in zip(hours, points, strict=True))
        slope = sxy / sxx
        return slope if math.isfinite(slope) else None  # absurd readings give no rate

    def projection(self, meter_id: str, now: datetime) -> datetime | None:
        """When the window reaches 100 %; None if not before it resets at this rate."""
        series = self._series.get(meter_id)
        if series is None or not series.points:
            return None
        # Already full: report when it got there rather than a projection.
        reached = next((t for t, p in series.points if p >= 100), None)
        if reached is not None:
            return reached
        rate = self.burn_rate(meter_id, now)
        if rate is None or rate <= 0:
            return None
        last_at, last_percent = series.points[-1]
        try:
            at = last_at + timedelta(hours=(100 - last_percent) / rate)
        except OverflowError:  # beyond year 9999: certainly not before the reset
            return None
        return at if series.reset_at is None or at < series.reset_at else None

    def _add(self, meter_id: str, at: datetime, percent: float, reset_at: datetime | None) -> None:
        series = self._series.get(meter_id)
        if series is not None and series.points and at <= series.points[-1][0]:
            return  # seeded history overlapping live snapshots, or a clock step back
        if (
            series is None
            or not same_window(series.reset_at, reset_at)
            or (series.points and percent < series.points[-1][1])
        ):
            series = self._series[meter_id] = _Series(reset_at)
        # Follow the jitter so that a slow drift never looks like a new window.
        series.reset_at = reset_at
        series.points.append((at, percent))
        while series.points[0][0] < at - self._span:
            series.points.popleft()
