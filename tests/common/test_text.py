"""The Python rules for putting usage into words, checked against the table the dashboard shares."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from common.models import LimitProjected, Meter, ThresholdCrossed
from common.text import (
    WINDOW_LABELS,
    alert_text,
    burn_rate_label,
    meter_value_label,
    percent_label,
    usd_label,
)

CASES: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "label_cases.json").read_text(encoding="utf-8")
)
RESET_AT = datetime(2026, 11, 23, tzinfo=UTC)


def test_window_labels_are_the_shared_ones() -> None:
    """The windows are called what the dashboard calls them."""
    assert CASES["window_labels"] == WINDOW_LABELS


@pytest.mark.parametrize(("percent", "label"), CASES["percent"])
def test_percent_label(percent: float, label: str) -> None:
    """Whole percents from 10 up, one decimal below, rounded down, clamped to 0..100."""
    assert percent_label(percent) == label


def test_percent_label_of_not_a_number_is_zero() -> None:
    """A NaN reads as nothing used, as in the dashboard."""
    assert percent_label(float("nan")) == "0%"


@pytest.mark.parametrize(("rate", "label"), CASES["burn_rate"])
def test_burn_rate_label(rate: float, label: str) -> None:
    """One decimal with its sign, halves rounded up; a flat window never reads "-0.0"."""
    assert burn_rate_label(rate) == label


def test_threshold_alert_text_uses_the_percent_label() -> None:
    """The current usage in an alert reads as the meters read it."""
    alert = ThresholdCrossed(bucket="burst", threshold=90, used_percent=93.5, reset_at=RESET_AT)
    assert alert_text(alert) == "Daily usage crossed 90% (now 93%)."


def test_projection_alert_text_names_utc_for_a_webhook() -> None:
    """Readers of a webhook may be anywhere, so a projection's time says UTC."""
    alert = LimitProjected(
        bucket="sustained",
        projected_at=datetime(2026, 11, 22, 14, 40, tzinfo=UTC),
        reset_at=RESET_AT,
        burn_rate_percent_per_hour=4.25,
    )
    assert alert_text(alert) == (
        "Monthly usage is on track to reach its limit at Nov 22 14:40 UTC, "
        "before it resets (+4.3%/h)."
    )


@pytest.mark.parametrize(("amount", "label"), CASES["usd"])
def test_usd_label(amount: float, label: str) -> None:
    """Dollars and cents with thousands separators, halves to the even cent, never negative."""
    assert usd_label(amount) == label


@pytest.mark.parametrize("amount", [float("nan"), float("inf"), float("-inf")])
def test_usd_label_of_not_a_finite_number_is_zero(amount: float) -> None:
    """An amount that is not a finite number (which JSON cannot hold) reads as nothing spent."""
    assert usd_label(amount) == "$0.00"


@pytest.mark.parametrize(
    ("meter", "label"),
    [
        (Meter(id="burst", label="Daily", unit="percent", used_percent=37.5), "37%"),
        (
            Meter(id="limit", label="Key limit", unit="usd", used=12.5, limit=50.0),
            "$12.50 of $50.00",
        ),
        (Meter(id="today", label="Today", unit="usd", used=3.1), "$3.10"),
        (Meter(id="budget", label="Budget", unit="usd"), "—"),
    ],
)
def test_meter_value_label(meter: Meter, label: str) -> None:
    """Percent meters read in percent, dollar meters in dollars, with their limit if any."""
    assert meter_value_label(meter) == label


def test_alert_text_names_the_meter_by_its_label() -> None:
    """A meter's own label names it in an alert, whatever its id."""
    alert = ThresholdCrossed(
        bucket="limit", label="Key limit", threshold=75, used_percent=80.0, reset_at=None
    )
    assert alert_text(alert) == "Key limit usage crossed 75% (now 80%)."


def test_alert_text_without_a_label_falls_back_to_the_window_name_then_the_id() -> None:
    """A v1 alert has no label: its window's name, else its meter id, names it."""
    daily = ThresholdCrossed(bucket="burst", threshold=50, used_percent=50.0, reset_at=None)
    budget = ThresholdCrossed(bucket="budget", threshold=50, used_percent=50.0, reset_at=None)
    assert alert_text(daily).startswith("Daily usage")
    assert alert_text(budget).startswith("budget usage")


def test_alert_text_names_a_source_other_than_default() -> None:
    """With several sources an alert says whose meter it is."""
    alert = ThresholdCrossed(
        source="eu", bucket="burst", label="Daily", threshold=90, used_percent=93.5, reset_at=None
    )
    assert alert_text(alert) == "eu: Daily usage crossed 90% (now 93%)."
