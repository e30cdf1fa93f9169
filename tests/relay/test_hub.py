"""Hub: the fan-out of monitor events to connections, the connection cap and closing them all.

The outboxes here record what the hub gives them; how an Outbox queues and
writes frames is tested in test_fastpath.py.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable
from datetime import UTC, datetime

import anyio
import pytest

from common.history import HistoryPoint, MeterReading
from common.messages import CLOSE_GOING_AWAY, ErrorCode, HistoryQuery, SourcesResult
from common.models import Snapshot, Status, ThresholdCrossed, Usage
from monitor.adapters import Reading
from monitor.service import (
    AlertRaised,
    MonitorEvent,
    StatusChanged,
    UsageMonitorService,
    UsageUpdated,
)
from relay.exceptions import RequestError
from relay.fastpath import encode_text_frame
from relay.hub import Hub, Outbox

T0 = datetime(2026, 11, 22, 12, 0, 3, tzinfo=UTC)
USAGE = {
    "product": "posthog_code",
    "user_id": 1234,
    "burst": {"used_percent": 37.5, "reset_at": "2026-11-22T18:00:00Z"},
    "sustained": {"used_percent": 12.1, "reset_at": "2026-12-01T00:00:00Z"},
}
SNAPSHOT = Snapshot.model_validate({"seq": 1, "fetched_at": T0, "usage": USAGE})
ALERT = ThresholdCrossed(
    bucket="burst", threshold=50, used_percent=51.0, reset_at=datetime(2026, 11, 23, tzinfo=UTC)
)


class FixedUsage:
    """A fetcher that always returns the same usage, without a network."""

    async def fetch(self) -> Reading:
        usage = Usage.model_validate(USAGE)
        return Reading("posthog", usage, usage.meters())


class RecordingOutbox(Outbox):
    """An outbox that records the events the hub puts, and says when it was asked to close."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[Hashable, str, bytes]] = []
        self.close_asked = anyio.Event()

    def put_event(self, key: Hashable, frame: str, wire: bytes) -> None:
        self.events.append((key, frame, wire))

    def close(self, code: int, reason: str) -> None:
        super().close(code, reason)
        self.close_asked.set()


class FakeHistory:
    """A history source that returns fixed points and records what it was asked."""

    def __init__(self, points: list[HistoryPoint], last_error: str | None = None) -> None:
        self.points = points
        self.last_error = last_error
        self.queries: list[tuple[str, datetime | None, datetime | None, int]] = []

    async def history(
        self, source: str, since: datetime | None, until: datetime | None, limit: int
    ) -> list[HistoryPoint]:
        self.queries.append((source, since, until, limit))
        return self.points


def make_monitor() -> UsageMonitorService:
    """A real monitor, not started: it polls only inside ``async with``."""
    return UsageMonitorService(FixedUsage(), interval=3600)


def make_hub(max_connections: int = 10) -> Hub:
    return Hub([make_monitor()], max_connections=max_connections)


def connect(hub: Hub, *, subscribed: bool = False, topics: Iterable[str] = ()) -> RecordingOutbox:
    """Register an outbox as the WebSocket endpoint does for a new connection."""
    outbox = RecordingOutbox()
    hub.connections.add(outbox)
    hub.set_subscribed(outbox, frozenset(topics) | ({"usage"} if subscribed else set()))
    return outbox


# -- publishing -----------------------------------------------------------------------


def test_publish_reaches_subscribed_outboxes_only() -> None:
    """Every subscribed connection gets the event; a connection that did not subscribe does not."""
    hub = make_hub()
    subscribers = [connect(hub, subscribed=True) for _ in range(3)]
    bystander = connect(hub)
    hub.publish(UsageUpdated(SNAPSHOT))
    assert [len(outbox.events) for outbox in subscribers] == [1, 1, 1]
    assert bystander.events == []


@pytest.mark.parametrize(
    ("event", "name", "data"),
    [
        (UsageUpdated(SNAPSHOT), "usage.updated", SNAPSHOT.model_dump(mode="json")),
        (
            StatusChanged(Status(state="degraded", last_error="HTTP 503")),
            "usage.status",
            Status(state="degraded", last_error="HTTP 503").model_dump(mode="json"),
        ),
        (AlertRaised(ALERT), "usage.threshold_crossed", ALERT.model_dump(mode="json")),
    ],
    ids=["updated", "status", "alert"],
)
def test_an_event_is_put_with_its_key_frame_and_wire_bytes(
    event: MonitorEvent, name: str, data: object
) -> None:
    """put_event gets the event's key, its event frame and that frame encoded for the wire."""
    hub = make_hub()
    outbox = connect(hub, subscribed=True)
    hub.publish(event)
    [(key, frame, wire)] = outbox.events
    assert key == ("usage", event.key)
    assert json.loads(frame) == {"type": "event", "topic": "usage", "event": name, "data": data}
    assert wire == encode_text_frame(frame)


