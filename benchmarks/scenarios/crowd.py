"""
Crowds: authenticated requests while a crowd holds sockets to the relay.

The relay runs with its open-file limit at ``crowd_open_files`` (1,024, soft
and hard: what many systems give a process), and ``crowd_clients``
authenticated clients keep one ``get_latest`` in flight each, closed loop,
for ``crowd_duration_s``, four times:

1. with no crowd (N = 0);
2. with ``crowd_idle`` idle sockets (N): the driver opens that many sockets
   to the relay, half of them silent and half with half a request line sent,
   and holds them (the issue's crowd);
3. the same, but each socket the relay closes is opened again at once, as a
   crowd that wants to keep its count would;
4. with ``crowd_unauthenticated`` WebSockets without credentials (N), each
   opened again as soon as the relay closes it (at once over their cap, or
   at the end of their grace period).

In each, ``crowd_clients`` more authenticated clients connect while the crowd
is there (how long that takes, how many fail), one of them asks for a
``refresh`` (a gateway poll, which needs an open file too), and the relay's
open files and the lines it logs are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from pathlib import Path

from websockets.asyncio.client import connect as websockets_connect

from ..adapter import Adapter, Env
from ..config import Config
from ..loadctl import LoadGroup
from ..ours import OursAdapter, OursRunning
from ..stats import Sample, percentile

NAME = "crowd"

_LOWERED = re.compile(rb"max_connections lowered from \d+ to (\d+)")


class Crowd:
    """Sockets that the driver holds open to the relay (and may open again when closed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.held = 0  # connected, and not yet closed by the relay
        self.closed = 0  # closed by the relay so far
        #: failed connects of the authenticated clients so far (the load generator adds up)
        self.client_failures = 0
        self.tasks: list[asyncio.Task[None]] = []
        self._target = 0
        self._reached = asyncio.Event()

    def start_idle(self, count: int, *, reopen: bool) -> None:
        self.tasks += [
            asyncio.create_task(self._idle(partial=n % 2 == 1, reopen=reopen)) for n in range(count)
        ]

    def start_unauthenticated(self, count: int) -> None:
        url = f"ws://127.0.0.1:{self.port}/ws"
        self.tasks += [asyncio.create_task(self._unauthenticated(url)) for _ in range(count)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    async def wait_held(self, count: int, within: float) -> None:
        """Until the crowd holds ``count`` sockets at once, or ``within`` seconds passed."""
        self._target = count
        self._reached.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reached.wait(), within)

    def _connected(self) -> None:
        self.held += 1
        if self.held >= self._target:
            self._reached.set()

    async def _idle(self, *, partial: bool, reopen: bool) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self._connected()
            try:
                if partial:
                    writer.write(b"GET /heal")
                await reader.read()  # until the relay closes it
            except OSError:
                pass
            finally:
                self.held -= 1
                self.closed += 1
                if reopen:
                    writer.close()
            if not reopen:
                try:  # the socket stays open on this side, as a crowd that just holds it
                    await asyncio.Event().wait()
                finally:
                    writer.close()

    async def _unauthenticated(self, url: str) -> None:
        while True:
            try:
                async with websockets_connect(url, compression=None, open_timeout=30) as ws:
                    self._connected()
                    try:
                        await ws.wait_closed()
                    finally:
                        self.held -= 1
                        self.closed += 1
            except (OSError, TimeoutError, Exception):
                await asyncio.sleep(0)


def _open_files(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


def _log_lines(server: OursRunning) -> int:
    if server.log is None or not server.log.exists():
        return 0
    return server.log.read_bytes().count(b"\n")


async def _phase(
    label: str,
    n: int,
    server: OursRunning,
    load: LoadGroup,
    crowd: Crowd,
    config: Config,
) -> list[Sample]:
    """Connect more clients, then measure the closed loop; with whatever crowd is running."""
    scenario = f"{NAME} ({label})"
    lines_before = _log_lines(server)
    closed_before = crowd.closed
    connected = await load.connect(load.subscribed + config.crowd_clients, subscribe=False)
    failed, crowd.client_failures = connected["failed"] - crowd.client_failures, connected["failed"]
    result = await load.requests(
        "get_latest", conns=config.crowd_clients, duration=config.crowd_duration_s
    )
    elapsed = result["elapsed_s"] or config.crowd_duration_s
    held, open_files = crowd.held, _open_files(server.pid)
    polled = time.monotonic()
    try:  # a refresh: one gateway poll, which needs an open file of its own
        await load.trigger("refresh", within=30)
        poll_failed = 0
    except RuntimeError:
        poll_failed = 1
    poll_ms = (time.monotonic() - polled) * 1e3
    await asyncio.sleep(0.2)  # the log is written by another process
    replies_ms = [v / 1000 for v in result["latencies_us"]]
    return [
        Sample(scenario, "authenticated reply p50", n, percentile(replies_ms, 50), "ms"),
        Sample(scenario, "authenticated reply p99", n, percentile(replies_ms, 99), "ms"),
        Sample(scenario, "authenticated reply max", n, max(replies_ms, default=math.nan), "ms"),
        Sample(scenario, "authenticated replies/s", n, result["ok"] / elapsed, "1/s"),
        Sample(scenario, "failed replies", n, result["errors"] + result["missing"], ""),
        Sample(scenario, "refresh (a gateway poll) failed", n, poll_failed, ""),
        Sample(scenario, "refresh (a gateway poll) took", n, poll_ms, "ms"),
        Sample(scenario, "new authenticated connects failed", n, failed, ""),
        Sample(scenario, "new authenticated connects took", n, connected["elapsed_s"] * 1e3, "ms"),
        Sample(scenario, "sockets the crowd held", n, held, ""),
        Sample(
            scenario,
            "crowd sockets closed by the relay",
            n,
            (crowd.closed - closed_before) / elapsed,
            "1/s",
        ),
        Sample(scenario, "relay open files", n, open_files, ""),
        Sample(scenario, "relay log lines", n, _log_lines(server) - lines_before, ""),
    ]


async def run(adapter: Adapter, env: Env, config: Config) -> list[Sample]:
    if not isinstance(adapter, OursAdapter):
        return []
    server = await adapter.start(env, open_files=config.crowd_open_files)
    load = await LoadGroup.start(
        adapter.framing, server.url, cpus=env.load_cpus, headers=server.headers
    )
    crowd = Crowd(server.port)
    samples = [Sample(NAME, "relay open-file limit", None, config.crowd_open_files, "")]
    try:
        assert server.log is not None
        if match := _LOWERED.search(server.log.read_bytes()):
            samples.append(Sample(NAME, "relay max_connections", None, int(match.group(1)), ""))
        await load.connect(config.crowd_clients, subscribe=False)
        await load.requests(
            "get_latest", conns=config.crowd_clients, duration=config.latest_warmup_s
        )
        samples += await _phase("none", 0, server, load, crowd, config)

        crowd.start_idle(config.crowd_idle, reopen=False)
        await crowd.wait_held(config.crowd_idle, within=10)
        await asyncio.sleep(config.settle_s)
        samples += await _phase("idle sockets", config.crowd_idle, server, load, crowd, config)
        await crowd.stop()

        crowd.start_idle(config.crowd_idle, reopen=True)
        await crowd.wait_held(config.crowd_idle, within=10)
        await asyncio.sleep(config.settle_s)
        samples += await _phase(
            "idle sockets, reopened", config.crowd_idle, server, load, crowd, config
        )
        await crowd.stop()

        crowd.start_unauthenticated(config.crowd_unauthenticated)
        await crowd.wait_held(config.crowd_unauthenticated // 2, within=10)
        await asyncio.sleep(config.settle_s)
        samples += await _phase(
            "unauthenticated WebSockets", config.crowd_unauthenticated, server, load, crowd, config
        )
    finally:
        with contextlib.suppress(Exception):
            await crowd.stop()
        await server.stop()
        await load.close()
    return samples
