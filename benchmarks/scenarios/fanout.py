"""
Fan-out: N subscribers connected, a stream of updates published.

Per subscriber count: first ``paced`` updates, each published once every
subscriber has the previous one (latency without queueing, and the server's
CPU per update); then ``blast`` updates published back to back, each as soon
as the server has taken the previous one (sustained updates/s = updates /
time from the first publish to the moment every subscriber had the last).
"""

from __future__ import annotations

import asyncio

from ..adapter import Adapter, Env, Running
from ..config import Config
from ..loadctl import LoadGroup
from ..procstat import cpu_seconds
from ..stats import Sample, percentile

NAME = "fanout"
SERIAL_FANOUT = {"pubsub"}


async def _paced(
    server: Running, load: LoadGroup, n: int, updates: int, config: Config
) -> list[Sample]:
    await load.record()
    published: dict[int, int] = {}
    cpu_before = cpu_seconds(server.pid)
    load_before = sum(cpu_seconds(pid) for pid in load.pids)
    for _ in range(updates):
        seq, started = await server.publish(load)
        published[seq] = started
        # An update that never reaches everyone shows as "delivered" < 100 %.
        await load.wait_complete(seq, config.completion_timeout_s)
        await asyncio.sleep(config.fanout_gap_s)
    cpu = cpu_seconds(server.pid) - cpu_before
    load_cpu = sum(cpu_seconds(pid) for pid in load.pids) - load_before
    result = await load.latencies(published)
    latencies_ms = [v / 1000 for v in result["latencies_us"]]
    delivered = 100 * len(latencies_ms) / (n * updates)
    cpu_per_update = cpu / updates
    return [
        Sample(NAME, "latency p50", n, percentile(latencies_ms, 50), "ms"),
        Sample(NAME, "latency p99", n, percentile(latencies_ms, 99), "ms"),
        Sample(NAME, "latency max", n, max(latencies_ms, default=float("nan")), "ms"),
        Sample(NAME, "CPU per update", n, cpu_per_update * 1000, "ms"),
        Sample(NAME, "CPU per subscriber-update", n, cpu_per_update / n * 1e6, "µs"),
        Sample(NAME, "load generator CPU per update", n, load_cpu / updates * 1000, "ms"),
        Sample(NAME, "delivered", n, delivered, "%"),
        Sample(NAME, "event frame", n, result["frame_bytes"], "B"),
    ]


async def _blast(server: Running, load: LoadGroup, n: int, updates: int, config: Config) -> float:
    await load.record()
    first = last_seq = 0
    for i in range(updates):
        seq, started = await server.publish(load, change=False)
        first = started if i == 0 else first
        last_seq = seq
    done = await load.wait_complete(last_seq, config.completion_timeout_s * 2)
    if done is None:
        return float("nan")
    return updates / ((done - first) / 1e9)


async def run(adapter: Adapter, env: Env, config: Config) -> list[Sample]:
    samples: list[Sample] = []
    server = await adapter.start(env)
    load = await LoadGroup.start(
        adapter.framing, server.url, cpus=env.load_cpus, headers=server.headers
    )
    try:
        for n in config.fanout_levels:
            connected = await load.connect(n)
            if connected["subscribed"] < n:
                env.notes.append(f"{adapter.name} fanout: only {connected} of {n} subscribed")
                break
            await asyncio.sleep(config.settle_s)
            updates = config.fanout_updates[n]
            blast = config.fanout_blast[n]
            if adapter.name in SERIAL_FANOUT:
                updates = min(updates, config.slow_updates_cap)
                blast = min(blast, config.slow_updates_cap)
            samples += await _paced(server, load, n, updates, config)
            rate = await _blast(server, load, n, blast, config)
            samples.append(Sample(NAME, "updates/s sustained", n, rate, "1/s"))
            await asyncio.sleep(config.settle_s / 2)
    finally:
        await server.stop()
        await load.close()
    return samples
