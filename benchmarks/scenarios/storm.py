"""
Refresh storm: N subscribed clients send ``refresh`` at once.

Reports how many requests reached the gateway simulator for the whole storm
(the relay must make one) and each client's reply time, counted from its own
send. The simulator is given a WAN-like latency for the storm
(``storm_upstream_latency_s``), and the upstream round trip is measured with
direct requests just before. One refresh before the storm warms the path.
"""

from __future__ import annotations

import asyncio
import math

from ..adapter import Adapter, Env
from ..config import Config
from ..loadctl import LoadGroup
from ..stats import Sample, percentile

NAME = "storm"


async def run(adapter: Adapter, env: Env, config: Config) -> list[Sample]:
    samples: list[Sample] = []
    upstream = env.upstream
    if upstream is None:
        env.notes.append("storm: no gateway simulator, skipped")
        return samples
    server = await adapter.start(env)
    load = await LoadGroup.start(
        adapter.framing, server.url, cpus=env.load_cpus, headers=server.headers
    )
    try:
        for n in config.storm_levels:
            connected = await load.connect(n)
            if connected["subscribed"] < n:
                env.notes.append(f"{adapter.name} storm: only {connected} of {n} subscribed")
                break
            await load.trigger("refresh")
            await asyncio.sleep(config.settle_s)
            await upstream.set_latency(config.storm_upstream_latency_s)
            try:
                rtt = await upstream.round_trip_ms()
                before = await upstream.requests_served()
                result = await load.requests("refresh", within=config.completion_timeout_s)
                await asyncio.sleep(0.5)
                after = await upstream.requests_served()
            finally:
                await upstream.set_latency(0)
            replies_ms = [v / 1000 for v in result["latencies_us"]]
            samples += [
                Sample(NAME, "upstream requests", n, after - before, ""),
                Sample(NAME, "reply p50", n, percentile(replies_ms, 50), "ms"),
                Sample(NAME, "reply p99", n, percentile(replies_ms, 99), "ms"),
                Sample(NAME, "reply max", n, max(replies_ms, default=math.nan), "ms"),
                Sample(NAME, "failed replies", n, result["errors"] + result["missing"], ""),
                Sample(NAME, "upstream round trip", n, rtt, "ms"),
                Sample(NAME, "send spread", n, result["send_spread_us"] / 1000, "ms"),
            ]
    finally:
        await server.stop()
        await load.close()
    return samples
