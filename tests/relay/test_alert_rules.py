"""Alert rules set at run time over HTTP, on a real relay polling the simulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from common.models import Alert, ThresholdCrossed
from monitor.service import AlertRaised, MonitorEvent
from relay.settings import Settings, SourceSettings
from simulator import GatewaySimulator, SimulatorServer
from tests.conftest import SIMULATOR_TOKEN, RelayHarness, running_relay
from tests.monitor.test_webhook import Receiver, serve

from .wire import auth_headers, connect, next_event, request

pytestmark = pytest.mark.anyio

ALERTS = "/api/v1/usage/alerts"
TOKEN_ENV = "TEST_ALERT_RULES_TOKEN"


@pytest.fixture
async def relay(
    relay_settings: Settings, simulator_server: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RelayHarness]:
    """A relay polling ``us`` (PostHog) and ``router`` (OpenRouter), only when asked."""
    monkeypatch.setenv(TOKEN_ENV, SIMULATOR_TOKEN)
    url = simulator_server.url
    sources = (
        SourceSettings(name="us", kind="posthog", url=url, token_env=TOKEN_ENV),
        SourceSettings(name="router", kind="openrouter", url=url, token_env=TOKEN_ENV),
    )
    async with running_relay(relay_settings.model_copy(update={"sources": sources})) as harness:
        yield harness


def api(relay: RelayHarness, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=relay.url, headers={**auth_headers(), **headers})


async def add_rule(relay: RelayHarness, **body: Any) -> dict[str, Any]:
    async with api(relay) as client:
        response = await client.post(ALERTS, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def listed(relay: RelayHarness) -> list[dict[str, Any]]:
    async with api(relay) as client:
        response = await client.get(ALERTS)
    assert response.status_code == 200
    rules: list[dict[str, Any]] = response.json()["rules"]
    return rules


def rule_alerts(relay: RelayHarness, source: str = "us") -> list[ThresholdCrossed]:
    """The rule alerts ``source``'s monitor raises from now on (until it stops)."""
    alerts: list[ThresholdCrossed] = []

    def collect(event: MonitorEvent) -> None:
        alert: Alert | None = event.alert if isinstance(event, AlertRaised) else None
        if isinstance(alert, ThresholdCrossed) and alert.rule is not None:
            alerts.append(alert)

    relay.hub.monitors[source].add_observer(collect)
    return alerts


async def poll_at(relay: RelayHarness, simulator: GatewaySimulator, percent: float) -> None:
    """Set the Daily window to ``percent`` and have ``us`` poll it (its alerts are raised)."""
    simulator.set_usage(burst_percent=percent)
    await relay.hub.monitors["us"].refresh_now()


async def test_a_rule_is_created_and_listed(relay: RelayHarness) -> None:
    """POST answers 201 with the rule; GET lists it, the webhook URL redacted."""
    secret = "https://hooks.slack.com/services/T0/B0/s3cret"
    with anyio.fail_after(10):
        async with api(relay) as client:
            response = await client.post(
                ALERTS,
                json={
                    "threshold_percent": 80,
                    "source": "us",
                    "meter": "burst",
                    "webhook_url": secret,
                },
            )
        rules = await listed(relay)
    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"{ALERTS}/{created['id']}"
    assert {k: created[k] for k in ("threshold_percent", "source", "meter", "webhook_url")} == {
        "threshold_percent": 80.0,
        "source": "us",
        "meter": "burst",
        "webhook_url": "https://hooks.slack.com/…",
    }
    assert rules == [created]
    assert "s3cret" not in response.text


