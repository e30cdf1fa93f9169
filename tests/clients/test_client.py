"""RelayClient against the real relay and the real gateway simulator, over loopback sockets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from clients import (
    AlertReceived,
    ConnectionChanged,
    ConnectionState,
    GatewayUnavailable,
    RelayClient,
    RelayEvent,
    RelayUnavailable,
    RequestTimeout,
    SnapshotReceived,
    SourcesReceived,
    StatusReceived,
    UnknownSource,
)
from clients.client import REFRESH_TIMEOUT
from common.backoff import Backoff
from common.messages import CLOSE_SLOW_CONSUMER
from common.models import Snapshot, ThresholdCrossed
from common.tokens import read_client_token
from relay.settings import Settings, SourceSettings
from simulator import Failure, GatewaySimulator
from tests.conftest import SIMULATOR_TOKEN, RelayHarness, running_relay

pytestmark = pytest.mark.anyio

TIMEOUT = 10
#: Reconnect quickly so the tests do not wait on the production backoff.
FAST = Backoff(initial=0.05, maximum=0.2, factor=2.0, jitter=0.5)

_Event = TypeVar("_Event", bound=RelayEvent)


async def next_event(events: AsyncIterator[RelayEvent], kind: type[_Event]) -> _Event:
    """The next event of ``kind``, skipping the others."""
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"the events ended before a {kind.__name__}")


async def next_snapshot(events: AsyncIterator[RelayEvent]) -> Snapshot:
    return (await next_event(events, SnapshotReceived)).snapshot


def client_for(relay: RelayHarness) -> RelayClient:
    return RelayClient(relay.ws_url, backoff=FAST, request_timeout=5)


#: The variable the sources of ``sources_relay`` read the simulator's token from.
SOURCE_TOKEN_ENV = "SIMULATED_GATEWAY_TOKEN"
#: The sources of ``sources_relay``, in order: one of each kind, all on one simulator.
SOURCES = (("us", "posthog"), ("router", "openrouter"), ("team", "litellm"))


@pytest.fixture
async def sources_relay(
    relay_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RelayHarness]:
    """A relay polling three sources of the simulator, ``us`` first (the default), days
    in Europe/London."""
    monkeypatch.setenv(SOURCE_TOKEN_ENV, SIMULATOR_TOKEN)
    sources = tuple(
        SourceSettings(
            name=name, kind=kind, url=relay_settings.gateway_url, token_env=SOURCE_TOKEN_ENV
        )
        for name, kind in SOURCES
    )
    settings = relay_settings.model_copy(update={"sources": sources, "timezone": "Europe/London"})
    async with running_relay(settings) as harness:
        yield harness


async def test_get_latest_returns_the_relays_snapshot(relay: RelayHarness) -> None:
    """A client starting up gets the snapshot the relay already holds."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as first, client_for(relay) as late:
            fresh = await first.refresh()
            assert await late.get_latest() == fresh


