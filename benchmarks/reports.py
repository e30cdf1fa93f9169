"""
Daily report catch-up under load: ``python -m benchmarks.reports [--quick]``.

Builds a store with ``--days`` + 1 days of simulated history (one snapshot every
``--every`` seconds, the ledger written with them) for ``--sources`` sources of
the three dialects, and a ``[[sources]]`` config whose sources all poll one
gateway simulator (``python -m simulator``), in UTC, with ``report_delay`` 0 and
``report_catchup_days`` = ``--days``: at start the relay owes ``--sources`` x
``--days`` reports (700 by default). They go to a ``ReportReceiver``
(``simulator/receiver.py``) in a process of its own. The relay is pinned to the
first core; the receiver, the simulator, the load generator and this driver
share the others. Two parts, each on its own copy of the store:

1. **Cold start**, no clients: the time from starting the relay process to the
   receiver having accepted every report, and the relay's CPU seconds by then
   (start-up included), read from ``/proc``.
2. **Under load**: the receiver holds the first requests unanswered (``hang``),
   so the relay's catch-up starts and then waits with ``report_concurrency``
   POSTs in flight; ``--subscribers`` WebSocket clients (``benchmarks.loadgen``)
   subscribe to the default source, and updates are driven as in the fan-out
   scenario (the simulator's usage changes, a client sends ``refresh``, the
   next update goes out once every subscriber has this one plus 20 ms).
   Delivery latency (p50, p99, max over every receipt) is measured in three
   windows: *before* (catch-up held, no report work) for ``--baseline-seconds``;
   *during* the catch-up, from releasing the receiver to its accepting the last
   report; and *after*, every report delivered, for ``--baseline-seconds``.
   The relay's CPU over each window comes from ``/proc``.

Both are repeated ``--runs`` times, each on a fresh copy of the store; each
cell is the median of the runs with (min..max). ``--probe`` starts the relay
under a small probe that records, inside its process, how late a 1 ms timer of
its event loop fires (the longest stall of the loop) and every full (gen 2)
garbage collection, and adds both to the table per window.

It prints a Markdown table, checks that every (source, day) was accepted under
its own key with one body, and that ``/healthz`` ends with nothing pending or
failed; ``--output`` writes the figures and every latency as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx

from common.models import SourceKind
from monitor.store import SnapshotStore
from simulator.history import simulated_history
from simulator.receiver import ReceiverServer, ReportReceiver

from .config import fill_sizes
from .gateway import ROOT, TOKEN, Upstream
from .history import Relay, launch_relay
from .loadctl import LoadGroup, LoadProcess
from .procs import free_port, log_tail, pinned, stop_process, wait_for_port
from .procstat import cpu_seconds, raise_nofile_limit
from .session import run_session
from .stats import percentile

__all__ = ["build_store", "main", "write_config"]

KINDS: tuple[SourceKind, ...] = ("posthog", "openrouter", "litellm")
#: The environment variable the sources read their gateway token from.
TOKEN_ENV = "BENCH_GATEWAY_TOKEN"
#: Scheduled polls are this far apart: the only polls measured are the refreshes.
POLL_INTERVAL = 3600
#: The relay's ``report_concurrency`` (its default).
CONCURRENCY = 4
#: Pause after every subscriber has an update, before the next one (as in the fan-out).
GAP_S = 0.02
#: Waiting for one update to reach every subscriber, and for a catch-up to end.
UPDATE_TIMEOUT_S = 10.0
CATCHUP_TIMEOUT_S = 600.0
WINDOWS = ("before", "during", "after")

#: ``--probe``: run the relay (``python -c PROBE --config ...``) with a timer that fires
#: every millisecond in its event loop, noting each time it fires more than 1 ms late
#: (the loop was busy or stalled), and with every gen 2 or 1 ms+ garbage collection
#: noted; SIGUSR2 writes both to $BENCH_PROBE_FILE. Self-contained: the relay imports
#: nothing more than it would.
PROBE = r"""
import asyncio.base_events, gc, json, os, runpy, signal, time
_lags, _gcs, _began = [], [], [0]
def _on_gc(phase, info):
    now = time.monotonic_ns()
    if phase == "start":
        _began[0] = now
        return
    ms = (now - _began[0]) / 1e6
    if info["generation"] == 2 or ms >= 1:
        _gcs.append((now, info["generation"], ms))