async def test_rules_fire_once_per_window_as_usage_grows(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Rules at 50, 80 and 95 give three warnings, one each, as the Daily window fills."""
    with anyio.fail_after(10):
        ids = [
            (await add_rule(relay, threshold_percent=t, meter="burst"))["id"] for t in (50, 80, 95)
        ]
        alerts = rule_alerts(relay)
        for percent in (40, 60, 70, 85, 90, 97, 99):
            await poll_at(relay, simulator, percent)
    assert [(a.rule, a.threshold, a.used_percent) for a in alerts] == [
        (ids[0], 50, 60),
        (ids[1], 80, 85),
        (ids[2], 95, 97),
    ]
    assert {(a.source, a.bucket) for a in alerts} == {("us", "burst")}


async def test_an_alert_event_names_its_rule(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Subscribers get ``usage.threshold_crossed`` with the rule's id in ``data.rule``."""
    with anyio.fail_after(10):
        rule = await add_rule(relay, threshold_percent=30, source="us", meter="burst")
        async with connect(relay.ws_url) as ws:
            assert (await request(ws, "subscribe", topic="usage:us"))["ok"]
            await poll_at(relay, simulator, 35)
            event = await next_event(ws, "usage.threshold_crossed")
            while event["data"]["rule"] is None:  # the configured thresholds' own alerts
                event = await next_event(ws, "usage.threshold_crossed")
    assert (event["data"]["rule"], event["data"]["threshold"]) == (rule["id"], 30)


async def test_rules_and_their_marks_survive_a_restart(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """After a restart the rule is still listed and does not fire again in the same window."""
    with anyio.fail_after(20):
        rule = await add_rule(relay, threshold_percent=50, meter="burst")
        before = rule_alerts(relay)
        await poll_at(relay, simulator, 60)
        await relay.stop()
        await relay.start()
        rules = await listed(relay)
        after = rule_alerts(relay)
        await poll_at(relay, simulator, 70)
    assert [a.rule for a in before] == [rule["id"]]
    assert rules == [rule]
    assert after == []


async def test_a_deleted_rule_stops_firing(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """DELETE answers 204; the rule is no longer listed and no longer fires."""
    with anyio.fail_after(10):
        rule = await add_rule(relay, threshold_percent=50)
        async with api(relay) as client:
            response = await client.delete(f"{ALERTS}/{rule['id']}")
        alerts = rule_alerts(relay)
        await poll_at(relay, simulator, 60)
        rules = await listed(relay)
    assert response.status_code == 204
    assert (rules, alerts) == ([], [])


async def test_a_rules_webhook_receives_its_alerts(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A rule's alert is posted to its own webhook as Slack-compatible JSON."""
    receiver = Receiver()
    async for url in serve(receiver):
        with anyio.fail_after(10):
            rule = await add_rule(relay, threshold_percent=50, source="us", webhook_url=url)
            await poll_at(relay, simulator, 60)
            await receiver.got_one.wait()
    [posted] = receiver.received
    assert posted["event"] == "usage.threshold_crossed"
    assert (posted["data"]["rule"], posted["data"]["source"]) == (rule["id"], "us")
    assert posted["text"] == "us: Daily usage crossed 50% (now 60%)."


async def test_an_unknown_id_is_404(relay: RelayHarness) -> None:
    """DELETE of an id no rule has answers 404 with the error body."""
    with anyio.fail_after(10):
        async with api(relay) as client:
            response = await client.delete(f"{ALERTS}/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "'nope'" in response.json()["error"]["message"]


BAD_BODIES = [
    pytest.param(b"{not json", "body", id="not-json"),
    pytest.param(b"[50]", "body", id="not-an-object"),
    pytest.param(json.dumps({"threshold_percent": 50, "x": "y" * 17000}), "body", id="too-large"),
    pytest.param({}, "threshold_percent", id="no-threshold"),
    pytest.param({"threshold_percent": 0}, "threshold_percent", id="zero"),
    pytest.param({"threshold_percent": -5}, "threshold_percent", id="negative"),
    pytest.param({"threshold_percent": 100.5}, "threshold_percent", id="over-100"),
    pytest.param({"threshold_percent": "80"}, "threshold_percent", id="string"),
    pytest.param({"threshold_percent": True}, "threshold_percent", id="boolean"),
    pytest.param(b'{"threshold_percent": NaN}', "threshold_percent", id="nan"),
    pytest.param({"threshold_percent": 50, "source": "eu"}, "source", id="unknown-source"),
    pytest.param({"threshold_percent": 50, "meter": "weekly"}, "meter", id="unknown-meter"),
    pytest.param(
        {"threshold_percent": 50, "source": "router", "meter": "burst"},
        "meter",
        id="meter-of-another-kind",
    ),
    pytest.param({"threshold_percent": 50, "colour": "red"}, "colour", id="unknown-field"),
    pytest.param({"threshold_percent": 50, "webhook_url": 7}, "webhook_url", id="url-number"),
]


@pytest.mark.parametrize(("body", "parameter"), BAD_BODIES)
async def test_bad_input_is_400_naming_the_parameter(
    relay: RelayHarness, body: Any, parameter: str
) -> None:
    """A bad body answers 400 ``bad_request`` naming what is wrong, and saves nothing."""
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    with anyio.fail_after(10):
        async with api(relay, **{"Content-Type": "application/json"}) as client:
            response = await client.post(ALERTS, content=content)
        rules = await listed(relay)
    assert response.status_code == 400
    reply = response.json()
    assert (reply["type"], reply["id"], reply["ok"]) == ("result", None, False)
    assert reply["error"]["code"] == "bad_request"
    assert parameter in reply["error"]["message"]
    assert rules == []


@pytest.mark.parametrize("url", ["ftp://hooks.example/secret-path", "https:///secret-path", "x"])
async def test_a_bad_webhook_url_is_refused_without_echoing_it(
    relay: RelayHarness, url: str
) -> None:
    """A webhook that is not an http(s) URL is a 400 that does not quote it."""
    with anyio.fail_after(10):
        async with api(relay) as client:
            response = await client.post(ALERTS, json={"threshold_percent": 50, "webhook_url": url})
    assert response.status_code == 400
    assert "webhook_url" in response.json()["error"]["message"]
    assert "secret-path" not in response.text


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_a_cross_origin_change_is_403(relay: RelayHarness, method: str) -> None:
    """A POST or DELETE from a foreign origin is refused and changes nothing."""
    rule = await add_rule(relay, threshold_percent=90)
    path = ALERTS if method == "POST" else f"{ALERTS}/{rule['id']}"
    with anyio.fail_after(10):
        async with api(relay, Origin="https://evil.example") as client:
            response = await client.request(method, path, json={"threshold_percent": 50})
        rules = await listed(relay)
    assert response.status_code == 403
    assert rules == [rule]


async def test_the_rules_need_the_token(relay: RelayHarness) -> None:
    """Without the bearer token every alerts endpoint answers 401."""
    with anyio.fail_after(10):
        async with httpx.AsyncClient(base_url=relay.url) as client:
            answers = [
                (await client.get(ALERTS)).status_code,
                (await client.post(ALERTS, json={"threshold_percent": 50})).status_code,
                (await client.delete(f"{ALERTS}/x")).status_code,
            ]
    assert answers == [401, 401, 401]
