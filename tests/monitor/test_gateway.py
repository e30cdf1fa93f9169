"""Unit tests of GatewayClient's translation of HTTP into readings and monitor exceptions."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.models import Usage, utc_now
from monitor.adapters import OpenRouterAdapter, PostHogAdapter
from monitor.exceptions import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from monitor.gateway import (
    DEFAULT_PRODUCT,
    DEFAULT_URLS,
    GatewayClient,
    parse_retry_after,
    token_from_file,
)

BASE_URL = "https://gateway.test"
TOKEN = "phx-TOKEN-must-never-leak-0123456789"

Handler = Callable[[httpx.Request], httpx.Response]


def newer_body(**extra: Any) -> dict[str, Any]:
    """A usage object as a newer gateway sends it (with ``reset_at``)."""
    return {
        "product": "posthog_code",
        "user_id": 1234,
        "burst": {"used_percent": 37.5, "reset_at": "2026-11-22T18:00:00Z", "exceeded": False},
        "sustained": {"used_percent": 12.1, "reset_at": "2026-12-17T12:00:00Z", "exceeded": False},
        "is_rate_limited": False,
        "billing_period_end": None,
        "is_pro": False,
        **extra,
    }


def older_body() -> dict[str, Any]:
    """A usage object as an older gateway sends it (only ``resets_in_seconds``)."""
    return {
        "product": "posthog_code",
        "user_id": 1234,
        "burst": {"used_percent": 37.5, "resets_in_seconds": 21600, "exceeded": False},
        "sustained": {"used_percent": 12.1, "resets_in_seconds": 2160000, "exceeded": False},
        "is_rate_limited": False,
    }


def reply(
    status: int = 200,
    *,
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Handler:
    """A handler that always answers with the same response."""

    def handler(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    """A handler whose transport fails; the message tries to smuggle the token out."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"failed while sending Bearer {TOKEN}", request=request)

    return handler


def make_client(
    handler: Handler,
    *,
    base_url: str = BASE_URL,
    token: Callable[[], str] = lambda: TOKEN,
    **kwargs: Any,
) -> GatewayClient:
    return GatewayClient(base_url, token, transport=httpx.MockTransport(handler), **kwargs)


async def fetch(handler: Handler, **kwargs: Any) -> Usage:
    """The usage object of one ``fetch`` through a fresh client that is closed afterwards."""
    client = make_client(handler, **kwargs)
    try:
        reading = await client.fetch()
    finally:
        await client.aclose()
    assert isinstance(reading.usage, Usage)
    return reading.usage


class Recorder:
    """A handler that answers with a valid body (a usage object by default) and keeps every
    request it saw."""

    def __init__(self, body: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.body = newer_body() if body is None else body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json=self.body)


# -- the request ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("base_url", "kwargs", "expected_url"),
    [
        (BASE_URL, {}, f"{BASE_URL}/v1/usage/{DEFAULT_PRODUCT}"),
        (f"{BASE_URL}/", {}, f"{BASE_URL}/v1/usage/{DEFAULT_PRODUCT}"),
        (BASE_URL, {"adapter": PostHogAdapter("signals")}, f"{BASE_URL}/v1/usage/signals"),
        ("http://localhost:3308/gw", {}, f"http://localhost:3308/gw/v1/usage/{DEFAULT_PRODUCT}"),
    ],
    ids=["default-product", "trailing-slash", "explicit-product", "base-with-path"],
)
async def test_request_is_a_get_of_the_product_usage_path(
    base_url: str, kwargs: dict[str, Any], expected_url: str
) -> None:
    """The client GETs ``{base}/v1/usage/{product}`` with no body."""
    recorder = Recorder()
    await fetch(recorder, base_url=base_url, **kwargs)
    (request,) = recorder.requests
    assert (request.method, str(request.url), request.content) == ("GET", expected_url, b"")


@pytest.mark.anyio
async def test_request_carries_the_bearer_token() -> None:
    """The token goes in an ``Authorization: Bearer`` header."""
    recorder = Recorder()
    await fetch(recorder)
    assert recorder.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.anyio
async def test_token_provider_is_called_for_every_request() -> None:
    """A rotated token is picked up by the next request."""
    tokens = iter(["first", "second", "third"])
    recorder = Recorder()
    client = make_client(recorder, token=lambda: next(tokens))
    try:
        for _ in range(3):
            await client.fetch()
    finally:
        await client.aclose()
    sent = [request.headers["Authorization"] for request in recorder.requests]
    assert sent == ["Bearer first", "Bearer second", "Bearer third"]


