"""Chaos: a gateway that fails in every way it can, then recovers; and a relay that stops."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from common.backoff import Backoff
from common.messages import CLOSE_GOING_AWAY
from common.models import Snapshot, Status
from monitor.exceptions import UpstreamError
from monitor.gateway import GatewayClient
from monitor.service import MonitorEvent, StatusChanged, UsageMonitorService, UsageUpdated
from simulator import Failure, GatewaySimulator, SimulatorServer
from tests.conftest import SIMULATOR_TOKEN, RelayHarness

from .wire import connect, request, subscribe_with_snapshot

pytestmark = pytest.mark.anyio

#: The monitor's request timeout here: a hanging gateway costs this much.
TIMEOUT = 0.3
RETRY_AFTER = 0.5

#: Every failure the simulator can play, with what the monitor's status must then say.
CHAOS: list[tuple[Failure, dict[str, Any], str, str]] = [
    (Failure.SERVER_ERROR, {"status": 500}, "degraded", "HTTP 500"),
    (Failure.SERVER_ERROR, {"status": 503}, "degraded", "HTTP 503"),
    (Failure.TIMEOUT, {}, "degraded", "timed out"),
    (Failure.DISCONNECT, {}, "degraded", "unreachable"),
    (Failure.MALFORMED, {}, "degraded", "not JSON"),
    (Failure.TRUNCATED, {}, "degraded", "not JSON"),
    (Failure.INVALID, {}, "degraded", "invalid usage object"),
    (Failure.RATE_LIMITED, {"retry_after": RETRY_AFTER}, "degraded", "HTTP 429"),
    (Failure.UNAUTHORIZED, {}, "auth_error", "refused the credentials"),
]


class Recorder:
    """Every event the monitor publishes, with the cached snapshot and the time at that moment."""

    def __init__(self) -> None:
        self.monitor: UsageMonitorService | None = None
        self.events: list[tuple[MonitorEvent, Snapshot | None, float]] = []
        self.recovered = anyio.Event()

    def __call__(self, event: MonitorEvent) -> None:
        assert self.monitor is not None
        self.events.append((event, self.monitor.get_latest(), anyio.current_time()))
        failed = any(s.state != "ok" for s in self.statuses)
        if isinstance(event, StatusChanged) and event.status.state == "ok" and failed:
            self.recovered.set()

    @property
    def statuses(self) -> list[Status]:
        return [event.status for event, _, _ in self.events if isinstance(event, StatusChanged)]


async def test_monitor_rides_out_every_failure_and_recovers_at_the_first_good_poll(
    simulator_server: SimulatorServer, simulator: GatewaySimulator
) -> None:
    """Through 9 kinds of failure the monitor keeps its last good snapshot, reports each
    change, waits out Retry-After, and is ok again at the first good poll."""
    recorder = Recorder()
    gateway = GatewayClient(simulator_server.url, lambda: SIMULATOR_TOKEN, timeout=TIMEOUT)
    monitor = recorder.monitor = UsageMonitorService(
        gateway,
        interval=3600,
        backoff=Backoff(initial=0.01, maximum=0.01, jitter=0),
        auth_error_interval=0.01,
        observers=[recorder],
    )
    try:
        with anyio.fail_after(20):
            async with monitor:
                good = await monitor.refresh_now()
                served = simulator.requests_served
                for failure, options, _, _ in CHAOS:
                    simulator.inject(failure, **options)
                start = len(recorder.events)
                with pytest.raises(UpstreamError):
                    await monitor.refresh_now()
                await recorder.recovered.wait()
                recovered, end = monitor.get_latest(), len(recorder.events)
    finally:
        await gateway.aclose()
    chaos = recorder.events[start:end]  # not the stop
    updates = [event.snapshot for event, _, _ in chaos if isinstance(event, UsageUpdated)]
    statuses = [(event.status, at) for event, _, at in chaos if isinstance(event, StatusChanged)]
    # Never an update from a failed poll; the one after recovery is valid and next in line.
    assert updates == [recovered]
    assert recovered is not None
    assert Snapshot.model_validate(recovered.model_dump()) == recovered
    assert recovered.seq == good.seq + 1
    # While failing, the cached snapshot stayed the last good one.
    failing = [latest for event, latest, _ in chaos if isinstance(event, StatusChanged)][:-1]
    assert failing and all(latest == good for latest in failing)
    # Each change was reported once, in order; equal failures in a row make one report.
    expected = _dedupe([(state, text) for _, _, state, text in CHAOS])
    reported = [(status.state, status.last_error or "") for status, _ in statuses]
    for (state, text), (got_state, got_error) in zip(expected, reported[:-1], strict=True):
        assert got_state == state and text in got_error, (got_state, got_error)
    # The 429's Retry-After held the next poll back.
    rate_limited_at = next(at for status, at in statuses if "HTTP 429" in (status.last_error or ""))
    next_report_at = next(at for status, at in statuses if at > rate_limited_at)
    assert next_report_at - rate_limited_at >= RETRY_AFTER
    # Ok again at the first good poll: no extra requests, failure count reset.
    final = statuses[-1][0]
    assert (final.state, final.consecutive_failures, final.last_error) == ("ok", 0, None)
    assert simulator.requests_served == served + len(CHAOS) + 1


def _dedupe(kinds: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Failures with the same message in a row are one state change."""
    result: list[tuple[str, str]] = []
    for kind in kinds:
        if not result or result[-1] != kind:
            result.append(kind)
    return result


