"""Report destinations: what each answer of a receiver, or each disk, comes to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import date
from pathlib import Path

import anyio
import httpx
import pytest

from monitor.destinations import DirectoryDestination, Outcome, SavedReport, UrlDestination
from monitor.exceptions import UpstreamAuthError
from simulator.receiver import ReceiverServer, ReportReceiver

pytestmark = pytest.mark.anyio

REPORT = SavedReport("us", date(2026, 12, 1), '{"report_id":"us:2026-12-01"}')
SECRET_URL_PART = "s3cr3t-path"


@pytest.fixture
async def billing() -> AsyncIterator[ReceiverServer]:
    async with ReceiverServer(ReportReceiver(token="billing-token")) as server:
        yield server


async def test_the_bearer_token_is_read_and_sent_with_the_key(billing: ReceiverServer) -> None:
    """The token provider's token goes as a bearer token, with the report's key."""
    destination = UrlDestination(billing.url, token=lambda: "billing-token")
    try:
        with anyio.fail_after(10):
            outcome = await destination.deliver(REPORT)
    finally:
        await destination.aclose()
    [request] = billing.receiver.requests
    assert (outcome.state, request.status) == ("delivered", 201)
    assert request.key == "usage-report:us:2026-12-01"
    assert request.body == REPORT.body.encode()


async def test_a_token_that_cannot_be_read_leaves_the_report_pending(
    billing: ReceiverServer,
) -> None:
    """An unset token variable: nothing is sent, the report waits, the error says why."""

    def unset() -> str:
        raise UpstreamAuthError("the environment variable BILLING_TOKEN holding the token is unset")

    destination = UrlDestination(billing.url, token=unset)
    try:
        with anyio.fail_after(10):
            outcome = await destination.deliver(REPORT)
    finally:
        await destination.aclose()
    assert outcome.state == "pending"
    assert outcome.error == (
        "report_url: the environment variable BILLING_TOKEN holding the token is unset"
    )
    assert billing.receiver.requests == []


async def deliver_through(handler: Callable[[httpx.Request], httpx.Response]) -> Outcome:
    """Deliver ``REPORT`` to a URL with a secret in its path, answered by ``handler``."""
    destination = UrlDestination(
        f"https://billing.example/{SECRET_URL_PART}", transport=httpx.MockTransport(handler)
    )
    try:
        return await destination.deliver(REPORT)
    finally:
        await destination.aclose()


@pytest.mark.parametrize(
    ("status", "headers", "state", "retry_after"),
    [
        (204, {}, "delivered", None),
        (409, {}, "delivered", None),
        (429, {"Retry-After": "120"}, "pending", 120.0),
        (503, {}, "pending", None),
        (400, {}, "failed", None),
        (308, {"Location": "https://elsewhere/"}, "failed", None),
    ],
)
async def test_each_answer_comes_to_its_outcome(
    status: int, headers: dict[str, str], state: str, retry_after: float | None
) -> None:
    """2xx and 409 deliver; 429 and 5xx wait (429 as told); other answers fail it."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, text="unknown account\n\tplease check")

    outcome = await deliver_through(answer)
    assert (outcome.state, outcome.retry_after) == (state, retry_after)
    if state != "delivered":
        assert outcome.error == f"report_url: HTTP {status}: unknown account please check"


async def test_an_unreachable_receiver_is_pending_and_the_url_is_never_named() -> None:
    """A refused connection waits, and the error names report_url, not its secret URL."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}")

    outcome = await deliver_through(refuse)
    assert outcome.state == "pending"
    assert outcome.error == "report_url: unreachable (ConnectError)"


async def test_a_report_file_replaces_the_old_one_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    """Writing twice leaves one file with the report's bytes, and nothing else."""
    destination = DirectoryDestination(tmp_path / "reports")
    with anyio.fail_after(10):
        await destination.deliver(SavedReport("us", REPORT.usage_day, "old"))
        outcome = await destination.deliver(REPORT)
    assert outcome.state == "delivered"
    assert [path.name for path in (tmp_path / "reports" / "us").iterdir()] == ["2026-12-01.json"]
    assert destination.path_of(REPORT).read_text() == REPORT.body