@pytest.mark.anyio
async def test_the_adapter_chooses_the_path() -> None:
    """Another dialect's adapter makes the client GET that dialect's path under the base."""
    key = {"data": {"limit": None, "usage": 1.0, "usage_daily": 0.5, "usage_monthly": 1.0}}
    recorder = Recorder(key)
    client = make_client(recorder, base_url=DEFAULT_URLS["openrouter"], adapter=OpenRouterAdapter())
    try:
        reading = await client.fetch()
    finally:
        await client.aclose()
    assert str(recorder.requests[0].url) == "https://openrouter.ai/api/v1/key"
    assert reading.kind == "openrouter"


@pytest.mark.anyio
async def test_the_reading_is_received_at_the_clocks_time() -> None:
    """``clock`` says when the answer arrived: an older form's reset counts from it."""
    received_at = datetime(2026, 11, 22, 12, tzinfo=UTC)
    client = make_client(reply(body=older_body()), clock=lambda: received_at)
    try:
        reading = await client.fetch()
    finally:
        await client.aclose()
    assert isinstance(reading.usage, Usage)
    assert reading.usage.burst.reset_at == received_at + timedelta(seconds=21600)


@pytest.mark.anyio
async def test_a_posthog_reading_carries_the_two_window_meters() -> None:
    """The default dialect is PostHog's: the reading has the Daily and Monthly meters."""
    client = make_client(reply(body=newer_body()))
    try:
        reading = await client.fetch()
    finally:
        await client.aclose()
    assert [(meter.id, meter.used_percent) for meter in reading.meters] == [
        ("burst", 37.5),
        ("sustained", 12.1),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(("kwargs", "expected"), [({}, 10.0), ({"timeout": 3.5}, 3.5)])
async def test_every_request_carries_a_timeout(kwargs: dict[str, Any], expected: float) -> None:
    """Connect, read, write and pool timeouts are set on every request, never left unbounded."""
    recorder = Recorder()
    client = make_client(recorder, **kwargs)
    try:
        for _ in range(2):
            await client.fetch()
    finally:
        await client.aclose()
    expected_timeouts = {"connect": expected, "read": expected, "write": expected, "pool": expected}
    assert [r.extensions["timeout"] for r in recorder.requests] == [expected_timeouts] * 2


# -- successful responses -------------------------------------------------------


@pytest.mark.anyio
async def test_newer_form_is_parsed() -> None:
    """A 200 with ``reset_at`` gives the usage object as sent."""
    usage = await fetch(reply(body=newer_body()))
    assert usage.model_dump(mode="json") == {
        "product": "posthog_code",
        "user_id": 1234,
        "burst": {"used_percent": 37.5, "reset_at": "2026-11-22T18:00:00Z", "exceeded": False},
        "sustained": {"used_percent": 12.1, "reset_at": "2026-12-17T12:00:00Z", "exceeded": False},
        "is_rate_limited": False,
        "is_pro": False,
        "billing_period_end": None,
    }


@pytest.mark.anyio
async def test_older_form_fills_reset_at_relative_to_receipt() -> None:
    """``resets_in_seconds`` alone becomes ``reset_at`` counted from when the response arrived."""
    called_at: list[datetime] = []

    def handler(request: httpx.Request) -> httpx.Response:
        called_at.append(utc_now())
        return httpx.Response(200, json=older_body())

    usage = await fetch(handler)
    after = utc_now()
    burst, sustained = timedelta(seconds=21600), timedelta(seconds=2160000)
    assert called_at[0] + burst <= usage.burst.reset_at <= after + burst
    assert called_at[0] + sustained <= usage.sustained.reset_at <= after + sustained


@pytest.mark.anyio
async def test_older_form_drops_resets_in_seconds() -> None:
    """``resets_in_seconds`` drifts once cached, so it is not kept."""
    usage = await fetch(reply(body=older_body()))
    dumped = usage.model_dump()
    assert "resets_in_seconds" not in dumped["burst"]
    assert "resets_in_seconds" not in dumped["sustained"]


@pytest.mark.anyio
async def test_reset_at_wins_when_both_forms_are_sent() -> None:
    """A gateway that sends both gets its ``reset_at`` kept and ``resets_in_seconds`` dropped."""
    body = newer_body()
    body["burst"]["resets_in_seconds"] = 5
    usage = await fetch(reply(body=body))
    assert usage.model_dump(mode="json")["burst"] == newer_body()["burst"]


@pytest.mark.anyio
async def test_unknown_fields_pass_through() -> None:
    """Fields a newer gateway adds, at the top level or in a window, survive untouched."""
    ai_credits = {"exhausted": False, "used_usd": 3.2, "limit_usd": 20.0}
    body = newer_body(code_usage_subscribed=True, ai_credits=ai_credits)
    body["burst"]["limit_usd"] = 100.0
    body["sustained"]["window"] = {"days": 30}
    usage = await fetch(reply(body=body))
    assert usage.model_dump(mode="json") == body


# -- failures ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, UpstreamAuthError),
        (403, UpstreamAuthError),
        (500, UpstreamUnavailable),
        (502, UpstreamUnavailable),
        (503, UpstreamUnavailable),
        (404, UpstreamInvalidResponse),
        (302, UpstreamInvalidResponse),
        (204, UpstreamInvalidResponse),
    ],
)
async def test_status_is_translated(status: int, expected: type[UpstreamError]) -> None:
    """Each non-200 status maps onto its monitor exception, even with a valid body."""
    handler = reply(status, body=newer_body(), headers={"Location": f"{BASE_URL}/elsewhere"})
    with pytest.raises(expected, match=str(status)):
        await fetch(handler)


