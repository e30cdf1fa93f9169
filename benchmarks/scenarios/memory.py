"""Memory: the server's RSS with 0 and then N idle subscribers; KiB per subscriber."""

from __future__ import annotations

import asyncio

from ..adapter import Adapter, Env
from ..config import Config
from ..loadctl import LoadGroup
from ..procstat import rss_kib
from ..stats import Sample

NAME = "memory"


async def run(adapter: Adapter, env: Env, config: Config) -> list[Sample]:
    server = await adapter.start(env)
    load = await LoadGroup.start(
        adapter.framing, server.url, cpus=env.load_cpus, headers=server.headers
    )
    try:
        await asyncio.sleep(config.settle_s)
        base = rss_kib(server.pid)
        samples = [Sample(NAME, "RSS", 0, base / 1024, "MiB")]
        for n in config.memory_levels:
            connected = await load.connect(n)
            if connected["subscribed"] < n:
                env.notes.append(f"{adapter.name} memory: only {connected} of {n} subscribed")
                break
            await asyncio.sleep(config.settle_s * 2)
            rss = rss_kib(server.pid)
            samples.append(Sample(NAME, "RSS", n, rss / 1024, "MiB"))
            samples.append(Sample(NAME, "RSS per idle subscriber", n, (rss - base) / n, "KiB"))
    finally:
        await server.stop()
        await load.close()
    return samples