gc.callbacks.append(_on_gc)
def _dump(*_):
    path = os.environ["BENCH_PROBE_FILE"]
    with open(path + ".tmp", "w") as file:
        json.dump({"lags": _lags, "gcs": _gcs}, file)
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR2, _dump)
_run_forever = asyncio.base_events.BaseEventLoop.run_forever
def _probed(loop):
    due = [None]
    def tick():
        now = loop.time()
        if due[0] is not None and now - due[0] > 0.001:
            _lags.append((time.monotonic_ns(), (now - due[0]) * 1000))
        due[0] = now + 0.001
        loop.call_later(0.001, tick)
    loop.call_soon(tick)
    return _run_forever(loop)
asyncio.base_events.BaseEventLoop.run_forever = _probed
runpy.run_module("relay", run_name="__main__", alter_sys=True)
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def source_names(count: int) -> list[tuple[str, SourceKind]]:
    """``count`` sources, the dialects in turn; the first (the default) is PostHog."""
    return [(f"src-{number:02d}", KINDS[number % len(KINDS)]) for number in range(count)]


def build_store(
    path: Path, sources: list[tuple[str, SourceKind]], days: int, every: float, end: datetime
) -> int:
    """A store at ``path`` with ``days`` of simulated history up to ``end`` for each of
    ``sources``, the ledger written with the snapshots; returns the number of snapshots."""
    store = SnapshotStore(path, zone=UTC)
    store.open()
    try:
        count = 0
        for number, (name, kind) in enumerate(sources):
            snapshots, _ = simulated_history(
                name,
                kind,
                end=end,
                days=days,
                interval=every,
                usd_per_hour=1.0 + number % 5,
                epoch=store.epoch,
            )
            store.append_many(snapshots)
            count += len(snapshots)
    finally:
        store.close()
    return count


def write_config(path: Path, sources: list[tuple[str, SourceKind]], gateway_url: str) -> None:
    """The relay's config file: UTC, every source polling the simulator at ``gateway_url``."""
    lines = ['timezone = "UTC"', f'default_source = "{sources[0][0]}"', ""]
    for name, kind in sources:
        lines += [
            "[[sources]]",
            f'name = "{name}"',
            f'kind = "{kind}"',
            f'url = "{gateway_url}"',
            f'token_env = "{TOKEN_ENV}"',
            f"interval = {POLL_INTERVAL}",
            "",
        ]
    path.write_text("\n".join(lines))


def expected_keys(sources: list[tuple[str, SourceKind]], days: int, today: date) -> set[str]:
    """The Idempotency-Key of every report owed: each source, the ``days`` closed UTC days
    before ``today`` (``report_delay`` is 0)."""
    return {
        f"usage-report:{name}:{today - timedelta(days=back)}"
        for name, _ in sources
        for back in range(1, days + 1)
    }


# -- the receiver, in a process of its own ------------------------------------------------