@pytest.mark.anyio
@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("0.5", 0.5), ("0", 0.0)])
async def test_429_carries_retry_after_seconds(header: str, expected: float) -> None:
    """A 429's ``Retry-After`` in seconds becomes ``retry_after``."""
    with pytest.raises(UpstreamRateLimited) as caught:
        await fetch(reply(429, headers={"Retry-After": header}))
    assert caught.value.retry_after == expected


@pytest.mark.anyio
async def test_429_carries_retry_after_http_date() -> None:
    """A 429's ``Retry-After`` as an HTTP-date becomes the seconds until that moment."""
    when = format_datetime(utc_now() + timedelta(seconds=120), usegmt=True)
    with pytest.raises(UpstreamRateLimited) as caught:
        await fetch(reply(429, headers={"Retry-After": when}))
    assert caught.value.retry_after == pytest.approx(120, abs=5)


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [{}, {"Retry-After": "whenever"}], ids=["absent", "garbage"])
async def test_429_without_usable_retry_after(headers: dict[str, str]) -> None:
    """A 429 without a readable ``Retry-After`` has ``retry_after`` None."""
    with pytest.raises(UpstreamRateLimited) as caught:
        await fetch(reply(429, headers=headers))
    assert caught.value.retry_after is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content",
    [
        b"<html><body>Bad gateway</body></html>",
        b'{"product": "posthog_code", "burst": {"used_percent": 3',
        b"",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["html", "truncated", "empty", "not-utf8", "deeply-nested"],
)
async def test_body_that_is_not_json_is_invalid(content: bytes) -> None:
    """A 200 whose body does not decode as JSON is an invalid response, not a crash."""
    with pytest.raises(UpstreamInvalidResponse):
        await fetch(reply(content=content))


def _drop_burst(body: dict[str, Any]) -> None:
    del body["burst"]


def _set(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _older_window_with(value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        body["burst"] = {"used_percent": 1.0, "resets_in_seconds": value}

    return mutate


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mutate", "field", "offending"),
    [
        (_drop_burst, "burst", None),
        (_set("burst", "used_percent", value="lots-of-it-XYZZY"), "burst.used_percent", "XYZZY"),
        (_set("sustained", "used_percent", value=-31337.5), "sustained.used_percent", "31337"),
        (_set("burst", "reset_at", value="tomorrow-ish-QUUX"), "burst.reset_at", "QUUX"),
        (_older_window_with("soon-FROBNICATE"), "burst", "FROBNICATE"),
        (_set("product", value=987654321), "product", "987654321"),
    ],
    ids=[
        "missing-burst",
        "used-percent-string",
        "used-percent-negative",
        "reset-at-garbage",
        "resets-in-string",
        "product-int",
    ],
)
async def test_schema_invalid_body_names_the_field_not_the_value(
    mutate: Callable[[dict[str, Any]], None], field: str, offending: str | None
) -> None:
    """A JSON body that fails validation names the failing field and never echoes its value."""
    body = newer_body()
    mutate(body)
    with pytest.raises(UpstreamInvalidResponse) as caught:
        await fetch(reply(body=body))
    message = str(caught.value)
    assert field in message
    if offending is not None:
        assert offending not in message


@pytest.mark.anyio
@pytest.mark.parametrize("body", [[], None, "usage", 42], ids=["list", "null", "string", "number"])
async def test_json_that_is_not_an_object_is_invalid(body: Any) -> None:
    """A JSON body that is not an object is an invalid response."""
    with pytest.raises(UpstreamInvalidResponse):
        await fetch(reply(content=json.dumps(body).encode()))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc_type",
    [httpx.ConnectError, httpx.ReadTimeout, httpx.ConnectTimeout, httpx.RemoteProtocolError],
)
async def test_transport_failure_is_unavailable(exc_type: type[httpx.TransportError]) -> None:
    """Connection failures and timeouts raised by the transport become UpstreamUnavailable."""
    with pytest.raises(UpstreamUnavailable, match=exc_type.__name__):
        await fetch(raising(exc_type))


