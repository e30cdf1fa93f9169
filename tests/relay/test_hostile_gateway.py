"""A real relay process against a hostile gateway: it stays up, bounded, and says why.

Each test starts ``python -m relay`` as a child process polling the hostile
server of ``tests/hostile.py``, which runs in the test's own event loop, with
``request_timeout`` at 2 s. A hostile answer must leave the relay serving
(``/healthz``, the last good snapshot), its status ``degraded`` with a
``last_error`` that names the bound or field, its memory bounded, and a later
good answer must bring it back to ``ok``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection

from tests.hostile import (
    MB,
    Answer,
    HostileGateway,
    drip,
    endless,
    huge,
    raw_json,
    stall,
    usage_body,
)

from .process import RelayProcess, relay_environment
from .wire import connect, next_event, request, subscribe_with_snapshot

pytestmark = pytest.mark.anyio

GATEWAY_TOKEN = "hostile-gateway-token"
REQUEST_TIMEOUT = 2.0
#: The relay's peak resident memory may not pass this (a 200 MB body used to cost 2.6 GB).
MAX_PEAK_RSS = 200 * MB
#: Only a guard against hanging.
DEADLINE = 60


StartRelay = Callable[[HostileGateway], Awaitable[RelayProcess]]


@pytest.fixture
async def start_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartRelay]:
    """Start relays polling a hostile gateway, all on one database; each is killed at the end."""
    env = relay_environment(
        tmp_path, monkeypatch, gateway_token=GATEWAY_TOKEN, request_timeout=str(REQUEST_TIMEOUT)
    )
    started: list[RelayProcess] = []

    async def start(gateway: HostileGateway) -> RelayProcess:
        args = ["--gateway-url", gateway.url, "--port", "0", "--interval", "3600"]
        # In a thread: the hostile gateway must go on answering in this event loop meanwhile.
        relay = await anyio.to_thread.run_sync(partial(RelayProcess.start, args, env))
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.kill()


async def wait_for_state(ws: ClientConnection, state: str) -> dict[str, Any]:
    """The next ``usage.status`` event in ``state`` on a subscribed connection."""
    while True:
        status: dict[str, Any] = (await next_event(ws, "usage.status"))["data"]
        if status["state"] == state:
            return status


def window_with(**fields: Any) -> Answer:
    body = usage_body()
    body["burst"].update(fields)
    return raw_json(json.dumps(body))


def with_extra(**extra: Any) -> Answer:
    return raw_json(json.dumps(usage_body(**extra)))


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


@dataclass
class Episode:
    """What the relay showed while a hostile answer was being served, and after."""

    first: dict[str, Any]
    reply: dict[str, Any]
    status: dict[str, Any]
    latest: dict[str, Any]
    recovered: dict[str, Any]
    poll_seconds: float
    peak_rss: int


async def hostile_episode(start_relay: StartRelay, answer: Answer) -> Episode:
    """Good answer, then ``answer`` for one refresh, then good again until the relay is ok."""
    async with HostileGateway() as gateway:
        relay = await start_relay(gateway)
        with anyio.fail_after(DEADLINE):
            async with connect(relay.ws_url) as ws:
                first = await subscribe_with_snapshot(ws)
                gateway.answer = answer
                polled_at = time.monotonic()
                reply = await request(ws, "refresh")
                poll_seconds = time.monotonic() - polled_at
                status = await relay.status()
                latest = (await relay.get("/api/v1/usage/latest")).json()["latest"]
                peak_rss = relay.peak_rss()
                # The monitor retries on its backoff; the next poll gets a good answer.
                gateway.answer = raw_json(json.dumps(usage_body(41.0)))
                recovered = await wait_for_state(ws, "ok")
    return Episode(first, reply, status, latest, recovered, poll_seconds, peak_rss)


def assert_degraded_and_recovered(episode: Episode, reason: str) -> None:
    """The poll failed naming ``reason``, the last good snapshot stayed, and ``ok`` came back."""
    assert episode.reply["error"]["code"] == "upstream_unavailable"
    assert reason in episode.reply["error"]["message"]
    assert episode.reply["error"]["data"]["latest"]["seq"] == episode.first["seq"]
    assert episode.status["state"] == "degraded"
    assert reason in episode.status["last_error"]
    assert GATEWAY_TOKEN not in episode.status["last_error"]
    assert episode.latest == episode.first
    assert episode.recovered["last_error"] is None


# -- size and time -----------------------------------------------------------------


@pytest.mark.parametrize("answer", [huge(200 * MB), endless()], ids=["huge", "endless"])
async def test_an_oversize_answer_degrades_the_relay_in_bounded_memory(
    start_relay: StartRelay, answer: Answer
) -> None:
    """A 200 MB or endless body fails one poll at the 1 MiB cap; the relay's memory stays small."""
    episode = await hostile_episode(start_relay, answer)
    assert_degraded_and_recovered(episode, "larger than 1 MiB (max_response_bytes)")
    assert episode.peak_rss < MAX_PEAK_RSS


