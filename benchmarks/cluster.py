"""
A team relay on Redis: ``python -m benchmarks.cluster [--quick]``.

Compares, on one machine, three deployments serving the same ``--subscribers``
(10,000) WebSocket clients of the default topic, each polling the gateway
simulator (``python -m simulator``) every ``--interval`` seconds:

- **alone**: one relay without Redis (the single process of every other
  benchmark);
- **cluster of 1**: one relay with ``--redis-url``, to isolate what Redis adds;
- **cluster of N**: ``--relays`` (4) relays on one Redis, the subscribers
  spread evenly over them.

Each deployment gets a fresh ``redis-server`` on a free loopback port (no
persistence) and relays of its own (``python -m relay`` through
``benchmarks.history.launch_relay``: its own port, client token, database and
log each). The clients are ``--relays`` load generator processes
(``benchmarks.loadgen``) in every deployment, one share of the subscribers
each, connected one after the other; so only the relays' side differs. All
relays are pinned to the first core; Redis, the simulator, the load
generators and this driver share the others, as in the other benchmarks.

Updates are the relays' own scheduled polls, not refreshes: in a cluster
only the holder of the source's lease polls, and every relay fans out what
comes through Redis. The driver keeps one subscribed connection of its own
to each relay (an observer) that notes every update's ``seq`` and
``fetched_at`` (the moment the poll's answer came). Per deployment:

1. a window of ``--idle-seconds`` with no subscribers: each relay's CPU per
   update (user + sys from ``/proc``), its fixed cost;
2. the subscribers connect; a window of ``--seconds``: per relay the CPU per
   update and per subscriber-update, its RSS and role (``/healthz``
   ``polling``); Redis's and the load generators' CPU per update; delivery
   latency from ``fetched_at`` to each receipt (p50, p99, max: the load
   generators' clock is CLOCK_MONOTONIC, ``fetched_at`` is converted to it) and
   per update to the last subscriber of all; the share delivered (every
   subscriber must receive every ``seq`` any observer saw) and whether the
   observers of all relays saw the same ``seq`` set; upstream requests per
   hour (the simulator's ``requests_served`` over the window);
3. cluster of N only, **failover**, ``--failovers`` times in a row (default
   N - 1): half an interval after an update, the relay that holds the lease
   is killed with SIGKILL; the time until every subscriber of the surviving
   relays has the first update with a new ``seq``, the gap that leaves in the
   stream (``fetched_at`` to ``fetched_at``), the new holder and its lease
   number (from its log), and whether the survivors' subscribers kept their
   connections and received the first new update and ``--after-failover``
   more.

Windows start and end half an interval after an update, so each holds whole
updates. Repeated ``--runs`` times; each cell is the median of the runs with
(min..max). Prints Markdown tables; ``--output`` writes every figure as JSON.
Nothing else is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import WebSocketException

from .config import fill_sizes
from .gateway import TOKEN, Upstream
from .history import Relay, launch_relay
from .loadctl import LoadGroup
from .procs import free_port, log_tail, pinned, stop_process, wait_for_port
from .procstat import cpu_seconds, raise_nofile_limit, rss_kib
from .session import run_session
from .stats import percentile

__all__ = ["main"]

#: The relay's one source when started with ``--gateway-url``.
SOURCE = "default"
_TAKEN = re.compile(r"polling source 'default' for the cluster \(lease (\d+)\)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROS = timedelta(microseconds=1)
#: How long an update may take to reach every subscriber before it counts as undelivered.
UPDATE_TIMEOUT_S = 10.0
#: Connections a relay accepts beyond its share of subscribers (the observer, checks).
SPARE_CONNECTIONS = 64


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _epoch_ns(text: str) -> int:
    """An ISO 8601 time (``fetched_at``) as nanoseconds since the Unix epoch."""
    return (datetime.fromisoformat(text) - _EPOCH) // _MICROS * 1000


# -- Redis ----------------------------------------------------------------------------------


class Redis:
    """``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log = log_path
        self.url = f"redis://127.0.0.1:{port}/0"

    @staticmethod
    def unavailable() -> str | None:
        return None if shutil.which("redis-server") else "redis-server is not installed"

    @classmethod
    async def start(cls, workdir: Path, cpus: set[int] | None) -> Redis:
        port = free_port()
        log_path = workdir / "redis.log"
        with log_path.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                preexec_fn=pinned(cpus),
            )
        try:
            await wait_for_port(port, process, 30)
        except BaseException:
            await stop_process(process)
            raise
        return cls(process, port, log_path)

    async def stop(self) -> None:
        await stop_process(self.process)


# -- the observers ------------------------------------------------------------------------