FAILURES: dict[str, Handler] = {
    "401": reply(401, body={"detail": f"token {TOKEN} expired"}),
    "403": reply(403, body={"detail": f"token {TOKEN} forbidden"}),
    "429": reply(429, headers={"Retry-After": "7"}, body={"detail": TOKEN}),
    "500": reply(500, content=f"Traceback ... Authorization: Bearer {TOKEN}".encode()),
    "404": reply(404, content=TOKEN.encode()),
    "not-json": reply(content=f"<p>{TOKEN}</p>".encode()),
    "truncated": reply(content=f'{{"product": "{TOKEN}'.encode()),
    "schema-invalid": reply(body=newer_body(burst={"used_percent": TOKEN, "reset_at": TOKEN})),
    "connect-error": raising(httpx.ConnectError),
    "read-timeout": raising(httpx.ReadTimeout),
}


@pytest.mark.anyio
@pytest.mark.parametrize("handler", FAILURES.values(), ids=FAILURES.keys())
async def test_token_never_appears_in_the_exception(handler: Handler) -> None:
    """Neither the message nor the printed traceback of any failure contains the token."""
    with pytest.raises(UpstreamError) as caught:
        await fetch(handler)
    printed = "".join(traceback.format_exception(caught.value))
    assert TOKEN not in printed
    assert TOKEN not in repr(caught.value)


# -- parse_retry_after -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("0", 0.0),
        ("2.5", 2.5),
        (" 12 ", 12.0),
        ("-3", 0.0),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("1e400", None),
        ("Wed, 32 Foo 2015 99:99:99 GMT", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),
    ],
    ids=[
        "absent",
        "empty",
        "seconds",
        "zero",
        "fraction",
        "padded",
        "negative",
        "word",
        "infinite",
        "not-a-number",
        "overflowing",
        "bad-date",
        "past-date",
        "past-date-unknown-zone",
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Seconds, HTTP-dates in the past and unreadable values are read as the RFC intends."""
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize("zone", ["GMT", "+0000", "-0000", "+0200"])
def test_parse_retry_after_future_http_date(zone: str) -> None:
    """An HTTP-date in the future gives the seconds until then, whatever zone it is written in."""
    offset = {"+0200": timedelta(hours=2)}.get(zone, timedelta(0))
    when = (utc_now() + timedelta(seconds=300) + offset).strftime("%a, %d %b %Y %H:%M:%S")
    assert parse_retry_after(f"{when} {zone}") == pytest.approx(300, abs=5)


# -- the gateway token from a file ----------------------------------------------------


def test_token_file_is_read_before_every_request(tmp_path: Path) -> None:
    """A rewritten token file is picked up by the next request, without a restart."""
    path = tmp_path / "token"
    path.write_text("first\n", encoding="utf-8")
    provider = token_from_file(path)
    assert provider() == "first"
    path.write_text("second\n", encoding="utf-8")
    assert provider() == "second"


@pytest.mark.parametrize("state", ["missing", "directory", "empty"])
def test_an_unusable_token_file_is_an_auth_error_naming_the_file(
    tmp_path: Path, state: str
) -> None:
    """No token to send is an auth error that names the file, not an internal error."""
    path = tmp_path / "token"
    if state == "directory":
        path.mkdir()
    elif state == "empty":
        path.write_text("\n", encoding="utf-8")
    with pytest.raises(UpstreamAuthError, match=str(path)):
        token_from_file(path)()


@pytest.mark.anyio
async def test_a_missing_token_file_fails_the_poll_before_any_request(tmp_path: Path) -> None:
    """Without a token nothing is sent to the gateway, and the poll fails as an auth error."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return reply(body=newer_body())(request)

    client = GatewayClient(
        BASE_URL, token_from_file(tmp_path / "absent"), transport=httpx.MockTransport(handler)
    )
    try:
        with pytest.raises(UpstreamAuthError, match="cannot read the gateway token file"):
            await client.fetch()
    finally:
        await client.aclose()
    assert requests == []
