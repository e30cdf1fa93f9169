"""Tests for monitor.forecast: burn rate, projection and the derived block."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import TypeAdapter

from common.history import HistoryPoint, MeterReading
from common.models import Derived, Meter, Snapshot
from monitor.forecast import Forecaster

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BURST_RESET = T0 + timedelta(hours=6)
SUSTAINED_RESET = T0 + timedelta(days=20)


def snap(
    minutes: float,
    burst: float,
    sustained: float = 10.0,
    *,
    burst_reset: datetime = BURST_RESET,
) -> Snapshot:
    """A snapshot taken ``minutes`` after T0."""
    return Snapshot.model_validate(
        {
            "seq": 1,
            "fetched_at": T0 + timedelta(minutes=minutes),
            "usage": {
                "product": "posthog_code",
                "burst": {"used_percent": burst, "reset_at": burst_reset},
                "sustained": {"used_percent": sustained, "reset_at": SUSTAINED_RESET},
            },
        }
    )


def feed(forecaster: Forecaster, *snapshots: Snapshot) -> Derived:
    for s in snapshots:
        derived = forecaster.observe(s)
    return derived


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_burn_rate_is_none_without_history() -> None:
    """A bucket never observed has no burn rate."""
    assert Forecaster().burn_rate("burst", T0) is None


def test_burn_rate_is_none_with_a_single_point() -> None:
    """One point gives no slope."""
    f = Forecaster()
    feed(f, snap(0, 10))
    assert f.burn_rate("burst", at(0)) is None


def test_burn_rate_needs_min_spread_of_data() -> None:
    """Points closer together than min_spread give no rate, to avoid amplifying rounding."""
    f = Forecaster(min_spread=timedelta(minutes=5))
    feed(f, snap(0, 10), snap(4, 10.5))
    assert f.burn_rate("burst", at(4)) is None


def test_burn_rate_is_the_slope_in_percent_per_hour() -> None:
    """Usage rising 1 % every 6 minutes burns 10 % per hour."""
    f = Forecaster()
    feed(f, *(snap(m, 10 + m / 6) for m in range(0, 31, 6)))
    assert f.burn_rate("burst", at(30)) == pytest.approx(10.0)


def test_burn_rate_fits_through_noise() -> None:
    """Least squares smooths points scattered around a line."""
    f = Forecaster()
    feed(f, snap(0, 10.1), snap(10, 11.6), snap(20, 13.4), snap(30, 15.1))
    assert f.burn_rate("burst", at(30)) == pytest.approx(10.0, abs=0.5)


def test_burn_rate_only_uses_points_within_span() -> None:
    """Points older than the span do not count."""
    f = Forecaster(span=timedelta(minutes=30))
    feed(f, snap(0, 0), snap(10, 50), snap(40, 55), snap(60, 60))
    assert f.burn_rate("burst", at(60)) == pytest.approx(15.0)


def test_drop_in_usage_starts_a_new_series() -> None:
    """After used_percent drops, only points since the drop count."""
    f = Forecaster()
    feed(f, snap(0, 80), snap(10, 90), snap(20, 5), snap(30, 10))
    assert f.burn_rate("burst", at(30)) == pytest.approx(30.0)


def test_new_reset_at_starts_a_new_series() -> None:
    """A reset_at that moves past the jitter tolerance means a new window."""
    f = Forecaster()
    later = BURST_RESET + timedelta(hours=24)
    feed(f, snap(0, 10), snap(10, 20), snap(20, 30, burst_reset=later))
    assert f.burn_rate("burst", at(20)) is None


def test_reset_at_jitter_keeps_the_series() -> None:
    """reset_at moving by seconds (from resets_in_seconds) is the same window."""
    f = Forecaster()
    feed(f, snap(0, 10), snap(30, 15, burst_reset=BURST_RESET + timedelta(seconds=40)))
    assert f.burn_rate("burst", at(30)) == pytest.approx(10.0)


def test_out_of_order_points_are_ignored() -> None:
    """A point not newer than the last one is skipped."""
    f = Forecaster()
    feed(f, snap(0, 10), snap(30, 15), snap(20, 1))
    assert f.burn_rate("burst", at(30)) == pytest.approx(10.0)


def test_projection_when_limit_comes_before_reset() -> None:
    """At 10 %/h from 50 % the limit comes 5 hours after the last point."""
    f = Forecaster()
    feed(f, snap(0, 45), snap(30, 50))
    assert f.projection("burst", at(30)) == at(30 + 5 * 60)


def test_projection_is_none_when_reset_comes_first() -> None:
    """A limit projected after reset_at is reported as None."""
    f = Forecaster()
    feed(f, snap(0, 10), snap(30, 11))
    assert f.projection("burst", at(30)) is None


def test_projection_is_none_when_usage_is_flat() -> None:
    """A rate of zero never reaches the limit."""
    f = Forecaster()
    feed(f, snap(0, 40), snap(30, 40))
    assert f.projection("burst", at(30)) is None


def test_projection_of_a_full_bucket_is_when_it_got_there() -> None:
    """At 100 % the projection is the first point at the limit, whatever the rate."""
    f = Forecaster()
    feed(f, snap(0, 90), snap(10, 100), snap(20, 100))
    assert f.projection("burst", at(20)) == at(10)


def test_observe_returns_forecast_for_both_buckets() -> None:
    """observe() fills the derived block for burst and sustained."""
    f = Forecaster()
    derived = feed(f, snap(0, 45, 10), snap(30, 50, 10))
    assert derived["burst"].burn_rate_percent_per_hour == pytest.approx(10.0)
    assert derived["burst"].projected_limit_at == at(30 + 5 * 60)
    assert derived["burst"].limit_before_reset is True
    assert derived["sustained"].burn_rate_percent_per_hour == 0
    assert derived["sustained"].projected_limit_at is None
    assert derived["sustained"].limit_before_reset is False


def test_derived_serialises_to_json() -> None:
    """The derived block is plain JSON with the documented field names."""
    derived = feed(Forecaster(), snap(0, 10))
    assert json.loads(TypeAdapter(Derived).dump_json(derived)) == {
        "burst": {
            "burn_rate_percent_per_hour": None,
            "projected_limit_at": None,
            "limit_before_reset": False,
        },
        "sustained": {
            "burn_rate_percent_per_hour": None,
            "projected_limit_at": None,
            "limit_before_reset": False,
        },
    }


def test_seed_replays_history_points() -> None:
    """Seeding from stored history gives a rate before the second live poll."""
    f = Forecaster()
    f.seed(
        HistoryPoint.of(
            at(m),
            1,
            {
                "burst": MeterReading(used_percent=10 + m / 6, reset_at=BURST_RESET),
                "sustained": MeterReading(used_percent=10, reset_at=SUSTAINED_RESET),
            },
        )
        for m in (0, 6, 12)
    )
    derived = f.observe(snap(18, 13))
    assert derived["burst"].burn_rate_percent_per_hour == pytest.approx(10.0)


def test_a_vanishing_burn_rate_projects_no_limit_instead_of_overflowing() -> None:
    """Usage rising 1e-300 % a poll puts the limit past year 9999: not before the reset."""
    f = Forecaster()
    derived = feed(f, *(snap(minutes, minutes * 1e-300) for minutes in range(0, 30, 5)))
    assert derived["burst"].projected_limit_at is None
    assert derived["burst"].limit_before_reset is False


def test_absurd_readings_give_no_burn_rate() -> None:
    """Readings so large that the slope is not a finite number give no rate at all."""
    f = Forecaster()
    derived = feed(f, snap(0, 0.0), snap(10, 1e308), snap(20, 1.7e308))
    assert derived["burst"].burn_rate_percent_per_hour is None


def usd_snapshot(minutes: float, used: float, limit: float | None) -> Snapshot:
    """An OpenRouter-like snapshot with one usd meter, ``limit`` (None: no limit)."""
    percent = None if limit is None else used / limit * 100
    return Snapshot(
        seq=1,
        source="router",
        kind="openrouter",
        fetched_at=at(minutes),
        usage={"data": {}},
        meters=[
            Meter(
                id="limit",
                label="Key limit",
                unit="usd",
                used=used,
                limit=limit,
                used_percent=percent,
                reset_at=None,
            ),
        ],
    )


def test_a_meter_without_a_limit_has_no_forecast() -> None:
    """A usd meter with no limit has no percentage, so it gets no burn rate or projection."""
    derived = feed(Forecaster(), *(usd_snapshot(m, m / 10, None) for m in range(0, 30, 5)))
    assert derived == {}


def test_a_meter_that_never_resets_projects_its_limit() -> None:
    """A percent meter with no reset time still projects when it reaches 100 %."""
    derived = feed(Forecaster(), *(usd_snapshot(m, m / 6, 50.0) for m in range(0, 31, 5)))
    forecast = derived["limit"]
    assert forecast.burn_rate_percent_per_hour == pytest.approx(20.0)
    assert forecast.limit_before_reset is True