async def test_a_dripping_answer_ends_the_poll_at_request_timeout(
    start_relay: StartRelay,
) -> None:
    """A body dripping a byte every 0.5 s fails its poll after request_timeout, not minutes."""
    episode = await hostile_episode(start_relay, drip(0.5))
    assert_degraded_and_recovered(episode, "timed out after 2 s (request_timeout)")
    assert episode.poll_seconds < REQUEST_TIMEOUT + 2.0


# -- values ------------------------------------------------------------------------

EXTREME = {
    "string-percent": (window_with(used_percent="50"), "burst.used_percent"),
    "boolean-percent": (window_with(used_percent=True), "burst.used_percent"),
    "infinite-percent": (
        raw_json(json.dumps(usage_body()).replace("37.5", "Infinity")),
        "Infinity, which is not a JSON number",
    ),
    "padded-unknown-field": (
        with_extra(padding="x" * 20_000),
        "more than 16 KiB of unknown fields, the last one padding",
    ),
    "deep-unknown-field": (with_extra(deep=nested(11)), "nested deeper than 10 levels: deep"),
}


@pytest.mark.parametrize(("answer", "reason"), EXTREME.values(), ids=EXTREME.keys())
async def test_an_extreme_answer_degrades_the_relay_naming_why(
    start_relay: StartRelay, answer: Answer, reason: str
) -> None:
    """Values that are not what they claim fail the poll, named, and the relay serves on."""
    episode = await hostile_episode(start_relay, answer)
    assert_degraded_and_recovered(episode, reason)


def usage_monitor_latest(ws_url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "clients.cli", "latest", "--url", ws_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE)


async def test_a_reset_past_year_9999_is_served_everywhere_and_survives_a_restart(
    start_relay: StartRelay,
) -> None:
    """``reset_at 9999-12-31T23:59:59-14:00``: latest, history (HTTP and WS) and a restart work."""
    async with HostileGateway(window_with(reset_at="9999-12-31T23:59:59-14:00")) as gateway:
        relay = await start_relay(gateway)
        with anyio.fail_after(DEADLINE):
            async with connect(relay.ws_url) as ws:
                snapshot = await subscribe_with_snapshot(ws)
                ws_history = await request(ws, "get_history")
            cli = await anyio.to_thread.run_sync(usage_monitor_latest, relay.ws_url)
            http_history = await relay.get("/api/v1/usage/history")
            exit_code = await anyio.to_thread.run_sync(relay.stop)
            gateway.answer = stall()  # so what the restarted relay serves is what it stored
            again = await start_relay(gateway)
            async with connect(again.ws_url) as ws:
                restored = await request(ws, "subscribe")
    assert snapshot["usage"]["burst"]["reset_at"] == "9999-01-01T00:00:00Z"
    assert [point["seq"] for point in ws_history["result"]["points"]] == [snapshot["seq"]]
    assert (cli.returncode, len(cli.stdout.splitlines()), cli.stderr) == (0, 1, "")
    assert http_history.status_code == 200
    assert [point["seq"] for point in http_history.json()["points"]] == [snapshot["seq"]]
    assert exit_code == 0
    assert restored["result"]["latest"] == snapshot
    assert not [line for line in relay.log + again.log if "Traceback" in line]
