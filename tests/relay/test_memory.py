"""Snapshots, history and alerts survive restarts of the relay."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from simulator import GatewaySimulator, SimulatorServer
from tests.conftest import SIMULATOR_TOKEN, RelayHarness

from .process import RelayProcess, relay_environment
from .wire import (
    auth_headers,
    connect,
    next_event,
    request,
    request_with_events,
    subscribe_with_snapshot,
)

pytestmark = pytest.mark.anyio


async def refresh_times(relay: RelayHarness, count: int) -> list[int]:
    """Refresh ``count`` times over one connection; return the new seqs."""
    async with connect(relay.ws_url) as ws:
        replies = [await request(ws, "refresh") for _ in range(count)]
    return [reply["result"]["latest"]["seq"] for reply in replies]


async def test_restart_serves_the_stored_snapshot_before_any_poll(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """After a restart, subscribe answers with the stored snapshot while the first poll hangs."""
    with anyio.fail_after(10):
        seqs = await refresh_times(relay, 3)
        await relay.stop()
        simulator.hold()
        await relay.start()
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "subscribe")
            simulator.release()
            update = await next_event(ws, "usage.updated")
    assert reply["result"]["latest"]["seq"] == seqs[-1]
    assert reply["result"]["status"]["state"] == "starting"
    assert update["data"]["seq"] == seqs[-1] + 1


async def test_history_returns_the_stored_points_in_order(relay: RelayHarness) -> None:
    """get_history lists every stored snapshot oldest first, up to the limit."""
    with anyio.fail_after(10):
        seqs = await refresh_times(relay, 4)
        async with connect(relay.ws_url) as ws:
            everything = await request(ws, "get_history")
            limited = await request(ws, "get_history", limit=2)
    all_seqs = [point["seq"] for point in everything["result"]["points"]]
    assert all_seqs == sorted(all_seqs)
    assert set(seqs) <= set(all_seqs)
    assert len(limited["result"]["points"]) == 2
    assert limited["result"]["points"][-1]["seq"] == all_seqs[-1]


async def test_history_rejects_a_bad_range(relay: RelayHarness) -> None:
    """A since without a time zone is a bad_request naming the parameter."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "get_history", since="yesterday")
    assert reply["error"]["code"] == "bad_request"
    assert "since" in reply["error"]["message"]


async def test_history_over_http(relay: RelayHarness) -> None:
    """GET /api/v1/usage/history serves the same points as the op."""
    with anyio.fail_after(10):
        seqs = await refresh_times(relay, 2)
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            response = await client.get("/api/v1/usage/history", params={"limit": 1})
    assert response.status_code == 200
    assert [point["seq"] for point in response.json()["points"]] == [seqs[-1]]


async def test_threshold_alert_reaches_subscribers_once_across_a_restart(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Crossing 75 % alerts subscribers once; after a restart the same crossing stays quiet."""

    async def alerts_after_refresh_at(percent: float) -> list[tuple[str, float]]:
        async with connect(relay.ws_url) as ws:
            await subscribe_with_snapshot(ws)
            simulator.set_usage(sustained_percent=percent)
            _, events = await request_with_events(ws, "refresh")
        crossed = [e["data"] for e in events if e["event"] == "usage.threshold_crossed"]
        return [(alert["bucket"], alert["threshold"]) for alert in crossed]

    with anyio.fail_after(15):
        first = await alerts_after_refresh_at(80)
        await relay.stop()
        await relay.start()
        again = await alerts_after_refresh_at(80)
        higher = await alerts_after_refresh_at(91)
    assert first == [("sustained", 75.0)]
    assert again == []
    assert higher == [("sustained", 90.0)]


StartRelay = Callable[..., RelayProcess]


@pytest.fixture
def start_relay_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, simulator_server: SimulatorServer
) -> Iterator[StartRelay]:
    """Start relay processes polling the simulator, on one database; killed at the end."""
    env = relay_environment(tmp_path, monkeypatch, gateway_token=SIMULATOR_TOKEN)
    started: list[RelayProcess] = []

    def start(port: int = 0) -> RelayProcess:
        args = ["--port", str(port), "--gateway-url", simulator_server.url, "--interval", "3600"]
        started.append(RelayProcess.start(args, env))
        return started[-1]

    yield start
    for relay in started:
        relay.kill()


async def test_sigkill_loses_nothing_stored_and_restart_bootstraps_at_once(
    start_relay_process: StartRelay, simulator: GatewaySimulator
) -> None:
    """Kill -9 with clients attached: on restart clients get the last stored snapshot first."""
    start = start_relay_process
    with anyio.fail_after(30):
        relay = await anyio.to_thread.run_sync(start)
        async with connect(relay.ws_url) as watcher, connect(relay.ws_url) as ws:
            await subscribe_with_snapshot(watcher)
            seqs = [(await request(ws, "refresh"))["result"]["latest"]["seq"] for _ in range(3)]
            stored = [p["seq"] for p in (await request(ws, "get_history"))["result"]["points"]]
            await anyio.to_thread.run_sync(relay.kill)
        port = int(relay.ws_url.rsplit(":", 1)[1].split("/")[0])
        simulator.hold()
        relay = await anyio.to_thread.run_sync(start, port)
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "subscribe")
            history = await request(ws, "get_history")
            simulator.release()
    assert stored[-len(seqs) :] == seqs
    assert reply["result"]["latest"]["seq"] == seqs[-1]
    assert reply["result"]["status"]["state"] == "starting"
    assert [p["seq"] for p in history["result"]["points"]] == stored


async def test_two_alerts_from_one_poll_both_reach_subscribers(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A poll crossing thresholds in both windows pushes both alerts; neither replaces the other."""
    with anyio.fail_after(10):
        async with connect(relay.ws_url) as ws:
            await subscribe_with_snapshot(ws)
            simulator.set_usage(burst_percent=95, sustained_percent=60)
            _, events = await request_with_events(ws, "refresh")
    crossed = [e["data"] for e in events if e["event"] == "usage.threshold_crossed"]
    assert sorted((alert["bucket"], alert["threshold"]) for alert in crossed) == [
        ("burst", 90.0),
        ("sustained", 50.0),
    ]
