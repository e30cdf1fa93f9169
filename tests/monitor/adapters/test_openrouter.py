"""The OpenRouter adapter: against the simulator's ``/api/v1/key``, and on bodies built by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from common.models import LATEST, Meter
from monitor.adapters import OpenRouterAdapter
from monitor.adapters.openrouter import next_reset
from monitor.exceptions import UpstreamAuthError, UpstreamInvalidResponse, UpstreamRateLimited
from simulator import Failure, GatewaySimulator, SimulatorServer

from .conftest import MARKER, START, TOKEN, FakeClock, poll

pytestmark = pytest.mark.anyio


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def key_body(**data: Any) -> dict[str, Any]:
    """An ``/api/v1/key`` answer as OpenRouter sends it, with ``data`` fields replaced."""
    return {
        "data": {
            "label": f"sk-or-v1-{TOKEN[:3]}...{TOKEN[-3:]}",
            "limit": 50,
            "limit_reset": "monthly",
            "limit_remaining": 37.5,
            "usage": 12.5,
            "usage_daily": 2.5,
            "usage_weekly": 5.0,
            "usage_monthly": 10.0,
            "is_free_tier": False,
            **data,
        }
    }


def read(body: Any, received_at: datetime = START) -> list[dict[str, Any]]:
    """The meters ``body`` gives, as JSON."""
    reading = OpenRouterAdapter().read(body, received_at=received_at, secret=TOKEN)
    return [meter.model_dump(mode="json") for meter in reading.meters]


def refused(body: Any) -> str:
    """The message of the ``UpstreamInvalidResponse`` that ``body`` gets; it echoes nothing."""
    with pytest.raises(UpstreamInvalidResponse) as caught:
        OpenRouterAdapter().read(body, received_at=START, secret=TOKEN)
    message = str(caught.value)
    assert MARKER not in message
    assert TOKEN not in message
    return message


# -- against the simulator -------------------------------------------------------------


async def test_a_normal_answer_gives_the_limit_today_and_month_meters(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """A key with a monthly limit gives three usd meters, each with its UTC reset."""
    sim.set_openrouter(limit_usd=50, limit_reset="monthly", usage_usd=12.5)
    reading = await poll(server, OpenRouterAdapter(), clock)
    assert reading.kind == "openrouter"
    assert reading.meters == [
        Meter(
            id="limit",
            label="Key limit",
            unit="usd",
            used=12.5,
            limit=50.0,
            used_percent=25.0,
            reset_at=utc(2026, 12, 1),
        ),
        Meter(id="today", label="Today", unit="usd", used=12.5, reset_at=utc(2026, 11, 19)),
        Meter(id="month", label="Month", unit="usd", used=12.5, reset_at=utc(2026, 12, 1)),
    ]


async def test_the_reading_keeps_only_the_fields_it_reads(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """``usage`` holds the six fields read: never ``label``, which shows part of the key."""
    sim.set_openrouter(limit_usd=50, limit_reset="daily", usage_usd=12.5, usage_monthly_usd=30)
    reading = await poll(server, OpenRouterAdapter(), clock)
    assert reading.usage == {
        "data": {
            "limit": 50.0,
            "limit_remaining": 37.5,
            "limit_reset": "daily",
            "usage": 12.5,
            "usage_daily": 12.5,
            "usage_monthly": 30.0,
        }
    }


async def test_a_key_without_a_limit_shows_its_spend_in_all(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """With ``limit`` null the ``limit`` meter is all-time spend: no limit, percent or reset."""
    sim.set_openrouter(limit_usd=None, limit_reset="monthly", usage_usd=7.25)
    reading = await poll(server, OpenRouterAdapter(), clock)
    assert reading.meters[0] == Meter(id="limit", label="Key limit", unit="usd", used=7.25)


async def test_a_spent_limit_is_exceeded(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """``limit_remaining`` at 0 is a full, exceeded meter."""
    sim.set_openrouter(limit_usd=20, limit_reset="weekly", usage_usd=25)
    (limit, *_) = (await poll(server, OpenRouterAdapter(), clock)).meters
    assert (limit.used, limit.used_percent, limit.exceeded) == (20.0, 100.0, True)


@pytest.mark.parametrize(
    ("now", "limit_reset", "expected"),
    [
        (utc(2026, 11, 18, 12), "daily", utc(2026, 11, 19)),
        (utc(2026, 11, 22, 23, 59, 59), "weekly", utc(2026, 11, 23)),
        (utc(2026, 11, 23, 0, 0, 0), "weekly", utc(2026, 11, 30)),
        (utc(2026, 11, 18, 12), "monthly", utc(2026, 12, 1)),
        (utc(2026, 12, 31, 23, 30), "monthly", utc(2027, 1, 1)),
        (utc(2026, 11, 18, 12), None, None),
    ],
    ids=["daily", "weekly-sunday", "weekly-monday", "monthly", "monthly-december", "never"],
)
async def test_the_limit_resets_at_the_next_utc_period(
    sim: GatewaySimulator,
    server: SimulatorServer,
    clock: FakeClock,
    now: datetime,
    limit_reset: Any,
    expected: datetime | None,
) -> None:
    """The limit resets at the next UTC midnight, Monday or 1st, or never."""
    clock.now = now
    sim.set_openrouter(limit_usd=50, limit_reset=limit_reset, usage_usd=1)
    (limit, *_) = (await poll(server, OpenRouterAdapter(), clock)).meters
    assert limit.reset_at == expected


@pytest.mark.usefixtures("new_york")
async def test_resets_are_counted_in_utc_whatever_the_local_zone(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """Monday 02:00 UTC is Sunday in New York: the week still ends on the next UTC Monday."""
    clock.now = utc(2026, 11, 23, 2)
    sim.set_openrouter(limit_usd=50, limit_reset="weekly", usage_usd=1)
    limit, today, month = (await poll(server, OpenRouterAdapter(), clock)).meters
    assert (limit.reset_at, today.reset_at, month.reset_at) == (
        utc(2026, 11, 30),
        utc(2026, 11, 24),
        utc(2026, 12, 1),
    )


async def test_an_answer_without_data_is_invalid(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """An answer without ``data`` is an invalid response that names it."""
    sim.inject(Failure.INVALID)
    with pytest.raises(UpstreamInvalidResponse, match="openrouter answer: data is missing"):
        await poll(server, OpenRouterAdapter(), clock)


async def test_a_refused_key_is_an_auth_error(server: SimulatorServer, clock: FakeClock) -> None:
    """A 401 for the key is an ``UpstreamAuthError``."""
    with pytest.raises(UpstreamAuthError, match="HTTP 401"):
        await poll(server, OpenRouterAdapter(), clock, token="sk-or-v1-wrong")


async def test_a_429_carries_retry_after(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """A 429 is ``UpstreamRateLimited`` with the ``Retry-After`` seconds."""
    sim.inject(Failure.RATE_LIMITED, retry_after=3)
    with pytest.raises(UpstreamRateLimited) as caught:
        await poll(server, OpenRouterAdapter(), clock)
    assert caught.value.retry_after == 3.0


async def test_the_adapter_asks_the_key_endpoint(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """The request reaches OpenRouter's ``GET /api/v1/key`` and no other dialect's."""
    await poll(server, OpenRouterAdapter(), clock)
    assert sim.requests_by_kind == {"posthog": 0, "openrouter": 1, "litellm": 0}


# -- bodies built by hand ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("limit", "50", "a number or null"),
        ("limit", True, "a number or null"),
        ("limit_remaining", f"{MARKER}", "a number or null"),
        ("limit_reset", f"yearly-{MARKER}", "daily, weekly, monthly or null"),
        ("usage", None, "a number"),
        ("usage_daily", "2.5", "a number"),
        ("usage_monthly", [10], "a number"),
    ],
    ids=str,
)
def test_a_field_of_the_wrong_type_is_named(field: str, value: Any, expected: str) -> None:
    """A field that is not what the dialect says is named, with what it must be."""
    message = refused(key_body(**{field: value}))
    assert message == f"openrouter answer: data.{field} must be {expected}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": MARKER}, "openrouter answer: data is missing"),
        ({"data": [MARKER]}, "openrouter answer: data must be an object"),
        ([MARKER], "openrouter answer: the body must be a JSON object"),
    ],
    ids=["no-data", "data-a-list", "body-a-list"],
)
def test_an_answer_of_the_wrong_shape_is_invalid(body: Any, expected: str) -> None:
    """Without a ``data`` object the answer is refused, saying what is wrong."""
    assert refused(body) == expected


def test_a_missing_spend_field_is_named() -> None:
    """A spend field left out is named as missing."""
    body = key_body()
    del body["data"]["usage_daily"]
    assert refused(body) == "openrouter answer: data.usage_daily is missing"


def test_a_limit_without_what_remains_is_invalid() -> None:
    """A limit with ``limit_remaining`` null cannot say how much of it is spent."""
    message = refused(key_body(limit_remaining=None))
    assert message == "openrouter answer: data.limit_remaining must be a number when data.limit is"


def test_a_zero_limit_is_full() -> None:
    """A limit of 0 reads as 100 % and exceeded, as a window without a limit does."""
    (limit, *_) = read(key_body(limit=0, limit_remaining=0))
    assert (limit["used_percent"], limit["exceeded"]) == (100.0, True)


def test_more_remaining_than_the_limit_counts_as_nothing_spent() -> None:
    """A ``limit_remaining`` above the limit is no spend, not a negative one."""
    (limit, *_) = read(key_body(limit=10, limit_remaining=12))
    assert (limit["used"], limit["used_percent"], limit["exceeded"]) == (0.0, 0.0, False)


def test_amounts_beyond_a_double_are_invalid() -> None:
    """A limit and remainder whose difference overflows are refused, not turned into infinity."""
    message = refused(key_body(limit=1e308, limit_remaining=-1e308))
    assert "data.limit and data.limit_remaining give an amount beyond a double" in message


def test_subtraction_noise_is_dropped() -> None:
    """50 - 49.9 is 0.1 spent, not 0.10000000000000142."""
    (limit, *_) = read(key_body(limit=50, limit_remaining=49.9))
    assert limit["used"] == 0.1


def test_a_received_time_in_another_zone_is_read_in_utc() -> None:
    """The resets are UTC's even when the time of receipt is written in another zone."""
    received_at = utc(2026, 11, 23, 2).astimezone(ZoneInfo("America/New_York"))
    _, today, _ = read(key_body(), received_at)
    assert today["reset_at"] == "2026-11-24T00:00:00Z"


def test_there_is_no_reset_past_the_last_time() -> None:
    """A reset past year 9999 is the latest time a model holds, not an overflow."""
    assert next_reset("monthly", datetime(9999, 12, 31, 12, tzinfo=UTC)) == LATEST
