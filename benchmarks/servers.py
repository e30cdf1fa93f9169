"""
The servers under test, by name. Each one serves the same snapshot.

- ``ours``: the usage-monitor relay (``ours.py``);
- ``broadcast``: python-websockets ``broadcast()`` with no protocol, the bare
  lower bound (``peers/broadcast_server.py``);
- ``trpc``: tRPC v11 WebSocket subscriptions on Node (``peers/trpc/``);
- ``pubsub``: fastapi-websocket-pubsub (``peers/pubsub_server.py``).

A peer publishes on the ``publish`` command of its stdin control hook.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .adapter import FANOUT, LATEST, MEMORY, STORM, Adapter, Env
from .gateway import TOKEN
from .ours import OursAdapter

__all__ = ["ADAPTERS"]

PEERS = Path(__file__).resolve().parent / "peers"


class BroadcastAdapter(Adapter):
    name, label, framing = "broadcast", "websockets broadcast()", "raw"
    scenarios = frozenset({FANOUT, MEMORY})

    def command(self, port: int, env: Env, interval: float | None) -> list[str]:
        return [env.python, "-m", "benchmarks.peers.broadcast_server", "--port", str(port)]


class PubSubAdapter(Adapter):
    name, label, framing = "pubsub", "fastapi-websocket-pubsub", "pubsub"
    scenarios = frozenset({FANOUT, MEMORY})

    def unavailable(self) -> str | None:
        try:
            import fastapi_websocket_pubsub  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            return "fastapi-websocket-pubsub is not installed (pip install -e '.[bench]')"
        return None

    def command(self, port: int, env: Env, interval: float | None) -> list[str]:
        return [env.python, "-m", "benchmarks.peers.pubsub_server", "--port", str(port)]


class TrpcAdapter(Adapter):
    """Installs its node_modules with ``npm ci`` (from package-lock.json) when missing."""

    name, label, framing = "trpc", "tRPC v11 (Node, ws)", "trpc"
    scenarios = frozenset({FANOUT, STORM, LATEST, MEMORY})
    directory = PEERS / "trpc"

    def unavailable(self) -> str | None:
        if shutil.which("node") is None:
            return "node is not installed"
        if (self.directory / "node_modules" / "@trpc" / "server").is_dir():
            return None
        npm = shutil.which("npm")
        if npm is None:
            return "npm is not installed"
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=self.directory,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            return "npm ci timed out"
        if done.returncode != 0:
            return f"npm ci failed: {done.stderr.strip()[-300:]}"
        return None

    def command(self, port: int, env: Env, interval: float | None) -> list[str]:
        command = ["node", str(self.directory / "server.mjs"), "--port", str(port)]
        if env.upstream is not None:
            command += ["--gateway-url", env.upstream.url, "--token", TOKEN]
        return command


#: in table order: ours first, then the lower bound, then the peers
ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (OursAdapter(), BroadcastAdapter(), TrpcAdapter(), PubSubAdapter())
}