async def test_subscribers_see_each_change_and_never_a_bad_snapshot(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Over the relay: status events for each failure, the last good snapshot throughout."""
    failures = [Failure.SERVER_ERROR, Failure.MALFORMED, Failure.INVALID, Failure.UNAUTHORIZED]
    with anyio.fail_after(20):
        await relay.hub.monitor.refresh_now()  # the relay's first poll is over
        async with connect(relay.ws_url) as watcher, connect(relay.ws_url) as other:
            good = await subscribe_with_snapshot(watcher)
            for failure in failures:
                simulator.inject(failure)
            while True:  # a poll per call, until one gets through
                try:
                    await relay.hub.monitor.refresh_now()
                    break
                except UpstreamError:
                    latest = (await request(other, "get_latest"))["result"]
                    assert latest["latest"] == good
                    assert latest["status"]["state"] in {"degraded", "auth_error"}
            frames = []
            while not frames or frames[-1].get("data", {}).get("state") != "ok":
                frames.append(json.loads(await watcher.recv()))
    updates = [f["data"] for f in frames if f.get("event") == "usage.updated"]
    states = [f["data"]["state"] for f in frames if f.get("event") == "usage.status"]
    errors = [f["data"]["last_error"] for f in frames if f.get("event") == "usage.status"]
    assert [u["seq"] for u in updates if u["seq"] > good["seq"]] == [good["seq"] + 1]
    assert states == ["degraded", "degraded", "degraded", "auth_error", "ok"]
    assert len(set(errors[:-1])) == 4


async def test_stopping_the_relay_closes_requests_in_flight_with_1001(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh waiting on the gateway and pings just sent all end in a reply or a 1001."""
    with anyio.fail_after(15):
        await relay.hub.monitor.refresh_now()
        async with connect(relay.ws_url) as ws:
            simulator.hold()
            served = simulator.requests_served
            await ws.send(json.dumps({"id": "refresh", "op": "refresh"}))
            await simulator.wait_for_requests(served + 1)  # the poll is in the air
            for n in range(20):
                await ws.send(json.dumps({"id": n, "op": "ping"}))
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(relay.stop)
                replies = []
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        replies.append(json.loads(await ws.recv()))
        simulator.release()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_GOING_AWAY
    pongs = [reply["id"] for reply in replies if reply["result"] == {"pong": True}]
    assert pongs == list(range(len(pongs)))  # in order, none lost before the close
