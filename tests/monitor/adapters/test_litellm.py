"""The LiteLLM adapter: against the simulator's ``/key/info``, and on bodies built by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common.models import Meter
from monitor.adapters import LiteLLMAdapter
from monitor.exceptions import UpstreamAuthError, UpstreamInvalidResponse, UpstreamRateLimited
from simulator import Failure, GatewaySimulator, SimulatorServer

from .conftest import MARKER, START, TOKEN, FakeClock, poll

pytestmark = pytest.mark.anyio

#: The simulator counts a new budget period from the whole second.
PERIOD_START = START.replace(microsecond=0)


def info_body(**info: Any) -> dict[str, Any]:
    """A ``/key/info`` answer as LiteLLM's proxy sends it, with ``info`` fields replaced."""
    return {
        "key": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
        "info": {
            "key_name": f"sk-...{TOKEN[-4:]}",
            "spend": 25.0,
            "max_budget": 100.0,
            "budget_duration": "30d",
            "budget_reset_at": "2026-12-18T12:00:00+00:00",
            "models": [],
            "metadata": {},
            **info,
        },
    }


def budget(body: Any) -> Meter:
    """The ``budget`` meter ``body`` gives."""
    (meter,) = LiteLLMAdapter().read(body, received_at=START, secret=TOKEN).meters
    return meter


def refused(body: Any) -> str:
    """The message of the ``UpstreamInvalidResponse`` that ``body`` gets; it echoes nothing."""
    with pytest.raises(UpstreamInvalidResponse) as caught:
        LiteLLMAdapter().read(body, received_at=START, secret=TOKEN)
    message = str(caught.value)
    assert MARKER not in message
    assert TOKEN not in message
    return message


# -- against the simulator -------------------------------------------------------------


