"""get_latest throughput: closed-loop requests (one in flight per connection)."""

from __future__ import annotations

from ..adapter import Adapter, Env
from ..config import Config
from ..loadctl import LoadGroup
from ..stats import Sample, percentile

NAME = "latest"


async def run(adapter: Adapter, env: Env, config: Config) -> list[Sample]:
    samples: list[Sample] = []
    server = await adapter.start(env)
    load = await LoadGroup.start(
        adapter.framing, server.url, cpus=env.load_cpus, headers=server.headers
    )
    try:
        most = max(config.latest_conns)
        connected = await load.connect(most, subscribe=False)
        if connected["subscribed"] < most:
            env.notes.append(f"{adapter.name} latest: only {connected} of {most} connected")
            return samples
        for conns in config.latest_conns:
            # a short warm-up, then the measured loop
            await load.requests("get_latest", conns=conns, duration=config.latest_warmup_s)
            result = await load.requests(
                "get_latest", conns=conns, duration=config.latest_duration_s
            )
            replies_ms = [v / 1000 for v in result["latencies_us"]]
            rate = result["ok"] / result["elapsed_s"] if result["elapsed_s"] else float("nan")
            samples += [
                Sample(NAME, "replies/s", conns, rate, "1/s"),
                Sample(NAME, "reply p50", conns, percentile(replies_ms, 50), "ms"),
                Sample(NAME, "reply p99", conns, percentile(replies_ms, 99), "ms"),
                Sample(NAME, "error replies", conns, result["errors"], ""),
            ]
    finally:
        await server.stop()
        await load.close()
    return samples
