"""
``serve --demo``: four simulated sources, so a new user sees every view move.

Two PostHog gateways (US and EU), an OpenRouter key with a limit and a
LiteLLM team budget, all answered by built-in gateway simulators started for
the relay's lifetime. Simulated activity spends fast enough that the meters
move within a few minutes.
"""

from __future__ import annotations

import secrets
from contextlib import AsyncExitStack
from typing import Final

from common.models import SourceKind
from monitor.adapters.posthog import DEFAULT_PRODUCT
from simulator import GatewaySimulator, SimulatorServer

from .settings import SourceConfig

__all__ = ["DEMO_SOURCES", "open_demo_sources"]

#: The demo's sources, in the order the views list them.
DEMO_SOURCES: Final = ("us", "eu", "router", "team")

#: Dollars an hour each simulated account spends: about a percent point a
#: minute on the US daily window, so the meters move in front of a new user.
_US_USD_PER_HOUR: Final = 60.0
_EU_USD_PER_HOUR: Final = 24.0
_KEYS_USD_PER_HOUR: Final = 12.0


async def open_demo_sources(stack: AsyncExitStack, interval: float) -> list[SourceConfig]:
    """Start the simulators (closed with ``stack``) and return the sources that poll them."""
    token = secrets.token_urlsafe(16)
    us = GatewaySimulator(token=token, activity_usd_per_hour=_US_USD_PER_HOUR)
    us.set_usage(burst_percent=37.0, sustained_percent=12.0)
    eu = GatewaySimulator(token=token, activity_usd_per_hour=_EU_USD_PER_HOUR)
    eu.set_usage(burst_percent=8.0, sustained_percent=41.0)
    # One simulator answers for both keys: OpenRouter's and LiteLLM's dialects.
    keys = GatewaySimulator(
        token=token,
        activity_usd_per_hour=_KEYS_USD_PER_HOUR,
        openrouter_limit_usd=50.0,
        openrouter_limit_reset="weekly",
        litellm_max_budget_usd=100.0,
        litellm_budget_duration="30d",
    )
    keys.set_openrouter(usage_usd=12.5, usage_daily_usd=3.1)
    keys.set_litellm(spend_usd=23.0)
    urls = {}
    for name, simulator in (("us", us), ("eu", eu), ("keys", keys)):
        urls[name] = (await stack.enter_async_context(SimulatorServer(simulator))).url

    def source(name: str, kind: SourceKind, url: str) -> SourceConfig:
        return SourceConfig(
            name=name,
            kind=kind,
            base_url=url,
            product=DEFAULT_PRODUCT,
            token=lambda: token,
            interval=interval,
        )

    return [
        source("us", "posthog", urls["us"]),
        source("eu", "posthog", urls["eu"]),
        source("router", "openrouter", urls["keys"]),
        source("team", "litellm", urls["keys"]),
    ]
