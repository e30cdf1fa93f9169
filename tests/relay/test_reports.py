"""Daily usage reports through a real relay: its HTTP API, events, health, and a SIGKILL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, timedelta
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import SecretStr

from common.models import utc_now
from common.reports import ReportList, idempotency_key
from monitor.store import SnapshotStore
from relay.settings import Settings
from simulator import SimulatorServer
from simulator.history import simulated_history
from simulator.receiver import ReceiverServer, ReportReceiver
from tests.conftest import SIMULATOR_TOKEN, RelayHarness, running_relay
from tests.monitor.test_webhook import Receiver, serve

from .process import RelayProcess, relay_environment
from .wire import auth_headers, connect, next_event, request

pytestmark = pytest.mark.anyio

#: Days of stored history; the reports due are one per closed day it touches.
DAYS = 4
REPORTS = "/api/v1/reports"


def seed(database: Path, *sources: str, days: int = DAYS, interval: float = 1800) -> list[date]:
    """Store ``days`` of PostHog history of each source up to now; the days due, in order."""
    store = SnapshotStore(database)
    end = utc_now()
    try:
        for source in sources:
            snapshots, _ = simulated_history(
                source,
                "posthog",
                end=end,
                days=days,
                interval=interval,
                usd_per_hour=2.0,
                epoch=None,
            )
            store.append_many(snapshots)
    finally:
        store.close()
    first = (end - timedelta(days=days)).date()
    return [first + timedelta(days=n) for n in range((end.date() - first).days)]


@pytest.fixture
async def billing() -> AsyncIterator[ReceiverServer]:
    """A billing service's report endpoint."""
    async with ReceiverServer(ReportReceiver()) as server:
        yield server


@pytest.fixture
def receiver(billing: ReceiverServer) -> ReportReceiver:
    return billing.receiver


def reporting(settings: Settings, billing: ReceiverServer) -> Settings:
    """``settings`` delivering reports to ``billing``, days in UTC, due as soon as closed."""
    return settings.model_copy(
        update={
            "report_url": SecretStr(f"{billing.url}/billing"),
            "timezone": "UTC",
            "report_delay": 0.0,
        }
    )


@pytest.fixture
async def relay(relay_settings: Settings, billing: ReceiverServer) -> AsyncIterator[RelayHarness]:
    """A relay whose store has four days of history of its source, delivering to ``billing``."""
    seed(relay_settings.database_path(), "default")
    async with running_relay(reporting(relay_settings, billing)) as harness:
        yield harness


def api(relay: RelayHarness) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=relay.url, headers=auth_headers())


async def delivered(receiver: ReportReceiver, count: int = DAYS) -> None:
    with anyio.fail_after(20):
        await receiver.wait_for(lambda r: len(r.accepted) >= count)


async def test_the_relay_catches_up_at_start_and_lists_every_day_delivered(
    relay: RelayHarness, receiver: ReportReceiver
) -> None:
    """At start every closed day is delivered; GET /api/v1/reports lists them delivered."""
    await delivered(receiver)
    assert relay.hub.reports is not None
    await relay.hub.reports.catch_up()  # the start's pass is over once this one ran
    async with api(relay) as client:
        response = await client.get(REPORTS, params={"since": "2000-01-01"})
    listing = ReportList.model_validate_json(response.text)
    assert (listing.timezone, listing.destinations) == ("UTC", ["report_url"])
    assert [entry.state for entry in listing.reports] == ["delivered"] * DAYS
    assert sorted(receiver.accepted) == [
        idempotency_key("default", entry.usage_day) for entry in listing.reports
    ]


async def test_a_saved_report_is_served_as_the_bytes_delivered(
    relay: RelayHarness, receiver: ReportReceiver
) -> None:
    """GET /api/v1/reports/<source>/<day> answers exactly the body the receiver took."""
    await delivered(receiver)
    key = min(receiver.accepted)
    day = key.rsplit(":", 1)[1]
    async with api(relay) as client:
        response = await client.get(f"{REPORTS}/default/{day}")
    assert response.status_code == 200
    assert response.content == receiver.accepted[key]


@pytest.mark.parametrize(
    ("path", "status", "code", "words"),
    [
        ("default/2000-01-01", 404, "not_found", "no report of default for 2000-01-01"),
        ("nowhere/2026-12-01", 404, "unknown_topic", "unknown source 'nowhere'"),
        ("default/yesterday", 400, "bad_request", "is not a day"),
    ],
)
async def test_a_report_that_is_not_there_gets_the_documented_error(
    relay: RelayHarness, path: str, status: int, code: str, words: str
) -> None:
    """An unsaved day, an unknown source, a day that is no date: 404, 404, 400."""
    async with api(relay) as client:
        response = await client.get(f"{REPORTS}/{path}")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert words in response.json()["error"]["message"]


async def test_a_report_asked_for_an_open_day_is_refused(relay: RelayHarness) -> None:
    """POST of today's report: 400 saying the day has not closed yet."""
    today = utc_now().date()
    async with api(relay) as client:
        response = await client.post(f"{REPORTS}/default/{today}")
    assert response.status_code == 400
    assert "has not closed yet in UTC" in response.json()["error"]["message"]


