"""The relay's HTTP endpoints for scripts."""

from __future__ import annotations

import anyio
import httpx
import pytest

from monitor.exceptions import StoreError
from monitor.store import SnapshotStore
from simulator import Failure, GatewaySimulator
from tests.conftest import RelayHarness

from .wire import auth_headers

pytestmark = pytest.mark.anyio


async def first_snapshot(client: httpx.AsyncClient) -> dict[str, object]:
    """Refresh once so the test does not race the relay's first poll."""
    response = await client.post("/api/v1/usage/refresh")
    assert response.status_code == 200
    latest: dict[str, object] = response.json()["latest"]
    return latest


async def test_healthz_reports_the_monitor_state(relay: RelayHarness) -> None:
    """GET /healthz answers 200 with the monitor's status."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            await first_snapshot(client)
            response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"]["state"] == "ok"


async def test_latest_returns_the_cached_snapshot(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """GET /api/v1/usage/latest returns the cached snapshot without polling."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            snapshot = await first_snapshot(client)
            served = simulator.requests_served
            response = await client.get("/api/v1/usage/latest")
    assert response.json()["latest"] == snapshot
    assert simulator.requests_served == served


async def test_refresh_polls_once_and_returns_the_new_snapshot(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """POST /api/v1/usage/refresh makes one upstream request and returns its snapshot."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            before = await first_snapshot(client)
            simulator.set_usage(sustained_percent=80.0)
            served = simulator.requests_served
            response = await client.post("/api/v1/usage/refresh")
    latest = response.json()["latest"]
    assert simulator.requests_served == served + 1
    assert latest["seq"] == before["seq"] + 1  # type: ignore[operator]
    assert latest["usage"]["sustained"]["used_percent"] == 80.0


async def test_failed_refresh_is_503_with_the_last_good_snapshot(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """A refresh that cannot poll answers 503 upstream_unavailable with the last snapshot."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            before = await first_snapshot(client)
            simulator.inject(Failure.TRUNCATED)
            response = await client.post("/api/v1/usage/refresh")
    error = response.json()["error"]
    assert response.status_code == 503
    assert error["code"] == "upstream_unavailable"
    assert error["data"]["latest"] == before


async def test_healthz_reports_a_store_that_cannot_write(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk is reported in /healthz while the relay keeps serving snapshots."""

    def disk_full(self: SnapshotStore, *data: object) -> None:
        raise StoreError("database or disk is full")

    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            healthy = (await client.get("/healthz")).json()["storage"]
            monkeypatch.setattr(SnapshotStore, "append", disk_full)
            monkeypatch.setattr(SnapshotStore, "save_alert_state", disk_full)
            await first_snapshot(client)
            # A history read waits for the writes submitted before it.
            await client.get("/api/v1/usage/history")
            broken = (await client.get("/healthz")).json()
    assert healthy == {"ok": True, "last_error": None}
    assert broken["storage"] == {"ok": False, "last_error": "database or disk is full"}
    assert broken["status"]["state"] == "ok"


async def test_sources_lists_the_single_source(relay: RelayHarness) -> None:
    """GET /api/v1/sources lists the one configured source, named ``default``."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            snapshot = await first_snapshot(client)
            body = (await client.get("/api/v1/sources")).json()
    [source] = body["sources"]
    assert (source["name"], source["kind"], source["topic"]) == (
        "default",
        "posthog",
        "usage:default",
    )
    assert source["latest"] == snapshot
    assert body["default_source"] == "default"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/usage/latest"),
        ("POST", "/api/v1/usage/refresh"),
        ("GET", "/api/v1/usage/history"),
    ],
)
async def test_an_unknown_source_is_404(relay: RelayHarness, method: str, path: str) -> None:
    """``?source=`` naming no source gets 404 with the ``unknown_topic`` error body."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            response = await client.request(method, path, params={"source": "nowhere"})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "unknown_topic",
        "message": "unknown source 'nowhere'",
    }


async def test_the_source_parameter_names_the_source(relay: RelayHarness) -> None:
    """``?source=default`` answers exactly as the endpoint without it."""
    with anyio.fail_after(5):
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            await first_snapshot(client)
            plain = (await client.get("/api/v1/usage/latest")).json()
            named = (await client.get("/api/v1/usage/latest?source=default")).json()
    assert named == plain
