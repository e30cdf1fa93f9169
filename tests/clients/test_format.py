"""Unit tests of the labels people read: percentages, reset times, the status-bar line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from clients.format import (
    clock_label,
    forecast_label,
    percent_label,
    reset_label,
    sparkline,
    status_line,
)
from monitor.models import Snapshot, WindowForecast

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1))


def make_snapshot(
    *,
    burst: float = 37.0,
    sustained: float = 12.0,
    burst_resets_in: timedelta = timedelta(hours=6),
    sustained_reset_at: datetime = datetime(2026, 12, 1, tzinfo=UTC),
    burst_exceeded: bool = False,
    sustained_exceeded: bool = False,
    seq: int = 42,
) -> Snapshot:
    """A snapshot fetched at ``NOW`` with the given windows."""
    return Snapshot.model_validate(
        {
            "seq": seq,
            "fetched_at": NOW,
            "usage": {
                "product": "posthog_code",
                "burst": {
                    "used_percent": burst,
                    "reset_at": NOW + burst_resets_in,
                    "exceeded": burst_exceeded,
                },
                "sustained": {
                    "used_percent": sustained,
                    "reset_at": sustained_reset_at,
                    "exceeded": sustained_exceeded,
                },
            },
        }
    )


@pytest.mark.parametrize(
    ("percent", "label"),
    [
        (37.0, "37%"),
        (37.5, "38%"),
        (12.1, "12%"),
        (0.4, "0.4%"),
        (0.1 + 0.2, "0.3%"),
        (0.0, "0%"),
        (5.0, "5%"),
        (9.94, "9.9%"),
        (9.96, "10%"),
        (99.6, "99%"),
        (100.0, "100%"),
    ],
)
def test_percent_label(percent: float, label: str) -> None:
    """Whole percents from 10 up, one decimal below, no float noise, never a false 100%."""
    assert percent_label(percent) == label


@pytest.mark.parametrize(
    ("resets_in", "label"),
    [
        (timedelta(minutes=-5), "Resets shortly"),
        (timedelta(seconds=59), "Resets shortly"),
        (timedelta(minutes=1), "Resets in 1m"),
        (timedelta(minutes=59, seconds=59), "Resets in 59m"),
        (timedelta(hours=1), "Resets in 1h"),
        (timedelta(hours=5, minutes=59, seconds=59), "Resets in 5h 59m"),
        (timedelta(hours=23, minutes=59), "Resets in 23h 59m"),
    ],
)
def test_reset_label_within_a_day(resets_in: timedelta, label: str) -> None:
    """Within a day the label counts down in whole minutes, rounded down."""
    assert reset_label(NOW + resets_in, NOW) == label


@pytest.mark.parametrize(
    ("reset_at", "label"),
    [
        (datetime(2026, 12, 1, 0, 0, tzinfo=UTC), "Resets Dec 1 at 1:00 AM"),
        (datetime(2026, 12, 1, 12, 5, tzinfo=UTC), "Resets Dec 1 at 1:05 PM"),
        (datetime(2026, 11, 30, 23, 0, tzinfo=UTC), "Resets Dec 1 at 12:00 AM"),
        (datetime(2026, 11, 30, 11, 0, tzinfo=UTC), "Resets Nov 30 at 12:00 PM"),
        (NOW + timedelta(hours=24), "Resets Nov 23 at 1:00 PM"),
    ],
)
def test_reset_label_beyond_a_day(reset_at: datetime, label: str) -> None:
    """From a day on the label is a local date and 12-hour time."""
    assert reset_label(reset_at, NOW, CET) == label


def test_status_line() -> None:
    """The line names both windows and the reset of the fuller one."""
    snapshot = make_snapshot(burst_resets_in=timedelta(hours=5, minutes=59, seconds=30))
    assert status_line(snapshot, NOW) == "Daily 37% · Monthly 12% · resets in 5h 59m"


def test_status_line_follows_the_fuller_window() -> None:
    """When the monthly window is fuller, its reset is the one shown."""
    snapshot = make_snapshot(burst=20.0, sustained=80.0)
    assert status_line(snapshot, NOW, CET) == "Daily 20% · Monthly 80% · resets Dec 1 at 1:00 AM"


def test_status_line_says_limit_reached() -> None:
    """An exceeded window is called out before its reset."""
    snapshot = make_snapshot(burst=100.0, burst_exceeded=True)
    assert status_line(snapshot, NOW) == "Daily 100% · Monthly 12% · Limit reached · resets in 6h"


def test_status_line_prefers_the_later_reset_when_both_are_full() -> None:
    """With both windows exceeded the limit lifts only at the later reset."""
    snapshot = make_snapshot(
        burst=100.0, sustained=100.0, burst_exceeded=True, sustained_exceeded=True
    )
    assert status_line(snapshot, NOW, CET).endswith("Limit reached · resets Dec 1 at 1:00 AM")


@pytest.mark.parametrize(
    ("at", "label"),
    [
        (NOW + timedelta(hours=5, minutes=2), "18:02"),
        (NOW + timedelta(hours=11), "Nov 23 00:00"),
    ],
)
def test_clock_label(at: datetime, label: str) -> None:
    """A local time, with the date only when it is not today."""
    assert clock_label(at, NOW, CET) == label


@pytest.mark.parametrize(
    ("forecast", "label"),
    [
        (
            WindowForecast(
                burn_rate_percent_per_hour=12.5,
                projected_limit_at=NOW + timedelta(hours=5, minutes=2),
                limit_before_reset=True,
            ),
            "+12.5%/h · limit at 18:02, before reset",
        ),
        (
            WindowForecast(
                burn_rate_percent_per_hour=0.3, projected_limit_at=None, limit_before_reset=False
            ),
            "+0.3%/h · not before reset",
        ),
        (
            WindowForecast(
                burn_rate_percent_per_hour=-0.04, projected_limit_at=None, limit_before_reset=False
            ),
            "+0.0%/h · not before reset",
        ),
    ],
)
def test_forecast_label(forecast: WindowForecast, label: str) -> None:
    """The burn rate with a sign, then when the limit comes or that it does not before reset."""
    assert forecast_label(forecast, NOW, CET) == label


def test_forecast_label_without_a_burn_rate() -> None:
    """Without enough data for a burn rate there is nothing to say."""
    forecast = WindowForecast(
        burn_rate_percent_per_hour=None, projected_limit_at=None, limit_before_reset=False
    )
    assert forecast_label(forecast, NOW) is None


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ([0.0, 50.0, 100.0], "▁▅█"),
        ([10.0, 37.0, 90.0], "▂▄▇"),
        ([12.0, 12.0], "▂▂"),
        ([120.0], "█"),
        ([], ""),
    ],
)
def test_sparkline(values: list[float], line: str) -> None:
    """One block per percentage on a fixed scale from 0 to 100."""
    assert sparkline(values) == line
