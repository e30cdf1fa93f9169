"""
The simulated gateway: its state (two cost windows, the token, queued
failures) and its Starlette ``app``, which speaks the gateway's usage dialect
exactly (request, response, errors).

Not thread-safe: call the methods from the thread running the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from common.models import utc_now

__all__ = ["STOPPING_KEY", "Failure", "GatewaySimulator"]

BURST_WINDOW = timedelta(hours=24)
SUSTAINED_WINDOW = timedelta(days=30)

# Key under which SimulatorServer puts its "stopping" event into each request scope,
# so that requests it carries (held, timed out, slow) end when that server stops.
STOPPING_KEY = "usage_monitor.simulator.stopping"


class Failure(StrEnum):
    """What the next usage request(s) should do instead of answering normally."""

    SERVER_ERROR = "server_error"  # ``status`` (default 503) with a small JSON error body
    TIMEOUT = "timeout"  # never answer, until the client gives up or the server stops
    MALFORMED = "malformed"  # 200 with a body that is not JSON
    TRUNCATED = "truncated"  # 200 with a JSON body cut in half
    INVALID = "invalid"  # 200 with JSON that breaks the schema (``burst`` missing)
    RATE_LIMITED = "rate_limited"  # 429 with ``Retry-After: <retry_after>`` (seconds)
    UNAUTHORIZED = "unauthorized"  # 401
    DISCONNECT = "disconnect"  # drop the connection without a response


@dataclass(frozen=True)
class _Injection:
    failure: Failure
    status: int
    retry_after: float


@dataclass
class _Window:
    """One cost window; ``reset_at`` is whole seconds so both reset fields agree."""

    length: timedelta
    limit_usd: float
    reset_at: datetime
    used_usd: float = 0.0

    @property
    def used_percent(self) -> float:
        if self.limit_usd <= 0:  # the spec: a window with no limit reports 100
            return 100.0
        return round(min(100.0, self.used_usd / self.limit_usd * 100), 1)

    @property
    def exceeded(self) -> bool:
        return self.used_usd >= self.limit_usd

    def restart(self, now: datetime) -> None:
        self.used_usd = 0.0
        self.reset_at = now.replace(microsecond=0) + self.length

    def roll(self, now: datetime) -> None:
        """Start a new window (used back to 0) if the reset time has passed."""
        if now >= self.reset_at:
            self.used_usd = 0.0
            periods = (now - self.reset_at) // self.length + 1
            self.reset_at += self.length * periods

    def to_json(self, now: datetime, *, legacy: bool) -> dict[str, Any]:
        window: dict[str, Any] = {
            "used_percent": self.used_percent,
            "resets_in_seconds": max(0, int((self.reset_at - now).total_seconds())),
        }
        if not legacy:
            window["reset_at"] = self.reset_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        window["exceeded"] = self.exceeded
        return window


# Bodies of the control API; unknown fields are refused so typos do not pass silently.
class _UsageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    burst_percent: float | None = Field(default=None, ge=0)
    sustained_percent: float | None = Field(default=None, ge=0)


class _SpendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    usd: float = Field(ge=0)


class _FailureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    failure: Failure
    count: int = Field(default=1, ge=1)
    status: int = Field(default=503, ge=100, le=599)
    retry_after: float = Field(default=1.0, ge=0)


class _LatencyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0)


class _DropConnection(Response):
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


class GatewaySimulator:
    """The gateway's state and its ASGI ``app``; see the module docstring."""

    def __init__(
        self,
        *,
        token: str = "sim-token",
        product: str = "posthog_code",
        user_id: int = 1234,
        burst_limit_usd: float = 100.0,
        sustained_limit_usd: float = 1000.0,
        legacy: bool = False,
        activity_usd_per_hour: float = 0.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """``clock`` returns an aware "now"; tests pass a fake one to roll windows over."""
        if activity_usd_per_hour < 0:
            raise ValueError("activity_usd_per_hour must not be negative")
        self.product = product
        self.user_id = user_id
        self.legacy = legacy
        self.activity_usd_per_hour = activity_usd_per_hour
        self.requests_served = 0
        self._token = token
        self._clock = clock
        now = self._now()
        self._burst = _Window(BURST_WINDOW, burst_limit_usd, now)
        self._sustained = _Window(SUSTAINED_WINDOW, sustained_limit_usd, now)
        self._burst.restart(now)
        self._sustained.restart(now)
        self._accrued_at = now
        self._failures: deque[_Injection] = deque()
        self._latency = 0.0
        # asyncio (not anyio) events: they can be made outside a running loop (hold()
        # may be called from sync code) and uvicorn serves on asyncio anyway.
        self._release_gate: asyncio.Event | None = None
        self._served_event = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/usage/{product}", self._usage, methods=["GET"]),
                Route("/_sim/state", self._control_state, methods=["GET"]),
                Route("/_sim/usage", self._control_usage, methods=["POST"]),
                Route("/_sim/spend", self._control_spend, methods=["POST"]),
                Route("/_sim/failures", self._control_failures, methods=["POST"]),
                Route("/_sim/latency", self._control_latency, methods=["POST"]),
                Route("/_sim/hold", self._control_hold, methods=["POST"]),
                Route("/_sim/release", self._control_release, methods=["POST"]),
                Route("/_sim/reset", self._control_reset, methods=["POST"]),
            ],
            exception_handlers={ValidationError: _bad_request},
        )

    # -- control, from Python -------------------------------------------------

    def set_usage(
        self, *, burst_percent: float | None = None, sustained_percent: float | None = None
    ) -> None:
        """Set the used dollars so that the windows report these percents (over 100 is allowed)."""
        self._advance()
        for window, percent in ((self._burst, burst_percent), (self._sustained, sustained_percent)):
            if percent is None:
                continue
            if percent < 0:
                raise ValueError("usage percent must not be negative")
            window.used_usd = max(window.limit_usd, 0.0) * percent / 100

    def spend(self, usd: float) -> None:
        """Add spend to both windows."""
        if usd < 0:
            raise ValueError("spend must not be negative")
        self._advance()
        self._burst.used_usd += usd
        self._sustained.used_usd += usd

    def inject(
        self, failure: Failure, *, count: int = 1, status: int = 503, retry_after: float = 1.0
    ) -> None:
        """Make the next ``count`` usage requests fail this way, after any already queued.

        ``status`` applies to ``SERVER_ERROR`` (so it can also make a 500 or a 403);
        ``retry_after`` is the 429's ``Retry-After`` in seconds, fractions allowed.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        self._failures.extend([_Injection(Failure(failure), status, retry_after)] * count)

    def set_latency(self, seconds: float) -> None:
        """Delay every usage answer by this much (0 = none)."""
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._latency = seconds

    def hold(self) -> None:
        """From now on usage requests wait inside the handler until ``release()``."""
        if self._release_gate is None:
            self._release_gate = asyncio.Event()

    def release(self) -> None:
        """Let every held request go on, and stop holding new ones."""
        gate, self._release_gate = self._release_gate, None
        if gate is not None:
            gate.set()

    async def wait_for_requests(self, n: int) -> None:
        """Return once ``requests_served >= n``."""
        while self.requests_served < n:
            await self._served_event.wait()

    def set_token(self, token: str) -> None:
        self._token = token

    def reset_windows(self) -> None:
        """Start new windows now: used back to 0, new reset times."""
        now = self._now()
        self._burst.restart(now)
        self._sustained.restart(now)
        self._accrued_at = now

    def reset(self) -> None:
        """What ``POST /_sim/reset`` does: counter to 0, no failures or latency, new windows."""
        self.requests_served = 0
        self._failures.clear()
        self._latency = 0.0
        self.reset_windows()

    # -- what the gateway would say -------------------------------------------

    def usage_payload(self) -> dict[str, Any]:
        """The JSON body of a normal usage answer, as of now."""
        now = self._advance()
        burst = self._burst.to_json(now, legacy=self.legacy)
        sustained = self._sustained.to_json(now, legacy=self.legacy)
        return {
            "product": self.product,
            "user_id": self.user_id,
            "burst": burst,
            "sustained": sustained,
            "is_rate_limited": burst["exceeded"] or sustained["exceeded"],
            "billing_period_end": None,
            "is_pro": False,
            # Credits are not modelled; the field is here because the real gateway sends it.
            "ai_credits": {"exhausted": False, "used_usd": 0.0, "limit_usd": 20.0},
        }

    def state(self) -> dict[str, Any]:
        """What ``GET /_sim/state`` answers."""
        self._advance()
        return {
            "requests_served": self.requests_served,
            "burst_percent": self._burst.used_percent,
            "sustained_percent": self._sustained.used_percent,
            "burst_used_usd": self._burst.used_usd,
            "sustained_used_usd": self._sustained.used_usd,
            "pending_failures": [i.failure.value for i in self._failures],
            "latency_seconds": self._latency,
            "held": self._release_gate is not None,
        }

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def _advance(self) -> datetime:
        """Roll windows whose reset time passed, then add the simulated activity's spend."""
        now = self._now()
        self._burst.roll(now)
        self._sustained.roll(now)
        hours = max(0.0, (now - self._accrued_at).total_seconds() / 3600)
        self._accrued_at = now
        # Spend that straddled a rollover all lands in the new window: close enough here.
        self._burst.used_usd += self.activity_usd_per_hour * hours
        self._sustained.used_usd += self.activity_usd_per_hour * hours
        return now

    # -- the gateway's endpoint -------------------------------------------------

    async def _usage(self, request: Request) -> Response:
        self.requests_served += 1
        # Wake every waiter and give the next ones a fresh event (no polling anywhere).
        served, self._served_event = self._served_event, asyncio.Event()
        served.set()
        # The failure is taken in arrival order, before any hold or latency.
        injection = self._failures.popleft() if self._failures else None
        gate = self._release_gate
        if gate is not None and not await _wait(request, gate=gate):
            return _DropConnection()
        if self._latency > 0 and not await _wait(request, seconds=self._latency):
            return _DropConnection()
        # Injected failures come first: they model the infrastructure in front of auth.
        if injection is not None:
            return await _failure_response(request, injection, self.usage_payload)
        if not self._authorised(request):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        if request.path_params["product"] != self.product:
            return _error(404, "not_found", "unknown product")
        return JSONResponse(self.usage_payload())

    def _authorised(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Constant-time comparison: the simulator should not teach clients timing leaks.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token.encode()
        )

    # -- the control API ----------------------------------------------------------

    async def _control_state(self, request: Request) -> Response:
        return JSONResponse(self.state())

    async def _control_usage(self, request: Request) -> Response:
        body = _UsageBody.model_validate_json(await request.body())
        self.set_usage(burst_percent=body.burst_percent, sustained_percent=body.sustained_percent)
        return JSONResponse(self.state())

    async def _control_spend(self, request: Request) -> Response:
        self.spend(_SpendBody.model_validate_json(await request.body()).usd)
        return JSONResponse(self.state())

    async def _control_failures(self, request: Request) -> Response:
        body = _FailureBody.model_validate_json(await request.body())
        self.inject(
            body.failure, count=body.count, status=body.status, retry_after=body.retry_after
        )
        return JSONResponse(self.state())

    async def _control_latency(self, request: Request) -> Response:
        self.set_latency(_LatencyBody.model_validate_json(await request.body()).seconds)
        return JSONResponse(self.state())

    async def _control_hold(self, request: Request) -> Response:
        self.hold()
        return JSONResponse(self.state())

    async def _control_release(self, request: Request) -> Response:
        self.release()
        return JSONResponse(self.state())

    async def _control_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse(self.state())


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return JSONResponse({"error": "bad_request", "message": errors}, status_code=400)


async def _failure_response(
    request: Request, injection: _Injection, payload: Callable[[], dict[str, Any]]
) -> Response:
    match injection.failure:
        case Failure.SERVER_ERROR:
            return _error(injection.status, "server_error", "simulated gateway failure")
        case Failure.TIMEOUT:
            await _wait(request)  # only the client leaving or the server stopping ends it
            return _DropConnection()
        case Failure.MALFORMED:
            # Claims to be JSON, so a client that trusts Content-Type still has to cope.
            body = b"<html><body>502 Bad Gateway</body></html>"
            return Response(body, media_type="application/json")
        case Failure.TRUNCATED:
            full = json.dumps(payload()).encode()
            return Response(full[: len(full) // 2], media_type="application/json")
        case Failure.INVALID:
            return JSONResponse({k: v for k, v in payload().items() if k != "burst"})
        case Failure.RATE_LIMITED:
            headers = {"Retry-After": f"{injection.retry_after:g}"}
            return _error(429, "rate_limited", "too many requests", headers)
        case Failure.UNAUTHORIZED:
            return _error(401, "unauthorized", "token expired")
        case Failure.DISCONNECT:
            return _DropConnection()


async def _wait(
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
