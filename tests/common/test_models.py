"""The wire models hold outside values to strict numbers and clamp every time into range."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from common.models import EARLIEST, LATEST, Snapshot, Status, Usage, UsageWindow

RECEIVED_AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def window(**fields: Any) -> dict[str, Any]:
    return {"used_percent": 37.5, "reset_at": "2026-05-02T00:00:00Z", **fields}


def usage(**fields: Any) -> dict[str, Any]:
    return {"product": "posthog_code", "burst": window(), "sustained": window(), **fields}


def error_fields(caught: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {".".join(str(part) for part in error["loc"]) for error in caught.value.errors()}


# -- numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["50", True, False, math.inf, -math.inf, math.nan, None, [50]],
    ids=["string", "true", "false", "inf", "minus-inf", "nan", "null", "list"],
)
def test_a_percentage_must_be_a_finite_number(value: object) -> None:
    """``"50"``, booleans, infinities and NaN are refused as ``used_percent``."""
    with pytest.raises(ValidationError) as caught:
        UsageWindow.model_validate(window(used_percent=value))
    assert error_fields(caught) == {"used_percent"}


@pytest.mark.parametrize("value", [0, 50, 37.5, 1e-300, 5e-324, 1e308])
def test_any_finite_non_negative_percentage_is_kept(value: float) -> None:
    """Integers, fractions, subnormals and huge finite values are percentages as sent."""
    assert UsageWindow.model_validate(window(used_percent=value)).used_percent == value


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN", '"50"', "true"])
def test_json_that_is_not_a_finite_number_is_refused(text: str) -> None:
    """Read from JSON text, the non-numbers are refused too (``Infinity`` is not JSON)."""
    payload = f'{{"used_percent": {text}, "reset_at": "2026-05-02T00:00:00Z"}}'
    with pytest.raises(ValidationError) as caught:
        UsageWindow.model_validate_json(payload)
    assert error_fields(caught) == {"used_percent"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *(("is_rate_limited", value) for value in ("true", 1, 0, "yes", None)),
        *(("is_pro", value) for value in ("true", 1, 0, "yes")),  # is_pro may be null
    ],
)
def test_a_flag_must_be_a_boolean(field: str, value: object) -> None:
    """``"true"``, ``1`` and ``"yes"`` are not flags."""
    with pytest.raises(ValidationError) as caught:
        Usage.model_validate(usage(**{field: value}))
    assert error_fields(caught) == {field}


@pytest.mark.parametrize("value", ["true", 1])
def test_exceeded_must_be_a_boolean(value: object) -> None:
    """A window's ``exceeded`` is held to a boolean as well."""
    with pytest.raises(ValidationError) as caught:
        UsageWindow.model_validate(window(exceeded=value))
    assert error_fields(caught) == {"exceeded"}


@pytest.mark.parametrize(
    "value", [True, "60", math.inf, math.nan], ids=["bool", "string", "inf", "nan"]
)
def test_resets_in_seconds_must_be_a_finite_number(value: object) -> None:
    """The older dialect's countdown is a finite number or refused."""
    with pytest.raises(ValidationError):
        UsageWindow.model_validate(
            {"used_percent": 1, "resets_in_seconds": value}, context={"received_at": RECEIVED_AT}
        )


# -- times -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9999-12-31T23:59:59-14:00", LATEST),
        ("9999-06-01T00:00:00Z", LATEST),
        ("0001-01-01T00:00:00+14:00", EARLIEST),
        ("1900-01-01T00:00:00Z", EARLIEST),
    ],
    ids=["past-9999-in-utc", "late-in-9999", "before-year-1-in-utc", "before-1970"],
)
def test_a_time_out_of_range_is_clamped(text: str, expected: datetime) -> None:
    """A valid but extreme time becomes ``EARLIEST`` or ``LATEST`` instead of overflowing."""
    assert UsageWindow.model_validate(window(reset_at=text)).reset_at == expected


def test_a_time_is_converted_to_utc() -> None:
    """An offset is folded into the time, which is then carried in UTC."""
    reset_at = UsageWindow.model_validate(window(reset_at="2026-05-02T02:00:00+02:00")).reset_at
    assert (reset_at, reset_at.tzinfo) == (datetime(2026, 5, 2, tzinfo=UTC), UTC)


def test_a_time_without_a_zone_is_refused() -> None:
    """A naive time could mean any moment, so it is refused rather than guessed."""
    with pytest.raises(ValidationError) as caught:
        UsageWindow.model_validate(window(reset_at="2026-05-02T00:00:00"))
    assert error_fields(caught) == {"reset_at"}


@pytest.mark.parametrize(
    ("seconds", "expected"), [(1e20, LATEST), (-1e20, EARLIEST)], ids=["future", "past"]
)
def test_a_countdown_beyond_the_calendar_is_clamped(seconds: float, expected: datetime) -> None:
    """``resets_in_seconds`` too large for a datetime gives the end of the range."""
    parsed = UsageWindow.model_validate(
        {"used_percent": 1, "resets_in_seconds": seconds}, context={"received_at": RECEIVED_AT}
    )
    assert parsed.reset_at == expected


def test_the_billing_period_end_is_clamped() -> None:
    """``billing_period_end`` is a time like any other."""
    parsed = Usage.model_validate(usage(billing_period_end="9999-12-31T23:59:59-14:00"))
    assert parsed.billing_period_end == LATEST


def test_a_clamped_snapshot_survives_a_round_trip_and_arithmetic() -> None:
    """What the store writes and the relay sends reads back equal, and differences stay finite."""
    extreme = usage(burst=window(reset_at="9999-12-31T23:59:59-14:00"))
    snapshot = Snapshot(seq=1, fetched_at=RECEIVED_AT, usage=Usage.model_validate(extreme))
    again = Snapshot.model_validate_json(snapshot.model_dump_json())
    assert again == snapshot
    assert again.usage.burst.reset_at - again.fetched_at > timedelta(days=365 * 7000)


def test_a_status_time_is_clamped() -> None:
    """The monitor's own times are clamped too, so a status can always be sent."""
    status = Status(state="ok", next_poll_at=datetime(9999, 12, 31, 23, 59, tzinfo=UTC))
    assert status.next_poll_at == LATEST
