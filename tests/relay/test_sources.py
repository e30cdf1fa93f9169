"""One relay, three sources of three kinds, against a simulator that speaks every dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection

from common.messages import ErrorReply, EventMessage, ResultReply, SourcesResult
from relay.settings import Settings, SourceSettings
from simulator import Failure, GatewaySimulator, SimulatorServer
from tests.conftest import SIMULATOR_TOKEN, RelayHarness, running_relay

from .wire import connect, next_event, request, request_with_events

pytestmark = pytest.mark.anyio

TOKEN_ENV = "TEST_SOURCES_TOKEN"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """The LiteLLM source's token, in a file a test may take away."""
    path = tmp_path / "team-key"
    path.write_text(SIMULATOR_TOKEN + "\n", encoding="utf-8")
    return path


@pytest.fixture
async def relay(
    relay_settings: Settings,
    simulator_server: SimulatorServer,
    token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[RelayHarness]:
    """A relay polling ``us`` (PostHog, the default), ``router`` (OpenRouter) and ``team``
    (LiteLLM), all answered by one simulator."""
    monkeypatch.setenv(TOKEN_ENV, SIMULATOR_TOKEN)
    url = simulator_server.url
    sources = (
        SourceSettings(name="us", kind="posthog", url=url, token_env=TOKEN_ENV),
        SourceSettings(name="router", kind="openrouter", url=url, token_env=TOKEN_ENV),
        SourceSettings(name="team", kind="litellm", url=url, token_file=token_file),
    )
    settings = relay_settings.model_copy(update={"sources": sources, "timezone": "Europe/London"})
    async with running_relay(settings) as harness:
        yield harness


async def first_polls(relay: RelayHarness) -> None:
    """Wait until every source has finished a poll."""
    for monitor in relay.hub.monitors.values():
        await monitor.refresh_now()


async def subscribe(ws: ClientConnection, topic: str) -> dict[str, Any]:
    reply = await request(ws, "subscribe", topic=topic)
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


async def test_list_sources_names_every_source_in_order(relay: RelayHarness) -> None:
    """``list_sources`` answers each source's name, kind, topic, status and snapshot."""
    with anyio.fail_after(10):
        await first_polls(relay)
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "list_sources")
    listed = SourcesResult.model_validate(ResultReply.model_validate(reply).result.model_dump())
    assert [(s.name, s.kind, s.topic, s.status.state) for s in listed.sources] == [
        ("us", "posthog", "usage:us", "ok"),
        ("router", "openrouter", "usage:router", "ok"),
        ("team", "litellm", "usage:team", "ok"),
    ]
    assert [[m.id for m in s.latest.meters] for s in listed.sources if s.latest] == [
        ["burst", "sustained"],
        ["limit", "today", "month"],
        ["budget"],
    ]
    assert (listed.timezone, listed.default_source) == ("Europe/London", "us")


async def test_each_topic_hears_only_its_own_source(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh of each source reaches its own topic only, numbered by that source."""
    with anyio.fail_after(10):
        await first_polls(relay)
        async with connect(relay.ws_url) as router_ws, connect(relay.ws_url) as team_ws:
            router_seq = (await subscribe(router_ws, "usage:router"))["latest"]["seq"]
            team_seq = (await subscribe(team_ws, "usage:team"))["latest"]["seq"]
            await relay.hub.refresh_now("usage:team")
            await relay.hub.refresh_now("usage:router")
            heard = await next_event(router_ws, "usage.updated")
            # The team connection hears the team's update, and nothing of the router's.
            _, team_events = await request_with_events(team_ws, "ping")
    assert (heard["topic"], heard["data"]["source"], heard["data"]["seq"]) == (
        "usage:router",
        "router",
        router_seq + 1,
    )
    updates = [e["data"] for e in team_events if e["event"] == "usage.updated"]
    assert [(u["source"], u["seq"]) for u in updates] == [("team", team_seq + 1)]


async def test_one_failing_source_leaves_the_others_ok(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A LiteLLM proxy answering 500 degrades ``team``; ``us`` and ``router`` stay ok."""
    with anyio.fail_after(10):
        await first_polls(relay)
        simulator.inject(Failure.SERVER_ERROR, status=500, kind="litellm", count=3)
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "refresh", topic="usage:team")
            listed = (await request(ws, "list_sources"))["result"]
    assert reply["error"]["code"] == "upstream_unavailable"
    assert reply["error"]["data"]["latest"]["source"] == "team"
    states = {s["name"]: s["status"]["state"] for s in listed["sources"]}
    assert states == {"us": "ok", "router": "ok", "team": "degraded"}


async def test_a_refresh_polls_only_its_source(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """``refresh`` on ``usage:router`` sends one request to OpenRouter's endpoint, no other."""
    with anyio.fail_after(10):
        await first_polls(relay)
        before = dict(simulator.requests_by_kind)
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "refresh", topic="usage:router")
    after = simulator.requests_by_kind
    assert reply["result"]["latest"]["source"] == "router"
    assert {kind: after[kind] - before[kind] for kind in after} == {
        "posthog": 0,
        "openrouter": 1,
        "litellm": 0,
    }


async def test_a_v1_client_sees_only_the_default_source(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A client that subscribes to ``usage`` gets the default source in v1's shape, and no
    event of any other source."""
    with anyio.fail_after(10):
        await first_polls(relay)
        async with connect(relay.ws_url) as ws:
            result = await subscribe(ws, "usage")
            for topic in ("usage:router", "usage:team", "usage:us"):
                await relay.hub.refresh_now(topic)
            _, events = await request_with_events(ws, "ping")
    assert result["topic"] == "usage"
    snapshot = result["latest"]
    assert snapshot["source"] == "us"
    assert set(snapshot["usage"]) >= {"product", "burst", "sustained", "is_rate_limited"}
    assert {"used_percent", "reset_at", "exceeded"} <= set(snapshot["usage"]["burst"])
    for event in events:
        TypeAdapter(EventMessage).validate_python(event)
    assert {
        (e["topic"], e["data"].get("source")) for e in events if e["event"] == "usage.updated"
    } == {("usage", "us")}


async def test_a_vanished_token_file_is_an_auth_error(
    relay: RelayHarness, token_file: Path
) -> None:
    """A source whose token file disappears goes to ``auth_error`` naming the file."""
    with anyio.fail_after(10):
        await first_polls(relay)
        await anyio.Path(token_file).unlink()
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "refresh", topic="usage:team")
            status = (await request(ws, "get_latest", topic="usage:team"))["result"]["status"]
    assert reply["error"]["code"] == "upstream_unavailable"
    assert status["state"] == "auth_error"
    assert str(token_file) in status["last_error"]
    assert "Traceback" not in status["last_error"]


async def test_an_unknown_source_topic_is_unknown_topic(relay: RelayHarness) -> None:
    """A topic naming no configured source is refused with ``unknown_topic``."""
    with anyio.fail_after(10):
        async with connect(relay.ws_url) as ws:
            reply = await request(ws, "subscribe", topic="usage:nowhere")
    assert ErrorReply.model_validate(reply).error.code == "unknown_topic"
