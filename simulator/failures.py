"""
The failures the simulator plays instead of a normal answer, in any dialect.

``Failure`` names them; ``failure_response`` plays one on a request of any
dialect's endpoint; ``wait`` is how held, slow and timing-out requests wait
without outliving their client or their server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from common.models import SourceKind

__all__ = ["STOPPING_KEY", "DropConnection", "Failure", "Injection", "error", "failure_response"]

# Key under which SimulatorServer puts its "stopping" event into each request scope,
# so that requests it carries (held, timed out, slow) end when that server stops.
STOPPING_KEY = "usage_monitor.simulator.stopping"


class Failure(StrEnum):
    """What the next usage request(s) should do instead of answering normally."""

    SERVER_ERROR = "server_error"  # ``status`` (default 503) with a small JSON error body
    TIMEOUT = "timeout"  # never answer, until the client gives up or the server stops
    MALFORMED = "malformed"  # 200 with a body that is not JSON
    TRUNCATED = "truncated"  # 200 with a JSON body cut in half
    INVALID = "invalid"  # 200 with JSON that breaks the dialect (its main field missing)
    RATE_LIMITED = "rate_limited"  # 429 with ``Retry-After: <retry_after>`` (seconds)
    UNAUTHORIZED = "unauthorized"  # 401
    DISCONNECT = "disconnect"  # drop the connection without a response


@dataclass(frozen=True)
class Injection:
    """One queued failure; ``kind`` None hits whichever dialect is asked next."""

    failure: Failure
    status: int
    retry_after: float
    kind: SourceKind | None = None


class DropConnection(Response):
    """A "response" that closes the connection without sending a byte."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # ASGI has no "abort" message. uvicorn's receive() is a method of the request
        # cycle, which holds the transport; aborting it is what a crashing gateway does.
        transport = getattr(getattr(receive, "__self__", None), "transport", None)
        if not isinstance(transport, asyncio.Transport):
            # Another server (e.g. httpx.ASGITransport): an exception is its disconnect.
            raise ConnectionAbortedError("simulated disconnect")
        transport.abort()
        # Return only once uvicorn has seen the connection go, or it answers 500 for us.
        while (await receive())["type"] != "http.disconnect":
            pass


def error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    kind: SourceKind = "posthog",
) -> Response:
    """An error answer in the shape ``kind``'s gateway gives its errors."""
    body: dict[str, Any]
    match kind:
        case "posthog":
            body = {"error": code, "message": message}
        case "openrouter":
            body = {"error": {"code": status, "message": message}}
        case "litellm":
            body = {"error": {"message": message, "type": code, "param": None, "code": str(status)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def failure_response(
    request: Request,
    injection: Injection,
    *,
    kind: SourceKind,
    payload: Callable[[], dict[str, Any]],
    essential: str,
) -> Response:
    """Play ``injection`` on a request to ``kind``'s endpoint.

    ``payload`` makes the normal answer (cut in half for ``TRUNCATED``);
    ``INVALID`` sends it without its ``essential`` field.
    """
    match injection.failure:
        case Failure.SERVER_ERROR:
            return error(injection.status, "server_error", "simulated gateway failure", kind=kind)
        case Failure.TIMEOUT:
            await wait(request)  # only the client leaving or the server stopping ends it
            return DropConnection()
        case Failure.MALFORMED:
            # Claims to be JSON, so a client that trusts Content-Type still has to cope.
            body = b"<html><body>502 Bad Gateway</body></html>"
            return Response(body, media_type="application/json")
        case Failure.TRUNCATED:
            full = json.dumps(payload()).encode()
            return Response(full[: len(full) // 2], media_type="application/json")
        case Failure.INVALID:
            return JSONResponse({k: v for k, v in payload().items() if k != essential})
        case Failure.RATE_LIMITED:
            headers = {"Retry-After": f"{injection.retry_after:g}"}
            return error(429, "rate_limited", "too many requests", headers, kind=kind)
        case Failure.UNAUTHORIZED:
            return error(401, "unauthorized", "token expired", kind=kind)
        case Failure.DISCONNECT:
            return DropConnection()


async def wait(
    request: Request, *, gate: asyncio.Event | None = None, seconds: float | None = None
) -> bool:
    """Wait for ``gate`` (or forever), at most ``seconds``.

    Returns False if the client disconnected or the serving SimulatorServer began
    to stop first, so the caller drops the connection instead of answering.
    """
    gone = False
    async with anyio.create_task_group() as tg:

        async def _end_when(event: Callable[[], Any]) -> None:
            nonlocal gone
            await event()
            gone = True
            tg.cancel_scope.cancel()

        async def _disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        tg.start_soon(_end_when, _disconnected)
        stopping = request.scope.get(STOPPING_KEY)
        if isinstance(stopping, anyio.Event):
            tg.start_soon(_end_when, stopping.wait)
        with anyio.move_on_after(seconds):
            await (gate.wait() if gate is not None else anyio.sleep_forever())
        tg.cancel_scope.cancel()
    return not gone
