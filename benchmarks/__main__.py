"""
Run the benchmark suite: ``python -m benchmarks [--quick] [--scenario NAME] [--servers ...]``.

Prints a Markdown table (median of the runs with min..max, each peer also as a
ratio to ours, and the issue's targets) and writes the figures, every run's
samples and the machine to ``benchmarks/results/<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .adapter import Env
from .config import FULL, QUICK, Config
from .gateway import Upstream
from .procstat import machine_info, raise_nofile_limit, software_info
from .report import Report
from .scenarios import SCENARIOS
from .servers import ADAPTERS

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small and fast (~20 s)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable); default: all",
    )
    parser.add_argument(
        "--servers",
        default=",".join(ADAPTERS),
        help=f"comma-separated subset of {','.join(ADAPTERS)} (default: all)",
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default: 3, quick: 1)")
    parser.add_argument("--output", type=Path, help="JSON path (default: benchmarks/results/)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    return parser.parse_args(argv)


def cpu_split(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """Server on the first usable core, everything else (load, driver, upstream) on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run_suite(
    args: argparse.Namespace, config: Config, logdir: Path
) -> tuple[Report, dict[str, Any]]:
    machine = machine_info()  # before the driver pins itself
    server_cpus, load_cpus = cpu_split(args.no_pin)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    env = Env(server_cpus=server_cpus, load_cpus=load_cpus, logdir=logdir)
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        env.notes.append(
            f"the machine was busy before the suite started (load average {load_before[0]:.2f}): "
            "other processes compete for the same cores, so figures are noisier than usual"
        )
    wanted = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in ADAPTERS]
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(unknown)}")
    servers: dict[str, dict[str, Any]] = {}
    adapters = []
    for name in wanted:
        adapter = ADAPTERS[name]
        reason = adapter.unavailable()
        servers[name] = {"label": adapter.label, "available": reason is None, "reason": reason}
        if reason is None:
            adapters.append(adapter)
        else:
            log(f"skipping {name}: {reason}")
            env.notes.append(f"{name} not run: {reason}")
    scenarios = args.scenario or list(SCENARIOS)
    if (reason := Upstream.unavailable()) is None:
        env.upstream = await Upstream.start(env.python, load_cpus)
    else:
        env.notes.append(f"no gateway simulator: {reason}")
    report = Report([name for name in ADAPTERS if name in wanted])
    try:
        for run in range(1, config.runs + 1):
            for scenario in scenarios:
                for adapter in adapters:
                    if scenario not in adapter.scenarios:
                        continue
                    log(f"run {run}/{config.runs}: {scenario} on {adapter.name}")
                    try:
                        samples = await SCENARIOS[scenario](adapter, env, config)
                    except Exception as exc:
                        log(f"  failed: {type(exc).__name__}: {exc}")
                        env.notes.append(f"run {run} {scenario} on {adapter.name} failed: {exc!r}")
                        continue
                    report.add(adapter.name, run, samples)
    finally:
        if env.upstream is not None:
            await env.upstream.stop()
    meta = {
        "schema": "usage-monitor-benchmarks/1",
        "variant": config.name,
        "runs": config.runs,
        "scenarios": scenarios,
        "servers": servers,
        "machine": {
            **machine,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "software": software_info(RESULTS.parent.parent),
        "pinning": {"server": sorted(server_cpus or []), "load": sorted(load_cpus or [])},
        "config": vars(config),
        "notes": env.notes,
    }
    return report, meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.runs:
        config = Config(**{**vars(config), "runs": args.runs})
    raise_nofile_limit()
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    logdir = (args.output.parent if args.output else RESULTS) / "logs" / stamp
    logdir.mkdir(parents=True, exist_ok=True)
    report, meta = asyncio.run(run_suite(args, config, logdir))
    finished = datetime.now(UTC)
    meta.update(
        started_at=started.isoformat(timespec="seconds"),
        finished_at=finished.isoformat(timespec="seconds"),
        duration_s=round((finished - started).total_seconds(), 1),
        command=["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])],
        logs=str(logdir),
    )
    output = args.output or RESULTS / f"{stamp}-{config.name}.json"
    report.write(output, meta)
    machine = meta["machine"]
    print(
        f"\nusage-monitor benchmarks ({config.name}, {config.runs} run(s), "
        f"{machine['cores']} cores {machine['cpu_model']}, Python {machine['python']}, "
        f"Node {machine['node']}; server pinned to {meta['pinning']['server']}, "
        f"load to {meta['pinning']['load']})\n"
    )
    print(report.table())
    for note in meta["notes"]:
        print(f"- note: {note}")
    print(f"\nJSON: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
