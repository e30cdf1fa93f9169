"""Tests for monitor.alerts: threshold and projection alerts, once per window."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from common.models import (
    Derived,
    LimitProjected,
    Meter,
    Snapshot,
    ThresholdCrossed,
    WindowForecast,
)
from monitor.alerts import ThresholdTracker

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BURST_RESET = T0 + timedelta(hours=6)
SUSTAINED_RESET = T0 + timedelta(days=20)


def snap(
    burst: float,
    sustained: float = 0.0,
    *,
    burst_reset: datetime = BURST_RESET,
    sustained_reset: datetime = SUSTAINED_RESET,
) -> Snapshot:
    """A snapshot with the given percentages and reset times."""
    return Snapshot.model_validate(
        {
            "seq": 1,
            "fetched_at": T0,
            "usage": {
                "product": "posthog_code",
                "burst": {"used_percent": burst, "reset_at": burst_reset},
                "sustained": {"used_percent": sustained, "reset_at": sustained_reset},
            },
        }
    )


NO_FORECAST = WindowForecast(
    burn_rate_percent_per_hour=None, projected_limit_at=None, limit_before_reset=False
)
PROJECTED_AT = T0 + timedelta(hours=2)
BURST_PROJECTED: Derived = {
    "burst": WindowForecast(
        burn_rate_percent_per_hour=20.0,
        projected_limit_at=PROJECTED_AT,
        limit_before_reset=True,
    ),
    "sustained": NO_FORECAST,
}


def thresholds_of(alerts: list[ThresholdCrossed | LimitProjected]) -> list[tuple[str, float]]:
    return [(a.bucket, a.threshold) for a in alerts if isinstance(a, ThresholdCrossed)]


def test_below_the_lowest_threshold_nothing_is_emitted() -> None:
    """Usage under 50 % raises no alert."""
    assert ThresholdTracker().observe(snap(49.9)) == []


def test_first_crossing_emits_one_event() -> None:
    """Reaching 50 % emits a ThresholdCrossed with the reading and the window."""
    alerts = ThresholdTracker().observe(snap(50.0))
    assert alerts == [
        ThresholdCrossed(
            bucket="burst", label="Daily", threshold=50, used_percent=50.0, reset_at=BURST_RESET
        )
    ]


def test_same_threshold_is_not_repeated_in_a_window() -> None:
    """Staying above a threshold does not emit it again."""
    tracker = ThresholdTracker()
    tracker.observe(snap(55))
    assert tracker.observe(snap(60)) == []


def test_jump_emits_only_the_highest_threshold() -> None:
    """Going from 40 to 95 emits 90 only."""
    tracker = ThresholdTracker()
    tracker.observe(snap(40))
    assert thresholds_of(tracker.observe(snap(95))) == [("burst", 90)]


def test_jump_marks_lower_thresholds_as_done() -> None:
    """After a jump to 95, falling back and rising through 75 emits nothing."""
    tracker = ThresholdTracker()
    tracker.observe(snap(95))
    assert tracker.observe(snap(76)) == []


def test_each_threshold_is_emitted_as_usage_climbs() -> None:
    """Climbing step by step emits 50, 75, 90 and 100 in turn."""
    tracker = ThresholdTracker()
    emitted = [thresholds_of(tracker.observe(snap(p))) for p in (50, 80, 95, 100)]
    assert emitted == [[("burst", 50)], [("burst", 75)], [("burst", 90)], [("burst", 100)]]


def test_buckets_are_tracked_independently() -> None:
    """Burst and sustained each get their own crossing."""
    tracker = ThresholdTracker()
    tracker.observe(snap(60, 10))
    assert thresholds_of(tracker.observe(snap(60, 60))) == [("sustained", 50)]


def test_reset_at_jitter_is_the_same_window() -> None:
    """reset_at moving by less than 120 s does not re-arm the thresholds."""
    tracker = ThresholdTracker()
    tracker.observe(snap(60))
    assert tracker.observe(snap(60, burst_reset=BURST_RESET + timedelta(seconds=90))) == []


def test_new_window_forgets_old_marks() -> None:
    """After reset_at moves on, crossing 50 % again emits again."""
    tracker = ThresholdTracker()
    tracker.observe(snap(60))
    next_reset = BURST_RESET + timedelta(hours=24)
    tracker.observe(snap(1, burst_reset=next_reset))
    assert thresholds_of(tracker.observe(snap(55, burst_reset=next_reset))) == [("burst", 50)]


def test_custom_thresholds_are_used() -> None:
    """Thresholds given to the constructor replace the defaults, in any order."""
    tracker = ThresholdTracker(thresholds=(80, 20))
    assert thresholds_of(tracker.observe(snap(50))) == [("burst", 20)]


def test_state_restores_marks_after_restart() -> None:
    """A tracker built from a JSON round-trip of state() does not repeat alerts."""
    before = ThresholdTracker()
    before.observe(snap(80), BURST_PROJECTED)
    after = ThresholdTracker(state=json.loads(json.dumps(before.state())))
    assert after.observe(snap(85), BURST_PROJECTED) == []


def test_unreadable_state_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Garbage state starts the tracker empty instead of failing."""
    with caplog.at_level(logging.WARNING, logger="usage_monitor.alerts"):
        tracker = ThresholdTracker(state={"burst": {"reset_at": "not a time"}})
    assert thresholds_of(tracker.observe(snap(50))) == [("burst", 50)]
    assert "unreadable alert state" in caplog.text


