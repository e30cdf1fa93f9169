"""The simulator's OpenRouter and LiteLLM dialects, and what every dialect shares, over loopback."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest

from common.models import SourceKind
from simulator import Failure, GatewaySimulator, SimulatorServer

from .conftest import AUTH, LITELLM_PATH, OPENROUTER_PATH, PATHS, START, FakeClock

pytestmark = pytest.mark.anyio

#: The simulator counts new periods from the whole second.
WHOLE = START.replace(microsecond=0)
#: What each dialect's answer cannot do without.
ESSENTIAL = {"posthog": "burst", "openrouter": "data", "litellm": "info"}


async def openrouter(client: httpx.AsyncClient) -> dict[str, Any]:
    """The ``data`` of a normal ``/api/v1/key`` answer."""
    response = await client.get(OPENROUTER_PATH)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()["data"]
    return data


async def litellm(client: httpx.AsyncClient) -> dict[str, Any]:
    """The ``info`` of a normal ``/key/info`` answer."""
    response = await client.get(LITELLM_PATH)
    assert response.status_code == 200
    info: dict[str, Any] = response.json()["info"]
    return info


# -- the answers -------------------------------------------------------------------------


async def test_openrouter_answer_matches_its_dialect(client: httpx.AsyncClient) -> None:
    """``GET /api/v1/key`` answers OpenRouter's shape; the label shows part of the key."""
    response = await client.get(OPENROUTER_PATH)
    assert response.status_code == 200
    assert response.json() == {
        "data": {
            "label": "sk-or-v1-sim...ken",
            "limit": 100.0,
            "limit_reset": "monthly",
            "limit_remaining": 100.0,
            "include_byok_in_limit": False,
            "usage": 0.0,
            "usage_daily": 0.0,
            "usage_weekly": 0.0,
            "usage_monthly": 0.0,
            "byok_usage": 0.0,
            "byok_usage_daily": 0.0,
            "byok_usage_weekly": 0.0,
            "byok_usage_monthly": 0.0,
            "is_free_tier": False,
            "is_management_key": False,
            "is_provisioning_key": False,
            "expires_at": None,
            "rate_limit": {"requests": -1, "interval": "10s"},
        }
    }


