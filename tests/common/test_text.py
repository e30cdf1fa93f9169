"""The Python rules for putting usage into words, checked against the table the dashboard shares."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from common.models import LimitProjected, ThresholdCrossed
from common.text import WINDOW_LABELS, alert_text, burn_rate_label, percent_label

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
