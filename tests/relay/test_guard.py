"""The connection guard on a live relay: deadlines, the cap on pending requests, bad handshakes."""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import websockets.http11
from anyio.abc import SocketStream

from relay import guard
from relay.server import RelayServer
from relay.settings import Settings
from tests.conftest import RelayHarness

from .wire import connect, request

pytestmark = pytest.mark.anyio

#: Short, so that a test waits for the deadline only briefly.
HEADER_TIMEOUT = 0.5


@pytest.fixture
def relay_settings(relay_settings: Settings) -> Settings:
    return relay_settings.model_copy(update={"header_timeout": HEADER_TIMEOUT})


@asynccontextmanager
async def relay_with(settings: Settings, **changes: Any) -> AsyncIterator[RelayServer]:
    async with RelayServer(settings.model_copy(update=changes)) as server:
        yield server


@asynccontextmanager
async def socket_to(url: str) -> AsyncIterator[SocketStream]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    async with await anyio.connect_tcp(parts.hostname, parts.port) as stream:
        yield stream


async def read_response(stream: SocketStream, buffer: bytearray) -> tuple[int, bytes]:
    """One HTTP response (status and body, by Content-Length) from ``stream``."""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive()
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += await stream.receive()
    buffer[:] = rest[length:]
    return int(head.split(b" ", 2)[1]), rest[:length]


async def closed_after(stream: SocketStream) -> bytes:
    """Everything the relay sends until it closes the connection."""
    received = b""
    try:
        while True:
            received += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return received


def get(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def handshake(host: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


# -- deadlines ------------------------------------------------------------------------------


async def test_half_a_request_line_is_answered_408_after_the_header_timeout(
    relay: RelayHarness,
) -> None:
    """A connection that sends part of a request and stops is closed at the deadline."""
    with anyio.fail_after(HEADER_TIMEOUT + 5):
        async with socket_to(relay.url) as stream:
            started = time.monotonic()
            await stream.send(b"GET /hea")
            answer = await closed_after(stream)
            waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT * 0.9 <= waited < HEADER_TIMEOUT + 2


async def test_a_stalled_second_request_on_a_keep_alive_connection_gets_408(
    relay: RelayHarness,
) -> None:
    """Each request of a keep-alive connection has its own deadline, from its first byte."""
    host = urlsplit(relay.url).netloc
    buffer = bytearray()
    with anyio.fail_after(HEADER_TIMEOUT + 5):
        async with socket_to(relay.url) as stream:
            await stream.send(get("/healthz", host))
            first, _ = await read_response(stream, buffer)
            await stream.send(b"GET /healthz HTTP/1.1\r\nHo")
            answer = bytes(buffer) + await closed_after(stream)
    assert first == 200
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_a_request_body_is_not_taken_for_the_next_request(relay: RelayHarness) -> None:
    """A body is skipped by its Content-Length, even one that looks like a bad handshake."""
    host = urlsplit(relay.url).netloc
    body = handshake(host, "Cookie: a=" + "x" * 9000 + "\r\n")
    post = f"POST /healthz HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    buffer = bytearray()
    with anyio.fail_after(5):
        async with socket_to(relay.url) as stream:
            await stream.send(post.encode() + body)
            posted, _ = await read_response(stream, buffer)
            await stream.send(get("/healthz", host))
            then, _ = await read_response(stream, buffer)
    assert (posted, then) == (405, 200)


async def test_a_chunked_request_gets_411(relay: RelayHarness) -> None:
    """The relay takes no request body without a Content-Length."""
    host = urlsplit(relay.url).netloc
    chunked = f"POST /healthz HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    with anyio.fail_after(5):
        async with socket_to(relay.url) as stream:
            await stream.send(chunked.encode())
            answer = await closed_after(stream)
    assert answer.startswith(b"HTTP/1.1 411 ")


# -- the cap on connections still sending a request ---------------------------------------------


async def test_over_the_cap_the_oldest_silent_connection_gets_503(
    relay_settings: Settings,
) -> None:
    """Past max_unauthenticated, the oldest silent connection is closed; the others are served."""
    with anyio.fail_after(10):
        async with relay_with(relay_settings, max_unauthenticated=2, header_timeout=10) as server:
            host = urlsplit(server.url).netloc
            async with (
                socket_to(server.url) as oldest,
                socket_to(server.url) as older,
                socket_to(server.url) as newest,
            ):
                evicted = await closed_after(oldest)
                statuses = []
                for stream in (older, newest):
                    await stream.send(get("/healthz", host))
                    statuses.append((await read_response(stream, bytearray()))[0])
    assert evicted.startswith(b"HTTP/1.1 503 ")
    assert statuses == [200, 200]


async def test_an_open_websocket_is_not_counted_as_sending_a_request(
    relay_settings: Settings,
) -> None:
    """The guard lets go of a connection once its handshake is complete.

    Three open WebSockets would be over twice a cap of one, where the oldest
    is closed at once, if they were still counted.
    """
    with anyio.fail_after(10):
        async with (
            relay_with(relay_settings, max_unauthenticated=1) as server,
            connect(server.ws_url) as first,
            connect(server.ws_url) as second,
            connect(server.ws_url) as third,
        ):
            replies = [await request(ws, "ping") for ws in (first, second, third)]
    assert [reply["ok"] for reply in replies] == [True, True, True]


# -- handshakes uvicorn would leave unanswered -------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ("Cookie: session=" + "x" * 9 * 1024 + "\r\n", 431),
        ("".join(f"X-Header-{n}: {n}\r\n" for n in range(130)), 431),
        ("Content-Length: 5\r\n", 400),
    ],
    ids=["9-KB-cookie", "130-headers", "a-body"],
)
async def test_a_handshake_websockets_cannot_parse_is_answered_at_once(
    relay: RelayHarness, extra: str, status: int
) -> None:
    """A handshake over websockets' limits gets an HTTP error, not an endless wait."""
    host = urlsplit(relay.url).netloc
    with anyio.fail_after(2):
        async with socket_to(relay.url) as stream:
            await stream.send(handshake(host, extra))
            answer = await closed_after(stream)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


async def test_a_long_cookie_within_websockets_limit_still_connects(relay: RelayHarness) -> None:
    """A Cookie line of exactly 8,192 bytes with its CRLF is still a handshake."""
    cookie = "a=" + "x" * (websockets.http11.MAX_LINE_LENGTH - len("cookie: a=\r\n"))
    with anyio.fail_after(5):
        async with connect(relay.ws_url, additional_headers={"Cookie": cookie}) as ws:
            reply = await request(ws, "ping")
    assert reply["ok"] is True


# -- when the guard cannot apply ----------------------------------------------------------------


async def test_without_what_it_needs_the_guard_leaves_uvicorn_alone(
    relay_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A websockets without the parser it uses: one line logged, and the relay serves as before."""

    def missing(self: object) -> None:
        raise AttributeError("module 'websockets.http11' has no attribute 'MAX_LINE_LENGTH'")

    monkeypatch.setattr(guard._WebSocketParser, "__init__", missing)
    with anyio.fail_after(10):
        async with relay_with(relay_settings) as server, connect(server.ws_url) as ws:
            reply = await request(ws, "ping")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert reply["ok"] is True
    assert [w for w in warnings if "connection guard does not apply" in w] == [warnings[0]]
