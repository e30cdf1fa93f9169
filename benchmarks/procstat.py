"""
What the kernel says about a process and the machine: CPU time, RSS, cores.

CPU time is utime + stime from ``/proc/<pid>/stat`` (all threads of the
process, in clock ticks, usually 10 ms); RSS is ``VmRSS`` from
``/proc/<pid>/status``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["cpu_seconds", "machine_info", "raise_nofile_limit", "rss_kib", "software_info"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by process ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.rstrip("\n") or None


def machine_info() -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "node": _node_version(),
        "rlimit_nofile": [soft, hard],
        "executable": sys.executable,
    }


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.rstrip("\n")


def software_info(root: Path) -> dict[str, Any]:
    """Versions of what is measured, and the commit (with local changes flagged)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in (
        "usage-monitor",
        "starlette",
        "uvicorn",
        "websockets",
        "picows",
        "uvloop",
        "fastapi-websocket-pubsub",
        "fastapi",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    lock = root / "benchmarks" / "peers" / "trpc" / "package-lock.json"
    try:
        packages = json.loads(lock.read_text())["packages"]
        for name in ("@trpc/server", "ws"):
            versions[name] = packages[f"node_modules/{name}"]["version"]
    except (OSError, KeyError, ValueError):
        pass
    return {
        "versions": versions,
        "commit": _git(root, "rev-parse", "HEAD").strip() or None,
        "uncommitted_changes_in": sorted(
            {line[3:].split("/")[0] for line in _git(root, "status", "--porcelain").splitlines()}
        ),
    }
