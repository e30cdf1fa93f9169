"""
``serve --demo``: four simulated sources, so a new user sees every view move.

Two PostHog gateways (US and EU), an OpenRouter key with a limit and a
LiteLLM team budget, all answered by built-in gateway simulators started for
the relay's lifetime. Simulated activity spends fast enough that the meters
move within a few minutes, and ``--demo-days`` days of simulated history are
stored at first start, so the charts and the breakdown have data at once.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Final

from common.models import SourceKind, utc_now
from monitor.adapters.posthog import DEFAULT_PRODUCT
from monitor.store import AsyncSnapshotStore
from simulator import GatewaySimulator, SimulatorServer
from simulator.history import KEY_LIMIT_USD, TEAM_BUDGET_USD, simulated_history

from .settings import SourceConfig

__all__ = ["DEMO_SOURCES", "Demo", "open_demo"]

#: The demo's sources, in the order the views list them.
DEMO_SOURCES: Final = ("us", "eu", "router", "team")

#: Dollars an hour each simulated account spends live: about a percent point
#: a minute on the US daily window, so the meters move in front of a new user.
_LIVE_USD_PER_HOUR: Final = {"us": 60.0, "eu": 24.0, "keys": 12.0}
#: ... and on average over the seeded days, a working day's pace.
_HISTORY_USD_PER_HOUR: Final = {"us": 3.0, "eu": 2.0, "router": 0.35, "team": 0.25}

logger = logging.getLogger("usage_monitor.relay")


@dataclass
class Demo:
    """The demo's simulators and the sources that poll them."""

    sources: list[SourceConfig]
    #: The simulator each source polls.
    simulators: dict[str, GatewaySimulator]

    async def seed(self, store: AsyncSnapshotStore, days: int, epoch: str | None) -> None:
        """Store ``days`` of simulated history of each source that has none yet.

        The simulators then go on from where the history ends: PostHog's
        windows start afresh (the history's windows end now), the keys'
        spend carries on.
        """
        now = utc_now()
        for source in self.sources:
            if await store.last_seq(source.name):
                continue  # only at first start
            snapshots, state = simulated_history(
                source.name,
                source.kind,
                end=now,
                days=days,
                interval=source.interval,
                usd_per_hour=_HISTORY_USD_PER_HOUR[source.name],
                epoch=epoch,
            )
            await store.append_many(snapshots)
            logger.info(
                "seeded %d simulated snapshots (%d days) of the demo source %r",
                len(snapshots),
                days,
                source.name,
            )
            simulator = self.simulators[source.name]
            if source.kind == "posthog":
                simulator.set_usage(burst_percent=0.0, sustained_percent=0.0)
            elif source.kind == "openrouter":
                simulator.set_openrouter(
                    usage_usd=state.usage,
                    usage_daily_usd=state.daily,
                    usage_weekly_usd=state.weekly,
                    usage_monthly_usd=state.monthly,
                )
            elif source.kind == "litellm":
                simulator.set_litellm(spend_usd=state.spend, budget_reset_at=state.budget_reset_at)


async def open_demo(stack: AsyncExitStack, interval: float) -> Demo:
    """Start the simulators (closed with ``stack``) and the sources that poll them."""
    token = secrets.token_urlsafe(16)
    us = GatewaySimulator(token=token, activity_usd_per_hour=_LIVE_USD_PER_HOUR["us"])
    us.set_usage(burst_percent=37.0, sustained_percent=12.0)
    eu = GatewaySimulator(token=token, activity_usd_per_hour=_LIVE_USD_PER_HOUR["eu"])
    eu.set_usage(burst_percent=8.0, sustained_percent=41.0)
    # One simulator answers for both keys: OpenRouter's and LiteLLM's dialects.
    keys = GatewaySimulator(
        token=token,
        activity_usd_per_hour=_LIVE_USD_PER_HOUR["keys"],
        openrouter_limit_usd=KEY_LIMIT_USD,
        openrouter_limit_reset="weekly",
        litellm_max_budget_usd=TEAM_BUDGET_USD,
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

    sources = [
        source("us", "posthog", urls["us"]),
        source("eu", "posthog", urls["eu"]),
        source("router", "openrouter", urls["keys"]),
        source("team", "litellm", urls["keys"]),
    ]
    return Demo(sources, {"us": us, "eu": eu, "router": keys, "team": keys})
