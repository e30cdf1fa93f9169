"""
The driver's side of the load generators: start them, split clients across
them, send commands and collect their answers and completion events.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
from typing import Any

from .procs import pinned
from .procstat import raise_nofile_limit

__all__ = ["LoadGroup"]

STREAM_LIMIT = 256 * 1024 * 1024


class LoadProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.complete: dict[int, int] = {}
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if message.get("event") == "complete":
                self.complete[message["seq"]] = message["t"]
                self.changed.set()
            elif (future := self.waiting.pop(message.get("id"), None)) is not None:
                future.set_result(message)
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("load generator exited"))
        self.changed.set()

    async def command(self, name: str, **params: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        request_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        line = json.dumps({"id": request_id, "cmd": name, **params}) + "\n"
        self.process.stdin.write(line.encode())
        await self.process.stdin.drain()
        return await future

    async def wait_complete(self, seq: int, deadline: float) -> int | None:
        loop = asyncio.get_running_loop()
        while seq not in self.complete:
            if self.process.returncode is not None or self.reader.done():
                return None
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return None
        return self.complete[seq]


class LoadGroup:
    """One or more load generator processes playing the clients of one server."""

    def __init__(self, processes: list[LoadProcess]) -> None:
        self.processes = processes
        self.subscribed = 0

    @classmethod
    async def start(
        cls,
        framing: str,
        url: str,
        *,
        procs: int = 1,
        cpus: set[int] | None = None,
        headers: dict[str, str] | None = None,
    ) -> LoadGroup:
        """Start ``procs`` generators; ``headers`` go with every handshake (via the env,
        so that credentials stay out of the process list)."""
        raise_nofile_limit()
        environment = dict(os.environ, BENCH_HEADERS=json.dumps(headers or {}))
        processes = []
        for _ in range(procs):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.loadgen",
                "--framing",
                framing,
                "--url",
                url,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=STREAM_LIMIT,
                env=environment,
                preexec_fn=pinned(cpus),
            )
            processes.append(LoadProcess(process))
        return cls(processes)

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in self.processes]

    async def _all(self, name: str, **params: Any) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(p.command(name, **params) for p in self.processes)))

    async def connect(
        self, total: int, *, subscribe: bool = True, within: float = 120.0
    ) -> dict[str, Any]:
        """Bring the number of clients up to ``total``; return counts and timings."""
        need = max(0, total - self.subscribed)
        shares = [need // len(self.processes)] * len(self.processes)
        for i in range(need % len(self.processes)):
            shares[i] += 1
        answers = await asyncio.gather(
            *(
                p.command("connect", n=share, subscribe=subscribe, timeout=within)
                for p, share in zip(self.processes, shares, strict=True)
            )
        )
        self.subscribed = sum(a["subscribed"] for a in answers)
        return {
            "subscribed": self.subscribed,
            "failed": sum(a["failed"] for a in answers),
            "errors": [e for a in answers for e in a["errors"]][:3],
            "elapsed_s": max(a["elapsed_s"] for a in answers),
        }

    async def record(self) -> None:
        for process in self.processes:
            process.complete.clear()
        await self._all("record")

    async def wait_complete(self, seq: int, within: float) -> int | None:
        """Time when every client had snapshot ``seq``; None if that did not happen in time."""
        deadline = asyncio.get_running_loop().time() + within
        times = await asyncio.gather(*(p.wait_complete(seq, deadline) for p in self.processes))
        if any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    async def latencies(self, published: dict[int, int]) -> dict[str, Any]:
        answers = await self._all("latencies", published={str(k): v for k, v in published.items()})
        received: dict[str, int] = {}
        for answer in answers:
            for seq, count in answer["received"].items():
                received[seq] = received.get(seq, 0) + count
        return {
            "latencies_us": [v for a in answers for v in a["latencies_us"]],
            "received": received,
            "frame_bytes": max(a["frame_bytes"] for a in answers),
            "dropped": sum(a["dropped"] for a in answers),
        }

    async def requests(
        self, op: str, *, conns: int = 0, duration: float = 0.0, within: float = 30.0
    ) -> dict[str, Any]:
        """Storm (duration 0: one request per client at once) or closed loop for ``duration``."""
        per_process = -(-conns // len(self.processes)) if conns else 0
        answers = await self._all(
            "requests", op=op, conns=per_process, duration=duration, timeout=within
        )
        return {
            "clients": sum(a["clients"] for a in answers),
            "ok": sum(a["ok"] for a in answers),
            "errors": sum(a["errors"] for a in answers),
            "missing": sum(a["missing"] for a in answers),
            "elapsed_s": max(a["elapsed_s"] for a in answers),
            "send_spread_us": max(a["send_spread_us"] for a in answers),
            "latencies_us": [v for a in answers for v in a["latencies_us"]],
        }

    async def trigger(self, op: str, within: float = 30.0) -> tuple[int, int]:
        """Have the first client send ``op``; return (seq in its reply, send time)."""
        answer = await self.processes[0].command("trigger", op=op, timeout=within)
        if not answer.get("ok"):
            raise RuntimeError(f"{op} failed: {answer}")
        return int(answer["seq"]), int(answer["t"])

    async def close(self) -> None:
        for process in self.processes:
            if process.process.returncode is None:
                with contextlib.suppress(TimeoutError, RuntimeError, ConnectionError):
                    await asyncio.wait_for(process.command("close"), 10)
        for process in self.processes:
            if process.process.returncode is None:
                try:
                    await asyncio.wait_for(process.process.wait(), 10)
                except TimeoutError:
                    process.process.kill()
                    await process.process.wait()
            process.reader.cancel()
