"""GatewayClient against a hostile gateway: bounded in size and time, strict about numbers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from common.models import LATEST, Usage
from monitor.exceptions import UpstreamInvalidResponse, UpstreamUnavailable
from monitor.gateway import MAX_UNKNOWN_BYTES, MAX_UNKNOWN_DEPTH, GatewayClient
from tests.hostile import (
    KB,
    MB,
    Answer,
    HostileGateway,
    announced_only,
    drip,
    endless,
    huge,
    raw_json,
    usage_body,
    valid,
)

pytestmark = pytest.mark.anyio

TOKEN = "phx-TOKEN-must-never-leak-0123456789"
#: Put into every hostile value: a message that contains it echoed a value from outside.
MARKER = "XYZZY"
TOO_LARGE = "larger than 1 MiB (max_response_bytes)"


@pytest.fixture
async def gateway() -> AsyncIterator[HostileGateway]:
    async with HostileGateway() as server:
        yield server


async def fetch(gateway: HostileGateway, answer: Answer, **kwargs: Any) -> Usage:
    """The usage object ``answer`` gives through a fresh client that is closed afterwards."""
    gateway.answer = answer
    client = GatewayClient(gateway.url, lambda: TOKEN, **{"timeout": 5, **kwargs})
    try:
        reading = await client.fetch()
    finally:
        await client.aclose()
    assert isinstance(reading.usage, Usage)
    return reading.usage


async def refused(gateway: HostileGateway, answer: Answer, **kwargs: Any) -> str:
    """The message of the ``UpstreamInvalidResponse`` that ``answer`` gets; it echoes nothing."""
    with pytest.raises(UpstreamInvalidResponse) as caught:
        await fetch(gateway, answer, **kwargs)
    message = str(caught.value)
    assert MARKER not in message
    assert TOKEN not in message
    return message


def with_extra(**extra: Any) -> Answer:
    return raw_json(json.dumps(usage_body(**extra)))


def with_window(bucket: str, **fields: Any) -> Answer:
    body = usage_body()
    body[bucket].update(fields)
    return raw_json(json.dumps(body))


def nested(depth: int) -> Any:
    """A value ``depth`` lists and objects deep."""
    value: Any = MARKER
    for level in range(depth):
        value = [value] if level % 2 else {"x": value}
    return value


# -- a normal answer -----------------------------------------------------------------


async def test_a_normal_answer_is_read(gateway: HostileGateway) -> None:
    """The hostile server's valid answer gives its usage object, extra field and all."""
    with anyio.fail_after(5):
        usage = await fetch(gateway, valid(42.5, note="kept"))
    assert usage.burst.used_percent == 42.5
    assert usage.model_extra == {"note": "kept"}


async def test_the_request_asks_for_an_uncompressed_body(gateway: HostileGateway) -> None:
    """The client asks for ``identity``, so the bytes counted are the bytes kept."""
    with anyio.fail_after(5):
        await fetch(gateway, valid())
    assert b"\r\naccept-encoding: identity\r\n" in gateway.last.request_head.lower()


async def test_a_compressed_body_is_refused(gateway: HostileGateway) -> None:
    """A body compressed although not asked for is refused: it could inflate without bound."""

    async def gzipped(writer: Any) -> None:
        await writer.head(Content_Length=4, Content_Encoding="gzip")
        await writer.write(b"\x1f\x8b\x08\x00")

    with anyio.fail_after(5):
        message = await refused(gateway, gzipped)
    assert "Content-Encoding" in message


# -- size --------------------------------------------------------------------------


async def test_an_announced_huge_body_is_refused_before_it_is_read(
    gateway: HostileGateway,
) -> None:
    """A Content-Length over the cap is refused at once, without waiting for the body."""
    with anyio.fail_after(10):  # the body never comes: a client that waited for it would hang
        message = await refused(gateway, announced_only(200 * MB), timeout=60)
    assert TOO_LARGE in message


async def test_a_huge_chunked_body_is_refused_as_it_arrives(gateway: HostileGateway) -> None:
    """A 200 MB body without a length is dropped once it passes the cap, not read to its end."""
    with anyio.fail_after(10):
        message = await refused(gateway, huge(200 * MB))
        await gateway.last.done.wait()
    assert TOO_LARGE in message
    # What was sent is the cap plus what the loopback's socket buffers held.
    assert gateway.last.bytes_sent < 32 * MB


async def test_an_endless_body_is_refused_at_the_cap(gateway: HostileGateway) -> None:
    """A chunked body that never ends is an invalid response once it passes the cap."""
    with anyio.fail_after(10):
        message = await refused(gateway, endless())
    assert TOO_LARGE in message


async def test_the_cap_is_the_configured_one(gateway: HostileGateway) -> None:
    """``max_response_bytes`` sets the cap, and the message names its value."""
    with anyio.fail_after(5):
        message = await refused(gateway, huge(5 * KB), max_response_bytes=4 * KB)
        usage = await fetch(gateway, huge(4 * KB), max_response_bytes=4 * KB)
    assert "larger than 4 KiB (max_response_bytes)" in message
    assert usage.model_extra is not None and "padding" in usage.model_extra


# -- time --------------------------------------------------------------------------


async def test_a_dripping_body_fails_at_the_deadline(gateway: HostileGateway) -> None:
    """A body that drips a byte every 0.5 s fails after ``timeout`` s in all, not minutes."""
    started = time.monotonic()
    with anyio.fail_after(5), pytest.raises(UpstreamUnavailable) as caught:
        await fetch(gateway, drip(0.5), timeout=1)
    elapsed = time.monotonic() - started
    assert "timed out after 1 s (request_timeout)" in str(caught.value)
    assert 1 <= elapsed < 2.5  # a margin for busy machines; without the deadline: minutes


