"""
Upstream load: gateway requests per hour for W windows, through the relay
versus each window polling the gateway itself every 30 s.

Time is compressed: both sides poll every ``upstream_interval_s`` (say 0.5 s)
instead of every 30 s, for ``upstream_duration_s`` seconds, and the gateway
simulator counts the requests. With the compression factor
c = 30 s / interval, a run of D seconds stands for c * D seconds of real
time, so requests/hour = counted * 3600 / (c * D). The relay is started with
``--interval`` set to the shortened interval; the direct windows each start
at a random phase, as windows opened at different times would.
"""

from __future__ import annotations

import asyncio
import random
from time import monotonic

import httpx

from ..adapter import Adapter, Env
from ..config import Config
from ..gateway import TOKEN, Upstream
from ..loadctl import LoadGroup
from ..stats import Sample

NAME = "upstream"


def _per_hour(count: int, elapsed: float, config: Config) -> float:
    compression = config.upstream_real_interval_s / config.upstream_interval_s
    return count * 3600 / (compression * elapsed)


async def _through_relay(
    adapter: Adapter, env: Env, upstream: Upstream, config: Config
) -> list[Sample]:
    samples = []
    server = await adapter.start(env, interval=config.upstream_interval_s)
    load = await LoadGroup.start(
        adapter.framing, server.url, cpus=env.load_cpus, headers=server.headers
    )
    try:
        for windows in config.upstream_windows:
            await load.connect(windows)
            before, started = await upstream.requests_served(), monotonic()
            await asyncio.sleep(config.upstream_duration_s)
            count, elapsed = await upstream.requests_served() - before, monotonic() - started
            rate = _per_hour(count, elapsed, config)
            samples.append(Sample(NAME, "gateway requests/h via relay", windows, rate, "1/h"))
    finally:
        await server.stop()
        await load.close()
    return samples


async def _direct(upstream: Upstream, windows: int, config: Config) -> tuple[int, float]:
    interval = config.upstream_interval_s
    limits = httpx.Limits(max_connections=windows, max_keepalive_connections=windows)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=upstream.url, limits=limits, timeout=10) as http:

        async def window(stop_at: float) -> None:
            await asyncio.sleep(random.uniform(0, interval))
            while (now := monotonic()) < stop_at:
                await http.get("/v1/usage/posthog_code", headers=headers)
                await asyncio.sleep(max(0.0, interval - (monotonic() - now)))

        before = await upstream.requests_served()
        stop_at = monotonic() + config.upstream_duration_s
        await asyncio.gather(*(window(stop_at) for _ in range(windows)))
        # Windows send nothing after stop_at: the counted span is the duration itself.
        return await upstream.requests_served() - before, config.upstream_duration_s


async def run(adapter: Adapter, env: Env, config: Config) -> list[Sample]:
    upstream = env.upstream
    if upstream is None:
        env.notes.append("upstream: no gateway simulator, skipped")
        return []
    samples = await _through_relay(adapter, env, upstream, config)
    for windows in config.upstream_windows:
        count, elapsed = await _direct(upstream, windows, config)
        rate = _per_hour(count, elapsed, config)
        samples.append(Sample(NAME, "gateway requests/h, windows polling", windows, rate, "1/h"))
    return samples
