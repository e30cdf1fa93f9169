"""
A hostile gateway for the tests: a raw HTTP server on a free loopback port.

It answers every request with the ``Answer`` the test set last, written byte
by byte as the test says, which no well-behaved server (the simulator, a
Starlette app) would do: a body of 200 MB generated chunk by chunk, a chunked
body that never ends, a body that drips one byte at a time, or JSON that is
valid but extreme. It runs in the test's own event loop, so a relay in a
child process and a ``GatewayClient`` in the test both reach it over real
sockets.

    async with HostileGateway() as gateway:
        gateway.answer = huge(200 * MB)
        ... poll gateway.url ...
        assert gateway.last.bytes_sent < 32 * MB
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

__all__ = [
    "KB",
    "MB",
    "Answer",
    "Connection",
    "HostileGateway",
    "announced_only",
    "drip",
    "endless",
    "huge",
    "raw_json",
    "stall",
    "usage_body",
    "valid",
]

KB = 1024
MB = 1024 * KB
#: What the hostile answers write at a time: one buffer, reused, never the whole body.
CHUNK = 64 * KB


def usage_body(burst_percent: float = 37.5, **extra: Any) -> dict[str, Any]:
    """A valid usage object, as a newer gateway sends it, with ``extra`` fields added."""
    return {
        "product": "posthog_code",
        "user_id": 1234,
        "burst": {"used_percent": burst_percent, "reset_at": "2099-11-22T18:00:00Z"},
        "sustained": {"used_percent": 12.0, "reset_at": "2099-12-17T12:00:00Z"},
        "is_rate_limited": False,
        **extra,
    }


@dataclass
class Connection:
    """What the server saw of one request and sent in answer."""

    request_head: bytes = b""
    bytes_sent: int = 0
    #: Set when the answer ended: written in full, or the client went away.
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Writer:
    """Writes an answer and counts its bytes; ``ConnectionError`` once the client left."""

    def __init__(self, stream: asyncio.StreamWriter, connection: Connection) -> None:
        self._stream = stream
        self._connection = connection

    async def write(self, data: bytes) -> None:
        if self._stream.is_closing():
            raise ConnectionResetError("the client went away")
        self._stream.write(data)
        self._connection.bytes_sent += len(data)
        await self._stream.drain()

    async def head(self, status: int = 200, **headers: str | int) -> None:
        lines = [f"HTTP/1.1 {status} Hostile", "Content-Type: application/json"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        await self.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def chunk(self, data: bytes) -> None:
        """One chunk of a ``Transfer-Encoding: chunked`` body."""
        await self.write(b"%x\r\n%s\r\n" % (len(data), data))


#: Writes one whole answer (status line, headers, body) to the writer.
Answer = Callable[[Writer], Awaitable[None]]


def raw_json(text: str | bytes, status: int = 200) -> Answer:
    """A body sent as given, with its Content-Length: for JSON no encoder would write."""
    body = text.encode() if isinstance(text, str) else text

    async def answer(writer: Writer) -> None:
        await writer.head(status, Content_Length=len(body))
        await writer.write(body)

    return answer


def valid(burst_percent: float = 37.5, **extra: Any) -> Answer:
    """A normal, valid usage object."""
    return raw_json(json.dumps(usage_body(burst_percent, **extra)))


def _padded() -> tuple[bytes, bytes]:
    """The JSON before and after the value of an extra ``padding`` string."""
    prefix = json.dumps(usage_body())[:-1].encode() + b', "padding": "'
    suffix = b'"}'
    return prefix, suffix


def huge(size: int, *, announce: bool = False) -> Answer:
    """A valid usage object of ``size`` bytes, padded in an extra field, written chunk by chunk.

    With ``announce`` it has a Content-Length; without, it is chunked, so only
    counting the bytes as they come can tell how large it is.
    """
    prefix, suffix = _padded()
    padding = size - len(prefix) - len(suffix)
    filler = b"x" * CHUNK

    async def answer(writer: Writer) -> None:
        if announce:
            await writer.head(Content_Length=size)
            send = writer.write
        else:
            await writer.head(Transfer_Encoding="chunked")
            send = writer.chunk
        await send(prefix)
        left = padding
        while left > 0:
            await send(filler[: min(left, CHUNK)])
            left -= CHUNK
        await send(suffix)
        if not announce:
            await writer.write(b"0\r\n\r\n")

    return answer


def endless() -> Answer:
    """A chunked body that starts like a usage object and never ends."""
    prefix, _ = _padded()
    filler = b"x" * CHUNK

    async def answer(writer: Writer) -> None:
        await writer.head(Transfer_Encoding="chunked")
        await writer.chunk(prefix)
        while True:
            await writer.chunk(filler)

    return answer


def drip(interval: float = 0.5) -> Answer:
    """A valid usage object, announced with its length, sent one byte every ``interval`` s.

    At two bytes a second its few hundred bytes take minutes: every read
    arrives well within any per-read timeout, so only a deadline on the
    whole request ends it in time.
    """
    body = json.dumps(usage_body()).encode()

    async def answer(writer: Writer) -> None:
        await writer.head(Content_Length=len(body))
        for index in range(len(body)):
            await writer.write(body[index : index + 1])
            await asyncio.sleep(interval)

    return answer


def stall() -> Answer:
    """Nothing at all, not even a status line, until the client leaves."""

    async def answer(writer: Writer) -> None:
        await asyncio.Event().wait()

    return answer


def announced_only(size: int) -> Answer:
    """Headers announcing a ``size``-byte body, then nothing at all until the client leaves."""

    async def answer(writer: Writer) -> None:
        await writer.head(Content_Length=size)
        await asyncio.Event().wait()

    return answer


class HostileGateway:
    """The server: ``answer`` is what every request gets, until the test sets another."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or valid()
        self.connections: list[Connection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def url(self) -> str:
        assert self._server is not None, "the gateway is not serving"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def last(self) -> Connection:
        """The most recent request."""
        return self.connections[-1]

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, stream: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            # One request per connection: the answer may leave it in any state.
            head = await reader.readuntil(b"\r\n\r\n")
            connection = Connection(request_head=head)
            self.connections.append(connection)
            try:
                await self.answer(Writer(stream, connection))
            finally:
                connection.done.set()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away, which is what the tests want it to do
        except asyncio.CancelledError:
            # Stopped by __aexit__: end quietly, or asyncio logs the task as an error.
            if not self._closing:
                raise
        finally:
            self._tasks.discard(task)
            stream.close()
            with contextlib.suppress(ConnectionError):
                await stream.wait_closed()