def test_projection_alert_is_emitted() -> None:
    """A forecast reaching the limit before reset emits LimitProjected."""
    alerts = ThresholdTracker().observe(snap(10), BURST_PROJECTED)
    assert alerts == [
        LimitProjected(
            bucket="burst",
            label="Daily",
            projected_at=PROJECTED_AT,
            reset_at=BURST_RESET,
            burn_rate_percent_per_hour=20.0,
        )
    ]


def test_projection_alert_is_emitted_once_per_window() -> None:
    """A repeated projection in the same window emits nothing more."""
    tracker = ThresholdTracker()
    tracker.observe(snap(10), BURST_PROJECTED)
    assert tracker.observe(snap(12), BURST_PROJECTED) == []


def test_projection_alert_is_re_armed_by_a_new_window() -> None:
    """After a reset the projection alert can fire again."""
    tracker = ThresholdTracker()
    tracker.observe(snap(10), BURST_PROJECTED)
    alerts = tracker.observe(snap(10, burst_reset=BURST_RESET + timedelta(days=1)), BURST_PROJECTED)
    assert [type(a) for a in alerts] == [LimitProjected]


def test_projection_alert_is_skipped_once_the_limit_is_reached() -> None:
    """At 100 % only the threshold alert is emitted, not a projection."""
    alerts = ThresholdTracker().observe(snap(100), BURST_PROJECTED)
    assert [type(a) for a in alerts] == [ThresholdCrossed]


def budget(spent: float, max_budget: float | None, source: str = "team") -> Snapshot:
    """A LiteLLM-like snapshot of ``source`` with one usd meter, ``budget``."""
    return Snapshot(
        seq=1,
        source=source,
        kind="litellm",
        fetched_at=T0,
        usage={"info": {}},
        meters=[
            Meter(
                id="budget",
                label="Budget",
                unit="usd",
                used=spent,
                limit=max_budget,
                used_percent=None if max_budget is None else spent / max_budget * 100,
                reset_at=None,
            )
        ],
    )


def test_an_alert_names_its_source_and_meter() -> None:
    """A threshold alert carries the source, the meter id (as ``bucket``) and its label."""
    [alert] = ThresholdTracker().observe(budget(80.0, 100.0))
    assert isinstance(alert, ThresholdCrossed)
    assert (alert.source, alert.bucket, alert.label, alert.threshold) == (
        "team",
        "budget",
        "Budget",
        75,
    )


def test_a_meter_without_a_limit_raises_no_alert() -> None:
    """Money spent without a limit has no percentage, so no threshold can be crossed."""
    assert ThresholdTracker().observe(budget(5000.0, None)) == []


def test_a_meter_that_never_resets_alerts_once() -> None:
    """A meter with no reset time is one window: each threshold is announced once."""
    tracker = ThresholdTracker()
    first = thresholds_of(tracker.observe(budget(60.0, 100.0)))
    again = thresholds_of(tracker.observe(budget(61.0, 100.0)))
    assert (first, again) == ([("budget", 50)], [])
