"""
The simulated gateway: its accounts (one per dialect), the token, queued
failures, and its Starlette ``app``, which speaks three dialects exactly
(request, response, errors):

- PostHog: ``GET /v1/usage/{product}``, two cost windows;
- OpenRouter: ``GET /api/v1/key``, a key's credit limit and its spend;
- LiteLLM: ``GET /key/info``, a virtual key's spend and budget.

Every dialect's endpoint takes the same bearer token, counts in
``requests_served``, and plays the same queued failures, latency and hold.
The simulated activity adds its spend to every account.

Not thread-safe: call the methods from the thread running the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.models import KINDS, SourceKind, utc_now

from .accounts import (
    DURATION_PATTERN,
    LimitReset,
    LiteLLMKey,
    OpenRouterKey,
    Window,
)
from .failures import (
    STOPPING_KEY,
    DropConnection,
    Failure,
    Injection,
    error,
    failure_response,
    wait,
)

__all__ = ["KEEP", "STOPPING_KEY", "Failure", "GatewaySimulator", "LimitReset"]

BURST_WINDOW = timedelta(hours=24)
SUSTAINED_WINDOW = timedelta(days=30)


class _Keep(Enum):
    KEEP = "keep"


#: "Leave as it is", for settings where None means something (no limit, no reset).
KEEP: Final = _Keep.KEEP
_Keepable = Literal[_Keep.KEEP]

#: The field each dialect's answer cannot do without: ``Failure.INVALID`` leaves it out.
_ESSENTIAL: Final[dict[SourceKind, str]] = {
    "posthog": "burst",
    "openrouter": "data",
    "litellm": "info",
}


# Bodies of the control API; unknown fields are refused so typos do not pass silently.
class _UsageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    burst_percent: float | None = Field(default=None, ge=0)
    sustained_percent: float | None = Field(default=None, ge=0)


class _SpendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    usd: float = Field(ge=0)
    kind: SourceKind | None = None


class _FailureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    failure: Failure
    count: int = Field(default=1, ge=1)
    status: int = Field(default=503, ge=100, le=599)
    retry_after: float = Field(default=1.0, ge=0)
    kind: SourceKind | None = None


class _LatencyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0)


class _OpenRouterBody(BaseModel):
    """A field left out is left as it is; ``null`` for ``limit_usd`` or ``limit_reset`` is none."""

    model_config = ConfigDict(extra="forbid")
    limit_usd: float | None = Field(default=None, ge=0)
    limit_reset: LimitReset | None = None
    usage_usd: float | None = Field(default=None, ge=0)
    usage_daily_usd: float | None = Field(default=None, ge=0)
    usage_weekly_usd: float | None = Field(default=None, ge=0)
    usage_monthly_usd: float | None = Field(default=None, ge=0)


class _LiteLLMBody(BaseModel):
    """A field left out is left as it is; ``null`` for the budget or its reset is none."""

    model_config = ConfigDict(extra="forbid")
    spend_usd: float | None = Field(default=None, ge=0)
    max_budget_usd: float | None = Field(default=None, ge=0)
    budget_duration: str | None = Field(default=None, pattern=DURATION_PATTERN)
    budget_reset_at: AwareDatetime | None = None


def _given(body: BaseModel, field: str) -> Any:
    """The field's value if the body set it, else ``KEEP``."""
    return getattr(body, field) if field in body.model_fields_set else KEEP


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
        openrouter_limit_usd: float | None = 100.0,
        openrouter_limit_reset: LimitReset | None = "monthly",
        litellm_max_budget_usd: float | None = 100.0,
        litellm_budget_duration: str | None = "30d",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """``clock`` returns an aware "now"; tests pass a fake one to roll periods over."""
        if activity_usd_per_hour < 0:
            raise ValueError("activity_usd_per_hour must not be negative")
        self.product = product
        self.user_id = user_id
        self.legacy = legacy
        self.activity_usd_per_hour = activity_usd_per_hour
        self.requests_served = 0
        self.requests_by_kind: dict[SourceKind, int] = dict.fromkeys(KINDS, 0)
        self._token = token
        self._clock = clock
        now = self._now()
        self._created_at = now.replace(microsecond=0)
        self._burst = Window(BURST_WINDOW, burst_limit_usd, now)
        self._sustained = Window(SUSTAINED_WINDOW, sustained_limit_usd, now)
        self._openrouter = OpenRouterKey(openrouter_limit_usd, openrouter_limit_reset, now)
        self._litellm = LiteLLMKey(litellm_max_budget_usd, None, None)
        self._litellm.set_duration(litellm_budget_duration, now)
        self._burst.restart(now)
        self._sustained.restart(now)
        self._accrued_at = now
        self._failures: deque[Injection] = deque()
        self._latency = 0.0
        # asyncio (not anyio) events: they can be made outside a running loop (hold()
        # may be called from sync code) and uvicorn serves on asyncio anyway.
        self._release_gate: asyncio.Event | None = None
        self._served_event = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/usage/{product}", self._posthog, methods=["GET"]),
                Route("/api/v1/key", self._openrouter_key, methods=["GET"]),
                Route("/key/info", self._litellm_key_info, methods=["GET"]),
                Route("/_sim/state", self._control_state, methods=["GET"]),
                Route("/_sim/usage", self._control_usage, methods=["POST"]),
                Route("/_sim/spend", self._control_spend, methods=["POST"]),
                Route("/_sim/openrouter", self._control_openrouter, methods=["POST"]),
                Route("/_sim/litellm", self._control_litellm, methods=["POST"]),
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
        """Set PostHog's used dollars so the windows report these percents (over 100 allowed)."""
        self._advance()
        for window, percent in ((self._burst, burst_percent), (self._sustained, sustained_percent)):
            if percent is None:
                continue
            if percent < 0:
                raise ValueError("usage percent must not be negative")
            window.used_usd = max(window.limit_usd, 0.0) * percent / 100

    def spend(self, usd: float, *, kind: SourceKind | None = None) -> None:
        """Add spend to ``kind``'s account (both PostHog windows), or to every account."""
        if usd < 0:
            raise ValueError("spend must not be negative")
        self._advance()
        self._add(usd, kind)

    def set_openrouter(
        self,
        *,
        limit_usd: float | _Keepable | None = KEEP,
        limit_reset: LimitReset | _Keepable | None = KEEP,
        usage_usd: float | None = None,
        usage_daily_usd: float | None = None,
        usage_weekly_usd: float | None = None,
        usage_monthly_usd: float | None = None,
    ) -> None:
        """Set the OpenRouter key: its limit (None: none), when it resets (None: never), spend.

        ``usage_usd`` is the key's spend in all and, unless given on their own,
        today's, this week's and this month's too (as if all of it were today's).
        """
        self._advance()
        key = self._openrouter
        amounts = (usage_usd, usage_daily_usd, usage_weekly_usd, usage_monthly_usd)
        if any(amount is not None and amount < 0 for amount in amounts):
            raise ValueError("usage must not be negative")
        if limit_usd is not KEEP:
            if limit_usd is not None and limit_usd < 0:
                raise ValueError("limit_usd must not be negative")
            key.limit_usd = limit_usd
        if limit_reset is not KEEP:
            key.limit_reset = limit_reset
        if usage_usd is not None:
            key.usage = key.usage_daily = key.usage_weekly = key.usage_monthly = usage_usd
        for field, amount in zip(
            ("usage_daily", "usage_weekly", "usage_monthly"), amounts[1:], strict=True
        ):
            if amount is not None:
                setattr(key, field, amount)

    def set_litellm(
        self,
        *,
        spend_usd: float | None = None,
        max_budget_usd: float | _Keepable | None = KEEP,
        budget_duration: str | _Keepable | None = KEEP,
        budget_reset_at: datetime | _Keepable | None = KEEP,
    ) -> None:
        """Set the LiteLLM key: its spend, its budget (None: none) and its reset.

        A new ``budget_duration`` (``"30d"``, None: never resets) starts its
        first period now, unless ``budget_reset_at`` (aware) says when it ends.
        """
        self._advance()
        key = self._litellm
        if spend_usd is not None:
            if spend_usd < 0:
                raise ValueError("spend must not be negative")
            key.spend = spend_usd
        if max_budget_usd is not KEEP:
            if max_budget_usd is not None and max_budget_usd < 0:
                raise ValueError("max_budget_usd must not be negative")
            key.max_budget_usd = max_budget_usd
        if budget_duration is not KEEP:
            key.set_duration(budget_duration, self._now())
        if budget_reset_at is not KEEP:
            if budget_reset_at is not None and budget_reset_at.tzinfo is None:
                raise ValueError("budget_reset_at must be an aware datetime")
            key.budget_reset_at = budget_reset_at.astimezone(UTC) if budget_reset_at else None

    def inject(
        self,
        failure: Failure,
        *,
        count: int = 1,
        status: int = 503,
        retry_after: float = 1.0,
        kind: SourceKind | None = None,
    ) -> None:
        """Make the next ``count`` usage requests fail this way, after any already queued.

        ``status`` applies to ``SERVER_ERROR`` (so it can also make a 500 or a 403);
        ``retry_after`` is the 429's ``Retry-After`` in seconds, fractions allowed.
        ``kind`` keeps the failures for that dialect's endpoint; None: any dialect's.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        injection = Injection(Failure(failure), status, retry_after, kind)
        self._failures.extend([injection] * count)

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
        """Start every account afresh now: spend back to 0, periods counted from now."""
        now = self._now()
        self._burst.restart(now)
        self._sustained.restart(now)
        self._openrouter.restart(now)
        self._litellm.restart(now)
        self._accrued_at = now

    def reset(self) -> None:
        """What ``POST /_sim/reset`` does: counters to 0, no failures or latency, new windows."""
        self.requests_served = 0
        self.requests_by_kind = dict.fromkeys(KINDS, 0)
        self._failures.clear()
        self._latency = 0.0
        self.reset_windows()

    # -- what the gateway would say -------------------------------------------

    def usage_payload(self) -> dict[str, Any]:
        """The JSON body of a normal PostHog usage answer, as of now."""
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

    def openrouter_payload(self) -> dict[str, Any]:
        """The JSON body of a normal OpenRouter ``/api/v1/key`` answer, as of now."""
        self._advance()
        return self._openrouter.to_json(self._token)

    def litellm_payload(self) -> dict[str, Any]:
        """The JSON body of a normal LiteLLM ``/key/info`` answer, as of now."""
        self._advance()
        return self._litellm.to_json(self._token, self._created_at)

    def state(self) -> dict[str, Any]:
        """What ``GET /_sim/state`` answers."""
        self._advance()
        return {
            "requests_served": self.requests_served,
            "requests_by_kind": dict(self.requests_by_kind),
            "burst_percent": self._burst.used_percent,
            "sustained_percent": self._sustained.used_percent,
            "burst_used_usd": self._burst.used_usd,
            "sustained_used_usd": self._sustained.used_usd,
            "openrouter": self._openrouter.state(),
            "litellm": self._litellm.state(),
            "pending_failures": [i.failure.value for i in self._failures],
            "latency_seconds": self._latency,
            "held": self._release_gate is not None,
        }

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def _add(self, usd: float, kind: SourceKind | None) -> None:
        if kind in (None, "posthog"):
            self._burst.used_usd += usd
            self._sustained.used_usd += usd
        if kind in (None, "openrouter"):
            self._openrouter.add(usd)
        if kind in (None, "litellm"):
            self._litellm.spend += usd

    def _advance(self) -> datetime:
        """Roll periods whose end passed, then add the simulated activity's spend."""
        now = self._now()
        self._burst.roll(now)
        self._sustained.roll(now)
        self._openrouter.roll(now)
        self._litellm.roll(now)
        hours = max(0.0, (now - self._accrued_at).total_seconds() / 3600)
        self._accrued_at = now
        # Spend that straddled a rollover all lands in the new period: close enough here.
        if hours and self.activity_usd_per_hour:
            self._add(self.activity_usd_per_hour * hours, None)
        return now

    # -- the gateway's endpoints ------------------------------------------------

    async def _posthog(self, request: Request) -> Response:
        def answer() -> Response:
            if request.path_params["product"] != self.product:
                return error(404, "not_found", "unknown product")
            return JSONResponse(self.usage_payload())

        return await self._serve(request, "posthog", self.usage_payload, answer)

    async def _openrouter_key(self, request: Request) -> Response:
        payload = self.openrouter_payload
        return await self._serve(request, "openrouter", payload, lambda: JSONResponse(payload()))

    async def _litellm_key_info(self, request: Request) -> Response:
        payload = self.litellm_payload
        return await self._serve(request, "litellm", payload, lambda: JSONResponse(payload()))

    async def _serve(
        self,
        request: Request,
        kind: SourceKind,
        payload: Callable[[], dict[str, Any]],
        answer: Callable[[], Response],
    ) -> Response:
        """Count the request, play any failure, hold or latency, check the token, then answer."""
        self.requests_served += 1
        self.requests_by_kind[kind] += 1
        # Wake every waiter and give the next ones a fresh event (no polling anywhere).
        served, self._served_event = self._served_event, asyncio.Event()
        served.set()
        # The failure is taken in arrival order, before any hold or latency.
        injection = self._take_failure(kind)
        gate = self._release_gate
        if gate is not None and not await wait(request, gate=gate):
            return DropConnection()
        if self._latency > 0 and not await wait(request, seconds=self._latency):
            return DropConnection()
        # Injected failures come first: they model the infrastructure in front of auth.
        if injection is not None:
            return await failure_response(
                request, injection, kind=kind, payload=payload, essential=_ESSENTIAL[kind]
            )
        if not self._authorised(request):
            return error(401, "unauthorized", "missing or invalid bearer token", kind=kind)
        return answer()

    def _take_failure(self, kind: SourceKind) -> Injection | None:
        """The first queued failure for this dialect (or for any), taken off the queue."""
        for index, injection in enumerate(self._failures):
            if injection.kind in (None, kind):
                del self._failures[index]
                return injection
        return None

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
        body = _SpendBody.model_validate_json(await request.body())
        self.spend(body.usd, kind=body.kind)
        return JSONResponse(self.state())

    async def _control_openrouter(self, request: Request) -> Response:
        body = _OpenRouterBody.model_validate_json(await request.body())
        self.set_openrouter(
            limit_usd=_given(body, "limit_usd"),
            limit_reset=_given(body, "limit_reset"),
            usage_usd=body.usage_usd,
            usage_daily_usd=body.usage_daily_usd,
            usage_weekly_usd=body.usage_weekly_usd,
            usage_monthly_usd=body.usage_monthly_usd,
        )
        return JSONResponse(self.state())

    async def _control_litellm(self, request: Request) -> Response:
        body = _LiteLLMBody.model_validate_json(await request.body())
        self.set_litellm(
            spend_usd=body.spend_usd,
            max_budget_usd=_given(body, "max_budget_usd"),
            budget_duration=_given(body, "budget_duration"),
            budget_reset_at=_given(body, "budget_reset_at"),
        )
        return JSONResponse(self.state())

    async def _control_failures(self, request: Request) -> Response:
        body = _FailureBody.model_validate_json(await request.body())
        self.inject(
            body.failure,
            count=body.count,
            status=body.status,
            retry_after=body.retry_after,
            kind=body.kind,
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


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return JSONResponse({"error": "bad_request", "message": errors}, status_code=400)
