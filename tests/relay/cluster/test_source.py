"""A source of a team relay against a real Redis: who polls, and how refreshes are answered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio
import pytest

from common.models import Snapshot
from monitor.adapters.base import Reading
from monitor.service import UsageMonitorService
from relay.cluster import ClusterLink, ClusterSource
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401

pytestmark = pytest.mark.anyio

#: No scheduled poll during a test: every poll after the first is a refresh.
QUIET = 3600.0


class CountingFetcher:
    """A gateway that answers at once and counts how often it was asked."""

    def __init__(self) -> None:
        self.requests = 0

    async def fetch(self) -> Reading:
        self.requests += 1
        return Reading(kind="openrouter", usage={"usage": float(self.requests)}, meters=[])


class Relay:
    """One relay's view of the source: its link, its poller's gateway and the source."""

    def __init__(self, url: str) -> None:
        self.link = ClusterLink(
            url, "sources", lease_seconds=2, retention=timedelta(days=1), epoch="e"
        )
        self.gateway = CountingFetcher()
        poller = UsageMonitorService(self.gateway, interval=QUIET, kind="openrouter")
        self.source = ClusterSource(poller, self.link, refresh_timeout=5)
        self.updated = anyio.Event()
        self.source.add_observer(lambda event: self.updated.set())

    async def start(self, stack: AsyncExitStack) -> None:
        stack.push_async_callback(self.link.aclose)
        await stack.enter_async_context(self.link)
        await stack.enter_async_context(self.source)


@pytest.fixture
async def holder_and_follower(redis_server: RedisServer) -> AsyncIterator[tuple[Relay, Relay]]:
    """The holder has polled once and the follower has heard of it."""
    holder, follower = Relay(redis_server.url), Relay(redis_server.url)
    async with AsyncExitStack() as stack:
        await holder.start(stack)
        with anyio.fail_after(10):
            await holder.updated.wait()  # its first poll, as the lease's new holder
        # The follower hears of that poll as it joins, from what Redis keeps.
        await follower.start(stack)
        assert follower.source.get_latest() is not None
        yield holder, follower


async def test_only_the_holder_polls(holder_and_follower: tuple[Relay, Relay]) -> None:
    """The relay that took the lease polls; the other serves its snapshot without polling."""
    holder, follower = holder_and_follower
    assert (holder.source.holding, follower.source.holding) == (True, False)
    assert (holder.gateway.requests, follower.gateway.requests) == (1, 0)
    assert follower.source.get_latest() == holder.source.get_latest()


async def test_a_refresh_on_a_follower_is_polled_by_the_holder(
    holder_and_follower: tuple[Relay, Relay],
) -> None:
    """A refresh asked of a relay without the lease comes back with the holder's new poll."""
    holder, follower = holder_and_follower
    with anyio.fail_after(10):
        snapshot = await follower.source.refresh_now()
    assert snapshot.seq == 2
    assert (holder.gateway.requests, follower.gateway.requests) == (2, 0)


async def test_a_forwarded_refresh_takes_a_poll_its_relay_had_not_heard_of(
    holder_and_follower: tuple[Relay, Relay],
) -> None:
    """Asked for news after seq 0, the holder answers with seq 1 at once, without polling."""
    holder, _ = holder_and_follower
    answers: list[Snapshot | Exception] = []
    assert holder.source.serve_refresh(0, answers.append)
    assert [getattr(answer, "seq", answer) for answer in answers] == [1]
    assert holder.gateway.requests == 1


async def test_a_relay_that_stops_gives_its_lease_up(redis_server: RedisServer) -> None:
    """Stopping the holder frees the lease at once, so another relay need not wait it out."""
    holder = Relay(redis_server.url)
    async with AsyncExitStack() as stack:
        await holder.start(stack)
        with anyio.fail_after(10):
            await holder.updated.wait()
        assert redis_server.command("EXISTS", "sources:source:default:lease") == b":1\r\n"
    assert redis_server.command("EXISTS", "sources:source:default:lease") == b":0\r\n"
