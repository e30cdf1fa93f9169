"""
fastapi-websocket-pubsub peer: a ``PubSubEndpoint`` on FastAPI under uvicorn.

Clients subscribe to the topic ``usage`` with the library's RPC framing; on
``publish`` the next snapshot goes to ``PubSubEndpoint.publish``, which calls
each subscriber's ``notify`` over RPC. Uvicorn runs with per-message deflate
off, as the relay does. Run::

    python -m benchmarks.peers.pubsub_server --port 8766
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("WS_RPC_LOGGING", "NO_LOGS")

import uvicorn
from fastapi import FastAPI
from fastapi_websocket_pubsub import PubSubEndpoint  # type: ignore[import-untyped]

from .control import control_loop, emit, load_snapshot, next_snapshot

TOPIC = "usage"


class PubSubPeer:
    def __init__(self) -> None:
        self.base = load_snapshot()
        self.seq = int(self.base["seq"])
        self.endpoint = PubSubEndpoint()
        self.app = FastAPI()
        self.endpoint.register_route(self.app, "/pubsub")

    async def publish(self) -> int:
        self.seq += 1
        await self.endpoint.publish([TOPIC], data=next_snapshot(self.base, self.seq))
        return self.seq

    def connections(self) -> int:
        return len(self.endpoint.endpoint.manager.active_connections)


async def main(host: str, port: int) -> None:
    peer = PubSubPeer()
    config = uvicorn.Config(
        peer.app,
        host=host,
        port=port,
        ws_per_message_deflate=False,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            return
        await asyncio.sleep(0.02)
    emit({"ready": True, "port": port})
    await control_loop(peer.publish, peer.connections)
    server.should_exit = True
    await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
