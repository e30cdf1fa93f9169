"""
The bare lower bound: python-websockets ``broadcast()`` with no protocol at all.

Every connection is a subscriber. On connect it gets the current snapshot
(which also tells the client it is registered); on ``publish`` the next
snapshot is encoded once and handed to ``broadcast()`` for all connections.
Compression and keep-alive pings are off. Run::

    python -m benchmarks.peers.broadcast_server --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import json

from websockets.asyncio.server import ServerConnection, broadcast, serve

from .control import control_loop, emit, load_snapshot, next_snapshot


class Broadcaster:
    def __init__(self) -> None:
        self.base = load_snapshot()
        self.seq = int(self.base["seq"])
        self.frame = json.dumps(next_snapshot(self.base, self.seq), separators=(",", ":"))
        self.connections: set[ServerConnection] = set()

    async def handler(self, websocket: ServerConnection) -> None:
        self.connections.add(websocket)
        try:
            await websocket.send(self.frame)
            async for _ in websocket:
                pass
        finally:
            self.connections.discard(websocket)

    async def publish(self) -> int:
        self.seq += 1
        self.frame = json.dumps(next_snapshot(self.base, self.seq), separators=(",", ":"))
        broadcast(self.connections, self.frame)
        return self.seq


async def main(host: str, port: int) -> None:
    peer = Broadcaster()
    async with serve(
        peer.handler,
        host,
        port,
        compression=None,
        ping_interval=None,
        max_size=64 * 1024,
        backlog=4096,
    ):
        emit({"ready": True, "port": port})
        await control_loop(peer.publish, lambda: len(peer.connections))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
