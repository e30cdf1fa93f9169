"""Tests of the gateway simulator's app, over real loopback sockets."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest
from pydantic import ValidationError

from common.models import Usage
from simulator import Failure, GatewaySimulator, SimulatorServer

from .conftest import AUTH, START, USAGE_PATH, FakeClock, usage

# -- the normal answer ---------------------------------------------------------


@pytest.mark.anyio
async def test_usage_matches_spec(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """A normal answer has exactly the spec's fields and values."""
    sim.set_usage(burst_percent=37.5, sustained_percent=12.1)
    response = await usage(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "product": "posthog_code",
        "user_id": 1234,
        "burst": {
            "used_percent": 37.5,
            "resets_in_seconds": 86399,
            "reset_at": "2026-11-23T12:00:00Z",
            "exceeded": False,
        },
        "sustained": {
            "used_percent": 12.1,
            "resets_in_seconds": 2591999,
            "reset_at": "2026-12-22T12:00:00Z",
            "exceeded": False,
        },
        "is_rate_limited": False,
        "billing_period_end": None,
        "is_pro": False,
        "ai_credits": {"exhausted": False, "used_usd": 0.0, "limit_usd": 20.0},
    }


@pytest.mark.anyio
async def test_usage_validates_with_model(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """The monitor's Usage model accepts the answer and keeps the reset times."""
    sim.set_usage(burst_percent=50)
    parsed = Usage.model_validate((await usage(client)).json())
    assert parsed.burst.used_percent == 50.0
    assert parsed.burst.reset_at == datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert parsed.sustained.reset_at == datetime(2026, 12, 22, 12, tzinfo=UTC)


@pytest.mark.anyio
async def test_legacy_sends_only_resets_in_seconds(clock: FakeClock) -> None:
    """legacy=True drops reset_at; the model then computes it from resets_in_seconds."""
    sim = GatewaySimulator(legacy=True, clock=clock)
    async with SimulatorServer(sim) as server, httpx.AsyncClient(headers=AUTH) as client:
        body = (await client.get(server.url + USAGE_PATH)).json()
    assert "reset_at" not in body["burst"]
    assert "reset_at" not in body["sustained"]
    assert body["burst"]["resets_in_seconds"] == 86399
    parsed = Usage.model_validate(body, context={"received_at": START})
    assert parsed.burst.reset_at == START + timedelta(seconds=86399)


@pytest.mark.anyio
async def test_spend_over_limit_caps_percent_and_exceeds(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """Spend past the cap reports 100 %, exceeded and is_rate_limited."""
    sim.spend(150)
    body = (await usage(client)).json()
    assert body["burst"] == body["burst"] | {"used_percent": 100.0, "exceeded": True}
    assert body["sustained"] == body["sustained"] | {"used_percent": 15.0, "exceeded": False}
    assert body["is_rate_limited"] is True


@pytest.mark.anyio
async def test_percent_rounds_to_one_decimal(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """used_percent is rounded to 0.1."""
    sim.spend(33.333)
    body = (await usage(client)).json()
    assert body["burst"]["used_percent"] == 33.3
    assert body["sustained"]["used_percent"] == 3.3


@pytest.mark.anyio
async def test_window_without_limit_reports_100(clock: FakeClock) -> None:
    """A window with no limit (0) reports 100 %."""
    sim = GatewaySimulator(burst_limit_usd=0, clock=clock)
    async with SimulatorServer(sim) as server, httpx.AsyncClient(headers=AUTH) as client:
        body = (await client.get(server.url + USAGE_PATH)).json()
    assert body["burst"]["used_percent"] == 100.0
    assert body["sustained"]["used_percent"] == 0.0


# -- auth and routing ----------------------------------------------------------


@pytest.mark.anyio
async def test_missing_token_is_401(server: SimulatorServer) -> None:
    """A request without a bearer token is refused with 401."""
    async with httpx.AsyncClient() as client:
        response = await client.get(server.url + USAGE_PATH)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


@pytest.mark.anyio
async def test_wrong_token_is_401_and_not_echoed(server: SimulatorServer) -> None:
    """A wrong token is refused with 401 and the body does not repeat it."""
    async with httpx.AsyncClient(headers={"Authorization": "Bearer s3cr3t-guess"}) as client:
        response = await client.get(server.url + USAGE_PATH)
    assert response.status_code == 401
    assert "s3cr3t" not in response.text


@pytest.mark.anyio
async def test_set_token_rotates(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """After set_token the old token is refused and the new one accepted."""
    sim.set_token("rotated")
    assert (await usage(client)).status_code == 401
    response = await client.get(USAGE_PATH, headers={"Authorization": "Bearer rotated"})
    assert response.status_code == 200


@pytest.mark.anyio
async def test_wrong_product_is_404(client: httpx.AsyncClient) -> None:
    """A product the simulator does not serve answers 404 with JSON."""
    response = await client.get("/v1/usage/signals")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# -- injected failures ---------------------------------------------------------


@pytest.mark.anyio
async def test_server_error_is_503_json(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """SERVER_ERROR answers 503 with a small JSON error body."""
    sim.inject(Failure.SERVER_ERROR)
    response = await usage(client)
    assert response.status_code == 503
    assert response.json()["error"] == "server_error"


@pytest.mark.anyio
async def test_server_error_status_is_configurable(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """inject(SERVER_ERROR, status=...) picks the status."""
    sim.inject(Failure.SERVER_ERROR, status=500)
    assert (await usage(client)).status_code == 500


@pytest.mark.anyio
async def test_timeout_never_answers(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """TIMEOUT accepts the request and never answers, so the client times out."""
    sim.inject(Failure.TIMEOUT)
    with anyio.fail_after(5), pytest.raises(httpx.ReadTimeout):
        await client.get(USAGE_PATH, timeout=0.2)
    assert (await usage(client)).status_code == 200


@pytest.mark.anyio
async def test_malformed_is_not_json(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """MALFORMED answers 200 with a body that does not parse as JSON."""
    sim.inject(Failure.MALFORMED)
    response = await usage(client)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


@pytest.mark.anyio
async def test_truncated_is_half_a_body(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """TRUNCATED answers 200 with the first half of the real JSON body."""
    sim.inject(Failure.TRUNCATED)
    response = await usage(client)
    full = json.dumps(sim.usage_payload()).encode()
    assert response.status_code == 200
    assert response.content == full[: len(full) // 2]
    with pytest.raises(json.JSONDecodeError):
        response.json()


@pytest.mark.anyio
async def test_invalid_fails_schema(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """INVALID answers 200 with JSON that the Usage model rejects (burst missing)."""
    sim.inject(Failure.INVALID)
    response = await usage(client)
    assert response.status_code == 200
    assert "burst" not in response.json()
    with pytest.raises(ValidationError):
        Usage.model_validate(response.json())


@pytest.mark.anyio
async def test_rate_limited_sends_retry_after(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """RATE_LIMITED answers 429 with Retry-After in seconds (1 by default)."""
    sim.inject(Failure.RATE_LIMITED)
    response = await usage(client)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


@pytest.mark.anyio
async def test_retry_after_is_configurable(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """inject(RATE_LIMITED, retry_after=...) sets the header, fractions included."""
    sim.inject(Failure.RATE_LIMITED, retry_after=0.25)
    assert (await usage(client)).headers["Retry-After"] == "0.25"


@pytest.mark.anyio
async def test_unauthorized_even_with_good_token(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """UNAUTHORIZED answers 401 although the token is right."""
    sim.inject(Failure.UNAUTHORIZED)
    assert (await usage(client)).status_code == 401


@pytest.mark.anyio
async def test_disconnect_drops_connection(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """DISCONNECT closes the connection without a response; the next request works."""
    sim.inject(Failure.DISCONNECT)
    with anyio.fail_after(5), pytest.raises(httpx.RemoteProtocolError):
        await usage(client)
    assert (await usage(client)).status_code == 200


@pytest.mark.anyio
async def test_failures_apply_in_order_then_stop(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """Queued failures hit the next requests in order, count times each, then normal answers."""
    sim.inject(Failure.SERVER_ERROR, count=2)
    sim.inject(Failure.UNAUTHORIZED)
    statuses = [(await usage(client)).status_code for _ in range(4)]
    assert statuses == [503, 503, 401, 200]


# -- latency, hold and counting ------------------------------------------------


@pytest.mark.anyio
async def test_latency_delays_answer(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """set_latency delays each answer by at least that long."""
    sim.set_latency(0.1)
    started = time.monotonic()
    assert (await usage(client)).status_code == 200
    assert time.monotonic() - started >= 0.1


@pytest.mark.anyio
async def test_hold_waits_until_release(sim: GatewaySimulator, server: SimulatorServer) -> None:
    """Held requests are received and counted but answered only after release()."""
    sim.hold()
    statuses: list[int] = []

    async def fetch(client: httpx.AsyncClient) -> None:
        statuses.append((await usage(client)).status_code)

    with anyio.fail_after(5):
        async with (
            httpx.AsyncClient(base_url=server.url, headers=AUTH) as client,
            anyio.create_task_group() as tg,
        ):
            for _ in range(3):
                tg.start_soon(fetch, client)
            await sim.wait_for_requests(3)
            assert statuses == []
            sim.release()
    assert statuses == [200, 200, 200]


@pytest.mark.anyio
async def test_wait_for_requests_returns_when_already_reached(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """wait_for_requests returns at once when enough requests were served already."""
    await usage(client)
    with anyio.fail_after(1):
        await sim.wait_for_requests(1)
        await sim.wait_for_requests(0)


@pytest.mark.anyio
async def test_requests_served_counts_every_usage_request(
    sim: GatewaySimulator, client: httpx.AsyncClient
) -> None:
    """requests_served counts refused and failed usage requests, not control calls."""
    sim.inject(Failure.SERVER_ERROR)
    await usage(client)
    await client.get(USAGE_PATH, headers={"Authorization": "Bearer nope"})
    await client.get("/v1/usage/signals")
    await usage(client)
    await client.get("/_sim/state")
    assert sim.requests_served == 4


# -- windows over time ---------------------------------------------------------


@pytest.mark.anyio
async def test_burst_window_rolls_over(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """After 24 h the burst window starts again at 0 with a new reset; sustained keeps its spend."""
    sim.spend(50)
    clock.advance(hours=24)
    body = (await usage(client)).json()
    assert body["burst"]["used_percent"] == 0.0
    assert body["burst"]["reset_at"] == "2026-11-24T12:00:00Z"
    assert body["burst"]["resets_in_seconds"] == 86399
    assert body["sustained"]["used_percent"] == 5.0


@pytest.mark.anyio
async def test_windows_roll_over_several_periods(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """A clock far past several resets lands on the next reset after now in both windows."""
    sim.spend(50)
    clock.advance(days=61, hours=1)
    body = (await usage(client)).json()
    assert body["burst"]["reset_at"] == "2027-01-23T12:00:00Z"
    assert body["sustained"]["reset_at"] == "2027-02-20T12:00:00Z"
    assert body["sustained"]["used_percent"] == 0.0


@pytest.mark.anyio
async def test_activity_grows_usage_over_time(clock: FakeClock) -> None:
    """activity_usd_per_hour adds spend to both windows as the clock moves."""
    sim = GatewaySimulator(activity_usd_per_hour=10, clock=clock)
    clock.advance(hours=2)
    async with SimulatorServer(sim) as server, httpx.AsyncClient(headers=AUTH) as client:
        body = (await client.get(server.url + USAGE_PATH)).json()
    assert body["burst"]["used_percent"] == 20.0
    assert body["sustained"]["used_percent"] == 2.0


@pytest.mark.anyio
async def test_reset_windows_starts_new_windows(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """reset_windows sets used to 0 and counts the reset times from now."""
    sim.spend(500)
    clock.advance(hours=5)
    sim.reset_windows()
    body = (await usage(client)).json()
    assert body["burst"] == body["burst"] | {"used_percent": 0.0, "resets_in_seconds": 86399}
    assert body["sustained"]["used_percent"] == 0.0
    assert body["sustained"]["reset_at"] == "2026-12-22T17:00:00Z"


# -- control API ---------------------------------------------------------------


@pytest.mark.anyio
async def test_control_state(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """GET /_sim/state reports the counter, percents and pending failures."""
    sim.set_usage(burst_percent=40)
    sim.inject(Failure.SERVER_ERROR, count=2)
    await usage(client)
    state = (await client.get("/_sim/state")).json()
    assert state == state | {
        "requests_served": 1,
        "burst_percent": 40.0,
        "sustained_percent": 0.0,
        "pending_failures": ["server_error"],
        "held": False,
    }


@pytest.mark.anyio
async def test_control_usage_and_spend(client: httpx.AsyncClient) -> None:
    """POST /_sim/usage and /_sim/spend change what the usage endpoint reports."""
    await client.post("/_sim/usage", json={"burst_percent": 10, "sustained_percent": 1})
    state = (await client.post("/_sim/spend", json={"usd": 20})).json()
    assert (state["burst_percent"], state["sustained_percent"]) == (30.0, 3.0)
    body = (await usage(client)).json()
    assert (body["burst"]["used_percent"], body["sustained"]["used_percent"]) == (30.0, 3.0)


@pytest.mark.anyio
async def test_control_failures(client: httpx.AsyncClient) -> None:
    """POST /_sim/failures queues failures with count, status and retry_after."""
    state = (
        await client.post(
            "/_sim/failures",
            json={"failure": "rate_limited", "count": 2, "retry_after": 3},
        )
    ).json()
    assert state["pending_failures"] == ["rate_limited", "rate_limited"]
    assert (await usage(client)).headers["Retry-After"] == "3"
    await client.post("/_sim/failures", json={"failure": "server_error", "status": 502})
    assert [(await usage(client)).status_code for _ in range(3)] == [429, 502, 200]


@pytest.mark.anyio
async def test_control_latency(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """POST /_sim/latency sets the latency."""
    state = (await client.post("/_sim/latency", json={"seconds": 0.5})).json()
    assert state["latency_seconds"] == 0.5


@pytest.mark.anyio
async def test_control_reset(
    sim: GatewaySimulator, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    """POST /_sim/reset zeroes the counter, drops failures and latency, restarts windows."""
    sim.spend(10)
    await client.get("/v1/usage/signals")
    sim.inject(Failure.SERVER_ERROR)
    sim.set_latency(0.5)
    clock.advance(hours=1)
    state = (await client.post("/_sim/reset")).json()
    assert state == state | {
        "requests_served": 0,
        "burst_percent": 0.0,
        "pending_failures": [],
        "latency_seconds": 0.0,
    }
    assert (await usage(client)).json()["burst"]["reset_at"] == "2026-11-23T13:00:00Z"


@pytest.mark.anyio
async def test_control_hold_and_release(sim: GatewaySimulator, client: httpx.AsyncClient) -> None:
    """POST /_sim/hold and /_sim/release toggle holding."""
    assert (await client.post("/_sim/hold")).json()["held"] is True
    assert (await client.post("/_sim/release")).json()["held"] is False


@pytest.mark.anyio
async def test_control_rejects_bad_body(client: httpx.AsyncClient) -> None:
    """A control body that does not validate gets a 400 JSON error."""
    for path, body in [
        ("/_sim/spend", {"usd": -1}),
        ("/_sim/failures", {"failure": "meteor"}),
        ("/_sim/usage", {"burst": 3}),
    ]:
        response = await client.post(path, json=body)
        assert response.status_code == 400, path
        assert response.json()["error"] == "bad_request"