async def serve_receiver(port: int, hang: bool) -> None:
    """``--serve-receiver``: a ``ReportReceiver`` on ``port``, steered by JSON lines on stdin
    (``{"id", "cmd", ...}``), each answered by one line on stdout with the same ``id``."""
    receiver = ReportReceiver()
    if hang:
        receiver.hang()

    async def wait(predicate: Callable[[ReportReceiver], bool], within: float) -> bool:
        with anyio.move_on_after(within):
            await receiver.wait_for(predicate)
            return True
        return False

    async def answer(command: dict[str, Any]) -> dict[str, Any]:
        name = command["cmd"]
        if name == "recover":
            receiver.recover()
            return {"t": time.monotonic_ns()}
        if name == "wait_in_flight":
            n = command["n"]
            ok = await wait(lambda r: r.in_flight >= n, command["timeout"])
            return {"ok": ok, "in_flight": receiver.in_flight}
        if name == "wait_accepted":
            n = command["n"]
            ok = await wait(lambda r: len(r.accepted) >= n, command["timeout"])
            return {"ok": ok, "t": time.monotonic_ns(), "accepted": len(receiver.accepted)}
        if name == "stats":
            bodies = receiver.bodies_by_key()
            return {
                "requests": len(receiver.requests),
                "statuses": dict(Counter(str(r.status) for r in receiver.requests)),
                "accepted_keys": sorted(receiver.accepted),
                "keys_with_several_bodies": sum(1 for b in bodies.values() if len(b) > 1),
                "in_flight": receiver.in_flight,
            }
        return {"error": f"unknown command {name!r}"}

    def emit(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    async def handle(command: dict[str, Any]) -> None:
        emit({"id": command["id"], **await answer(command)})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    async with ReceiverServer(receiver, port=port):
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "close":
                emit({"id": command["id"], "closed": True})
                break
            task = asyncio.create_task(handle(command))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()
        receiver.recover()  # hung requests are answered rather than dropped


@dataclass
class Receiver:
    """The driver's handle on the receiver process."""

    control: LoadProcess
    url: str

    @property
    def pid(self) -> int:
        return self.control.process.pid

    @classmethod
    async def start(cls, cpus: set[int] | None, *, hang: bool) -> Receiver:
        port = free_port()
        command = [sys.executable, "-m", "benchmarks.reports", "--serve-receiver", str(port)]
        if hang:
            command.append("--hang")
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
            preexec_fn=pinned(cpus),
        )
        receiver = cls(LoadProcess(process), f"http://127.0.0.1:{port}")
        try:
            await wait_for_port(port, process, 30)
        except BaseException:
            await receiver.stop()
            raise
        return receiver

    async def command(self, name: str, **params: Any) -> dict[str, Any]:
        return await self.control.command(name, **params)

    async def stop(self) -> None:
        process = self.control.process
        if process.returncode is None:
            with contextlib.suppress(TimeoutError, RuntimeError, ConnectionError):
                await asyncio.wait_for(self.command("close"), 10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
        await stop_process(process)
        self.control.reader.cancel()


# -- the relay ----------------------------------------------------------------------------


@dataclass
class Setup:
    workdir: Path
    config: Path
    sources: list[tuple[str, SourceKind]]
    expected: set[str]
    relay_cpus: set[int] | None
    load_cpus: set[int] | None
    args: argparse.Namespace


async def start_relay(
    setup: Setup,
    name: str,
    database: Path,
    receiver: Receiver,
    report_timeout: float,
    probe: Path | None = None,
) -> Relay:
    """Start the relay on ``database`` (under ``PROBE`` writing to ``probe``, if given);
    return it ready (its default source has a snapshot)."""
    home = setup.workdir / name
    home.mkdir()
    variables = {
        TOKEN_ENV: TOKEN,
        "USAGE_MONITOR_REPORT_URL": receiver.url + "/reports",
        "USAGE_MONITOR_REPORT_DELAY": "0",
        "USAGE_MONITOR_REPORT_CATCHUP_DAYS": str(setup.args.days),
        "USAGE_MONITOR_REPORT_CONCURRENCY": str(CONCURRENCY),
        "USAGE_MONITOR_REPORT_TIMEOUT": str(report_timeout),
        # Every seeded snapshot stays as it is: nothing is folded while it is measured.
        "USAGE_MONITOR_HISTORY_DETAIL_DAYS": "3650",
        "USAGE_MONITOR_HISTORY_HOURLY_DAYS": "3650",
    }
    command = [sys.executable, "-m", "relay"]
    if probe is not None:
        command = [sys.executable, "-c", PROBE]
        variables["BENCH_PROBE_FILE"] = str(probe)
    arguments = ["--config", str(setup.config), "--database", str(database)]
    return await launch_relay(
        home, arguments, variables, cpus=setup.relay_cpus, deadline=120, command=command
    )


async def reports_health(relay: Relay) -> dict[str, Any]:
    """``/healthz``'s ``reports``, asked again (up to 10 s) until nothing is pending: the
    counts are updated at the end of a catch-up pass."""
    url = relay.url.replace("ws://", "http://") + "/healthz"
    async with httpx.AsyncClient(headers=relay.headers, timeout=10) as client:
        deadline = time.monotonic() + 10
        while True:
            response = await client.get(url)
            response.raise_for_status()
            reports: dict[str, Any] = response.json()["reports"]
            if reports["pending"] == 0 or time.monotonic() > deadline:
                return reports
            await asyncio.sleep(0.1)


async def check_receiver(receiver: Receiver, setup: Setup) -> dict[str, Any]:
    stats = await receiver.command("stats")
    accepted = set(stats.pop("accepted_keys"))
    stats["accepted"] = len(accepted)
    stats["missing"] = len(setup.expected - accepted)
    stats["unexpected"] = len(accepted - setup.expected)
    return stats


async def read_probe(relay: Relay, path: Path) -> dict[str, Any]:
    """Have the probed relay write what it noted (SIGUSR2), and read it."""
    _forget(path)
    relay.process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while (noted := _noted(path)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the probe wrote nothing; log: {log_tail(relay.log)}")
        await asyncio.sleep(0.05)
    return noted


def _forget(path: Path) -> None:
    path.unlink(missing_ok=True)


def _noted(path: Path) -> dict[str, Any] | None:
    try:
        noted: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return noted


# -- the two parts ------------------------------------------------------------------------


async def cold_start(setup: Setup, database: Path) -> dict[str, Any]:
    """Start the relay with no clients: time and CPU until every report is accepted."""
    receiver = await Receiver.start(setup.load_cpus, hang=False)
    try:
        expected = len(setup.expected)
        waiting = asyncio.create_task(
            receiver.command("wait_accepted", n=expected, timeout=CATCHUP_TIMEOUT_S)
        )
        relay = await start_relay(setup, database.stem, database, receiver, 10.0)
        started = relay.started_at
        try:
            done = await waiting
            cpu = cpu_seconds(relay.process.pid)
            if not done["ok"]:
                raise RuntimeError(
                    f"cold start: {done['accepted']} of {expected} reports accepted in "
                    f"{CATCHUP_TIMEOUT_S:g} s; log: {log_tail(relay.log)}"
                )
            health = await reports_health(relay)
        finally:
            await stop_process(relay.process)
        return {
            "wall_s": (done["t"] - started) / 1e9,
            "ready_s": relay.started_in,
            "relay_cpu_s": cpu,
            "receiver_cpu_s": cpu_seconds(receiver.pid),
            "receiver": await check_receiver(receiver, setup),
            "health": health,
        }
    finally:
        await receiver.stop()


@dataclass
class Window:
    """Updates driven to every subscriber over one stretch of time."""

    name: str
    published: dict[int, int] = field(default_factory=dict)
    incomplete: int = 0
    started: int = 0
    ended: int = 0
    relay_cpu_s: float = 0.0
    load_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    delivered_pct: float = 0.0

    def figures(self) -> dict[str, Any]:
        updates = len(self.published)
        return {
            "updates": updates,
            "incomplete_updates": self.incomplete,
            "wall_s": (self.ended - self.started) / 1e9,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p99_ms": percentile(self.latencies_ms, 99),
            "max_ms": max(self.latencies_ms, default=float("nan")),
            "delivered_pct": self.delivered_pct,
            "relay_cpu_s": self.relay_cpu_s,
            "relay_cpu_per_update_ms": self.relay_cpu_s / updates * 1000 if updates else None,
            "load_cpu_s": self.load_cpu_s,
        }

    def probed(self, noted: dict[str, Any]) -> dict[str, Any]:
        """What the probe noted within this window: the longest stall of the event loop
        and the full garbage collections."""
        within = range(self.started, self.ended)
        stalls = [(at, ms) for at, ms in noted["lags"] if at in within]
        full = [(at, ms) for at, generation, ms in noted["gcs"] if at in within and generation == 2]

        def during_gc(at: int, ms: float) -> bool:
            """Whether the stall noted at ``at`` overlaps a full collection."""
            return any(
                at - ms * 1e6 <= ended and ended - gc_ms * 1e6 <= at for ended, gc_ms in full
            )

        others = [ms for at, ms in stalls if not during_gc(at, ms)]
        return {
            "longest_stall_ms": max((ms for _, ms in stalls), default=0.0),
            "longest_stall_without_full_gc_ms": max(others, default=0.0),
            "stalls_over_20ms": sum(1 for _, ms in stalls if ms > 20),
            "full_gcs": len(full),
            "longest_full_gc_ms": max((ms for _, ms in full), default=0.0),
        }


class Driver:
    """Drives updates of the default source: the simulator's usage changes, then the first
    client sends ``refresh``; the next one once every subscriber has it plus ``GAP_S``."""

    def __init__(self, relay: Relay, load: LoadGroup, upstream: Upstream) -> None:
        self.relay = relay
        self.load = load
        self.upstream = upstream
        self.burst = 0.0

    async def window(self, name: str, until: Callable[[], bool]) -> Window:
        window = Window(name)
        await self.load.record()
        pids = self.load.pids
        cpu_before = cpu_seconds(self.relay.process.pid)
        load_before = sum(cpu_seconds(pid) for pid in pids)
        window.started = time.monotonic_ns()
        while not until():
            self.burst = (self.burst + 0.7) % 100
            await self.upstream.set_usage(round(self.burst, 1))
            seq, sent = await self.load.trigger("refresh")
            window.published[seq] = sent
            if await self.load.wait_complete(seq, UPDATE_TIMEOUT_S) is None:
                window.incomplete += 1
            await asyncio.sleep(GAP_S)
        window.ended = time.monotonic_ns()
        window.relay_cpu_s = cpu_seconds(self.relay.process.pid) - cpu_before
        window.load_cpu_s = sum(cpu_seconds(pid) for pid in pids) - load_before
        result = await self.load.latencies(window.published)
        window.latencies_ms = [v / 1000 for v in result["latencies_us"]]
        expected = self.load.subscribed * len(window.published)
        window.delivered_pct = 100 * len(window.latencies_ms) / expected if expected else 0.0
        return window


def _for(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


async def under_load(
    setup: Setup, database: Path, upstream: Upstream, probe: bool
) -> dict[str, Any]:
    """The catch-up held, subscribers connected; before, during and after the catch-up."""
    args = setup.args
    expected = len(setup.expected)
    probe_file = setup.workdir / f"{database.stem}-probe.json" if probe else None
    receiver = await Receiver.start(setup.load_cpus, hang=True)
    try:
        relay = await start_relay(setup, database.stem, database, receiver, 300.0, probe_file)
        load: LoadGroup | None = None
        try:
            held = await receiver.command(
                "wait_in_flight", n=min(CONCURRENCY, expected), timeout=60
            )
            if not held["ok"]:
                raise RuntimeError(f"the catch-up did not start: {held}")
            load = await LoadGroup.start(
                "relay", relay.url, cpus=setup.load_cpus, headers=relay.headers
            )
            connected = await load.connect(args.subscribers)
            if connected["subscribed"] < args.subscribers:
                raise RuntimeError(f"only {connected} of {args.subscribers} subscribed")
            log(
                f"catch-up held with {held['in_flight']} reports in flight; "
                f"{connected['subscribed']} subscribers in {connected['elapsed_s']:.1f} s"
            )
            await asyncio.sleep(1.0)
            driver = Driver(relay, load, upstream)
            before = await driver.window("before", _for(args.baseline_seconds))
            waiting = asyncio.create_task(
                receiver.command("wait_accepted", n=expected, timeout=CATCHUP_TIMEOUT_S)
            )
            receiver_cpu = cpu_seconds(receiver.pid)
            released = (await receiver.command("recover"))["t"]
            # This window starts just before the release and ends just after the last
            # acceptance: its CPU is the catch-up's, plus the updates driven meanwhile.
            during = await driver.window("during", waiting.done)
            done = await waiting
            receiver_cpu = cpu_seconds(receiver.pid) - receiver_cpu
            if not done["ok"]:
                raise RuntimeError(
                    f"under load: {done['accepted']} of {expected} reports accepted in "
                    f"{CATCHUP_TIMEOUT_S:g} s; log: {log_tail(relay.log)}"
                )
            catchup_s = (done["t"] - released) / 1e9
            after = await driver.window("after", _for(args.baseline_seconds))
            health = await reports_health(relay)
            noted = await read_probe(relay, probe_file) if probe_file is not None else None
        finally:
            if load is not None:
                await load.close()
            await stop_process(relay.process)
        windows = (before, during, after)
        figures = {w.name: w.figures() for w in windows}
        if noted is not None:
            for w in windows:
                figures[w.name].update(w.probed(noted))
                figures[w.name]["window_ns"] = [w.started, w.ended]
        per_update = before.relay_cpu_s / max(1, len(before.published))
        log(
            f"caught up in {catchup_s:.1f} s; p99 before / during / after: "
            + " / ".join(f"{figures[w]['p99_ms']:.1f}" for w in WINDOWS)
            + " ms"
        )
        return {
            "windows": figures,
            "latencies_ms": {w.name: w.latencies_ms for w in windows},
            "catchup_s": catchup_s,
            # The relay's CPU in the catch-up window, less what its updates cost at the
            # rate of the window before: what the reports cost.
            "report_cpu_s": during.relay_cpu_s - per_update * len(during.published),
            "receiver_cpu_s": receiver_cpu,
            "receiver": await check_receiver(receiver, setup),
            "health": health,
            "probe": noted,
        }
    finally:
        await receiver.stop()


# -- the table ----------------------------------------------------------------------------


def _cell(values: list[float], digits: int = 1) -> str:
    """The median of the runs, with (min..max) when there are several."""
    if not values:
        return "n/a"
    median = f"{statistics.median(values):,.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):,.{digits}f}..{max(values):,.{digits}f})"


def table(runs: list[dict[str, Any]], args: argparse.Namespace, reports: int) -> str:
    probed = args.probe
    header = (
        f"| window ({args.subscribers:,} subscribers) | updates | p50 (ms) | p99 (ms) | max (ms) "
        "| relay CPU per update (ms) |"
    )
    rule = "|---|---:|---:|---:|---:|---:|"
    if probed:
        header += (
            " longest event-loop stall (ms) | ... apart from full GCs (ms) "
            "| full GCs per run, longest (ms) |"
        )
        rule += "---:|---:|---:|"
    lines = [header, rule]
    labels = {
        "before": "before: catch-up held, no report work",
        "during": f"during the catch-up of {reports:,} reports",
        "after": "after: every report delivered",
    }
    for name, label in labels.items():
        windows = [run["load"]["windows"][name] for run in runs]

        def values(key: str, windows: list[dict[str, Any]] = windows) -> list[float]:
            return [w[key] for w in windows if w.get(key) is not None]

        row = (
            f"| {label} | {_cell(values('updates'), 0)} | {_cell(values('p50_ms'), 2)} "
            f"| {_cell(values('p99_ms'), 2)} | {_cell(values('max_ms'), 2)} "
            f"| {_cell(values('relay_cpu_per_update_ms'))} |"
        )
        if probed:
            counts = "/".join(f"{n:.0f}" for n in values("full_gcs"))
            longest = max(values("longest_full_gc_ms"), default=0.0)
            gcs = f"{counts}, up to {longest:,.1f}" if longest else counts
            row += (
                f" {_cell(values('longest_stall_ms'))} "
                f"| {_cell(values('longest_stall_without_full_gc_ms'))} | {gcs} |"
            )
        lines.append(row)
    cold = [run["cold"] for run in runs]
    load = [run["load"] for run in runs]
    cold_wall = [c["wall_s"] for c in cold]
    load_wall = [c["catchup_s"] for c in load]
    lines += [
        "",
        f"| catch-up of {reports:,} reports | wall (s) | reports/s | relay CPU (s) "
        "| receiver CPU (s) |",
        "|---|---:|---:|---:|---:|",
        f"| cold start, no clients: relay started → all accepted | {_cell(cold_wall)} "
        f"| {_cell([reports / s for s in cold_wall], 0)} "
        f"| {_cell([c['relay_cpu_s'] for c in cold], 2)}, start-up included "
        f"| {_cell([c['receiver_cpu_s'] for c in cold], 2)} |",
        f"| under load: receiver released → all accepted | {_cell(load_wall)} "
        f"| {_cell([reports / s for s in load_wall], 0)} "
        f"| {_cell([c['windows']['during']['relay_cpu_s'] for c in load], 2)}, of which "
        f"reports ≈ {_cell([c['report_cpu_s'] for c in load], 2)} "
        f"| {_cell([c['receiver_cpu_s'] for c in load], 2)} |",
    ]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reports", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="4 sources x 5 days, 100 subscribers, 1 run"
    )
    parser.add_argument("--sources", type=int, help="sources (default 20; quick 4)")
    parser.add_argument("--days", type=int, help="closed days owed (default 35; quick 5)")
    parser.add_argument("--subscribers", type=int, help="WebSocket clients (1000; quick 100)")
    parser.add_argument(
        "--baseline-seconds", type=float, help="length of the before and after windows (8; 2)"
    )
    parser.add_argument("--runs", type=int, help="runs of both parts (3; quick 1)")
    parser.add_argument(
        "--every", type=float, default=600.0, help="seconds between seeded snapshots"
    )
    parser.add_argument(
        "--probe", action="store_true", help="note event-loop stalls and full GCs in the relay"
    )
    parser.add_argument("--output", type=Path, help="write figures and latencies as JSON here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--serve-receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--hang", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    fill_sizes(
        args,
        {
            "sources": (4, 20),
            "days": (5, 35),
            "subscribers": (100, 1000),
            "baseline_seconds": (2.0, 8.0),
            "runs": (1, 3),
        },
    )
    if min(args.sources, args.subscribers, args.runs) < 1:
        parser.error("--sources, --subscribers and --runs must be at least 1")
    if not 1 <= args.days <= 400:
        parser.error("--days must be from 1 to 400 (report_catchup_days)")
    if args.every <= 0 or args.baseline_seconds <= 0:
        parser.error("--every and --baseline-seconds must be positive")
    return args


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    raise_nofile_limit()
    cpus = sorted(os.sched_getaffinity(0))
    relay_cpus = load_cpus = None
    if not args.no_pin and len(cpus) >= 2:
        relay_cpus, load_cpus = {cpus[0]}, set(cpus[1:])
        os.sched_setaffinity(0, load_cpus)
    sources = source_names(args.sources)
    now = datetime.now(UTC)
    seed = workdir / "seed.db"
    log(f"seeding {args.days + 1} days of {args.sources} sources, a snapshot each {args.every:g} s")
    started = time.perf_counter()
    snapshots = build_store(seed, sources, args.days + 1, args.every, now)
    figures: dict[str, Any] = {"snapshots": snapshots, "seed_s": time.perf_counter() - started}
    with contextlib.closing(sqlite3.connect(seed)) as conn:
        (figures["ledger_rows"],) = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()
    upstream = await Upstream.start(sys.executable, load_cpus)
    try:
        config = workdir / "config.toml"
        write_config(config, sources, upstream.url)
        setup = Setup(
            workdir=workdir,
            config=config,
            sources=sources,
            expected=expected_keys(sources, args.days, now.date()),
            relay_cpus=relay_cpus,
            load_cpus=load_cpus,
            args=args,
        )
        figures["expected_reports"] = len(setup.expected)
        figures["runs"] = []
        for number in range(1, args.runs + 1):
            databases = {part: workdir / f"{part}-{number}.db" for part in ("cold", "load")}
            for database in databases.values():
                shutil.copyfile(seed, database)
            log(f"run {number}: cold start, {len(setup.expected)} reports owed, no clients")
            cold = await cold_start(setup, databases["cold"])
            log(f"run {number}: caught up in {cold['wall_s']:.1f} s from the relay's start")
            log(f"run {number}: under load, {args.subscribers} subscribers")
            load = await under_load(setup, databases["load"], upstream, args.probe)
            figures["runs"].append({"cold": cold, "load": load})
            for database in databases.values():
                database.unlink(missing_ok=True)
    finally:
        await upstream.stop()
    if datetime.now(UTC).date() != now.date():
        figures["note"] = "the UTC day changed during the run: one more day was owed meanwhile"
    return figures


def problems(figures: dict[str, Any]) -> list[str]:
    """What went wrong: a report missing or sent under two bodies, a report left pending
    or failed, an update that did not reach every subscriber."""
    found = []
    for number, run_figures in enumerate(figures["runs"], 1):
        for part in ("cold", "load"):
            got = run_figures[part]
            receiver, health = got["receiver"], got["health"]
            if receiver["missing"] or receiver["keys_with_several_bodies"]:
                found.append(f"run {number}, {part}: {receiver}")
            if health["pending"] or health["failed"]:
                found.append(f"run {number}, {part}: /healthz says {health}")
        for name, window in run_figures["load"]["windows"].items():
            if window["incomplete_updates"]:
                found.append(
                    f"run {number}, {name}: {window['incomplete_updates']} updates did not "
                    "reach every subscriber"
                )
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_receiver is not None:
        asyncio.run(serve_receiver(args.serve_receiver, args.hang))
        return 0
    session = run_session("bench-reports-", lambda workdir: run(args, workdir))
    machine, figures = session.machine, session.result
    runs = figures["runs"]
    reports = figures["expected_reports"]
    print(
        f"\nusage-monitor report catch-up benchmark, {session.started_at:%Y-%m-%d %H:%M} UTC: "
        f"{machine['cores']} cores {machine['cpu_model']}, Python {machine['python']}, "
        f"SQLite {sqlite3.sqlite_version}; {args.sources} sources x {args.days} days = "
        f"{reports:,} reports ({figures['snapshots']:,} seeded snapshots, "
        f"{figures['ledger_rows']:,} ledger rows, seeded in {figures['seed_s']:.1f} s); "
        f"report_concurrency {CONCURRENCY}; {args.runs} run{'s' if args.runs > 1 else ''}"
        f"{', probed' if args.probe else ''}; {session.load_average()}\n"
    )
    print(table(runs, args, reports))
    accepted = [run[part]["receiver"]["accepted"] for run in runs for part in ("cold", "load")]
    statuses: Counter[str] = Counter()
    for run_figures in runs:
        for part in ("cold", "load"):
            statuses.update(run_figures[part]["receiver"]["statuses"])
    print(
        f"\nReceiver: {min(accepted):,} of {reports:,} reports accepted in every catch-up "
        f"(statuses {dict(statuses)})"
    )
    if "note" in figures:
        print(f"Note: {figures['note']}")
    if args.output:
        session.write(
            args.output,
            "usage-monitor-reports-benchmark/1",
            {**vars(args), "output": str(args.output)},
            sqlite=sqlite3.sqlite_version,
            **figures,
        )
    found = problems(figures)
    for problem in found:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