async def test_healthz_counts_the_reports_waiting_for_a_failing_receiver(
    relay_settings: Settings, billing: ReceiverServer, receiver: ReportReceiver
) -> None:
    """With the receiver answering 500, /healthz says how many wait and why."""
    seed(relay_settings.database_path(), "default")
    receiver.fail(500)
    async with running_relay(reporting(relay_settings, billing)) as relay:
        assert relay.hub.reports is not None
        with anyio.fail_after(20):
            await relay.hub.reports.catch_up()
            async with api(relay) as client:
                health = (await client.get("/healthz")).json()
    assert health["reports"]["pending"] == DAYS
    assert health["reports"]["failed"] == 0
    assert health["reports"]["last_error"].startswith("report_url: HTTP 500")


async def test_subscribers_hear_a_report_delivered_and_list_reports_answers_like_http(
    relay_settings: Settings, billing: ReceiverServer, receiver: ReportReceiver
) -> None:
    """A report made on request reaches the source's subscribers as usage.report_delivered."""
    days = seed(relay_settings.database_path(), "default")
    async with running_relay(reporting(relay_settings, billing)) as relay:
        assert relay.hub.reports is not None
        with anyio.fail_after(20):
            await relay.hub.reports.catch_up()  # after the start's pass: its events are sent
            async with connect(relay.ws_url) as ws:
                await request(ws, "subscribe", topic="usage:default")
                async with api(relay) as client:
                    made = await client.post(f"{REPORTS}/default/{days[-1]}")
                    listed = (await client.get(REPORTS)).json()
                event = await next_event(ws, "usage.report_delivered")
                answer = await request(ws, "list_reports")
    assert made.status_code == 200
    assert event["data"]["report_id"] == f"default:{days[-1]}"
    assert event["data"]["state"] == "delivered"
    assert answer["result"] == listed


async def test_a_refused_report_is_posted_to_the_webhook_once_and_not_sent_again(
    relay_settings: Settings, billing: ReceiverServer, receiver: ReportReceiver
) -> None:
    """A 400 from the receiver: one webhook post, and the report is not sent by itself again."""
    seed(relay_settings.database_path(), "default", days=1)
    receiver.fail(400)
    hook = Receiver()
    async for hook_url in serve(hook):
        settings = reporting(relay_settings, billing)
        settings = settings.model_copy(update={"webhook_url": SecretStr(hook_url)})
        async with running_relay(settings) as relay:
            assert relay.hub.reports is not None
            with anyio.fail_after(20):
                await hook.got_one.wait()
                await relay.hub.reports.catch_up()
    [posted] = hook.received
    assert posted["event"] == "usage.report_failed"
    assert posted["data"]["state"] == "failed"
    assert "HTTP 400" in posted["text"]
    assert [request.status for request in receiver.requests] == [400]


async def test_subscribers_hear_a_report_refused_again_when_made_by_hand(
    relay_settings: Settings, billing: ReceiverServer, receiver: ReportReceiver
) -> None:
    """A refused report made again on request: usage.report_failed to its subscribers."""
    [day] = seed(relay_settings.database_path(), "default", days=1)
    receiver.fail(400)
    async with running_relay(reporting(relay_settings, billing)) as relay:
        assert relay.hub.reports is not None
        with anyio.fail_after(20):
            await relay.hub.reports.catch_up()
            async with connect(relay.ws_url) as ws:
                await request(ws, "subscribe", topic="usage:default")
                async with api(relay) as client:
                    made = (await client.post(f"{REPORTS}/default/{day}")).json()
                event = await next_event(ws, "usage.report_failed")
    assert made["entry"]["state"] == "failed"
    assert event["data"] == made["entry"]


async def test_a_relay_killed_mid_catch_up_finishes_it_after_restart_with_the_same_keys(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    simulator_server: SimulatorServer,
    billing: ReceiverServer,
    receiver: ReportReceiver,
) -> None:
    """SIGKILL during a slow catch-up, then a restart: every (source, day) delivered, each
    under one key with one body."""
    database = tmp_path / "usage.db"
    sources = ("us", "eu")
    days = seed(database, *sources, days=12, interval=3600)
    config = tmp_path / "config.toml"
    config.write_text(
        "".join(
            f'[[sources]]\nname = "{name}"\nkind = "posthog"\n'
            f'url = "{simulator_server.url}"\ntoken_env = "REPORT_TEST_TOKEN"\n'
            for name in sources
        )
    )
    env = relay_environment(
        tmp_path,
        monkeypatch,
        report_url=f"{billing.url}/billing",
        timezone="UTC",
        report_delay="0",
        report_concurrency="1",
        interval="3600",
    )
    env["REPORT_TEST_TOKEN"] = SIMULATOR_TOKEN
    args = ["--config", str(config), "--port", "0"]
    expected = {idempotency_key(source, day) for day in days for source in sources}
    receiver.slow(0.05)
    relay = await anyio.to_thread.run_sync(partial(RelayProcess.start, args, env))
    try:
        with anyio.fail_after(30):
            await receiver.wait_for(lambda r: len(r.accepted) >= 5)
        relay.kill()
    finally:
        relay.kill()
    assert len(receiver.accepted) < len(expected), "the kill did not land mid-run"
    receiver.recover()
    relay = await anyio.to_thread.run_sync(partial(RelayProcess.start, args, env))
    try:
        with anyio.fail_after(30):
            await receiver.wait_for(lambda r: set(r.accepted) >= expected)
    finally:
        relay.kill()
    assert set(receiver.accepted) == expected
    assert all(len(bodies) == 1 for bodies in receiver.bodies_by_key().values())
    assert all(request.key in expected for request in receiver.requests)