def test_every_subscriber_gets_the_same_encoded_frame() -> None:
    """An event is encoded once: all subscribers get the very same bytes object."""
    hub = make_hub()
    first, second = connect(hub, subscribed=True), connect(hub, subscribed=True)
    hub.publish(UsageUpdated(SNAPSHOT))
    assert first.events[0][2] is second.events[0][2]


def test_an_unsubscribed_outbox_gets_nothing() -> None:
    """After unsubscribing, a connection gets no more events."""
    hub = make_hub()
    outbox = connect(hub, subscribed=True)
    hub.set_subscribed(outbox, frozenset())
    hub.publish(UsageUpdated(SNAPSHOT))
    assert outbox.events == []


def test_a_forgotten_outbox_gets_nothing() -> None:
    """A connection the hub forgot is neither counted nor sent events."""
    hub = make_hub()
    outbox = connect(hub, subscribed=True)
    hub.forget(outbox)
    hub.publish(UsageUpdated(SNAPSHOT))
    assert outbox.events == []
    assert outbox not in hub.connections


@pytest.mark.anyio
async def test_the_hub_observes_its_monitor() -> None:
    """A poll of the monitor reaches subscribers as usage and status events."""
    monitor = make_monitor()
    hub = Hub([monitor])
    outbox = connect(hub, subscribed=True)
    with anyio.fail_after(5):
        async with monitor:
            snapshot = await monitor.refresh_now()
    keys = [key for key, _, _ in outbox.events]
    assert ("usage", "usage") in keys
    assert ("usage", "status") in keys
    updated = [json.loads(frame) for key, frame, _ in outbox.events if key == ("usage", "usage")]
    assert updated[0]["data"]["seq"] == snapshot.seq


# -- several sources --------------------------------------------------------------------


def two_sources() -> Hub:
    """A hub over the sources ``us`` (the default) and ``eu``, not started."""
    return Hub(
        [
            UsageMonitorService(FixedUsage(), interval=3600, source="us"),
            UsageMonitorService(FixedUsage(), interval=3600, source="eu"),
        ]
    )


def test_a_sources_events_reach_only_its_topic() -> None:
    """An event of ``eu`` reaches subscribers of ``usage:eu``, not those of ``us``."""
    hub = two_sources()
    eu, us = connect(hub, topics=["usage:eu"]), connect(hub, topics=["usage:us", "usage"])
    hub.publish(UsageUpdated(SNAPSHOT), source="eu")
    assert [json.loads(frame)["topic"] for _, frame, _ in eu.events] == ["usage:eu"]
    assert us.events == []


def test_the_default_source_is_heard_under_both_of_its_topics() -> None:
    """One connection on ``usage`` and ``usage:us`` gets the default source's event under each."""
    hub = two_sources()
    outbox = connect(hub, topics=["usage", "usage:us"])
    hub.publish(UsageUpdated(SNAPSHOT))
    assert sorted(key for key, _, _ in outbox.events) == [
        ("usage", "usage"),
        ("usage:us", "usage"),
    ]


@pytest.mark.anyio
async def test_a_refresh_of_one_topic_polls_only_its_source() -> None:
    """Refreshing ``usage:eu`` polls ``eu`` once more and leaves ``us`` alone."""
    hub = two_sources()
    us, eu = hub.monitors["us"], hub.monitors["eu"]
    with anyio.fail_after(5):
        async with us, eu:
            first_us, first_eu = await us.refresh_now(), await eu.refresh_now()
            snapshot = await hub.refresh_now("usage:eu")
            assert (snapshot.source, snapshot.seq) == ("eu", first_eu.seq + 1)
            assert us.get_latest() is first_us


def test_the_sources_are_listed_in_order_with_their_kind_and_state() -> None:
    """``sources_json`` lists each source, its topic, kind and status, and the default source."""
    hub = Hub(
        [
            UsageMonitorService(FixedUsage(), interval=3600, source="router", kind="openrouter"),
            UsageMonitorService(FixedUsage(), interval=3600, source="us"),
        ],
        default_source="us",
        timezone="Europe/London",
    )
    listed = SourcesResult.model_validate_json(hub.sources_json())
    assert [(s.name, s.kind, s.topic, s.status.state, s.latest) for s in listed.sources] == [
        ("router", "openrouter", "usage:router", "starting", None),
        ("us", "posthog", "usage:us", "starting", None),
    ]
    assert (listed.timezone, listed.default_source) == ("Europe/London", "us")


