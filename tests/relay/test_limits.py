"""Rate limits: token buckets on a fake clock, a session's limits, and a live relay's."""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from common.messages import CLOSE_POLICY_VIOLATION
from common.models import Status
from relay.limits import Limits, Rate, RateLimiter, TokenBucket, Verdict
from relay.protocol import CloseConnection, RefreshRequested, Session
from relay.settings import Settings
from simulator import GatewaySimulator
from tests.conftest import RelayHarness

from .sessions import FakeMonitor, topics
from .wire import auth_headers, connect, reply_to, request

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drain(bucket: TokenBucket) -> int:
    taken = 0
    while bucket.take():
        taken += 1
    return taken


def test_a_new_bucket_allows_a_full_burst() -> None:
    """A bucket starts full: exactly ``burst`` requests pass at once."""
    bucket = TokenBucket(Rate(per_second=1, burst=5), FakeClock())
    assert drain(bucket) == 5


def test_tokens_come_back_at_the_rate() -> None:
    """After draining, one token returns per 1/rate seconds."""
    clock = FakeClock()
    bucket = TokenBucket(Rate(per_second=4, burst=2), clock)
    drain(bucket)
    clock.advance(0.2)
    assert not bucket.take()
    clock.advance(0.05)
    assert bucket.take()


def test_tokens_never_exceed_the_burst() -> None:
    """A long idle time refills the bucket only up to ``burst``."""
    clock = FakeClock()
    bucket = TokenBucket(Rate(per_second=10, burst=3), clock)
    drain(bucket)
    clock.advance(3600)
    assert drain(bucket) == 3


def test_retry_after_is_the_time_to_the_next_token() -> None:
    """retry_after() says how long until a request would pass."""
    clock = FakeClock()
    bucket = TokenBucket(Rate(per_second=0.5, burst=1), clock)
    assert bucket.retry_after() == 0
    bucket.take()
    clock.advance(0.5)
    assert bucket.retry_after() == pytest.approx(1.5)


def test_a_clock_that_steps_back_costs_no_tokens() -> None:
    """A backwards clock neither adds nor removes tokens."""
    clock = FakeClock()
    bucket = TokenBucket(Rate(per_second=1, burst=2), clock)
    bucket.take()
    clock.advance(-100)
    assert bucket.tokens == pytest.approx(1)


