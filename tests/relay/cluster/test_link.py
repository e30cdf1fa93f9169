"""The team relay's link against a real Redis: leases, fenced publishing, claims."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from common.models import Alert, AlertRule, Snapshot, ThresholdCrossed
from common.reports import ReportDelivery
from monitor.rules import RuleBook
from relay.cluster import ClusterLink
from relay.cluster.link import Lease
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401

pytestmark = pytest.mark.anyio

FETCHED_AT = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
async def make_link(redis_server: RedisServer) -> AsyncIterator[Callable[[], ClusterLink]]:
    links: list[ClusterLink] = []

    def make() -> ClusterLink:
        link = ClusterLink(
            redis_server.url,
            "test",
            lease_seconds=5,
            retention=timedelta(days=1),
            epoch="epoch-a",
        )
        links.append(link)
        return link

    yield make
    for link in links:
        await link.aclose()


def snapshot(seq: int = 1) -> Snapshot:
    return Snapshot(
        seq=seq,
        source="default",
        kind="openrouter",
        fetched_at=FETCHED_AT,
        usage={"usage": 1.5},
    )


def alert(threshold: float = 50) -> Alert:
    return ThresholdCrossed(
        source="default",
        bucket="burst",
        threshold=threshold,
        used_percent=threshold + 1,
        reset_at=FETCHED_AT + timedelta(hours=3),
    )


async def take(link: ClusterLink) -> Lease:
    """The source's lease, which no relay may hold now."""
    lease = await link.acquire("default")
    assert isinstance(lease, Lease)
    return lease


async def test_a_held_lease_cannot_be_taken(make_link: Callable[[], ClusterLink]) -> None:
    """While one relay holds a source's lease, another's attempt learns how long it lasts."""
    first, second = make_link(), make_link()
    await take(first)
    left = await second.acquire("default")
    assert isinstance(left, float) and 4.5 < left <= 5


async def test_each_new_holder_has_a_higher_fence(make_link: Callable[[], ClusterLink]) -> None:
    """A lease given up and taken again carries the next fencing number."""
    first, second = make_link(), make_link()
    lease = await take(first)
    await first.release(lease)
    taken = await take(second)
    assert (lease.fence, taken.fence) == (1, 2)


async def test_renewal_fails_once_another_relay_holds_the_lease(
    make_link: Callable[[], ClusterLink], redis_server: RedisServer
) -> None:
    """A holder whose lease expired and was taken over cannot renew it."""
    first, second = make_link(), make_link()
    lease = await take(first)
    redis_server.command("DEL", "test:source:default:lease")  # as if it had expired
    await take(second)
    assert not await first.renew(lease)


async def test_commit_numbers_snapshots_in_redis(make_link: Callable[[], ClusterLink]) -> None:
    """Each published snapshot gets the next seq of the cluster, in the cluster's epoch."""
    link = make_link()
    lease = await take(link)
    published = [await link.commit(lease, snapshot(), [], 0) for _ in range(3)]
    assert [(p[0].seq, p[0].epoch) for p in published if p] == [(n, "epoch-a") for n in (1, 2, 3)]


async def test_a_fenced_commit_publishes_nothing(
    make_link: Callable[[], ClusterLink], redis_server: RedisServer
) -> None:
    """A holder that lost its lease cannot publish: seq, latest and stream stay as they were."""
    first, second = make_link(), make_link()
    stale = await take(first)
    assert await first.commit(stale, snapshot(), [], 0) is not None
    redis_server.command("DEL", "test:source:default:lease")
    await take(second)
    assert await first.commit(stale, snapshot(2), [], 1) is None
    assert redis_server.command("GET", "test:source:default:seq") == b"$1\r\n1\r\n"
    assert redis_server.command("XLEN", "test:source:default:history") == b":1\r\n"


async def test_seq_keeps_rising_after_redis_lost_its_data(
    make_link: Callable[[], ClusterLink], redis_server: RedisServer
) -> None:
    """After a restart without data the next seq follows the highest one the holder saw."""
    link = make_link()
    lease = await take(link)
    redis_server.kill()
    redis_server.restart()
    lease = await take(link)  # on a fresh connection: the pooled one broke
    published = await link.commit(lease, snapshot(42), [], 41)
    assert published is not None
    assert published[0].seq == 42


