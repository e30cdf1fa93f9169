"""
Our relay as a server under test: ``usage-monitor serve`` polling the simulator.

An update: the driver changes the simulator's usage, then a subscriber sends
``refresh`` (the relay polls once and sends ``usage.updated`` to everyone). The
refresh goes out on one of the load's own connections, so N subscribers are N
connections (the relay accepts at most 10,000). Its state (SQLite history,
config) lives in a fresh temporary directory per start.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import websockets
from websockets.typing import Subprotocol

from .adapter import CROWD, FANOUT, LATEST, MEMORY, STORM, UPSTREAM, Adapter, Env, Running
from .gateway import ROOT, TOKEN, Upstream
from .loadctl import LoadGroup
from .procs import free_port, log_tail, pinned, wait_for_port

__all__ = ["OursAdapter"]

SUBPROTOCOL = Subprotocol("usage-relay.v1")

#: The relay's rate limits (by default 20 requests/s and 6 refreshes a minute per
#: connection, 12 refresh polls a minute relay-wide) are lifted, so that one
#: connection can drive a stream of updates and closed-loop get_latest measures
#: the server rather than the policy. The limiters still run on every request,
#: so their cost is measured.
UNLIMITED = {
    "USAGE_MONITOR_REQUESTS_PER_SECOND": "1000000",
    "USAGE_MONITOR_REQUEST_BURST": "1000000",
    "USAGE_MONITOR_REFRESHES_PER_MINUTE": "60000000",
    "USAGE_MONITOR_REFRESH_BURST": "1000000",
    "USAGE_MONITOR_REFRESH_POLLS_PER_MINUTE": "60000000",
    "USAGE_MONITOR_REFRESH_POLL_BURST": "1000000",
    "USAGE_MONITOR_FLOOD_CLOSE_AFTER": "1000000",
}


class OursRunning(Running):
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        port: int,
        log: Path,
        upstream: Upstream,
        workdir: str,
    ) -> None:
        super().__init__("ours", process, port, log)
        self.upstream = upstream
        self.workdir = workdir
        self.burst = 0.0

    async def publish(self, load: LoadGroup, *, change: bool = True) -> tuple[int, int]:
        if change:
            self.burst = (self.burst + 0.7) % 100
            await self.upstream.set_usage(round(self.burst, 1))
        return await load.trigger("refresh")

    async def wait_ready(self, within: float) -> None:
        """Until the relay answers ``get_latest`` with a snapshot (its first poll is done)."""
        await wait_for_port(self.port, self.process, within)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        request = json.dumps({"id": 1, "op": "get_latest", "topic": "usage"})
        async with websockets.connect(
            self.url + "/ws",
            subprotocols=[SUBPROTOCOL],
            compression=None,
            additional_headers=self.headers,
        ) as websocket:
            while True:
                await websocket.send(request)
                reply = json.loads(await websocket.recv())
                if reply.get("ok") and reply["result"].get("latest"):
                    return
                if loop.time() > deadline:
                    raise TimeoutError(f"the relay has no snapshot after {within} s: {reply}")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class OursAdapter(Adapter):
    name, label, framing = "ours", "usage-monitor relay", "relay"
    scenarios = frozenset({FANOUT, STORM, LATEST, MEMORY, UPSTREAM, CROWD})

    def unavailable(self) -> str | None:
        if (reason := Upstream.unavailable()) is not None:
            return reason
        for path in ("relay/app.py", "clients/cli.py"):
            if not (ROOT / path).exists():
                return f"{path} does not exist yet"
        done = subprocess.run(
            [*self._executable(), "serve", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0 or "--interval" not in done.stdout:
            return f"`usage-monitor serve --help` failed: {(done.stderr or done.stdout)[-300:]}"
        return None

    @staticmethod
    def _executable() -> list[str]:
        script = Path(sys.executable).with_name("usage-monitor")
        return [str(script)] if script.exists() else [sys.executable, "-m", "clients.cli"]

    def command(self, port: int, env: Env, interval: float | None) -> list[str]:
        assert env.upstream is not None
        return [
            *self._executable(),
            "serve",
            "--gateway-url",
            env.upstream.url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--interval",
            str(interval or 3600),
        ]

    async def start(
        self, env: Env, *, interval: float | None = None, open_files: int | None = None
    ) -> OursRunning:
        """Start the relay; ``open_files`` limits its open files, soft and hard."""
        if env.upstream is None:
            raise RuntimeError("our relay needs the gateway simulator")
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="bench-relay-")
        client_token = secrets.token_urlsafe(32)
        token_file = Path(workdir) / "client-token"
        token_file.touch(mode=0o600)
        token_file.write_text(client_token + "\n")
        environment = dict(os.environ)
        environment.update(
            USAGE_MONITOR_GATEWAY_TOKEN=TOKEN,
            USAGE_MONITOR_CLIENT_TOKEN_FILE=str(token_file),
            USAGE_MONITOR_DATABASE=str(Path(workdir) / "usage.db"),
            XDG_CONFIG_HOME=workdir,
            XDG_STATE_HOME=workdir,
            **UNLIMITED,
        )
        log = env.logdir / f"ours-{port}.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *self.command(port, env, interval),
                cwd=ROOT,
                env=environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                preexec_fn=pinned(env.server_cpus, open_files),
            )
        running = OursRunning(process, port, log, env.upstream, workdir)
        running.headers = {"Authorization": f"Bearer {client_token}"}
        try:
            await running.wait_ready(30)
        except BaseException as exc:
            await running.stop()
            raise RuntimeError(f"the relay did not start: {exc}; log: {log_tail(log)}") from exc
        return running