@pytest.mark.parametrize(("per_second", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_rate_must_be_positive(per_second: float, burst: int) -> None:
    """Zero or negative rates and bursts are refused."""
    with pytest.raises(ValueError):
        Rate(per_second, burst)


@given(
    st.floats(min_value=0.01, max_value=100),
    st.integers(min_value=1, max_value=50),
    st.lists(st.floats(min_value=0, max_value=5), max_size=60),
)
def test_no_window_lets_more_than_burst_plus_rate_times_time(
    per_second: float, burst: int, gaps: list[float]
) -> None:
    """Over any run of requests, allowed <= burst + rate * elapsed."""
    clock = FakeClock()
    bucket = TokenBucket(Rate(per_second, burst), clock)
    start, allowed = clock.now, 0
    for gap in gaps:
        clock.advance(gap)
        allowed += drain(bucket)
    assert allowed <= burst + per_second * (clock.now - start) + 1e-6


def test_limiter_counts_refusals_in_an_episode() -> None:
    """Refusals count up from 1; the first one marks the start of the episode."""
    limiter = RateLimiter(Rate(per_second=1, burst=1), clock=FakeClock())
    assert limiter.check() is Verdict.ALLOWED
    assert limiter.check() is Verdict.LIMITED
    assert limiter.episode_started
    assert limiter.check() is Verdict.LIMITED
    assert not limiter.episode_started
    assert limiter.refused == 2


def test_an_episode_ends_only_when_the_bucket_is_full_again() -> None:
    """A flood that gets a request through now and then stays one episode."""
    clock = FakeClock()
    limiter = RateLimiter(Rate(per_second=10, burst=2), clock=clock)
    limiter.check()
    limiter.check()
    assert limiter.check() is Verdict.LIMITED
    clock.advance(0.1)  # one token back, not two
    assert limiter.check() is Verdict.ALLOWED
    assert limiter.check() is Verdict.LIMITED
    assert limiter.refused == 2
    clock.advance(1)
    assert limiter.check() is Verdict.ALLOWED
    assert limiter.refused == 0


def test_a_client_that_keeps_flooding_is_told_to_go() -> None:
    """More than close_after refusals in one episode give FLOODING."""
    limiter = RateLimiter(Rate(per_second=1, burst=1), close_after=3, clock=FakeClock())
    verdicts = [limiter.check() for _ in range(6)]
    assert verdicts == [Verdict.ALLOWED, *[Verdict.LIMITED] * 3, *[Verdict.FLOODING] * 2]


def test_without_close_after_a_flood_is_only_limited() -> None:
    """A limiter without close_after never says FLOODING."""
    limiter = RateLimiter(Rate(per_second=1, burst=1), clock=FakeClock())
    assert {limiter.check() for _ in range(1000)} == {Verdict.ALLOWED, Verdict.LIMITED}


def test_limits_give_each_connection_its_own_limiters() -> None:
    """Two connections' limiters share no tokens."""
    limits = Limits(requests=Rate(1, 1), refreshes=Rate(1, 1))
    first, second = limits.limiters(FakeClock()), limits.limiters(FakeClock())
    assert first.requests.check() is Verdict.ALLOWED
    assert second.requests.check() is Verdict.ALLOWED
    assert first.refreshes.close_after is None


# -- a session's limits (no I/O) ------------------------------------------------------


def limited_session(clock: FakeClock, **limits: Any) -> Session:
    limiters = Limits(**limits).limiters(clock)
    return Session(topics(FakeMonitor(Status(state="starting"))), limiters=limiters)


def frame(request_id: Any = 1, op: str = "ping") -> str:
    return json.dumps({"id": request_id, "op": op})


def test_session_over_the_request_rate_answers_rate_limited() -> None:
    """Past the burst, a request gets rate_limited with its id and a retry_after hint."""
    session = limited_session(FakeClock(), requests=Rate(per_second=2, burst=1))
    assert json.loads(session.receive(frame(1)))["ok"] is True  # type: ignore[arg-type]
    reply = json.loads(session.receive(frame(2)))  # type: ignore[arg-type]
    assert reply["id"] == 2
    assert reply["error"]["code"] == "rate_limited"
    assert reply["error"]["data"] == {"retry_after": 0.5}


def test_session_rate_limits_even_unparseable_frames() -> None:
    """Every frame counts, and a refused one that has no id is answered with id null."""
    session = limited_session(FakeClock(), requests=Rate(per_second=1, burst=1))
    session.receive("not json")
    reply = json.loads(session.receive("not json"))  # type: ignore[arg-type]
    assert (reply["id"], reply["error"]["code"]) == (None, "rate_limited")


def test_session_closes_a_client_that_keeps_flooding() -> None:
    """After flood_close_after refusals in one episode the session asks for 1008."""
    session = limited_session(
        FakeClock(), requests=Rate(per_second=1, burst=1), flood_close_after=2
    )
    actions = [session.receive(frame(n)) for n in range(4)]
    assert actions[-1] == CloseConnection(CLOSE_POLICY_VIOLATION, "too many requests")


def test_session_limits_refreshes_more_strictly() -> None:
    """Refreshes have their own, smaller budget; other requests still pass."""
    clock = FakeClock()
    session = limited_session(clock, refreshes=Rate(per_second=0.1, burst=1))
    assert session.receive(frame(1, "refresh")) == RefreshRequested(1, "usage")
    refused = json.loads(session.receive(frame(2, "refresh")))  # type: ignore[arg-type]
    assert refused["error"]["code"] == "rate_limited"
    assert "a minute" in refused["error"]["message"]
    assert json.loads(session.receive(frame(3)))["ok"] is True  # type: ignore[arg-type]
    clock.advance(10)
    assert session.receive(frame(4, "refresh")) == RefreshRequested(4, "usage")


def test_unauthenticated_session_answers_unauthorized() -> None:
    """Without credentials every request, even a bad one, gets unauthorized."""
    session = Session(topics(FakeMonitor(Status(state="starting"))), authenticated=False)
    for text in (frame(7, "subscribe"), '{"id": 8, "op": "nope"}', "[]"):
        reply = json.loads(session.receive(text))  # type: ignore[arg-type]
        assert reply["error"]["code"] == "unauthorized"
    assert not session.subscribed


# -- a live relay's limits ----------------------------------------------------------------

BURST = 5
FLOOD_AFTER = 20


@pytest.fixture
def relay_settings(relay_settings: Settings) -> Settings:
    return relay_settings.model_copy(
        update={
            "requests_per_second": 1.0,
            "request_burst": BURST,
            "refreshes_per_minute": 1.0,
            "refresh_burst": 2,
            "refresh_polls_per_minute": 1.0,
            "refresh_poll_burst": 3,
            "flood_close_after": FLOOD_AFTER,
        }
    )


async def send_pings(ws: Any, count: int) -> None:
    for n in range(count):
        await ws.send(json.dumps({"id": n, "op": "ping"}))


async def test_requests_past_the_burst_get_rate_limited(relay: RelayHarness) -> None:
    """A burst of pings: the first BURST are answered, the rest get rate_limited, in order."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await send_pings(ws, BURST + 5)
            replies = [json.loads(await ws.recv()) for _ in range(BURST + 5)]
    assert [reply["id"] for reply in replies] == list(range(BURST + 5))
    codes = [reply["result"] if reply["ok"] else reply["error"]["code"] for reply in replies]
    assert codes == [{"pong": True}] * BURST + ["rate_limited"] * 5


async def test_a_limited_client_does_not_limit_others(relay: RelayHarness) -> None:
    """Limits are per connection: another client is served while one is limited."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as greedy, connect(relay.ws_url) as polite:
            await send_pings(greedy, BURST + 1)
            replies = [json.loads(await greedy.recv()) for _ in range(BURST + 1)]
            assert replies[-1]["error"]["code"] == "rate_limited"
            assert (await request(polite, "ping"))["ok"] is True


async def test_a_flooding_client_is_closed_with_1008_after_its_replies(
    relay: RelayHarness,
) -> None:
    """Past FLOOD_AFTER refusals the relay sends the queued replies, then closes with 1008."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await send_pings(ws, BURST + FLOOD_AFTER + 10)
            replies = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    replies.append(json.loads(await ws.recv()))
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_POLICY_VIOLATION
    assert len(replies) == BURST + FLOOD_AFTER


async def test_rate_limiting_logs_one_line_per_episode(
    relay: RelayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """Many refused frames make one warning, not one per frame."""
    caplog.set_level(logging.INFO, logger="usage_monitor")
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            await send_pings(ws, BURST + 10)
            for _ in range(BURST + 10):
                await ws.recv()
    lines = [r for r in caplog.records if "over its rate limit" in r.getMessage()]
    assert len(lines) == 1


async def test_refreshes_are_limited_before_they_reach_the_gateway(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Past the refresh burst a refresh gets rate_limited and costs no upstream request."""
    with anyio.fail_after(5):
        await relay.hub.monitor.refresh_now()  # the first scheduled poll is over
        async with connect(relay.ws_url) as ws:
            served = simulator.requests_served
            replies = [await request(ws, "refresh") for _ in range(3)]
    assert [reply["ok"] for reply in replies] == [True, True, False]
    assert replies[2]["error"]["code"] == "rate_limited"
    assert simulator.requests_served == served + 2


async def test_http_refreshes_share_the_relays_budget(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """POST /api/v1/usage/refresh past the budget is 429 with Retry-After, no upstream request."""
    with anyio.fail_after(5):
        await relay.hub.monitor.refresh_now()  # the first scheduled poll is over
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            served = simulator.requests_served
            responses = [await client.post("/api/v1/usage/refresh") for _ in range(4)]
    assert [response.status_code for response in responses] == [200, 200, 200, 429]
    assert responses[3].json()["error"]["code"] == "rate_limited"
    assert int(responses[3].headers["retry-after"]) >= 1
    assert simulator.requests_served == served + 3


async def test_reconnecting_does_not_renew_the_relays_budget(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh on each of many new connections starts at most the relay-wide budget's polls."""
    with anyio.fail_after(10):
        await relay.hub.monitor.refresh_now()  # the first scheduled poll is over
        served = simulator.requests_served
        codes = []
        for _ in range(8):
            async with connect(relay.ws_url) as ws:
                reply = await request(ws, "refresh")
                codes.append("ok" if reply["ok"] else reply["error"]["code"])
    assert codes == ["ok"] * 3 + ["rate_limited"] * 5
    assert simulator.requests_served == served + 3


async def test_refreshes_that_join_a_poll_in_flight_cost_nothing(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Refreshes from many connections while a poll is in the air share it, past the budget."""
    with anyio.fail_after(10):
        await relay.hub.monitor.refresh_now()  # the first scheduled poll is over
        served = simulator.requests_served
        simulator.hold()
        async with AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(connect(relay.ws_url)) for _ in range(8)]
            for n, ws in enumerate(sockets):
                await ws.send(json.dumps({"id": n, "op": "refresh"}))
                # Frames are handled in order: the pong means the refresh was handled too.
                await ws.send(json.dumps({"id": f"after-{n}", "op": "ping"}))
            for n, ws in enumerate(sockets):
                await reply_to(ws, f"after-{n}")
            simulator.release()
            replies = [await reply_to(ws, n) for n, ws in enumerate(sockets)]
    assert [reply["ok"] for reply in replies] == [True] * 8
    assert len({reply["result"]["latest"]["seq"] for reply in replies}) == 1
    assert simulator.requests_served == served + 1
