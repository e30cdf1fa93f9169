"""Unit tests of the labels people read: percentages, reset times, the status-bar line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from clients.format import (
    clock_label,
    dominant_window,
    forecast_label,
    reset_label,
    sparkline,
    status_line,
)
from common.models import Snapshot, WindowForecast

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "label_cases.json").read_text(encoding="utf-8")
)
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


@pytest.mark.parametrize("case", CASES["reset"], ids=lambda case: case["reset_at"])
def test_reset_label(case: dict[str, str]) -> None:
    """Minutes, then hours and minutes within a day, then a local date and 12-hour time."""
    now = datetime.fromisoformat(case["now"])
    reset_at = datetime.fromisoformat(case["reset_at"])
    assert reset_label(reset_at, now, ZoneInfo(case["time_zone"])) == case["label"]


@pytest.mark.parametrize("case", CASES["dominant"])
def test_dominant_window(case: dict[str, Any]) -> None:
    """The binding window is the fuller one, then the exceeded one, then the later reset."""
    usage = {"product": "posthog_code", "burst": case["burst"], "sustained": case["sustained"]}
    snapshot = Snapshot.model_validate({"seq": 1, "fetched_at": NOW, "usage": usage})
    expected = snapshot.usage.burst if case["dominant"] == "burst" else snapshot.usage.sustained
    assert dominant_window(snapshot) is expected


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
