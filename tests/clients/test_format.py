"""Unit tests of the labels people read: reset times, the dominant meter, the status-bar line."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from rich.console import Console

from clients.format import (
    age_label,
    clock_label,
    dominant_meter,
    forecast_label,
    reset_label,
    source_lines,
    sparkline,
    status_line,
)
from clients.history import render_history
from common.history import HistoryPoint, MeterReading
from common.models import Meter, Snapshot, SourceInfo, Status, Usage, WindowForecast

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "label_cases.json").read_text(encoding="utf-8")
)
NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1))
LONDON = ZoneInfo("Europe/London")


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


def make_source_snapshot(kind: str, meters: list[Meter], *, source: str = "router") -> Snapshot:
    """A snapshot of a source of ``kind`` other than PostHog, fetched at ``NOW``."""
    return Snapshot(seq=1, source=source, kind=kind, fetched_at=NOW, usage={}, meters=meters)


ROUTER_METERS = [
    Meter(
        id="limit",
        label="Key limit",
        unit="usd",
        used=12.5,
        limit=50.0,
        used_percent=25.0,
        reset_at=NOW + timedelta(hours=5, minutes=59, seconds=30),
    ),
    Meter(id="today", label="Today", unit="usd", used=3.1, reset_at=NOW + timedelta(hours=12)),
]


@pytest.mark.parametrize("case", CASES["dominant"])
def test_dominant_window_of_v1(case: dict[str, Any]) -> None:
    """The v1 binding window is the fuller one, then the exceeded one, then the later reset."""
    usage = Usage.model_validate(
        {"product": "posthog_code", "burst": case["burst"], "sustained": case["sustained"]}
    )
    dominant = dominant_meter(usage.meters())
    assert dominant is not None and dominant.id == case["dominant"]


@pytest.mark.parametrize("case", CASES["dominant_meter"], ids=lambda case: case["about"])
def test_dominant_meter(case: dict[str, Any]) -> None:
    """The fullest, then the exceeded, then the later reset; without a percent, the first."""
    meters = [Meter.model_validate(meter) for meter in case["meters"]]
    dominant = dominant_meter(meters)
    assert dominant is not None and dominant.id == case["dominant"]


def test_no_meters_have_no_dominant_meter() -> None:
    """A snapshot without meters has nothing to summarise."""
    assert dominant_meter([]) is None


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


def test_status_line_of_dollar_meters() -> None:
    """Dollar meters read as amounts, with the limit where there is one."""
    snapshot = make_source_snapshot("openrouter", ROUTER_METERS)
    assert status_line(snapshot, NOW) == (
        "Key limit $12.50 of $50.00 · Today $3.10 · resets in 5h 59m"
    )


def test_status_line_of_a_meter_that_never_resets() -> None:
    """A budget without a limit or a reset reads as what was spent, nothing more."""
    budget = Meter(id="budget", label="Budget", unit="usd", used=1234.5)
    snapshot = make_source_snapshot("litellm", [budget], source="team")
    assert status_line(snapshot, NOW) == "Budget $1,234.50"


@pytest.mark.parametrize(
    ("now", "reset_at", "label"),
    [
        # The clocks go forward at 01:00 UTC on Mar 29: midnight UTC after it is 1 AM BST.
        ("2026-03-27T12:00:00Z", "2026-03-29T00:00:00Z", "resets Mar 29 at 12:00 AM"),
        ("2026-03-27T12:00:00Z", "2026-03-30T00:00:00Z", "resets Mar 30 at 1:00 AM"),
        # They go back at 01:00 UTC on Oct 25: midnight UTC is 1 AM before it, midnight after.
        ("2026-10-23T12:00:00Z", "2026-10-25T00:00:00Z", "resets Oct 25 at 1:00 AM"),
        ("2026-10-23T12:00:00Z", "2026-10-26T00:00:00Z", "resets Oct 26 at 12:00 AM"),
    ],
)
def test_status_line_follows_london_across_its_clock_changes(
    now: str, reset_at: str, label: str
) -> None:
    """A reset beyond a day is shown in the configured zone, on either side of a DST change."""
    at = datetime.fromisoformat(now)
    snapshot = make_snapshot(
        burst=10.0, sustained=80.0, sustained_reset_at=datetime.fromisoformat(reset_at)
    )
    assert status_line(snapshot, at, LONDON).endswith(label)


def test_source_lines_pad_every_name_to_the_longest() -> None:
    """One line per source: its name padded to the longest, two spaces, then its status line."""
    sources = [
        SourceInfo(
            name="us",
            kind="posthog",
            topic="usage:us",
            status=Status(state="ok"),
            latest=make_snapshot(burst_resets_in=timedelta(hours=5, minutes=59, seconds=30)),
        ),
        SourceInfo(
            name="router",
            kind="openrouter",
            topic="usage:router",
            status=Status(state="ok"),
            latest=make_source_snapshot("openrouter", ROUTER_METERS),
        ),
    ]
    assert source_lines(sources, NOW) == [
        "us      Daily 37% · Monthly 12% · resets in 5h 59m",
        "router  Key limit $12.50 of $50.00 · Today $3.10 · resets in 5h 59m",
    ]


def test_source_lines_say_when_a_source_has_no_usage_or_is_not_ok() -> None:
    """A source without a snapshot says so; one with stale figures names its state."""
    sources = [
        SourceInfo(
            name="eu",
            kind="posthog",
            topic="usage:eu",
            status=Status(state="degraded"),
            latest=make_snapshot(),
        ),
        SourceInfo(
            name="team",
            kind="litellm",
            topic="usage:team",
            status=Status(state="auth_error"),
            latest=None,
        ),
    ]
    eu, team = source_lines(sources, NOW)
    assert eu.startswith("eu    Daily 37%") and eu.endswith(" · degraded")
    assert team == "team  no usage yet (monitor auth error)"


@pytest.mark.parametrize(
    ("ago", "label"),
    [
        (timedelta(0), "just now"),
        (timedelta(seconds=-5), "just now"),
        (timedelta(seconds=12.7), "12 s ago"),
        (timedelta(minutes=3, seconds=59), "3 min ago"),
        (timedelta(hours=2, minutes=30), "2 h ago"),
    ],
)
def test_age_label(ago: timedelta, label: str) -> None:
    """How fresh figures are, in whole seconds, minutes or hours, as the dashboard says it."""
    assert age_label(NOW - ago, NOW) == label


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


def test_history_reads_dollar_meters_in_dollars() -> None:
    """A source's history has a column per meter, dollar meters in dollars, by their labels."""
    points = [
        HistoryPoint.of(
            NOW + timedelta(minutes=minute),
            minute + 1,
            {
                "limit": MeterReading(used=used, used_percent=used / 50 * 100),
                "today": MeterReading(used=used / 4),
            },
        )
        for minute, used in enumerate((10.0, 12.5))
    ]
    console = Console(file=io.StringIO(), record=True, width=80)
    console.print(render_history(points, NOW, UTC, ROUTER_METERS))
    lines = console.export_text().splitlines()
    assert lines[0].split() == ["Time", "Key", "limit", "Today"]
    today = next(line for line in lines if line.startswith("Today "))
    assert today.rstrip().endswith("peak $3.12 · now $3.12")
    assert [line.split()[1:] for line in lines[2:4]] == [["$10.00", "$2.50"], ["$12.50", "$3.12"]]