# -- numbers -----------------------------------------------------------------------

_NOT_NUMBERS = {
    "Infinity-percent": '"burst": {"used_percent": Infinity',
    "NaN-percent": '"burst": {"used_percent": NaN',
    "minus-Infinity-extra": '"limit": -Infinity, "burst": {"used_percent": 1',
    "NaN-nested-extra": '"credits": {"left": [1, NaN]}, "burst": {"used_percent": 1',
}


@pytest.mark.parametrize("fragment", _NOT_NUMBERS.values(), ids=_NOT_NUMBERS.keys())
async def test_json_constants_that_are_not_numbers_are_refused(
    gateway: HostileGateway, fragment: str
) -> None:
    """NaN and ±Infinity are refused wherever they are, known field or passed-through extra."""
    text = json.dumps(usage_body()).replace('"burst": {"used_percent": 37.5', fragment)
    assert fragment in text
    with anyio.fail_after(5):
        message = await refused(gateway, raw_json(text))
    assert "which is not a JSON number" in message


async def test_a_number_beyond_a_double_is_refused(gateway: HostileGateway) -> None:
    """1e400 would read as infinity, so it is refused even in a field passed through."""
    text = json.dumps(usage_body(limit=1.0)).replace('"limit": 1.0', '"limit": 1e400')
    with anyio.fail_after(5):
        message = await refused(gateway, raw_json(text))
    assert "too large for a double" in message


@pytest.mark.parametrize("value", ["50", True], ids=["string", "boolean"])
async def test_a_percentage_that_is_not_a_number_is_refused(
    gateway: HostileGateway, value: object
) -> None:
    """``"50"`` and ``true`` are not percentages; the message names the field."""
    with anyio.fail_after(5):
        message = await refused(gateway, with_window("burst", used_percent=value))
    assert "burst.used_percent" in message


async def test_a_tiny_percentage_is_kept(gateway: HostileGateway) -> None:
    """1e-300 is a finite number like any other."""
    with anyio.fail_after(5):
        usage = await fetch(gateway, with_window("burst", used_percent=1e-300))
    assert usage.burst.used_percent == 1e-300


async def test_a_reset_past_year_9999_is_clamped(gateway: HostileGateway) -> None:
    """``9999-12-31T23:59:59-14:00`` is past year 9999 in UTC: it becomes ``LATEST``."""
    with anyio.fail_after(5):
        usage = await fetch(gateway, with_window("burst", reset_at="9999-12-31T23:59:59-14:00"))
    assert usage.burst.reset_at == LATEST


async def test_text_that_is_not_unicode_is_refused(gateway: HostileGateway) -> None:
    """An escaped lone surrogate is valid JSON but could be neither stored nor relayed."""
    text = json.dumps(usage_body(note="\ud800" + MARKER))
    with anyio.fail_after(5):
        message = await refused(gateway, raw_json(text))
    assert "not valid Unicode" in message


# -- what passes through -----------------------------------------------------------


async def test_unknown_fields_within_the_bounds_pass_through(gateway: HostileGateway) -> None:
    """Extra fields just inside both bounds are kept whole."""
    deep, wide = nested(MAX_UNKNOWN_DEPTH), "x" * (MAX_UNKNOWN_BYTES - 200)
    with anyio.fail_after(5):
        usage = await fetch(gateway, with_extra(deep=deep, wide=wide))
    assert usage.model_extra == {"deep": deep, "wide": wide}


async def test_unknown_fields_over_the_size_bound_are_refused(gateway: HostileGateway) -> None:
    """Extra fields over 16 KiB together are refused, naming the one that crossed the bound."""
    half = MARKER * (MAX_UNKNOWN_BYTES // len(MARKER) // 2)
    with anyio.fail_after(5):
        message = await refused(gateway, with_extra(first=half, second=half))
    assert "more than 16 KiB of unknown fields, the last one second" in message


async def test_unknown_fields_in_a_window_count_too(gateway: HostileGateway) -> None:
    """An extra field inside a window is bounded like one at the top level."""
    padding = MARKER * (MAX_UNKNOWN_BYTES // len(MARKER))
    with anyio.fail_after(5):
        message = await refused(gateway, with_window("sustained", padding=padding))
    assert "16 KiB of unknown fields, the last one sustained.padding" in message


async def test_an_unknown_field_nested_too_deeply_is_refused(gateway: HostileGateway) -> None:
    """An extra field nested deeper than 10 levels is refused, naming the field."""
    with anyio.fail_after(5):
        message = await refused(gateway, with_extra(deep=nested(MAX_UNKNOWN_DEPTH + 1)))
    assert f"nested deeper than {MAX_UNKNOWN_DEPTH} levels: deep" in message


@pytest.mark.parametrize("name", [f"<script>{MARKER}", TOKEN, "x" * 41], ids=str)
async def test_an_odd_field_name_is_not_echoed(gateway: HostileGateway, name: str) -> None:
    """A field name with odd characters, the token in it, or too long, is not repeated."""
    with anyio.fail_after(5):
        message = await refused(gateway, with_extra(**{name: nested(MAX_UNKNOWN_DEPTH + 1)}))
    assert name not in message
    assert "unprintable name" in message


@pytest.mark.parametrize("field", ["product", "user_id"])
async def test_a_long_name_is_refused(gateway: HostileGateway, field: str) -> None:
    """``product`` and ``user_id`` are kept and relayed, so they are short."""
    with anyio.fail_after(5):
        message = await refused(gateway, with_extra(**{field: MARKER * 52}))
    assert f"{field} longer than 256 characters" in message