async def test_litellm_answer_matches_its_dialect(client: httpx.AsyncClient) -> None:
    """``GET /key/info`` answers LiteLLM's shape: the hashed key and the key's row."""
    response = await client.get(LITELLM_PATH)
    assert response.status_code == 200
    assert response.json() == {
        "key": hashlib.sha256(b"sim-token").hexdigest(),
        "info": {
            "key_name": "sk-...oken",
            "key_alias": "simulated",
            "spend": 0.0,
            "max_budget": 100.0,
            "expires": None,
            "models": [],
            "aliases": {},
            "config": {},
            "user_id": None,
            "team_id": None,
            "max_parallel_requests": None,
            "metadata": {},
            "tpm_limit": None,
            "rpm_limit": None,
            "budget_duration": "30d",
            "budget_reset_at": "2026-12-22T12:00:00+00:00",
            "allowed_cache_controls": [],
            "permissions": {},
            "model_spend": {},
            "model_max_budget": {},
            "soft_budget_cooldown": False,
            "blocked": None,
            "litellm_budget_table": None,
            "org_id": None,
            "created_at": "2026-11-22T12:00:00+00:00",
        },
    }


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("posthog", {"error": "unauthorized", "message": "missing or invalid bearer token"}),
        ("openrouter", {"error": {"code": 401, "message": "missing or invalid bearer token"}}),
        (
            "litellm",
            {
                "error": {
                    "message": "missing or invalid bearer token",
                    "type": "unauthorized",
                    "param": None,
                    "code": "401",
                }
            },
        ),
    ],
)
async def test_every_dialect_refuses_a_missing_token_in_its_own_shape(
    server: SimulatorServer, kind: SourceKind, error: dict[str, Any]
) -> None:
    """Without the bearer token each endpoint answers 401 with its gateway's error body."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(PATHS[kind])
    assert (response.status_code, response.json()) == (401, error)


# -- failures, for every dialect -------------------------------------------------------------


async def outcome(sim: GatewaySimulator, client: httpx.AsyncClient, kind: SourceKind) -> str:
    """What one request to ``kind``'s endpoint came to, in a few words."""
    try:
        response = await client.get(PATHS[kind], timeout=0.5)
    except httpx.ReadTimeout:
        return "no answer"
    except httpx.RemoteProtocolError:
        return "dropped"
    if response.status_code != 200:
        retry_after = response.headers.get("Retry-After")
        return f"{response.status_code}" + (f" Retry-After: {retry_after}" if retry_after else "")
    payload = {"openrouter": sim.openrouter_payload, "litellm": sim.litellm_payload}[kind]()
    full = json.dumps(payload).encode()
    if response.content == full[: len(full) // 2]:
        return "200 cut in half"
    try:
        body = response.json()
    except json.JSONDecodeError:
        return "200 not JSON"
    return "200" if ESSENTIAL[kind] in body else f"200 without {ESSENTIAL[kind]}"


EXPECTED_OUTCOMES: dict[Failure, Callable[[str], str]] = {
    Failure.SERVER_ERROR: lambda _: "503",
    Failure.TIMEOUT: lambda _: "no answer",
    Failure.MALFORMED: lambda _: "200 not JSON",
    Failure.TRUNCATED: lambda _: "200 cut in half",
    Failure.INVALID: lambda essential: f"200 without {essential}",
    Failure.RATE_LIMITED: lambda _: "429 Retry-After: 1",
    Failure.UNAUTHORIZED: lambda _: "401",
    Failure.DISCONNECT: lambda _: "dropped",
}


@pytest.mark.parametrize("failure", list(Failure), ids=str)
@pytest.mark.parametrize("kind", ["openrouter", "litellm"])
async def test_injected_failures_hit_every_dialect(
    sim: GatewaySimulator, client: httpx.AsyncClient, kind: SourceKind, failure: Failure
) -> None:
    """Each failure plays on the OpenRouter and LiteLLM endpoints as on PostHog's."""
    sim.inject(failure)
    with anyio.fail_after(5):
        assert await outcome(sim, client, kind) == EXPECTED_OUTCOMES[failure](ESSENTIAL[kind])
        assert await outcome(sim, client, kind) == "200"


async def test_a_failure_for_one_dialect_spares_the_others(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """A failure injected for one kind waits for that kind's endpoint."""
    sim.inject(Failure.SERVER_ERROR, kind="litellm")
    statuses = [(await client.get(PATHS[kind])).status_code for kind in PATHS]
    assert statuses == [200, 200, 503]


async def test_requests_served_counts_every_dialect(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """Every dialect's requests count in ``requests_served``, and each in its own counter."""
    for path in (OPENROUTER_PATH, LITELLM_PATH, LITELLM_PATH):
        await client.get(path)
    assert sim.requests_served == 3
    assert sim.requests_by_kind == {"posthog": 0, "openrouter": 1, "litellm": 2}


async def test_held_requests_of_any_dialect_wait_for_release(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """``hold`` holds the OpenRouter and LiteLLM endpoints too, until ``release``."""
    sim.hold()
    statuses: list[int] = []

    async def fetch(path: str) -> None:
        statuses.append((await client.get(path)).status_code)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, OPENROUTER_PATH)
            tg.start_soon(fetch, LITELLM_PATH)
            await sim.wait_for_requests(2)
            assert statuses == []
            sim.release()
    assert statuses == [200, 200]


# -- spend over time -------------------------------------------------------------------------


async def test_activity_grows_every_account(clock: FakeClock) -> None:
    """``activity_usd_per_hour`` spends on the OpenRouter key and the LiteLLM key too."""
    sim = GatewaySimulator(activity_usd_per_hour=10, clock=clock)
    clock.advance(hours=2)
    async with (
        SimulatorServer(sim) as server,
        httpx.AsyncClient(base_url=server.url, headers=AUTH) as client,
    ):
        data, info = await openrouter(client), await litellm(client)
    assert (data["usage"], data["usage_daily"], data["limit_remaining"]) == (20.0, 20.0, 80.0)
    assert info["spend"] == 20.0


async def test_spend_for_one_kind_leaves_the_others(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """``spend(kind=...)`` adds to that dialect's account only."""
    sim.spend(5, kind="openrouter")
    assert (await openrouter(client))["usage"] == 5.0
    assert (await litellm(client))["spend"] == 0.0
    assert sim.state()["burst_used_usd"] == 0.0


async def test_openrouter_day_ends_at_utc_midnight(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """At 00:00 UTC the day's spend starts again; the week's and month's go on."""
    sim.spend(10, kind="openrouter")
    clock.advance(hours=11, minutes=59, seconds=59)  # Sunday 23:59:59.5
    assert (await openrouter(client))["usage_daily"] == 10.0
    clock.advance(seconds=1)  # Monday 00:00:00.5
    data = await openrouter(client)
    assert (data["usage_daily"], data["usage_monthly"], data["usage"]) == (0.0, 10.0, 10.0)


async def test_openrouter_week_starts_on_monday(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """The week's spend starts again on Monday 00:00 UTC, not on Sunday."""
    clock.now = datetime(2026, 11, 16, 12, tzinfo=START.tzinfo)  # the Monday before
    sim.reset_windows()
    sim.spend(10, kind="openrouter")
    clock.now = START  # Sunday: the same week
    assert (await openrouter(client))["usage_weekly"] == 10.0
    clock.now = datetime(2026, 11, 23, tzinfo=START.tzinfo)  # Monday
    assert (await openrouter(client))["usage_weekly"] == 0.0


async def test_openrouter_month_starts_on_the_first(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """On the 1st at 00:00 UTC the month's spend starts again; the spend in all goes on."""
    sim.spend(10, kind="openrouter")
    clock.now = datetime(2026, 12, 1, tzinfo=START.tzinfo)
    data = await openrouter(client)
    assert (data["usage_monthly"], data["usage"]) == (0.0, 10.0)


async def test_openrouter_limit_counts_the_spend_of_its_period(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """A daily limit is whole again the next UTC day."""
    sim.set_openrouter(limit_usd=50, limit_reset="daily", usage_usd=10)
    assert (await openrouter(client))["limit_remaining"] == 40.0
    clock.advance(days=1)
    assert (await openrouter(client))["limit_remaining"] == 50.0


async def test_openrouter_limit_that_never_resets_counts_all_spend(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """A limit without ``limit_reset`` counts the key's spend in all, across months."""
    sim.set_openrouter(limit_usd=50, limit_reset=None, usage_usd=10)
    clock.advance(days=40)
    assert (await openrouter(client))["limit_remaining"] == 40.0


async def test_openrouter_remaining_never_goes_below_zero(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """Spend past the limit leaves 0 remaining, as OpenRouter refuses what would pass it."""
    sim.set_openrouter(limit_usd=20, usage_usd=25)
    assert (await openrouter(client))["limit_remaining"] == 0.0


async def test_openrouter_key_without_a_limit(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """``limit_usd=None`` sends ``limit`` and ``limit_remaining`` null."""
    sim.set_openrouter(limit_usd=None)
    data = await openrouter(client)
    assert (data["limit"], data["limit_remaining"]) == (None, None)


async def test_litellm_budget_starts_again_after_its_duration(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """Once ``budget_reset_at`` passes the spend is 0 and the next reset one duration later."""
    sim.set_litellm(spend_usd=30, budget_duration="1d")
    clock.advance(days=3, hours=12)
    info = await litellm(client)
    assert info["spend"] == 0.0
    assert info["budget_reset_at"] == (WHOLE + timedelta(days=4)).isoformat()


async def test_litellm_reset_without_a_duration_happens_once(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """A reset time without a duration zeroes the spend once, then there is none."""
    sim.set_litellm(spend_usd=5, budget_duration=None, budget_reset_at=WHOLE + timedelta(hours=1))
    clock.advance(hours=2)
    info = await litellm(client)
    assert (info["spend"], info["budget_reset_at"]) == (0.0, None)


# -- control ---------------------------------------------------------------------------------


async def test_control_openrouter_sets_the_key(client: httpx.AsyncClient) -> None:
    """POST /_sim/openrouter sets the key; fields left out are left as they are."""
    await client.post(
        "/_sim/openrouter", json={"limit_usd": None, "limit_reset": "weekly", "usage_usd": 3}
    )
    state = (await client.post("/_sim/openrouter", json={"usage_daily_usd": 1})).json()
    assert state["openrouter"] == {
        "limit_usd": None,
        "limit_reset": "weekly",
        "limit_remaining_usd": None,
        "usage_usd": 3.0,
        "usage_daily_usd": 1.0,
        "usage_weekly_usd": 3.0,
        "usage_monthly_usd": 3.0,
    }


async def test_control_litellm_sets_the_key(client: httpx.AsyncClient) -> None:
    """POST /_sim/litellm sets the spend, the budget and its duration, counted from now."""
    body = {"spend_usd": 5, "max_budget_usd": None, "budget_duration": "7d"}
    state = (await client.post("/_sim/litellm", json=body)).json()
    assert state["litellm"] == {
        "spend_usd": 5.0,
        "max_budget_usd": None,
        "budget_duration": "7d",
        "budget_reset_at": "2026-11-29T12:00:00Z",
    }


async def test_control_litellm_sets_the_reset_time(client: httpx.AsyncClient) -> None:
    """POST /_sim/litellm with ``budget_reset_at`` sets when the budget starts again."""
    body = {"budget_reset_at": "2026-11-23T01:00:00+01:00"}
    state = (await client.post("/_sim/litellm", json=body)).json()
    assert state["litellm"]["budget_reset_at"] == "2026-11-23T00:00:00Z"


async def test_control_failures_for_one_kind(client: httpx.AsyncClient) -> None:
    """POST /_sim/failures with ``kind`` keeps the failure for that dialect."""
    await client.post("/_sim/failures", json={"failure": "unauthorized", "kind": "openrouter"})
    statuses = [(await client.get(PATHS[kind])).status_code for kind in PATHS]
    assert statuses == [200, 401, 200]


async def test_control_spend_for_one_kind(client: httpx.AsyncClient) -> None:
    """POST /_sim/spend with ``kind`` spends on that dialect's account only."""
    state = (await client.post("/_sim/spend", json={"usd": 2.5, "kind": "litellm"})).json()
    assert (state["litellm"]["spend_usd"], state["openrouter"]["usage_usd"]) == (2.5, 0.0)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sim/openrouter", {"limit_reset": "yearly"}),
        ("/_sim/openrouter", {"usage_usd": -1}),
        ("/_sim/openrouter", {"label": "x"}),
        ("/_sim/litellm", {"budget_duration": "1mo"}),
        ("/_sim/litellm", {"budget_reset_at": "2026-11-23T00:00:00"}),
        ("/_sim/failures", {"failure": "timeout", "kind": "bedrock"}),
    ],
    ids=str,
)
async def test_control_rejects_bad_dialect_settings(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    """A dialect setting that does not validate gets a 400 JSON error."""
    response = await client.post(path, json=body)
    assert (response.status_code, response.json()["error"]) == (400, "bad_request")


@pytest.mark.parametrize(
    "change",
    [
        lambda sim: sim.set_openrouter(limit_usd=-1),
        lambda sim: sim.set_openrouter(usage_daily_usd=-1),
        lambda sim: sim.set_litellm(budget_duration="forever"),
        lambda sim: sim.set_litellm(budget_reset_at=datetime(2026, 11, 23)),
        lambda sim: sim.set_litellm(max_budget_usd=-5),
    ],
    ids=["negative-limit", "negative-usage", "bad-duration", "naive-reset", "negative-budget"],
)
def test_setters_refuse_bad_values(change: Callable[[GatewaySimulator], None]) -> None:
    """The Python setters refuse what the control API would."""
    with pytest.raises(ValueError):
        change(GatewaySimulator())


async def test_reset_starts_every_account_afresh(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """POST /_sim/reset zeroes every account's spend and every dialect's counter."""
    sim.spend(10)
    await client.get(OPENROUTER_PATH)
    state = (await client.post("/_sim/reset")).json()
    assert (state["openrouter"]["usage_usd"], state["litellm"]["spend_usd"]) == (0.0, 0.0)
    assert state["requests_by_kind"] == {"posthog": 0, "openrouter": 0, "litellm": 0}
