"""The upstream: the project's gateway simulator, run as its own process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from time import monotonic_ns
from typing import Any

import httpx

from .procs import free_port, pinned, stop_process, wait_for_port

__all__ = ["ROOT", "TOKEN", "Upstream"]

ROOT = Path(__file__).resolve().parent.parent
#: The simulator's default bearer token.
TOKEN = "sim-token"


class Upstream:
    """``python -m simulator``: serves ``/v1/usage/...`` and counts requests.

    Its ``/_sim/`` control API sets the usage, adds latency and reports
    ``requests_served``.
    """

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.AsyncClient(base_url=self.url, timeout=10)

    @staticmethod
    def unavailable() -> str | None:
        if not (ROOT / "simulator" / "__main__.py").exists():
            return "simulator/__main__.py does not exist yet"
        return None

    @classmethod
    async def start(cls, python: str, cpus: set[int] | None) -> Upstream:
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            python,
            "-m",
            "simulator",
            "--port",
            str(port),
            "--token",
            TOKEN,
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=pinned(cpus),
        )
        await wait_for_port(port, process, 30)
        return cls(process, port)

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        response = await self.http.post(path, json=body)
        response.raise_for_status()

    async def requests_served(self) -> int:
        response = await self.http.get("/_sim/state")
        response.raise_for_status()
        return int(response.json()["requests_served"])

    async def set_usage(self, burst_percent: float) -> None:
        await self._post("/_sim/usage", {"burst_percent": burst_percent})

    async def set_latency(self, seconds: float) -> None:
        await self._post("/_sim/latency", {"seconds": seconds})

    async def round_trip_ms(self, samples: int = 7) -> float:
        """Median time of one usage request made directly, as the relay would make it."""
        times = []
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(samples):
            started = monotonic_ns()
            response = await self.http.get("/v1/usage/posthog_code", headers=headers)
            times.append((monotonic_ns() - started) / 1e6)
            response.raise_for_status()
        return sorted(times)[len(times) // 2]

    async def stop(self) -> None:
        await self.http.aclose()
        await stop_process(self.process)
