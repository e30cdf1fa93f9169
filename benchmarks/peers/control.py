"""
The stdin control hook shared by the Python peers.

The driver writes one command a line to the peer's stdin and reads the answer
from its stdout as a line ``BENCH {json}`` (other output is ignored):

- ``publish``: make the next snapshot, push it to every subscriber, answer
  ``{"published": seq}`` once the server's publish call has returned;
- ``stats``: answer ``{"connections": n}``.

End of input stops the peer. ``{"ready": true, "port": p}`` is printed once
the server listens.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SNAPSHOT_PATH = Path(__file__).with_name("snapshot.json")


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write("BENCH " + json.dumps(message) + "\n")
    sys.stdout.flush()


def load_snapshot() -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads(SNAPSHOT_PATH.read_text())
    return snapshot


def next_snapshot(base: dict[str, Any], seq: int) -> dict[str, Any]:
    """The snapshot a poll with number ``seq`` would produce: new seq, time and burst."""
    usage = dict(base["usage"])
    usage["burst"] = dict(usage["burst"], used_percent=round(seq % 1000 / 10, 1))
    fetched_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return dict(base, seq=seq, fetched_at=fetched_at, usage=usage)


async def control_loop(
    publish: Callable[[], Awaitable[int]], connections: Callable[[], int]
) -> None:
    """Serve commands from stdin until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = line.strip().decode()
        if command == "publish":
            emit({"published": await publish()})
        elif command == "stats":
            emit({"connections": connections()})
        elif command:
            emit({"error": f"unknown command {command!r}"})
