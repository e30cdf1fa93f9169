"""The usage breakdown over HTTP and WebSocket: the same answer, and the same refusals."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest

from common.breakdown import Breakdown
from common.models import utc_now
from simulator import GatewaySimulator
from tests.conftest import RelayHarness

from .wire import auth_headers, connect, request

pytestmark = pytest.mark.anyio

#: A range that holds the test's polls whatever the hour.
RANGE = {
    "since": (utc_now() - timedelta(days=1)).isoformat(),
    "until": (utc_now() + timedelta(days=1)).isoformat(),
}


async def polls_with_growth(relay: RelayHarness, simulator: GatewaySimulator) -> None:
    """Three polls of the default source, the daily window rising 5 points between each."""
    for percent in (10.0, 15.0, 20.0):
        simulator.set_usage(burst_percent=percent)
        await relay.hub.monitor.refresh_now()


async def http_breakdown(relay: RelayHarness, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
        return await client.get("/api/v1/usage/breakdown", params=params)


async def test_http_and_websocket_answer_the_same_breakdown(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """``get_breakdown`` answers what ``GET /api/v1/usage/breakdown`` answers."""
    with anyio.fail_after(10):
        await polls_with_growth(relay, simulator)
        over_http = await http_breakdown(relay, **RANGE, group_by="source,meter")
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "get_breakdown", **RANGE, group_by=["source", "meter"])
    assert over_http.status_code == 200
    assert reply["result"] == over_http.json()


async def test_the_breakdown_counts_the_rises_of_each_meter(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Three polls rising 5 points each time count 10 points for the daily window."""
    with anyio.fail_after(10):
        await relay.hub.monitor.refresh_now()  # the relay's first poll is over
        await polls_with_growth(relay, simulator)
        response = await http_breakdown(relay, **RANGE, group_by="meter")
    rows = {row.meter: row for row in Breakdown.model_validate(response.json()).breakdown}
    burst = rows["burst"]
    assert burst.consumed.percent is not None and burst.consumed.percent >= 10.0
    assert burst.consumed.usd is None


async def test_the_totals_are_the_sum_of_the_rows(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """``totals`` add up the rows, whatever the grouping."""
    with anyio.fail_after(10):
        await polls_with_growth(relay, simulator)
        answer = Breakdown.model_validate(
            (await http_breakdown(relay, **RANGE, group_by="source,meter,hour")).json()
        )
    percent = sum(row.consumed.percent or 0.0 for row in answer.breakdown)
    assert answer.totals.consumed.percent == pytest.approx(percent)
    assert answer.group_by == ["source", "meter", "hour"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45"}, "until"),
        ({"since": "2026-12-02", "until": "2026-12-01"}, "since"),
        ({"since": "2025-01-01", "until": "2026-12-01"}, "since"),
    ],
    ids=["group", "unparseable", "not-a-day", "reversed", "over-400-days"],
)
async def test_a_bad_parameter_is_400_naming_it(
    relay: RelayHarness, params: dict[str, str], named: str
) -> None:
    """A bad ``since``, ``until`` or ``group_by`` is 400 ``bad_request`` naming it."""
    with anyio.fail_after(10):
        response = await http_breakdown(relay, **params)
    assert response.status_code == 400
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "bad_request" and named in error["message"]


async def test_a_bad_parameter_over_websocket_is_bad_request(relay: RelayHarness) -> None:
    """``get_breakdown`` with an unknown group gets ``bad_request`` and the connection stays."""
    with anyio.fail_after(10):
        async with connect(relay.ws_url) as ws:
            refused = await request(ws, "get_breakdown", group_by="fortnight")
            pong = await request(ws, "ping")
    assert refused["error"]["code"] == "bad_request"
    assert "group_by" in refused["error"]["message"]
    assert pong["result"] == {"pong": True}
