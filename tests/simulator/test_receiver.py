"""Tests of ReportReceiver and ReceiverServer: a billing service over real loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from anyio.abc import TaskStatus

from simulator import ReceiverServer, ReportReceiver

pytestmark = pytest.mark.anyio

KEY = "usage-report:us:2026-11-22"
REPORT = {"source": "us", "usage_day": "2026-11-22", "cost_usd": 1.25}
BODY = json.dumps(REPORT).encode()
PATH = "/v1/usage-reports"


@pytest.fixture
def receiver() -> ReportReceiver:
    return ReportReceiver()


@pytest.fixture
async def server(receiver: ReportReceiver) -> AsyncIterator[ReceiverServer]:
    async with ReceiverServer(receiver) as server:
        yield server


@pytest.fixture
async def client(server: ReceiverServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        yield client


async def post(
    client: httpx.AsyncClient,
    body: bytes = BODY,
    *,
    key: str | None = KEY,
    token: str | None = None,
) -> httpx.Response:
    """POST a report as the relay does: JSON, with its Idempotency-Key and bearer token."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post(PATH, content=body, headers=headers)


async def test_new_key_is_accepted_and_recorded(
    receiver: ReportReceiver, client: httpx.AsyncClient
) -> None:
    """A new key is answered 201, and its body is accepted and recorded."""
    with anyio.fail_after(10):
        response = await post(client)
    assert response.status_code == 201
    assert receiver.accepted == {KEY: BODY}
    assert receiver.reports() == {KEY: REPORT}
    [request] = receiver.requests
    assert (request.key, request.body, request.status, request.path) == (KEY, BODY, 201, PATH)
    assert request.authorization is None


async def test_same_key_same_body_is_a_duplicate(
    receiver: ReportReceiver, client: httpx.AsyncClient
) -> None:
    """The same key with the same body again is answered 409 and leaves one body per key."""
    with anyio.fail_after(10):
        first, again = await post(client), await post(client)
    assert (first.status_code, again.status_code) == (201, 409)
    assert receiver.bodies_by_key() == {KEY: {BODY}}


async def test_same_key_other_body_is_refused(
    receiver: ReportReceiver, client: httpx.AsyncClient
) -> None:
    """The same key with another body is answered 422 and the first body stays accepted."""
    other = json.dumps({**REPORT, "cost_usd": 2.5}).encode()
    with anyio.fail_after(10):
        first, changed = await post(client), await post(client, other)
    assert (first.status_code, changed.status_code) == (201, 422)
    assert receiver.accepted == {KEY: BODY}
    assert receiver.bodies_by_key() == {KEY: {BODY, other}}


async def test_missing_key_is_a_bad_request(
    receiver: ReportReceiver, client: httpx.AsyncClient
) -> None:
    """A report without an Idempotency-Key is answered 400, recorded and not accepted."""
    with anyio.fail_after(10):
        response = await post(client, key=None)
    assert response.status_code == 400
    assert [(r.key, r.status) for r in receiver.requests] == [(None, 400)]
    assert receiver.accepted == {}


async def test_fail_times_then_normal(receiver: ReportReceiver, client: httpx.AsyncClient) -> None:
    """fail(500, times=2) fails two requests without accepting them, then answers normally."""
    receiver.fail(500, times=2)
    with anyio.fail_after(10):
        statuses = [(await post(client)).status_code for _ in range(3)]
    assert statuses == [500, 500, 201]
    assert [r.status for r in receiver.requests] == [500, 500, 201]
    assert receiver.accepted == {KEY: BODY}


async def test_hang_until_recover(receiver: ReportReceiver, client: httpx.AsyncClient) -> None:
    """A hung request times out at its client, recorded unanswered; recover() lets more in."""
    receiver.hang()
    with anyio.fail_after(10):
        with pytest.raises(httpx.ReadTimeout):
            await client.post(PATH, content=BODY, headers={"Idempotency-Key": KEY}, timeout=0.2)
        await receiver.wait_for(lambda r: len(r.requests) == 1)
        receiver.recover()
        response = await post(client)
    assert response.status_code == 201
    assert [r.status for r in receiver.requests] == [0, 201]


async def test_stop_releases_a_hung_request(
    receiver: ReportReceiver, server: ReceiverServer, client: httpx.AsyncClient
) -> None:
    """Stopping the server drops a hung request's connection instead of hanging."""
    receiver.hang()
    errors: list[type[Exception]] = []

    async def send() -> None:
        try:
            await post(client)
        except httpx.HTTPError as exc:
            errors.append(type(exc))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await receiver.wait_for(lambda r: r.in_flight == 1)
            await server.stop()
    assert errors == [httpx.RemoteProtocolError]
    assert [r.status for r in receiver.requests] == [0]
    assert receiver.accepted == {}


async def test_token_is_required() -> None:
    """With a token set, a report without the bearer token is answered 401 and not accepted."""
    receiver = ReportReceiver(token="billing-token")
    with anyio.fail_after(10):
        async with (
            ReceiverServer(receiver) as server,
            httpx.AsyncClient(base_url=server.url, timeout=5) as client,
        ):
            refused = await post(client)
            wrong = await post(client, token="nope")
            allowed = await post(client, token="billing-token")
    assert (refused.status_code, wrong.status_code, allowed.status_code) == (401, 401, 201)
    assert receiver.requests[-1].authorization == "Bearer billing-token"
    assert list(receiver.accepted) == [KEY]


async def test_wait_for_wakes_on_a_request(
    receiver: ReportReceiver, client: httpx.AsyncClient
) -> None:
    """wait_for returns once a request makes its predicate hold."""
    seen: list[int] = []

    async def waiter(*, task_status: TaskStatus[None]) -> None:
        task_status.started()  # no checkpoint before wait_for blocks
        await receiver.wait_for(lambda r: KEY in r.accepted)
        seen.append(len(receiver.requests))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(waiter)
            assert seen == []
            await post(client)
    assert seen == [1]