# -- the connection cap ---------------------------------------------------------------


def test_the_hub_is_full_at_max_connections() -> None:
    """full turns true at max_connections and false again when one is forgotten."""
    hub = make_hub(max_connections=2)
    first = connect(hub)
    assert not hub.full
    connect(hub)
    assert hub.full
    hub.forget(first)
    assert not hub.full


def test_unauthenticated_connections_have_a_cap_of_their_own() -> None:
    """Connections without credentials fill their own group, never the authenticated one."""
    hub = Hub([make_monitor()], max_connections=2, max_unauthenticated=3)
    strangers = [RecordingOutbox() for _ in range(3)]
    for outbox in strangers:
        hub.add(outbox, authenticated=False)
    assert hub.unauthenticated_full
    assert not hub.full
    hub.add(RecordingOutbox())
    hub.add(RecordingOutbox())
    assert hub.full
    hub.forget(strangers[0])
    assert not hub.unauthenticated_full


# -- closing every connection -----------------------------------------------------------


@pytest.mark.anyio
async def test_close_all_asks_every_connection_to_close() -> None:
    """Each connection gets the close code and reason to send once its queue is flushed."""
    hub = make_hub()
    outboxes = [connect(hub), connect(hub, subscribed=True)]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(hub.close_all, CLOSE_GOING_AWAY, "bye")
            for outbox in outboxes:
                await outbox.close_asked.wait()
                hub.forget(outbox)
    assert [outbox.close_request for outbox in outboxes] == [(CLOSE_GOING_AWAY, "bye")] * 2


@pytest.mark.anyio
async def test_close_all_waits_until_every_connection_is_forgotten() -> None:
    """close_all returns only after the last connection is gone, not the first."""
    hub = make_hub()
    first, second = connect(hub), connect(hub)
    done = anyio.Event()

    async def close_all() -> None:
        await hub.close_all(CLOSE_GOING_AWAY, "bye")
        done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(close_all)
            await first.close_asked.wait()
            await second.close_asked.wait()
            hub.forget(first)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()
            hub.forget(second)
            await done.wait()
    assert hub.connections == set()


@pytest.mark.anyio
async def test_close_all_without_connections_returns_at_once() -> None:
    """With nobody connected there is nothing to wait for."""
    with anyio.fail_after(5):
        await make_hub().close_all(CLOSE_GOING_AWAY, "bye")


# -- history ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_history_without_a_source_is_an_empty_array() -> None:
    """A hub without a store answers history with []."""
    assert await make_hub().history_json("usage", HistoryQuery()) == "[]"


def test_storage_error_is_the_sources_last_error() -> None:
    """storage_error reports why the store fails to write, and None without a store."""
    assert make_hub().storage_error is None
    hub = Hub([make_monitor()], history=FakeHistory([], last_error="disk full"))
    assert hub.storage_error == "disk full"


@pytest.mark.anyio
async def test_history_passes_the_query_to_its_source() -> None:
    """The query's range and limit go to the source, whose points come back as JSON."""
    point = HistoryPoint.of(T0, 1, {"burst": MeterReading(used_percent=37.5, reset_at=T0)})
    source = FakeHistory([point])
    hub = Hub([make_monitor()], history=source)
    query = HistoryQuery(since=T0, limit=3)
    points = json.loads(await hub.history_json("usage", query))
    assert source.queries == [("default", T0, None, 3)]
    assert points == [point.model_dump(mode="json")]


# -- the relay-wide budgets ---------------------------------------------------------------


class HeldHistory(FakeHistory):
    """A history source whose queries wait until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__([])
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def history(
        self, source: str, since: datetime | None, until: datetime | None, limit: int
    ) -> list[HistoryPoint]:
        self.started.set()
        await self.release.wait()
        return await super().history(source, since, until, limit)


@pytest.mark.anyio
async def test_history_queries_past_the_relay_wide_cap_are_rate_limited() -> None:
    """With max_history_queries running, the next query is refused at once with retry_after."""
    history = HeldHistory()
    hub = Hub([make_monitor()], history=history, max_history_queries=1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(hub.history_json, "usage", HistoryQuery())
            await history.started.wait()
            with pytest.raises(RequestError) as refused:
                await hub.history_json("usage", HistoryQuery())
            history.release.set()
        # The slot is free again once the first query ended.
        assert await hub.history_json("usage", HistoryQuery()) == "[]"
    assert refused.value.code == ErrorCode.RATE_LIMITED
    assert refused.value.data == {"retry_after": 1.0}
    assert len(history.queries) == 2