async def test_a_normal_answer_gives_the_budget_meter(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """Spend against a budget with a duration is one usd meter that resets when LiteLLM says."""
    sim.set_litellm(spend_usd=25, max_budget_usd=100, budget_duration="30d")
    reading = await poll(server, LiteLLMAdapter(), clock)
    assert reading.kind == "litellm"
    assert reading.meters == [
        Meter(
            id="budget",
            label="Budget",
            unit="usd",
            used=25.0,
            limit=100.0,
            used_percent=25.0,
            reset_at=PERIOD_START + timedelta(days=30),
        )
    ]


async def test_the_reading_keeps_only_the_fields_it_reads(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """``usage`` holds the four fields read, as sent: never ``key`` nor the rest of the row."""
    sim.set_litellm(spend_usd=25, max_budget_usd=100, budget_duration="30d")
    reading = await poll(server, LiteLLMAdapter(), clock)
    assert reading.usage == {
        "info": {
            "spend": 25.0,
            "max_budget": 100.0,
            "budget_reset_at": "2026-12-18T12:00:00+00:00",
            "budget_duration": "30d",
        }
    }


async def test_a_key_without_a_budget_has_no_percent(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """With ``max_budget`` null the meter is the spend alone: no limit, no percent."""
    sim.set_litellm(spend_usd=12.5, max_budget_usd=None)
    (meter,) = (await poll(server, LiteLLMAdapter(), clock)).meters
    assert (meter.used, meter.limit, meter.used_percent) == (12.5, None, None)
    assert meter.exceeded is False


async def test_a_spent_budget_is_exceeded(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """Spend equal to the budget is a full, exceeded meter."""
    sim.set_litellm(spend_usd=40, max_budget_usd=40)
    (meter,) = (await poll(server, LiteLLMAdapter(), clock)).meters
    assert (meter.used_percent, meter.exceeded) == (100.0, True)


async def test_a_budget_that_never_resets_has_no_reset(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """Without ``budget_duration`` and ``budget_reset_at`` the meter has no reset time."""
    sim.set_litellm(spend_usd=1, budget_duration=None)
    (meter,) = (await poll(server, LiteLLMAdapter(), clock)).meters
    assert meter.reset_at is None


async def test_the_reset_is_the_proxys_own(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """``budget_reset_at`` is taken as LiteLLM sends it, not recomputed from the duration."""
    reset_at = datetime(2026, 11, 20, 6, 30, tzinfo=UTC)
    sim.set_litellm(budget_duration="7d", budget_reset_at=reset_at)
    (meter,) = (await poll(server, LiteLLMAdapter(), clock)).meters
    assert meter.reset_at == reset_at


async def test_an_answer_without_info_is_invalid(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """An answer without ``info`` is an invalid response that names it."""
    sim.inject(Failure.INVALID)
    with pytest.raises(UpstreamInvalidResponse, match="litellm answer: info is missing"):
        await poll(server, LiteLLMAdapter(), clock)


async def test_a_refused_key_is_an_auth_error(server: SimulatorServer, clock: FakeClock) -> None:
    """A 401 for the virtual key is an ``UpstreamAuthError``."""
    with pytest.raises(UpstreamAuthError, match="HTTP 401"):
        await poll(server, LiteLLMAdapter(), clock, token="sk-wrong")


async def test_a_429_carries_retry_after(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """A 429 is ``UpstreamRateLimited`` with the ``Retry-After`` seconds."""
    sim.inject(Failure.RATE_LIMITED, retry_after=0.5)
    with pytest.raises(UpstreamRateLimited) as caught:
        await poll(server, LiteLLMAdapter(), clock)
    assert caught.value.retry_after == 0.5


async def test_the_adapter_asks_the_key_info_endpoint(
    sim: GatewaySimulator, server: SimulatorServer, clock: FakeClock
) -> None:
    """The request reaches LiteLLM's ``GET /key/info`` and no other dialect's."""
    await poll(server, LiteLLMAdapter(), clock)
    assert sim.requests_by_kind == {"posthog": 0, "openrouter": 0, "litellm": 1}


# -- bodies built by hand ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2026-12-01T00:00:00Z", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T02:00:00+02:00", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T00:00:00.123456", datetime(2026, 12, 1, 0, 0, 0, 123456, tzinfo=UTC)),
    ],
    ids=["z", "offset", "naive"],
)
def test_the_reset_time_is_read_in_utc(written: str, expected: datetime) -> None:
    """A zone is honoured and a time without one is UTC, as LiteLLM stores it."""
    assert budget(info_body(budget_reset_at=written)).reset_at == expected


@pytest.mark.usefixtures("new_york")
def test_a_reset_time_without_a_zone_is_not_the_local_zone() -> None:
    """Even with the process in New York, a time without a zone is UTC."""
    reset_at = budget(info_body(budget_reset_at="2026-12-01T00:00:00")).reset_at
    assert reset_at == datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("spend", "25", "a number"),
        ("spend", True, "a number"),
        ("spend", None, "a number"),
        ("max_budget", f"{MARKER}", "a number or null"),
        ("budget_reset_at", 1_764_547_200, "an ISO 8601 time or null"),
        ("budget_reset_at", f"next-{MARKER}", "an ISO 8601 time or null"),
        ("budget_duration", 30, "a string of at most 64 characters or null"),
        ("budget_duration", MARKER * 13, "a string of at most 64 characters or null"),
    ],
    ids=str,
)
def test_a_field_of_the_wrong_type_is_named(field: str, value: Any, expected: str) -> None:
    """A field that is not what the dialect says is named, with what it must be."""
    message = refused(info_body(**{field: value}))
    assert message == f"litellm answer: info.{field} must be {expected}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"key": MARKER}, "litellm answer: info is missing"),
        ({"info": MARKER}, "litellm answer: info must be an object"),
        ({"info": {"max_budget": 1}}, "litellm answer: info.spend is missing"),
        (MARKER, "litellm answer: the body must be a JSON object"),
    ],
    ids=["no-info", "info-a-string", "no-spend", "body-a-string"],
)
def test_an_answer_of_the_wrong_shape_is_invalid(body: Any, expected: str) -> None:
    """Without an ``info`` object holding ``spend`` the answer is refused, saying what is wrong."""
    assert refused(body) == expected


def test_a_zero_budget_is_full() -> None:
    """A budget of 0 reads as 100 % and exceeded, as a window without a limit does."""
    meter = budget(info_body(spend=0, max_budget=0))
    assert (meter.used_percent, meter.exceeded) == (100.0, True)


def test_a_percentage_beyond_a_double_is_invalid() -> None:
    """A huge spend over a tiny budget is refused, not turned into infinity."""
    message = refused(info_body(spend=1e308, max_budget=1e-308))
    assert "info.spend and info.max_budget give a percentage beyond a double" in message