async def test_subscribe_starts_with_the_current_snapshot(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """The first snapshot of a subscription comes from the relay, not from a new poll."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            fresh = await client.refresh()
            polls = simulator.requests_served
            async with aclosing(client.subscribe()) as snapshots:
                assert await anext(snapshots) == fresh
            assert simulator.requests_served == polls


async def test_one_refresh_reaches_every_subscriber_with_one_poll(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Two subscribers get the snapshot of one client's refresh, from one upstream request."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as one, client_for(relay) as other:
            # Settles any startup poll, so the count below covers only the refresh.
            await one.refresh()
            polls = simulator.requests_served
            async with (
                aclosing(one.subscribe()) as first,
                aclosing(other.subscribe()) as second,
            ):
                await anext(first), await anext(second)
                fresh = await one.refresh()
                assert await anext(first) == fresh
                assert await anext(second) == fresh
            assert simulator.requests_served == polls + 1


async def test_refresh_failure_carries_the_last_good_snapshot(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh the gateway fails raises upstream_unavailable with the last good snapshot."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            good = await client.refresh()
            simulator.inject(Failure.SERVER_ERROR)
            with pytest.raises(GatewayUnavailable) as failure:
                await client.refresh()
    assert failure.value.code == "upstream_unavailable"
    assert failure.value.latest == good


async def test_status_changes_reach_subscribers(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A failed poll reaches subscribers as a degraded status event."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            await client.refresh()
            async with aclosing(client.events()) as events:
                assert (await next_event(events, StatusReceived)).status.state == "ok"
                # Several failures, so the monitor's own retry cannot turn it back to ok
                # before the event is out.
                simulator.inject(Failure.SERVER_ERROR, count=3)
                with pytest.raises(GatewayUnavailable):
                    await client.refresh()
                assert (await next_event(events, StatusReceived)).status.state == "degraded"


async def test_requests_fail_fast_without_a_relay(relay: RelayHarness) -> None:
    """A one-shot request to a relay that is down raises instead of waiting for it."""
    url = relay.ws_url
    await relay.stop()
    with anyio.fail_after(TIMEOUT):
        async with RelayClient(url) as client:
            with pytest.raises(RelayUnavailable):
                await client.get_latest()


async def test_subscription_survives_a_relay_restart(relay: RelayHarness) -> None:
    """Across a relay restart the iterator reports the outage and resumes with newer data."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            before = await client.refresh()
            async with aclosing(client.events()) as events:
                assert await next_snapshot(events) == before
                await relay.stop()
                lost = await next_event(events, ConnectionChanged)
                assert lost.state is ConnectionState.DISCONNECTED
                assert client.connection_state is ConnectionState.DISCONNECTED

                await relay.start()
                back = await next_event(events, ConnectionChanged)
                assert back.state is ConnectionState.CONNECTED
                after = await client.refresh()
                # The restarted relay may poll on its own first, so this may come before ``after``.
                resumed = await next_snapshot(events)
                assert before.seq < resumed.seq <= after.seq


async def test_a_relay_on_a_new_database_is_followed_although_seq_starts_again(
    relay: RelayHarness, tmp_path: Path
) -> None:
    """A restart on a fresh store (a new epoch) counts from 1 again, and the client shows it."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            for _ in range(3):
                before = await client.refresh()
            async with aclosing(client.events()) as events:
                assert await next_snapshot(events) == before
                await relay.stop()
                relay.settings = relay.settings.model_copy(update={"database": tmp_path / "new.db"})
                await relay.start()
                after = await next_snapshot(events)
    assert after.epoch is not None and after.epoch != before.epoch
    assert after.seq < before.seq


async def test_resubscribing_never_repeats_a_snapshot(relay: RelayHarness) -> None:
    """After the relay drops the connection, its resubscribe reply is not yielded again."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            shown = await client.refresh()
            async with aclosing(client.events()) as events:
                assert await next_snapshot(events) == shown
                async with anyio.create_task_group() as task_group:
                    # close_all also waits for every connection to go, which the
                    # reconnecting client may prevent: only the drop is wanted.
                    task_group.start_soon(relay.hub.close_all, CLOSE_SLOW_CONSUMER, "test drop")
                    await drain_until_reconnected(events)
                    task_group.cancel_scope.cancel()
                newer = await client.refresh()
                assert await next_snapshot(events) == newer


async def drain_until_reconnected(events: AsyncIterator[RelayEvent]) -> None:
    """Consume events up to the reconnection, failing on any snapshot in between."""
    dropped = False
    async for event in events:
        assert not isinstance(event, SnapshotReceived), f"repeated seq {event.snapshot.seq}"
        if isinstance(event, ConnectionChanged):
            if event.state is ConnectionState.DISCONNECTED:
                dropped = True
            elif dropped:
                return
    raise AssertionError("the events ended before the reconnection")


async def test_history_returns_the_stored_points(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Every successful poll is a point of history, oldest first."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            simulator.set_usage(burst_percent=10.0, sustained_percent=2.0)
            first = await client.refresh()
            simulator.set_usage(burst_percent=20.0, sustained_percent=3.0)
            second = await client.refresh()
            points = await client.history()
    assert [(p.seq, p.burst_percent, p.sustained_percent) for p in points[-2:]] == [
        (first.seq, 10.0, 2.0),
        (second.seq, 20.0, 3.0),
    ]


async def test_history_keeps_the_newest_point_within_the_limit(relay: RelayHarness) -> None:
    """With more points than the limit the relay thins them and keeps the newest."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            await client.refresh()
            newest = await client.refresh()
            points = await client.history(limit=1)
    assert [point.seq for point in points] == [newest.seq]


async def test_history_range_excludes_older_points(relay: RelayHarness) -> None:
    """``since`` leaves out the points fetched before it."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client:
            older = await client.refresh()
            newer = await client.refresh()
            points = await client.history(since=newer.fetched_at)
    assert older.fetched_at < newer.fetched_at
    assert [point.seq for point in points] == [newer.seq]


async def test_threshold_alert_arrives_as_an_event(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Crossing a threshold reaches subscribers as an alert event."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(relay) as client, aclosing(client.events()) as events:
            await next_event(events, StatusReceived)  # subscribed
            simulator.set_usage(burst_percent=95.0)
            await client.refresh()
            alert = (await next_event(events, AlertReceived)).alert
    assert isinstance(alert, ThresholdCrossed)
    assert (alert.bucket, alert.threshold, alert.used_percent) == ("burst", 90.0, 95.0)


async def test_refresh_has_its_own_timeout(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh waits ``refresh_timeout`` for the poll, not the shorter request timeout."""
    simulator.hold()
    try:
        with anyio.fail_after(TIMEOUT):
            async with RelayClient(relay.ws_url, request_timeout=5, refresh_timeout=0.2) as client:
                with pytest.raises(RequestTimeout, match=r"'refresh' within 0\.2 s"):
                    await client.refresh()
    finally:
        simulator.release()


def test_refresh_outwaits_the_relays_upstream_timeout() -> None:
    """By default a slow poll is cut off by the relay, which answers, not by the client."""
    relay_timeout = Settings.model_fields["request_timeout"].default
    assert relay_timeout < REFRESH_TIMEOUT


async def test_debug_logging_never_shows_the_client_token(
    relay: RelayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """With DEBUG logging on, the handshake's Authorization header is logged redacted."""
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(5):
        async with client_for(relay) as client:
            await client.get_latest()
    token = read_client_token(relay.settings.client_token_file)
    assert token not in caplog.text
    assert "Authorization: [redacted]" in caplog.text


async def test_list_sources_names_every_source_in_order(sources_relay: RelayHarness) -> None:
    """``list_sources`` gives each source's name, kind and topic, the zone and the default."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(sources_relay) as client:
            listing = await client.list_sources()
    assert [(source.name, source.kind) for source in listing.sources] == list(SOURCES)
    assert [source.topic for source in listing.sources] == [f"usage:{n}" for n, _ in SOURCES]
    assert (listing.timezone, listing.default_source) == ("Europe/London", "us")


async def test_calls_about_a_source_get_that_sources_usage(sources_relay: RelayHarness) -> None:
    """``refresh``, ``get_latest``, ``status`` and ``history`` with a source are about it alone."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(sources_relay) as client:
            fresh = await client.refresh("router")
            latest = await client.get_latest("router")
            status = await client.status("router")
            points = await client.history(source="router")
    assert (fresh.source, fresh.kind, latest) == ("router", "openrouter", fresh)
    assert status.state == "ok"
    assert points[-1].seq == fresh.seq
    assert set(points[-1].meters) == {meter.id for meter in fresh.meters}


async def test_no_source_means_the_default_one(sources_relay: RelayHarness) -> None:
    """Without a source the calls are about the relay's default source, as in v1."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(sources_relay) as client:
            fresh = await client.refresh()
            assert await client.get_latest("us") == fresh
    assert fresh.source == "us"


async def test_an_unknown_source_raises_unknown_source(sources_relay: RelayHarness) -> None:
    """A source the relay does not serve is an ``UnknownSource`` error, for a call or events."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(sources_relay) as client:
            with pytest.raises(UnknownSource) as failure:
                await client.get_latest("nope")
            with pytest.raises(UnknownSource):
                async with aclosing(client.events(sources=["us", "nope"])) as events:
                    await next_event(events, SnapshotReceived)
    assert failure.value.code == "unknown_topic"


async def test_events_of_several_sources_share_one_connection(
    sources_relay: RelayHarness,
) -> None:
    """One iterator follows several sources on the client's one connection, each tagged,
    each with its own count of ``seq``."""
    with anyio.fail_after(TIMEOUT):
        async with client_for(sources_relay) as client:
            for _ in range(3):  # "us" gets ahead of "router"
                us = await client.refresh("us")
            async with aclosing(client.events(sources=["us", "router"])) as events:
                first = {
                    source: (await snapshot_of(events, source)).seq for source in ("us", "router")
                }
                router = await client.refresh("router")
                await snapshot_of(events, "router", router)
            assert len(sources_relay.hub.connections) == 1
    assert first["us"] == us.seq > first["router"]


async def snapshot_of(
    events: AsyncIterator[RelayEvent], source: str, wanted: Snapshot | None = None
) -> Snapshot:
    """The next snapshot tagged ``source`` (equal to ``wanted``, if given), skipping the rest."""
    while True:
        event = await next_event(events, SnapshotReceived)
        assert event.snapshot.source == source or event.source != source
        if event.source == source and wanted in (None, event.snapshot):
            return event.snapshot


async def test_every_source_lists_the_sources_then_follows_each(
    sources_relay: RelayHarness,
) -> None:
    """``every_source`` starts with the relay's list, then a status for each source."""
    with anyio.fail_after(TIMEOUT):
        async with (
            client_for(sources_relay) as client,
            aclosing(client.events(every_source=True)) as events,
        ):
            listed = await next_event(events, SourcesReceived)
            statuses = [(await next_event(events, StatusReceived)).source for _ in SOURCES]
            fresh = await client.refresh("team")
            await snapshot_of(events, "team", fresh)
    assert listed.sources.names == statuses == [name for name, _ in SOURCES]


async def test_reconnection_subscribes_to_every_source_again(
    sources_relay: RelayHarness,
) -> None:
    """After a relay restart each source followed is subscribed to again."""
    with anyio.fail_after(TIMEOUT):
        async with (
            client_for(sources_relay) as client,
            aclosing(client.events(sources=["router", "team"])) as events,
        ):
            await next_event(events, StatusReceived)
            await sources_relay.stop()
            await next_event(events, ConnectionChanged)  # lost
            await sources_relay.start()
            back = await next_event(events, ConnectionChanged)
            assert back.state is ConnectionState.CONNECTED
            router = await client.refresh("router")
            team = await client.refresh("team")
            await snapshot_of(events, "router", router)
            await snapshot_of(events, "team", team)
