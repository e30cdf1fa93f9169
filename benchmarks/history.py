"""
History at scale: ``python -m benchmarks.history [--rows 2000000] [--repeat 30]``.

Builds a store of ``--rows`` snapshots, one every 30 s up to now, inserted in
bulk in one transaction, and starts the relay on it (``python -m relay``,
polling the gateway simulator every 0.5 s, so snapshots keep being written
while it is measured). Then it measures, over real loopback WebSockets:

- ``get_history`` without ``since``, limit 500 and 5000: median, p99 and max
  of ``--repeat`` queries one after the other on one connection, and the
  relay's RSS growth (its peak during the queries minus its RSS before);
- snapshot write latency: from a snapshot's ``fetched_at`` to its row being
  visible to another reader of the database (polled every 2 ms), first with
  no queries, then while ``--load`` connections ask for history (limit 5000)
  back to back;
- ten ``get_history`` (limit 500) sent at once on ten connections: the time
  until the last answer, and how many were answered or refused.

It prints a Markdown table (with the machine and the date) and writes every
sample as JSON with ``--output``. ``--tree`` runs the relay from another
checkout of the project (the store is still built by this one), to measure
before and after a change on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from common.models import Snapshot
from monitor.store import SnapshotStore, stored_body

from .gateway import ROOT, TOKEN, Upstream
from .ours import SUBPROTOCOL, UNLIMITED
from .procs import free_port, log_tail, pinned, stop_process, wait_for_port
from .procstat import rss_kib
from .session import run_session
from .stats import percentile

__all__ = ["build_store", "main"]

#: How far apart the stored snapshots are: two million of them span 694 days.
EVERY = timedelta(seconds=30)
#: The relay polls this often, so that snapshots are written all along.
POLL_INTERVAL = 0.5
#: The relay's one source when started with ``--gateway-url``, as the stored rows are.
SOURCE = "default"
_MICROS = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ids = itertools.count(1)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _snapshot(seq: int, at: datetime) -> Snapshot:
    """A snapshot as the relay stores it, forecast included (about 700 bytes of JSON)."""
    forecast = {"burn_rate_percent_per_hour": 4.2, "projected_limit_at": None}
    return Snapshot.model_validate(
        {
            "seq": seq,
            "source": SOURCE,
            "fetched_at": at,
            "usage": {
                "product": "posthog_code",
                "user_id": 1234,
                "burst": {"used_percent": 37.5, "reset_at": at + timedelta(hours=6)},
                "sustained": {"used_percent": 12.1, "reset_at": at + timedelta(days=20)},
                "is_rate_limited": False,
                "is_pro": False,
                "code_usage_subscribed": True,
            },
            "derived": {
                "burst": {**forecast, "limit_before_reset": False},
                "sustained": {**forecast, "limit_before_reset": False},
            },
        }
    )


def build_store(path: Path, rows: int) -> None:
    """A store at ``path`` with ``rows`` snapshots every ``EVERY`` up to now.

    The store makes its schema (and epoch); all rows but the last are then
    inserted (under ``SOURCE``, with their meters' ``readings``) by one SQL
    statement in one transaction, with the journal off
    (nothing else has the file yet), and the last is appended by the store,
    so that the relay starts from a snapshot it can load.
    """
    store = SnapshotStore(path)
    store.open()
    store.close()
    now = datetime.now(UTC)
    first = now - EVERY * (rows - 1)
    body = stored_body(_snapshot(1, first))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        with conn:
            conn.execute(
                "INSERT INTO snapshots (source, fetched_at, seq, readings, body)"
                " WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i"
                "                         WHERE n + 1 < :count)"
                " SELECT :source, :first + n * :every, n + 1,"
                " json_object("
                "   'burst', json_array(n % 1000 / 10.0, NULL, :first + n * :every + :day),"
                "   'sustained',"
                "   json_array(n % 5000 / 50.0, NULL, :first + n * :every + 20 * :day)),"
                " :body FROM i",
                {
                    "source": SOURCE,
                    "count": rows - 1,
                    "first": (first - _EPOCH) // _MICROS,
                    "every": EVERY // _MICROS,
                    "day": timedelta(days=1) // _MICROS,
                    "body": body,
                },
            )
        conn.execute("PRAGMA journal_mode = WAL")
    store = SnapshotStore(path)
    store.append(_snapshot(rows, now))
    store.close()


class WriteWatcher(threading.Thread):
    """Reads the database every 2 ms and notes, for each new snapshot row, how long after
    its ``fetched_at`` it became visible: the relay's write latency, queue included."""

    def __init__(self, database: Path) -> None:
        super().__init__(daemon=True)
        self._uri = f"{database.absolute().as_uri()}?mode=ro"
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._latencies: list[float] = []

    def run(self) -> None:
        with closing(sqlite3.connect(self._uri, uri=True)) as conn:
            (last_id,) = conn.execute("SELECT MAX(id) FROM snapshots").fetchone()
            while not self._stopping.wait(0.002):
                rows = conn.execute(
                    "SELECT id, fetched_at FROM snapshots WHERE id > ? ORDER BY id", (last_id,)
                ).fetchall()
                seen = time.time()
                with self._lock:
                    for row_id, fetched_at in rows:
                        self._latencies.append((seen - fetched_at / 1e6) * 1000)
                        last_id = row_id

    def take(self) -> list[float]:
        """The latencies (ms) noted since the last call."""
        with self._lock:
            taken, self._latencies = self._latencies, []
        return taken

    def stop(self) -> None:
        self._stopping.set()
        self.join()


class PeakRss:
    """The highest RSS of a process, sampled every 10 ms while ``async with`` runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = rss_kib(pid)
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid))
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> PeakRss:
        self.before = self.peak = rss_kib(self.pid)
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / 1024


@dataclass
class Relay:
    process: asyncio.subprocess.Process
    url: str
    headers: dict[str, str]
    log: Path
    #: ``time.monotonic_ns()`` just before it was started, and how long it took to be ready.
    started_at: int = 0
    started_in: float = 0.0

    def connect(self) -> websockets.connect:
        return websockets.connect(
            self.url + "/ws",
            subprotocols=[SUBPROTOCOL],
            compression=None,
            additional_headers=self.headers,
            max_size=None,
            open_timeout=60,
        )


async def ask(ws: ClientConnection, op: str, **params: Any) -> tuple[float, dict[str, Any]]:
    """Send one request; return the seconds until its reply arrived, and the reply."""
    request_id = next(_ids)
    started = time.perf_counter()
    await ws.send(json.dumps({"id": request_id, "op": op, **params}))
    while True:
        frame = await ws.recv()
        elapsed = time.perf_counter() - started
        message = json.loads(frame)
        if message.get("type") == "result" and message.get("id") == request_id:
            return elapsed, message


async def ask_until(
    ws: ClientConnection, done: Callable[[dict[str, Any]], Any], op: str, **params: Any
) -> None:
    """Ask again every 50 ms until ``done(reply)`` is true."""
    while True:
        _, reply = await ask(ws, op, **params)
        if done(reply):
            return
        await asyncio.sleep(0.05)


async def start_relay(
    tree: Path, workdir: Path, database: Path, upstream: Upstream, cpus: set[int] | None
) -> Relay:
    variables = {
        "USAGE_MONITOR_GATEWAY_TOKEN": TOKEN,
        # Keep every stored row detailed: nothing is folded while it is measured.
        "USAGE_MONITOR_HISTORY_DETAIL_DAYS": "3650",
        "USAGE_MONITOR_HISTORY_HOURLY_DAYS": "3650",
    }
    arguments = ["--gateway-url", upstream.url, "--interval", str(POLL_INTERVAL)]
    arguments += ["--database", str(database)]
    # `python -m relay` imports the relay from the tree it runs in.
    return await launch_relay(workdir, arguments, variables, cpus=cpus, deadline=300, tree=tree)


async def launch_relay(
    workdir: Path,
    arguments: list[str],
    variables: dict[str, str],
    *,
    cpus: set[int] | None,
    deadline: float,
    tree: Path = ROOT,
    command: Sequence[str] = (sys.executable, "-m", "relay"),
) -> Relay:
    """Start ``command arguments`` (the relay) on a free loopback port, with a client
    token of its own in ``workdir`` and ``variables`` added to the environment; return it
    once its default source has a snapshot."""
    port = free_port()
    client_token = secrets.token_urlsafe(32)
    token_file = workdir / "client-token"
    token_file.touch(mode=0o600)
    token_file.write_text(client_token + "\n")
    environment = {
        **os.environ,
        **UNLIMITED,
        "USAGE_MONITOR_CLIENT_TOKEN_FILE": str(token_file),
        "XDG_CONFIG_HOME": str(workdir),
        "XDG_STATE_HOME": str(workdir),
        **variables,
    }
    log_path = workdir / "relay.log"
    started_at = time.monotonic_ns()
    with log_path.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command,
            *arguments,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            cwd=tree,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            preexec_fn=pinned(cpus),
        )
    relay = Relay(
        process, f"ws://127.0.0.1:{port}", {"Authorization": f"Bearer {client_token}"}, log_path
    )
    try:
        await wait_for_port(port, process, deadline)
        async with relay.connect() as ws:
            # Until its first poll is done.
            await ask_until(ws, lambda reply: reply["result"]["latest"], "get_latest")
    except BaseException as exc:
        await stop_process(process)
        raise RuntimeError(f"the relay did not start: {exc}; log: {log_tail(log_path)}") from exc
    relay.started_at = started_at
    relay.started_in = (time.monotonic_ns() - started_at) / 1e9
    return relay


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)


def _latency_summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p99": percentile(values, 99),
        "max": max(values),
    }


async def measure(relay: Relay, watcher: WriteWatcher, args: argparse.Namespace) -> Results:
    results = Results()
    pid = relay.process.pid
    results.figures["rss_after_start_mib"] = rss_kib(pid) / 1024

    log(f"write latency with no queries, {args.idle_seconds} s")
    watcher.take()
    await asyncio.sleep(args.idle_seconds)
    idle = watcher.take()
    results.samples["write_ms_idle"] = idle
    results.figures["write_ms_idle"] = _latency_summary(idle)

    async with relay.connect() as ws:
        for limit in (500, 5000):
            log(f"get_history limit {limit}, {args.repeat} times")
            times: list[float] = []
            async with PeakRss(pid) as rss:
                for _ in range(args.repeat):
                    elapsed, reply = await ask(ws, "get_history", limit=limit)
                    assert reply["ok"], reply
                    assert min(limit, args.rows) <= len(reply["result"]["points"]) <= limit
                    times.append(elapsed * 1000)
            results.samples[f"history_ms_{limit}"] = times
            results.figures[f"history_ms_{limit}"] = _latency_summary(times)
            results.figures[f"rss_growth_mib_{limit}"] = rss.growth_mib

    log(f"write latency while {args.load} connections query, {args.load_seconds} s")
    answered, refused = [0], [0]

    async def query_forever() -> None:
        async with relay.connect() as ws:
            while True:
                _, reply = await ask(ws, "get_history", limit=5000)
                if reply["ok"]:
                    answered[0] += 1
                else:
                    refused[0] += 1
                    await asyncio.sleep(0.05)

    watcher.take()
    async with PeakRss(pid) as rss:
        tasks = [asyncio.create_task(query_forever()) for _ in range(args.load)]
        await asyncio.sleep(args.load_seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    loaded = watcher.take()
    results.samples["write_ms_loaded"] = loaded
    results.figures["write_ms_loaded"] = _latency_summary(loaded)
    results.figures["load_queries"] = {"answered": answered[0], "refused": refused[0]}
    results.figures["rss_growth_mib_load"] = rss.growth_mib

    log("ten get_history at once")
    async with relay.connect() as ws:
        # The closed connections' last queries may still hold the relay's history slots.
        await ask_until(ws, lambda reply: reply["ok"], "get_history", limit=1)
    connections = [relay.connect() for _ in range(10)]
    sockets = [await connection.__aenter__() for connection in connections]
    try:
        started = time.perf_counter()
        replies = await asyncio.gather(*(ask(ws, "get_history", limit=500) for ws in sockets))
        wall = time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.__aexit__(None, None, None)
    ok = sum(1 for _, reply in replies if reply["ok"])
    refusals = sorted({reply["error"]["message"] for _, reply in replies if not reply["ok"]})
    results.figures["ten_at_once"] = {
        "wall_ms": wall * 1000,
        "answered": ok,
        "refused": 10 - ok,
        "refusals": refusals,
    }
    return results


def _ms(summary: dict[str, float]) -> str:
    if not summary.get("n"):
        return "no samples"
    return f"{summary['median']:,.1f} / {summary['p99']:,.1f} / {summary['max']:,.1f}"


def table(figures: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| rows in the store | {args.rows:,} ({figures['database_mb']:,.0f} MB) |",
        f"| building it (one transaction) | {figures['build_s']:.1f} s |",
        f"| relay start to first snapshot | {figures['start_s']:.1f} s |",
        f"| relay RSS after start | {figures['rss_after_start_mib']:.1f} MiB |",
    ]
    for limit in (500, 5000):
        lines.append(
            f"| get_history, no since, limit {limit}: median / p99 / max (ms) "
            f"| {_ms(figures[f'history_ms_{limit}'])} |"
        )
        lines.append(
            f"| RSS growth during {args.repeat} of them | "
            f"{figures[f'rss_growth_mib_{limit}']:.1f} MiB |"
        )
    idle, loaded = figures["write_ms_idle"], figures["write_ms_loaded"]
    load = figures["load_queries"]
    ten = figures["ten_at_once"]
    lines += [
        f"| snapshot write latency, no queries: median / p99 / max (ms) | {_ms(idle)} "
        f"({idle['n']} writes) |",
        f"| snapshot write latency, {args.load} connections querying limit 5000 back to back: "
        f"median / p99 / max (ms) | {_ms(loaded)} ({loaded['n']} writes) |",
        f"| history queries in those {args.load_seconds:g} s: answered / refused "
        f"| {load['answered']} / {load['refused']} |",
        f"| RSS growth meanwhile | {figures['rss_growth_mib_load']:.1f} MiB |",
        f"| ten get_history (limit 500) at once: last answer after, answered / refused "
        f"| {ten['wall_ms']:,.0f} ms, {ten['answered']} / {ten['refused']} |",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.history", description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000, help="snapshots in the store")
    parser.add_argument("--repeat", type=int, default=30, help="queries of each limit")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--load", type=int, default=4, help="connections querying in the load")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout to run the relay from")
    parser.add_argument("--output", type=Path, help="write figures and samples as JSON here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    if args.rows < 2:
        parser.error("--rows must be at least 2")
    return args


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    relay_cpus = load_cpus = None
    if not args.no_pin and len(cpus) >= 2:
        relay_cpus, load_cpus = {cpus[0]}, set(cpus[1:])
        os.sched_setaffinity(0, load_cpus)
    database = workdir / "usage.db"
    log(f"building a store of {args.rows:,} rows in {database}")
    started = time.perf_counter()
    build_store(database, args.rows)
    figures: dict[str, Any] = {
        "build_s": time.perf_counter() - started,
        "database_mb": database.stat().st_size / 1e6,
    }
    upstream = await Upstream.start(sys.executable, load_cpus)
    try:
        log(f"starting the relay from {args.tree}")
        relay = await start_relay(args.tree, workdir, database, upstream, relay_cpus)
        figures["start_s"] = relay.started_in
        watcher = WriteWatcher(database)
        watcher.start()
        try:
            results = await measure(relay, watcher, args)
        finally:
            watcher.stop()
            await stop_process(relay.process)
    finally:
        await upstream.stop()
    figures.update(results.figures)
    return {"figures": figures, "samples": results.samples}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = run_session("bench-history-", lambda workdir: run(args, workdir))
    machine, measured = session.machine, session.result
    print(
        f"\nusage-monitor history benchmark, {session.started_at:%Y-%m-%d %H:%M} UTC: "
        f"{machine['cores']} cores {machine['cpu_model']}, {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, Python {machine['python']}, "
        f"SQLite {sqlite3.sqlite_version}; relay from {args.tree}; {session.load_average()}\n"
    )
    print(table(measured["figures"], args))
    if args.output:
        session.write(
            args.output,
            "usage-monitor-history-benchmark/1",
            {**vars(args), "tree": str(args.tree), "output": str(args.output)},
            sqlite=sqlite3.sqlite_version,
            **measured,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
