"""Helpers for talking to the relay: authenticated clients, and a raw one built by hand."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websockets_connect

from common.tokens import read_client_token

_ids = itertools.count(1)


def auth_headers() -> dict[str, str]:
    """The bearer header with the running relay's client token."""
    token = read_client_token()
    assert token is not None, "the relay has not created its client token yet"
    return {"Authorization": f"Bearer {token}"}


def connect(uri: str, **kwargs: Any) -> websockets_connect:
    """``websockets.connect`` that authenticates like the project's own clients."""
    headers = {**auth_headers(), **dict(kwargs.pop("additional_headers", None) or {})}
    return websockets_connect(uri, additional_headers=headers, **kwargs)


async def request(ws: ClientConnection, op: str, **params: Any) -> dict[str, Any]:
    """Send one request and return its reply, skipping events that arrive first."""
    reply, _ = await request_with_events(ws, op, **params)
    return reply


async def request_with_events(
    ws: ClientConnection, op: str, **params: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send one request; return its reply and the events that arrived before it."""
    request_id = next(_ids)
    await ws.send(json.dumps({"id": request_id, "op": op, **params}))
    return await reply_with_events(ws, request_id)


async def reply_to(ws: ClientConnection, request_id: int | str | None) -> dict[str, Any]:
    reply, _ = await reply_with_events(ws, request_id)
    return reply


async def reply_with_events(
    ws: ClientConnection, request_id: int | str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events = []
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "result" and message["id"] == request_id:
            return message, events
        if message["type"] == "event":
            events.append(message)


async def next_event(ws: ClientConnection, event: str) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "event" and message["event"] == event:
            return message


async def subscribe_with_snapshot(ws: ClientConnection) -> dict[str, Any]:
    """Subscribe and return the current snapshot, waiting for the first poll if needed."""
    reply = await request(ws, "subscribe")
    latest = reply["result"]["latest"]
    if latest is None:
        latest = (await next_event(ws, "usage.updated"))["data"]
    return latest


# -- a raw client ------------------------------------------------------------------

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass(frozen=True)
class RawFrame:
    opcode: int
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode()

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class RawClient:
    """A WebSocket client over a plain socket: it does only what the test says.

    It never answers a ping and reads only when asked, so it can play a dead or
    stuck peer; it can also send frames no library would (bad UTF-8, wrong Host).
    """

    def __init__(self, sock: socket.socket, status: int, rest: bytes) -> None:
        self.sock = sock
        self.status = status
        self._buffer = bytearray(rest)
        self._loop = asyncio.get_running_loop()

    async def send(self, payload: str | bytes, opcode: int | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        if opcode is None:
            opcode = TEXT if isinstance(payload, str) else BINARY
        mask = os.urandom(4)
        length = len(data)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 2**16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))
        await self._loop.sock_sendall(self.sock, header + mask + masked)

    async def next_frame(self) -> RawFrame | None:
        """The next frame from the relay, or None once it closed the TCP connection."""
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            chunk = await self._loop.sock_recv(self.sock, 65536)
            if not chunk:
                return None
            self._buffer += chunk

    async def frames_until_eof(self) -> list[RawFrame]:
        frames = []
        while (frame := await self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def _parse(self) -> RawFrame | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None
            (length,), offset = struct.unpack("!H", buffer[2:4]), 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            (length,), offset = struct.unpack("!Q", buffer[2:10]), 10
        if len(buffer) < offset + length:
            return None
        payload = bytes(buffer[offset : offset + length])
        del buffer[: offset + length]
        return RawFrame(opcode, payload)


@asynccontextmanager
async def raw_client(
    ws_url: str,
    *,
    headers: Mapping[str, str] | None = None,
    authenticated: bool = True,
    receive_buffer: int | None = None,
) -> AsyncIterator[RawClient]:
    """Open a raw client; ``headers`` may replace Host or add Origin, Authorization..."""
    url = urlsplit(ws_url)
    assert url.hostname is not None and url.port is not None
    sock = socket.socket(socket.AF_INET6 if ":" in url.hostname else socket.AF_INET)
    if receive_buffer is not None:  # before connecting, so the window starts small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (url.hostname, url.port))
        fields = {
            "Host": url.netloc,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
            **(auth_headers() if authenticated else {}),
            **(headers or {}),
        }
        lines = [f"GET {url.path or '/'} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, f"the relay closed the connection during the handshake: {response!r}"
            response += chunk
        head, _, rest = response.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        yield RawClient(sock, status, rest)
    finally:
        sock.close()