async def test_the_fence_keeps_rising_after_redis_lost_its_data(
    make_link: Callable[[], ClusterLink], redis_server: RedisServer
) -> None:
    """A lease taken after a restart without data is fenced above every lease before."""
    link = make_link()
    before = await take(link)
    redis_server.kill()
    redis_server.restart()
    after = await take(link)
    assert after.fence == before.fence + 1


async def test_an_alert_is_claimed_once_per_cluster(make_link: Callable[[], ClusterLink]) -> None:
    """The same alert raised by two holders in turn goes out with the first one only."""
    first, second = make_link(), make_link()
    lease = await take(first)
    published = await first.commit(lease, snapshot(), [alert(50), alert(75)], 0)
    await first.release(lease)
    taken = await take(second)
    again = await second.commit(taken, snapshot(2), [alert(75), alert(90)], 1)
    assert published is not None and again is not None
    assert [a.threshold for a in published[1]] == [50, 75]
    assert [a.threshold for a in again[1]] == [90]


async def test_every_relay_shares_the_first_saved_report(
    make_link: Callable[[], ClusterLink],
) -> None:
    """A report saved by two relays has the body of the first."""
    first, second = make_link(), make_link()
    assert await first.shared_report("default:2026-12-01", "one") == "one"
    assert await second.shared_report("default:2026-12-01", "two") == "one"


async def test_a_delivery_is_made_by_one_relay_and_settled_for_all(
    make_link: Callable[[], ClusterLink],
) -> None:
    """The first claim wins, a second waits while it runs, and then reads its outcome."""
    first, second = make_link(), make_link()
    key = "default:2026-12-01:report_url:abc"
    assert await first.claim_delivery(key, 30) == "ours"
    assert await second.claim_delivery(key, 30) == "busy"
    delivered = ReportDelivery(state="delivered", attempts=1, delivered_at=FETCHED_AT)
    await first.settle_delivery(key, delivered)
    assert await second.claim_delivery(key, 30) == delivered


async def test_a_delivery_given_up_may_be_claimed_again(
    make_link: Callable[[], ClusterLink],
) -> None:
    """A delivery left pending frees its claim for the next attempt, by any relay."""
    first, second = make_link(), make_link()
    key = "default:2026-12-01:report_url:abc"
    assert await first.claim_delivery(key, 30) == "ours"
    await first.settle_delivery(key, None)
    assert await second.claim_delivery(key, 30) == "ours"


class WatchedBook(RuleBook):
    """A rule book that says when the cluster replaced its rules."""

    def __init__(self) -> None:
        super().__init__()
        self.replaced = anyio.Event()

    def replace(self, stored: Any) -> None:
        super().replace(stored)
        if len(self):
            self.replaced.set()


async def test_an_alert_rule_added_on_one_relay_applies_on_every_relay(
    make_link: Callable[[], ClusterLink],
) -> None:
    """A rule added through one relay reaches the rule book of another at once."""
    first, second = make_link(), make_link()
    books = WatchedBook(), WatchedBook()
    first.share_rules(books[0])
    second.share_rules(books[1])
    async with first, second:
        await books[0].add(AlertRule(id="r1", threshold_percent=60.0, source="default"))
        with anyio.fail_after(5):
            await books[1].replaced.wait()
    assert [rule.id for rule in books[1]] == ["r1"]


async def test_a_relay_that_joins_takes_the_cluster_rules(
    make_link: Callable[[], ClusterLink],
) -> None:
    """The first relay brings its rules to the cluster; one joining later drops its own."""
    first, second = make_link(), make_link()
    books = RuleBook([AlertRule(id="r1", threshold_percent=60.0)]), WatchedBook()
    await books[1].add(AlertRule(id="old", threshold_percent=10.0))
    first.share_rules(books[0])
    second.share_rules(books[1])
    async with first, second:
        pass
    assert [rule.id for rule in books[1]] == ["r1"]
