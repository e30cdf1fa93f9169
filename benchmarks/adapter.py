"""
What every server under test looks like to the suite.

An ``Adapter`` says how to start the server, which client framing its
subscribers speak (``wire.py``) and which scenarios it takes part in; the
``Running`` server it starts knows how to publish one update. A publish
returns the update's ``seq`` and its publish time: ``time.monotonic_ns()``
taken right before the trigger leaves (CLOCK_MONOTONIC, shared by every
process on the machine), so nothing needs to be embedded in any frame.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic_ns
from typing import Any

from .gateway import ROOT, Upstream
from .loadctl import LoadGroup
from .procs import free_port, log_tail, pinned, stop_process

__all__ = [
    "CROWD",
    "FANOUT",
    "LATEST",
    "MEMORY",
    "STORM",
    "UPSTREAM",
    "Adapter",
    "Env",
    "Running",
]

FANOUT, STORM, LATEST, MEMORY, UPSTREAM = "fanout", "storm", "latest", "memory", "upstream"
CROWD = "crowd"


@dataclass
class Env:
    """Where things run: the server's cores, the load's cores, the upstream, the logs."""

    server_cpus: set[int] | None
    load_cpus: set[int] | None
    logdir: Path
    upstream: Upstream | None = None
    python: str = sys.executable
    notes: list[str] = field(default_factory=list)


class Running:
    """A started server: its process (measured by pid) and its clients' base URL."""

    def __init__(
        self, name: str, process: asyncio.subprocess.Process, port: int, log: Path | None
    ) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.log = log
        #: HTTP headers every client sends with its handshake (credentials)
        self.headers: dict[str, str] = {}

    async def publish(self, load: LoadGroup, *, change: bool = True) -> tuple[int, int]:
        """Trigger one update; return (seq, publish time in monotonic ns).

        ``change=False`` (back-to-back updates) may skip work that only makes
        the content differ."""
        raise NotImplementedError

    async def stop(self) -> None:
        await stop_process(self.process)


class PeerRunning(Running):
    """A peer driven through its stdin control hook (see ``peers/control.py``)."""

    async def answer(self, key: str) -> Any:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            if line.startswith(b"BENCH "):
                message = json.loads(line[6:])
                if key in message:
                    return message[key]
                if "error" in message:
                    raise RuntimeError(message["error"])
        raise RuntimeError(f"{self.name} exited: {log_tail(self.log)}")

    async def publish(self, load: LoadGroup, *, change: bool = True) -> tuple[int, int]:
        assert self.process.stdin is not None
        started = monotonic_ns()
        self.process.stdin.write(b"publish\n")
        await self.process.stdin.drain()
        return int(await self.answer("published")), started


class Adapter:
    """A peer by default: started with ``command()``, ready when it prints ``ready``."""

    name = ""
    label = ""
    framing = ""
    scenarios: frozenset[str] = frozenset()

    def unavailable(self) -> str | None:
        """Why this server cannot run here, or None."""
        return None

    def command(self, port: int, env: Env, interval: float | None) -> list[str]:
        raise NotImplementedError

    async def start(self, env: Env, *, interval: float | None = None) -> Running:
        port = free_port()
        log = env.logdir / f"{self.name}-{port}.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *self.command(port, env, interval),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                preexec_fn=pinned(env.server_cpus),
            )
        running = PeerRunning(self.name, process, port, log)
        try:
            await asyncio.wait_for(running.answer("ready"), 60)
        except BaseException:
            await running.stop()
            raise
        return running