class Observer:
    """A subscribed connection of the driver's own to one relay: the ``seq``, ``fetched_at``
    (Unix ns) and arrival (monotonic ns) of every update that relay sends."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.fetched: dict[int, int] = {}
        self.arrived: dict[int, int] = {}
        self.closed = False
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with self.relay.connect() as ws:
                await ws.send(json.dumps({"id": 1, "op": "subscribe", "topic": "usage"}))
                async for frame in ws:
                    now = time.monotonic_ns()
                    message = json.loads(frame)
                    if message.get("type") == "result" and message.get("id") == 1:
                        if not message.get("ok"):
                            raise RuntimeError(f"the observer could not subscribe: {message}")
                        self._ready.set()
                    elif message.get("event") == "usage.updated":
                        seq = int(message["data"]["seq"])
                        self.fetched[seq] = _epoch_ns(message["data"]["fetched_at"])
                        self.arrived[seq] = now
        except (OSError, WebSocketException):
            pass  # its relay was killed, or the run is over
        finally:
            self.closed = True
            self._ready.set()

    async def ready(self, within: float = 30.0) -> None:
        await asyncio.wait_for(self._ready.wait(), within)
        if self.closed:
            raise RuntimeError(f"the observer lost its relay; log: {log_tail(self.relay.log)}")

    @property
    def last(self) -> int:
        return max(self.fetched, default=0)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Check ``predicate`` every 5 ms until it holds; TimeoutError after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: nothing after {within:g} s")
        await asyncio.sleep(0.005)


# -- a deployment -------------------------------------------------------------------------


@dataclass
class Setup:
    workdir: Path
    upstream: Upstream
    relay_cpus: set[int] | None
    load_cpus: set[int] | None
    args: argparse.Namespace


@dataclass
class Deployment:
    """Relays (on one Redis, or one relay alone), their observers and their clients."""

    name: str
    setup: Setup
    redis: Redis | None = None
    relays: list[Relay] = field(default_factory=list)
    observers: list[Observer] = field(default_factory=list)
    #: one load generator per share of the subscribers, and the index of its relay
    loads: list[tuple[int, LoadGroup]] = field(default_factory=list)
    alive: list[bool] = field(default_factory=list)

    @classmethod
    async def start(cls, name: str, setup: Setup, relays: int, redis: bool) -> Deployment:
        args = setup.args
        home = setup.workdir / name.replace(" ", "-")
        home.mkdir()
        deployment = cls(name, setup)
        try:
            if redis:
                deployment.redis = await Redis.start(home, setup.load_cpus)
            shares = _shares(args.subscribers, relays)
            for number in range(relays):
                relay_home = home / f"relay-{number + 1}"
                relay_home.mkdir()
                arguments = ["--gateway-url", setup.upstream.url, "--interval", str(args.interval)]
                if deployment.redis is not None:
                    arguments += ["--redis-url", deployment.redis.url]
                variables = {
                    "USAGE_MONITOR_GATEWAY_TOKEN": TOKEN,
                    "USAGE_MONITOR_DATABASE": str(relay_home / "usage.db"),
                    "USAGE_MONITOR_LEASE_SECONDS": str(args.lease_seconds),
                    "USAGE_MONITOR_MAX_CONNECTIONS": str(shares[number] + SPARE_CONNECTIONS),
                }
                relay = await launch_relay(
                    relay_home, arguments, variables, cpus=setup.relay_cpus, deadline=60
                )
                deployment.relays.append(relay)
                deployment.alive.append(True)
                observer = Observer(relay)
                deployment.observers.append(observer)
                await observer.ready()
        except BaseException:
            await deployment.stop()
            raise
        return deployment

    async def connect(self) -> dict[str, Any]:
        """``--relays`` load generators, one share of the subscribers each, connected one
        after the other (the alone deployment's all to its one relay)."""
        args = self.setup.args
        shares = _shares(args.subscribers, args.relays)
        started = time.monotonic()
        for number, share in enumerate(shares):
            index = number % len(self.relays)
            relay = self.relays[index]
            load = await LoadGroup.start(
                "relay", relay.url, cpus=self.setup.load_cpus, headers=relay.headers
            )
            self.loads.append((index, load))
            connected = await load.connect(share)
            if connected["subscribed"] < share:
                raise RuntimeError(
                    f"{self.name}: only {connected} of {share} subscribed to relay {index + 1}; "
                    f"log: {log_tail(relay.log)}"
                )
        return {"connect_s": time.monotonic() - started}

    def subscribers(self, index: int) -> int:
        return sum(load.subscribed for i, load in self.loads if i == index)

    def last_seq(self) -> int:
        return max(observer.last for observer in self.observers)

    async def next_update(self, within: float) -> int:
        """Until an observer sees a ``seq`` newer than any so far; that ``seq``."""
        after = self.last_seq()
        await until(lambda: self.last_seq() > after, within, f"{self.name}: no update")
        return self.last_seq()

    async def align(self) -> None:
        """Half an interval after an update: no poll or fan-out in progress."""
        await self.next_update(self.setup.args.interval * 4 + 10)
        await asyncio.sleep(self.setup.args.interval / 2)

    async def healthz(self, index: int) -> dict[str, Any]:
        relay = self.relays[index]
        url = relay.url.replace("ws://", "http://") + "/healthz"
        async with httpx.AsyncClient(headers=relay.headers, timeout=10) as client:
            response = await client.get(url)
            response.raise_for_status()
            health: dict[str, Any] = response.json()
            return health

    async def roles(self) -> list[str]:
        """Each live relay's role: ``holder`` if ``/healthz`` says it polls the source."""
        roles = []
        for index, alive in enumerate(self.alive):
            if not alive:
                roles.append("killed")
                continue
            health = await self.healthz(index)
            if health.get("cluster") is None:
                roles.append("alone")
            else:
                roles.append("holder" if SOURCE in health.get("polling", ()) else "follower")
        return roles

    async def stop(self) -> None:
        for observer in self.observers:
            await observer.close()
        for _, load in self.loads:
            await load.close()
        for relay in self.relays:
            await stop_process(relay.process)
        if self.redis is not None:
            await self.redis.stop()


def _shares(total: int, parts: int) -> list[int]:
    shares = [total // parts] * parts
    for i in range(total % parts):
        shares[i] += 1
    return shares


# -- measuring ------------------------------------------------------------------------------


async def receipts(
    deployment: Deployment, published: dict[int, int], groups: Sequence[int] | None = None
) -> dict[str, Any]:
    """Every receipt of a ``published`` seq (publish time in monotonic ns) by the clients of
    load generators ``groups`` (default: all): latencies, last receipt per seq, drops."""
    wanted = range(len(deployment.loads)) if groups is None else groups
    latencies_us: list[float] = []
    last: dict[int, int] = {}
    dropped = 0
    expected = 0
    per_relay: dict[int, list[int]] = {}
    relay_latencies: dict[int, list[float]] = {}
    for number in wanted:
        index, load = deployment.loads[number]
        got = 0
        for process in load.processes:
            answer = await process.command(
                "latencies", published={str(s): t for s, t in published.items()}
            )
            latencies_us += answer["latencies_us"]
            relay_latencies.setdefault(index, []).extend(answer["latencies_us"])
            got += len(answer["latencies_us"])
            dropped += answer["dropped"]
            for seq, at in answer["last_receipt"].items():
                last[int(seq)] = max(last.get(int(seq), 0), at)
        expected += load.subscribed * len(published)
        counts = per_relay.setdefault(index, [0, 0])
        counts[0] += got
        counts[1] += load.subscribed * len(published)
    return {
        "latencies_ms": [v / 1000 for v in latencies_us],
        "last": last,
        "dropped": dropped,
        "delivered_pct": 100 * len(latencies_us) / expected if expected else math.nan,
        "delivered_pct_per_relay": {
            i + 1: 100 * got / want if want else math.nan for i, (got, want) in per_relay.items()
        },
        "p50_p99_ms_per_relay": {
            i + 1: [percentile(v, 50) / 1000, percentile(v, 99) / 1000]
            for i, v in relay_latencies.items()
        },
    }


async def window(deployment: Deployment, seconds: float) -> dict[str, Any]:
    """One measured window of whole updates, half an interval after one to half an interval
    after another."""
    args = deployment.setup.args
    upstream = deployment.setup.upstream
    updates = max(1, round(seconds / args.interval))
    await deployment.align()
    for _, load in deployment.loads:
        await load.record()
    live = [i for i, alive in enumerate(deployment.alive) if alive]
    pids = {i: deployment.relays[i].process.pid for i in live}
    load_pids = [pid for _, load in deployment.loads for pid in load.pids]
    redis_pid = deployment.redis.process.pid if deployment.redis is not None else None
    offset = time.time_ns() - time.monotonic_ns()
    first = deployment.last_seq()
    served = await upstream.requests_served()
    cpu = {i: cpu_seconds(pid) for i, pid in pids.items()}
    redis_cpu = cpu_seconds(redis_pid) if redis_pid is not None else 0.0
    load_cpu = sum(cpu_seconds(pid) for pid in load_pids)
    started = time.monotonic_ns()
    await asyncio.sleep(updates * args.interval)
    ended = time.monotonic_ns()
    cpu = {i: cpu_seconds(pid) - cpu[i] for i, pid in pids.items()}
    redis_cpu = cpu_seconds(redis_pid) - redis_cpu if redis_pid is not None else 0.0
    load_cpu = sum(cpu_seconds(pid) for pid in load_pids) - load_cpu
    served = await upstream.requests_served() - served
    last = deployment.last_seq()
    rss = {i: rss_kib(pid) / 1024 for i, pid in pids.items()}
    roles = await deployment.roles()
    # The seqs every observer should have seen, and what each did see.
    seen = {i: {s for s in deployment.observers[i].fetched if first < s <= last} for i in live}
    union = set().union(*seen.values())
    fetched: dict[int, int] = {}
    for i in live:
        for seq in seen[i]:
            fetched.setdefault(seq, deployment.observers[i].fetched[seq] - offset)
    count = len(union)
    figures: dict[str, Any] = {
        "wall_s": (ended - started) / 1e9,
        "loadavg": os.getloadavg()[0],
        "updates": count,
        "seqs": [min(union, default=0), max(union, default=0)],
        "seq_agreement": all(s == union for s in seen.values()),
        "missing_at_observer": {i + 1: len(union - s) for i, s in seen.items() if s != union},
        "upstream_requests": served,
        "upstream_requests_per_hour": served / ((ended - started) / 1e9) * 3600,
        "upstream_requests_per_update": served / count if count else math.nan,
        "redis_cpu_s": redis_cpu,
        "redis_cpu_per_update_ms": redis_cpu / count * 1000 if count else math.nan,
        "load_cpu_per_update_ms": load_cpu / count * 1000 if count else math.nan,
        "relays": [],
    }
    for i in live:
        subscribers = deployment.subscribers(i)
        figures["relays"].append(
            {
                "relay": i + 1,
                "role": roles[i],
                "subscribers": subscribers,
                "cpu_s": cpu[i],
                "cpu_per_update_ms": cpu[i] / count * 1000 if count else math.nan,
                "cpu_per_subscriber_update_us": (
                    cpu[i] / count / subscribers * 1e6 if count and subscribers else math.nan
                ),
                "rss_mib": rss[i],
            }
        )
    for entry in figures["relays"]:
        observer = deployment.observers[entry["relay"] - 1]
        lags = [
            (observer.arrived[s] - observer.fetched[s] + offset) / 1e6
            for s in sorted(seen[entry["relay"] - 1])
        ]
        # From the poll to the driver's own subscriber of this relay: median, p99.
        entry["observer_ms"] = [percentile(lags, 50), percentile(lags, 99)]
    total = sum(cpu.values())
    figures["relays_cpu_per_update_ms"] = total / count * 1000 if count else math.nan
    if deployment.loads and count:
        for _, load in deployment.loads:  # the last update may still be on its way
            await load.wait_complete(max(union), UPDATE_TIMEOUT_S)
        got = await receipts(deployment, fetched)
        latencies = got["latencies_ms"]
        to_last = [(got["last"][s] - fetched[s]) / 1e6 for s in sorted(got["last"])]
        figures.update(
            subscribers=sum(load.subscribed for _, load in deployment.loads),
            delivered_pct=got["delivered_pct"],
            delivered_pct_per_relay=got["delivered_pct_per_relay"],
            p50_p99_ms_per_relay=got["p50_p99_ms_per_relay"],
            to_last_ms=to_last,
            dropped=got["dropped"],
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            max_ms=max(latencies, default=math.nan),
            to_last_median_ms=statistics.median(to_last) if to_last else math.nan,
            to_last_p99_ms=percentile(to_last, 99),
            to_last_max_ms=max(to_last, default=math.nan),
        )
    return figures


def _warnings(relay: Relay, most: int = 20) -> list[str]:
    """The first lines the relay logged as a warning or an error."""
    if not relay.log.exists():
        return []
    lines = relay.log.read_text(errors="replace").splitlines()
    return [line for line in lines if " WARNING " in line or " ERROR " in line][:most]


def _lease_taken(relay: Relay) -> list[int]:
    """The lease numbers this relay logged taking."""
    if not relay.log.exists():
        return []
    return [int(n) for n in _TAKEN.findall(relay.log.read_text(errors="replace"))]


async def failover(deployment: Deployment) -> dict[str, Any]:
    """SIGKILL the holder half an interval after an update; until every subscriber of the
    survivors has a new one; then ``--after-failover`` more updates, all delivered?"""
    args = deployment.setup.args
    roles = await deployment.roles()
    holders = [i for i, role in enumerate(roles) if role == "holder"]
    if len(holders) != 1:
        raise RuntimeError(f"{deployment.name}: {len(holders)} relays hold the lease: {roles}")
    (holder,) = holders
    survivors = [i for i, alive in enumerate(deployment.alive) if alive and i != holder]
    groups = [n for n, (i, _) in enumerate(deployment.loads) if i in survivors]
    for _, load in deployment.loads:
        await load.record()
    await deployment.align()
    offset = time.time_ns() - time.monotonic_ns()
    before = deployment.last_seq()
    fence_before = max(_lease_taken(deployment.relays[holder]), default=0)
    killed_at = time.monotonic_ns()
    await stop_process(deployment.relays[holder].process)
    deployment.alive[holder] = False
    bound = args.lease_seconds * 2 + args.interval * 4 + 10
    observers = [deployment.observers[i] for i in survivors]
    await until(
        lambda: any(o.last > before for o in observers), bound, f"{deployment.name}: no failover"
    )
    new = min(s for o in observers for s in o.fetched if s > before)
    completes = []
    for number in groups:
        done = await deployment.loads[number][1].wait_complete(new, 30)
        if done is None:
            raise RuntimeError(f"{deployment.name}: seq {new} did not reach every survivor")
        completes.append(done)
    first_observed = min(o.arrived[new] for o in observers if new in o.arrived)
    fetched_new = next(o.fetched[new] for o in observers if new in o.fetched)
    fetched_before = next(
        (o.fetched[before] for o in deployment.observers if before in o.fetched), 0
    )
    # More updates after the failover: did every survivor's subscriber get each of them?
    for _ in range(args.after_failover):
        await deployment.next_update(args.interval * 4 + 10)
    await asyncio.sleep(args.interval / 2)
    last = deployment.last_seq()
    published: dict[int, int] = {}
    for o in observers:
        for seq, at in o.fetched.items():
            if new <= seq <= last:
                published.setdefault(seq, at - offset)
    after = await receipts(deployment, published, groups)
    roles_after = await deployment.roles()
    new_holders = [i for i, role in enumerate(roles_after) if role == "holder"]
    fences = {i + 1: _lease_taken(deployment.relays[i]) for i in survivors}
    return {
        "killed": holder + 1,
        "lease_before": fence_before,
        "last_seq_before": before,
        "first_seq_after": new,
        "failover_s": (max(completes) - killed_at) / 1e9,
        "first_observed_s": (first_observed - killed_at) / 1e9,
        "stream_gap_s": (fetched_new - fetched_before) / 1e9 if fetched_before else math.nan,
        "new_holders": [i + 1 for i in new_holders],
        "leases_taken_by_survivors": fences,
        "updates_after": len(published),
        "delivered_after_pct": after["delivered_pct"],
        "survivors_dropped": after["dropped"],
        "survivor_subscribers": sum(deployment.loads[n][1].subscribed for n in groups),
    }


async def measure(name: str, setup: Setup, relays: int, redis: bool) -> dict[str, Any]:
    args = setup.args
    log(f"{name}: starting {relays} relay(s){' and Redis' if redis else ''}")
    deployment = await Deployment.start(name, setup, relays, redis)
    try:
        figures: dict[str, Any] = {"name": name, "relays": relays, "redis": redis}
        log(f"{name}: {args.idle_seconds:g} s with no subscribers")
        figures["idle"] = await window(deployment, args.idle_seconds)
        log(f"{name}: connecting {args.subscribers:,} subscribers")
        figures.update(await deployment.connect())
        log(f"{name}: {args.subscribers:,} subscribed in {figures['connect_s']:.1f} s")
        await asyncio.sleep(args.interval * 2)
        log(f"{name}: {args.seconds:g} s with {args.subscribers:,} subscribers")
        figures["load"] = load = await window(deployment, args.seconds)
        log(
            f"{name}: {load['updates']} updates, p99 {load['p99_ms']:.1f} ms, relays "
            f"{load['relays_cpu_per_update_ms']:.1f} ms CPU per update, delivered "
            f"{load['delivered_pct']:.2f} % (load average {load['loadavg']:.2f})"
        )
        if relays > 1:
            figures["failovers"] = []
            for number in range(1, min(args.failovers, relays - 1) + 1):
                log(f"{name}: failover {number} (SIGKILL of the lease's holder)")
                result = await failover(deployment)
                figures["failovers"].append(result)
                log(
                    f"{name}: relay {result['killed']} killed, failover in "
                    f"{result['failover_s']:.2f} s (lease_seconds {args.lease_seconds:g}, "
                    f"interval {args.interval:g})"
                )
        figures["warnings"] = {i + 1: _warnings(relay) for i, relay in enumerate(deployment.relays)}
        return figures
    finally:
        await deployment.stop()


# -- the tables -----------------------------------------------------------------------------


def _cell(values: Sequence[float], digits: int = 1) -> str:
    """The median of the runs, with (min..max) when there are several."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return "n/a"
    median = f"{statistics.median(finite):,.{digits}f}"
    if len(finite) == 1:
        return median
    return f"{median} ({min(finite):,.{digits}f}..{max(finite):,.{digits}f})"


def _label(relays: list[dict[str, Any]], relay: dict[str, Any]) -> str:
    """A relay by its role; followers numbered in the order they started."""
    if relay["role"] != "follower":
        return str(relay["role"])
    followers = [r["relay"] for r in relays if r["role"] == "follower"]
    return f"follower {followers.index(relay['relay']) + 1}"


def tables(runs: list[list[dict[str, Any]]], args: argparse.Namespace) -> str:
    names = [d["name"] for d in runs[0]]

    def each(name: str) -> list[dict[str, Any]]:
        return [d for run in runs for d in run if d["name"] == name]

    n = args.subscribers
    lines = [
        "| deployment | relay | subscribers | no subscribers: CPU per update (ms) "
        f"| ... poll to the driver's one subscriber, median (ms) | {n:,} subscribers: "
        "CPU per update (ms) | CPU per subscriber-update (µs) | RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        deployments = each(name)
        labels: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for d in deployments:
            idle = {r["relay"]: r for r in d["idle"]["relays"]}
            for relay in d["load"]["relays"]:
                key = _label(d["load"]["relays"], relay)
                labels.setdefault(key, []).append((idle[relay["relay"]], relay))
        for label, pairs in labels.items():
            lines.append(
                f"| {name} | {label} | {pairs[0][1]['subscribers']:,} "
                f"| {_cell([i['cpu_per_update_ms'] for i, _ in pairs], 2)} "
                f"| {_cell([i['observer_ms'][0] for i, _ in pairs], 2)} "
                f"| {_cell([r['cpu_per_update_ms'] for _, r in pairs])} "
                f"| {_cell([r['cpu_per_subscriber_update_us'] for _, r in pairs], 2)} "
                f"| {_cell([r['rss_mib'] for _, r in pairs], 0)} |"
            )
        if len(labels) > 1:
            total = [d["load"]["relays_cpu_per_update_ms"] for d in deployments]
            rss = [sum(r["rss_mib"] for r in d["load"]["relays"]) for d in deployments]
            lines.append(
                f"| {name} | all relays | {n:,} "
                f"| {_cell([d['idle']['relays_cpu_per_update_ms'] for d in deployments], 2)} | "
                f"| {_cell(total)} | {_cell([ms / n * 1000 for ms in total], 2)} "
                f"| {_cell(rss, 0)} |"
            )
        if deployments[0]["redis"]:
            lines.append(
                f"| {name} | redis-server | | "
                f"{_cell([d['idle']['redis_cpu_per_update_ms'] for d in deployments], 2)} | "
                f"| {_cell([d['load']['redis_cpu_per_update_ms'] for d in deployments], 2)} | | |"
            )
    lines += [
        "",
        f"| deployment ({n:,} subscribers) | updates | delivered (%) | p50 (ms) | p99 (ms) "
        "| max (ms) | poll to the last subscriber: median / max (ms) | same seqs on every relay "
        f"| upstream requests/h (interval {args.interval:g} s) | upstream requests per update "
        "| load generators' CPU per update (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name in names:
        loads = [d["load"] for d in each(name)]
        agreed = sum(1 for load in loads if load["seq_agreement"])
        agreement = f"{agreed} of {len(loads)} runs" if loads[0]["relays"][1:] else "n/a"
        lines.append(
            f"| {name} | {_cell([x['updates'] for x in loads], 0)} "
            f"| {_cell([x['delivered_pct'] for x in loads], 2)} "
            f"| {_cell([x['p50_ms'] for x in loads])} | {_cell([x['p99_ms'] for x in loads])} "
            f"| {_cell([x['max_ms'] for x in loads])} "
            f"| {_cell([x['to_last_median_ms'] for x in loads])} / "
            f"{_cell([x['to_last_max_ms'] for x in loads])} "
            f"| {agreement} "
            f"| {_cell([x['upstream_requests_per_hour'] for x in loads], 0)} "
            f"| {_cell([x['upstream_requests_per_update'] for x in loads], 2)} "
            f"| {_cell([x['load_cpu_per_update_ms'] for x in loads])} |"
        )
    alone = [d for run in runs for d in run if d["name"] == "alone"]
    single = [d for run in runs for d in run if d["name"] == "cluster of 1"]
    if alone and single:
        lines += [
            "",
            "| what Redis adds per update (cluster of 1 minus alone, same run) | relay CPU (ms) "
            "| redis-server CPU (ms) |",
            "|---|---:|---:|",
        ]
        for window, label in (("idle", "no subscribers"), ("load", f"{n:,} subscribers")):
            extra = [
                c[window]["relays_cpu_per_update_ms"] - a[window]["relays_cpu_per_update_ms"]
                for a, c in zip(alone, single, strict=True)
            ]
            server = [c[window]["redis_cpu_per_update_ms"] for c in single]
            lines.append(f"| {label} | {_cell(extra, 2)} | {_cell(server, 2)} |")
    failovers = [f for run in runs for d in run for f in d.get("failovers", [])]
    if failovers:
        bound = args.lease_seconds + args.interval
        survivors = sorted({f["survivor_subscribers"] for f in failovers}, reverse=True)
        within = sum(1 for f in failovers if f["first_observed_s"] <= bound)
        each_failover = ", ".join(f"{f['failover_s']:.2f}" for f in failovers)
        lines += [
            "",
            f"| {len(failovers)} failovers (lease_seconds {args.lease_seconds:g}, "
            f"interval {args.interval:g} s) | value |",
            "|---|---|",
            "| SIGKILL of the holder → first new update at every survivor's subscriber (s) "
            f"| {_cell([f['failover_s'] for f in failovers], 2)} |",
            f"| ... each failover (s) | {each_failover} |",
            "| ... at the first survivor (s) "
            f"| {_cell([f['first_observed_s'] for f in failovers], 2)} |",
            "| gap in the stream: `fetched_at` of the last update before to the first after (s) "
            f"| {_cell([f['stream_gap_s'] for f in failovers], 2)} |",
            f"| within lease_seconds + interval = {bound:g} s (at the first survivor) "
            f"| {within} of {len(failovers)} |",
            "| survivors' subscribers that lost their connection "
            f"| {sum(f['survivors_dropped'] for f in failovers)} of "
            f"{', '.join(f'{n:,}' for n in survivors)} |",
            f"| updates after each failover (the first + {args.after_failover}) delivered "
            f"to them (%) | {_cell([f['delivered_after_pct'] for f in failovers], 2)} |",
            f"| lease number before → after | {', '.join(_fences(f) for f in failovers)} |",
        ]
    return "\n".join(lines)


def _fences(result: dict[str, Any]) -> str:
    taken = [n for fences in result["leases_taken_by_survivors"].values() for n in fences]
    return f"{result['lease_before']} → {max(taken, default=0)}"


def problems(runs: list[list[dict[str, Any]]], args: argparse.Namespace) -> list[str]:
    found = []
    for number, run in enumerate(runs, 1):
        for d in run:
            where = f"run {number}, {d['name']}"
            load = d["load"]
            if not load["seq_agreement"]:
                found.append(f"{where}: observers disagree: {load['missing_at_observer']}")
            if load["delivered_pct"] < 100:
                found.append(
                    f"{where}: delivered {load['delivered_pct']:.3f} % "
                    f"(per relay {load['delivered_pct_per_relay']}); a subscriber that reads "
                    "slowly gets only the newest snapshot, so an --interval shorter than a "
                    "fan-out skips some by design"
                )
            if load["dropped"]:
                found.append(f"{where}: {load['dropped']} subscribers lost their connection")
            # A poll in flight at either end of the window may count on one side only.
            if abs(load["upstream_requests"] - load["updates"]) > max(1, load["updates"] // 50):
                found.append(
                    f"{where}: {load['upstream_requests']} upstream requests for "
                    f"{load['updates']} updates"
                )
            holders = [r for r in load["relays"] if r["role"] == "holder"]
            if d["redis"] and len(holders) != 1:
                found.append(f"{where}: {len(holders)} holders of the lease")
            for result in d.get("failovers", []):
                if result["survivors_dropped"]:
                    found.append(
                        f"{where}: {result['survivors_dropped']} survivors' subscribers "
                        "lost their connection in the failover"
                    )
                if result["delivered_after_pct"] < 100:
                    found.append(
                        f"{where}: after the failover, delivered "
                        f"{result['delivered_after_pct']:.3f} %"
                    )
                bound = args.lease_seconds + args.interval
                if result["first_observed_s"] > bound:
                    found.append(
                        f"{where}: relay {result['killed']} killed, the next update came "
                        f"{result['first_observed_s']:.2f} s later, beyond lease_seconds + "
                        f"interval = {bound:g} s"
                    )
                if len(result["new_holders"]) != 1:
                    found.append(f"{where}: after the failover, holders {result['new_holders']}")
    return found


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="400 subscribers, short windows, 1 run (~1 min)"
    )
    parser.add_argument("--subscribers", type=int, help="in all (default 10,000; quick 400)")
    parser.add_argument("--relays", type=int, default=4, help="relays of the cluster (4)")
    parser.add_argument("--interval", type=float, help="seconds between polls (1; quick 0.5)")
    parser.add_argument(
        "--lease-seconds", type=float, help="the relays' lease_seconds (5; quick 2)"
    )
    parser.add_argument("--seconds", type=float, help="window with subscribers (60; quick 6)")
    parser.add_argument(
        "--idle-seconds", type=float, help="window without subscribers (60; quick 4)"
    )
    parser.add_argument(
        "--after-failover", type=int, default=3, help="updates checked after the failover (3)"
    )
    parser.add_argument("--runs", type=int, help="runs of every deployment (3; quick 1)")
    parser.add_argument(
        "--failovers",
        type=int,
        help="times the holder is killed, one after the other (default --relays - 1; 0: none)",
    )
    parser.add_argument(
        "--deployments",
        default="alone,one,cluster",
        help="comma-separated subset of alone (one relay without Redis), one (a cluster of "
        "one) and cluster (--relays relays on Redis); default: all three",
    )
    parser.add_argument("--output", type=Path, help="write every figure as JSON here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    fill_sizes(
        args,
        {
            "subscribers": (400, 10_000),
            "interval": (0.5, 1.0),
            "lease_seconds": (2.0, 5.0),
            "seconds": (6.0, 60.0),
            "idle_seconds": (4.0, 60.0),
            "runs": (1, 3),
        },
    )
    args.deployments = sorted({name.strip() for name in args.deployments.split(",")} - {""})
    if not args.deployments or not set(args.deployments) <= {"alone", "one", "cluster"}:
        parser.error("--deployments takes a subset of alone,one,cluster")
    if args.failovers is None:
        args.failovers = args.relays - 1
    if args.relays < 2:
        parser.error("--relays must be at least 2")
    if args.subscribers < args.relays or args.runs < 1:
        parser.error("--subscribers must be at least --relays, --runs at least 1")
    if args.interval <= 0 or args.lease_seconds < 1:
        parser.error("--interval must be positive and --lease-seconds at least 1")
    if min(args.seconds, args.idle_seconds) < args.interval:
        parser.error("--seconds and --idle-seconds must hold at least one interval")
    return args


async def run(args: argparse.Namespace, workdir: Path) -> list[list[dict[str, Any]]]:
    raise_nofile_limit()
    cpus = sorted(os.sched_getaffinity(0))
    relay_cpus = load_cpus = None
    if not args.no_pin and len(cpus) >= 2:
        relay_cpus, load_cpus = {cpus[0]}, set(cpus[1:])
        os.sched_setaffinity(0, load_cpus)
    upstream = await Upstream.start(sys.executable, load_cpus)
    runs: list[list[dict[str, Any]]] = []
    try:
        for number in range(1, args.runs + 1):
            setup = Setup(workdir / f"run-{number}", upstream, relay_cpus, load_cpus, args)
            setup.workdir.mkdir()
            log(f"run {number} of {args.runs}")
            deployments = {
                "alone": ("alone", 1, False),
                "one": ("cluster of 1", 1, True),
                "cluster": (f"cluster of {args.relays}", args.relays, True),
            }
            runs.append(
                [
                    await measure(name, setup, relays, redis=redis)
                    for key, (name, relays, redis) in deployments.items()
                    if key in args.deployments
                ]
            )
    finally:
        await upstream.stop()
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (reason := Redis.unavailable() or Upstream.unavailable()) is not None:
        print(f"python -m benchmarks.cluster: {reason}", file=sys.stderr)
        return 2
    session = run_session("bench-cluster-", lambda workdir: run(args, workdir))
    machine, runs = session.machine, session.result
    print(
        f"\nusage-monitor team relay benchmark, {session.started_at:%Y-%m-%d %H:%M} UTC: "
        f"{machine['cores']} cores {machine['cpu_model']}, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}; {args.subscribers:,} subscribers, {args.relays} relays, "
        f"interval {args.interval:g} s, lease_seconds {args.lease_seconds:g}, windows of "
        f"{args.idle_seconds:g} s (no subscribers) and {args.seconds:g} s; "
        f"{args.runs} run{'s' if args.runs > 1 else ''}; {session.load_average()}\n"
    )
    print(tables(runs, args))
    if args.output:
        session.write(
            args.output,
            "usage-monitor-cluster-benchmark/1",
            {**vars(args), "output": str(args.output)},
            runs=runs,
        )
    for number, run_figures in enumerate(runs, 1):
        for d in run_figures:
            for relay, lines in d["warnings"].items():
                for line in lines[:3]:
                    print(f"- note: run {number}, {d['name']}, relay {relay} logged: {line}")
    found = problems(runs, args)
    for problem in found:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
