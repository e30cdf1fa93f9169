"""Daily reports of a team relay: two relays' schedulers on one Redis deliver each report once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from monitor.destinations import UrlDestination
from monitor.store import AsyncSnapshotStore, SnapshotStore
from relay.cluster import ClusterLink
from simulator.receiver import ReceiverServer, ReportReceiver
from tests.monitor.test_reporting import NOW, SOURCES, Scheduled, seed
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401

pytestmark = pytest.mark.anyio


class Relay:
    """What one relay of the cluster brings to its reports: its store, link and scheduler."""

    def __init__(self, store: AsyncSnapshotStore, link: ClusterLink, url: str) -> None:
        self.link = link
        self.destination = UrlDestination(url, timeout=2.0)
        self.run = Scheduled(store, [self.destination], claims=link)


@pytest.fixture
async def receiver() -> AsyncIterator[ReceiverServer]:
    async with ReceiverServer(ReportReceiver()) as server:
        yield server


@pytest.fixture
async def relays(
    tmp_path: Path, redis_server: RedisServer, receiver: ReceiverServer
) -> AsyncIterator[list[Relay]]:
    """Two relays whose stores hold the same ten days of two sources."""
    async with anyio.create_task_group() as group:
        made = []
        for number in (1, 2):
            store = AsyncSnapshotStore(SnapshotStore(tmp_path / f"relay-{number}.db"))
            await group.start(store.run)
            for source in SOURCES:
                start = datetime(2026, 12, 1, tzinfo=UTC)
                await seed(store, source.name, source.kind, start=start, end=NOW)
            link = ClusterLink(
                redis_server.url,
                "reports",
                lease_seconds=5,
                retention=timedelta(days=1),
                epoch="e",
            )
            made.append(Relay(store, link, receiver.url + "/reports"))
        yield made
        for relay in made:
            await relay.destination.aclose()
            await relay.link.aclose()
        group.cancel_scope.cancel()


async def test_each_report_is_delivered_once_by_the_cluster(
    relays: list[Relay], receiver: ReceiverServer
) -> None:
    """Two relays catching up at once send each (source, day) once, with one body."""
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for relay in relays:
                group.start_soon(relay.run.scheduler.catch_up)
        # A pass that found a report busy on the other relay records its outcome next time.
        for relay in relays:
            await relay.run.scheduler.catch_up()
    keys = [request.key for request in receiver.receiver.requests]
    assert len(keys) == len(set(keys)) == 20
    assert [(r.run.scheduler.pending, r.run.scheduler.failed) for r in relays] == [(0, 0)] * 2


async def test_both_relays_list_the_same_bodies(relays: list[Relay]) -> None:
    """The report one relay delivered is the one the other keeps, byte for byte."""
    with anyio.fail_after(30):
        for relay in relays:
            await relay.run.scheduler.catch_up()
    first, second = (relay.run.scheduler for relay in relays)
    day = NOW.date() - timedelta(days=1)
    assert await first.saved_report("us", day) == await second.saved_report("us", day)
