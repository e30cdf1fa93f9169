"""
A billing service that receives the relay's daily usage reports, served over real HTTP.

The relay POSTs one JSON report per (source, usage day) to its ``report_url``
with ``Idempotency-Key: usage-report:<source>:<usage_day>``, and sends the
same key with the same body again on every retry and re-run. ``ReportReceiver``
answers like a billing service would and records every request, so tests and
benchmarks can assert that each key was sent with one body only; it can be
steered to fail, hang or be slow. ``ReceiverServer`` serves it with uvicorn on
loopback inside the current event loop.

Answers, to ``POST`` on any path:

- 401 if a token is set and the request's bearer token is missing or wrong;
- 400 without an ``Idempotency-Key``, or with a body that is not a JSON object;
- 201 for a new key, whose body is then accepted;
- 409 for a key already accepted with the same body (the report is already there);
- 422 for a key already accepted with another body (the sender broke idempotency).

Each request is recorded once, when its outcome is known: with the status it
was answered, or with status 0 if it got no answer (it hung or was slowed,
and its client left or the server stopped first). ``in_flight`` counts the
requests that arrived and are not recorded yet, such as hung ones.

Not thread-safe: call the methods from the thread running the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.models import utc_now

from .failures import DropConnection, error, wait
from .server import LoopbackServer

__all__ = ["ReceivedRequest", "ReceiverServer", "ReportReceiver"]

#: ``status`` of a recorded request that got no answer.
NO_ANSWER = 0


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it; ``at`` is when it arrived."""

    key: str | None  # the Idempotency-Key header, None if missing or empty
    body: bytes
    status: int  # the status answered, or NO_ANSWER (0)
    at: datetime
    authorization: str | None  # the Authorization header as sent
    path: str


class ReportReceiver:
    """The billing service's state and its ASGI ``app``; see the module docstring."""

    def __init__(
        self, token: str | None = None, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        """``token``: the bearer token every request must carry (None: none needed)."""
        self.token = token
        self.requests: list[ReceivedRequest] = []
        self.accepted: dict[str, bytes] = {}  # key -> the first body accepted for it
        self.in_flight = 0
        self._clock = clock
        self._fail_status = 500
        self._fail_times: int | None = 0  # 0: not failing; None: until recover()
        self._delay = 0.0
        # asyncio (not anyio) event, so hang() can be called outside a running loop.
        self._release_gate: asyncio.Event | None = None
        self._changed: anyio.Event | None = None  # made by the first waiter, set on change
        self.app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST"])])

    # -- steering -------------------------------------------------------------

    def fail(self, status: int = 500, times: int | None = None) -> None:
        """Answer ``status`` to the next ``times`` requests (None: until ``recover()``).

        Failed requests are recorded but never accepted.
        """
        if not 400 <= status <= 599:
            raise ValueError("status must be an error status (400-599)")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        self._fail_status, self._fail_times = status, times

    def hang(self) -> None:
        """From now on requests get no answer until ``recover()`` (or the server stops)."""
        if self._release_gate is None:
            self._release_gate = asyncio.Event()

    def slow(self, seconds: float) -> None:
        """Wait this long before answering each request (0: no delay)."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self._delay = seconds

    def recover(self) -> None:
        """Back to normal: no failure, delay or hang; hung requests go on and are answered."""
        self._fail_times = 0
        self._delay = 0.0
        gate, self._release_gate = self._release_gate, None
        if gate is not None:
            gate.set()

    # -- what was received ------------------------------------------------------

    def bodies_by_key(self) -> dict[str, set[bytes]]:
        """Every body sent with each key, over all requests that carried one."""
        bodies: dict[str, set[bytes]] = {}
        for request in self.requests:
            if request.key is not None:
                bodies.setdefault(request.key, set()).add(request.body)
        return bodies

    def reports(self) -> dict[str, dict[str, Any]]:
        """Each accepted key's first body, parsed."""
        return {key: json.loads(body) for key, body in self.accepted.items()}

    async def wait_for(self, predicate: Callable[[ReportReceiver], bool]) -> None:
        """Return once ``predicate(self)`` holds; checked whenever a request arrives or ends."""
        while not predicate(self):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    # -- the endpoint -------------------------------------------------------------

    async def _receive(self, request: Request) -> Response:
        at = self._clock()
        body = await request.body()  # before any wait: wait() listens for the disconnect
        self.in_flight += 1
        self._notify()
        status = NO_ANSWER
        try:
            response = await self._answer(request, body)
            if not isinstance(response, DropConnection):
                status = response.status_code
            return response
        finally:
            self.in_flight -= 1
            self.requests.append(
                ReceivedRequest(
                    key=request.headers.get("idempotency-key") or None,
                    body=body,
                    status=status,
                    at=at,
                    authorization=request.headers.get("authorization"),
                    path=request.url.path,
                )
            )
            self._notify()

    async def _answer(self, request: Request, body: bytes) -> Response:
        """Play any failure, hang or delay, then check the token, the key and the body."""
        # The failure is taken in arrival order, before any hang or delay.
        failing = self._fail_times != 0
        if failing and self._fail_times is not None:
            self._fail_times -= 1
        gate = self._release_gate
        if gate is not None and not await wait(request, gate=gate):
            return DropConnection()
        if self._delay > 0 and not await wait(request, seconds=self._delay):
            return DropConnection()
        if failing:
            return error(self._fail_status, "server_error", "simulated billing failure")
        if not self._authorised(request):
            return error(401, "unauthorized", "missing or invalid bearer token")
        key = request.headers.get("idempotency-key")
        if not key:
            return error(400, "bad_request", "missing Idempotency-Key header")
        try:
            report = json.loads(body)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            return error(400, "bad_request", "the body is not a JSON object")
        first = self.accepted.get(key)
        if first is None:
            self.accepted[key] = body
            return JSONResponse({"key": key, "status": "accepted"}, status_code=201)
        if first == body:
            return error(409, "duplicate", "a report with this key was already received")
        return error(422, "idempotency_mismatch", "this key was received with another body")

    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.token.encode()
        )

    def _notify(self) -> None:
        """Wake every ``wait_for``; the next ones make a fresh event (no polling anywhere)."""
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()


class ReceiverServer(LoopbackServer):
    """A receiver served over HTTP: ``async with ReceiverServer(receiver) as server:``.

    Leaving the block (or ``stop()``) makes hung and slow requests drop their
    connections (recorded with status 0).
    """

    def __init__(self, receiver: ReportReceiver, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.receiver = receiver
        super().__init__(receiver.app, host=host, port=port)
