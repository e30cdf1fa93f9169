"""
The load generator: many WebSocket clients in one lean asyncio process (picows).

Started by the driver as ``python -m benchmarks.loadgen --framing NAME --url URL``
on its own core. It reads commands as JSON lines on stdin and answers each
with one JSON line on stdout carrying the same ``id``; between answers it may
print events ``{"event": "complete", "seq": s, "t": ns}``, sent when every
subscriber in this process has received snapshot ``s`` (or a later one).

Commands: ``connect`` (n more clients, subscribed or not), ``record`` (start
recording receipts afresh), ``latencies`` (publish times in, latencies out),
``requests`` (with duration 0 every client sends one request at once, a
storm; otherwise k clients each keep one request in flight for that long),
``trigger`` (the first client sends ``refresh``; answers its seq and send
time), ``close``. Times are ``time.monotonic_ns()``, which is CLOCK_MONOTONIC
and so shared with the driver and the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from array import array
from time import monotonic_ns
from typing import Any

from picows import WSListener, WSMsgType, WSTransport, ws_connect

from .procstat import raise_nofile_limit
from .wire import FRAMINGS, Framing, Kind, seq_of

IDLE, STORM, LOOP, TRIGGER = 0, 1, 2, 3
CONNECT_CONCURRENCY = 100


class Client(WSListener):
    __slots__ = ("acked", "gen", "max_seq", "mode", "sent_at", "transport")

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.transport: WSTransport | None = None
        self.acked = False
        self.max_seq = 0
        self.mode = IDLE
        self.sent_at = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.gen.on_connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        now = monotonic_ns()
        if frame.msg_type == WSMsgType.TEXT:
            self.gen.on_frame(self, frame.get_payload_as_bytes(), now)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gen.on_disconnected(self)

    def send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT, payload)


class LoadGen:
    def __init__(self, framing: Framing, url: str) -> None:
        self.framing = framing
        self.url = url
        self.clients: list[Client] = []
        self.subscribe = True
        self.acked = 0
        self.failed = 0
        self.dropped = 0
        self.acked_event = asyncio.Event()
        self.ack_target = 0
        # receipts, recorded after ``record``
        self.recording = False
        self.seqs = array("q")
        self.times = array("q")
        self.reached: dict[int, int] = {}
        self.frame_bytes = 0
        # request/reply
        self.request_id = 1
        self.reply_latencies = array("q")
        self.replies_ok = 0
        self.replies_err = 0
        self.pending = 0
        self.loop_deadline = 0
        self.last_reply = 0
        self.done = asyncio.Event()
        self.triggered: asyncio.Future[tuple[bool, int, int]] | None = None

    # ---- callbacks -------------------------------------------------------
    def on_connected(self, client: Client) -> None:
        message = self.framing.subscribe() if self.subscribe else None
        if message is None:
            if not self.subscribe:
                self._ack(client)
        else:
            client.send(message)

    def _ack(self, client: Client) -> None:
        client.acked = True
        self.acked += 1
        if self.acked >= self.ack_target:
            self.acked_event.set()

    def on_disconnected(self, client: Client) -> None:
        if client.acked:
            self.dropped += 1

    def on_frame(self, client: Client, payload: bytes, now: int) -> None:
        kind, seq, answer = self.framing.classify(payload)
        if answer is not None:
            client.send(answer)
        if kind == Kind.DATA:
            if not client.acked:
                client.max_seq = seq
                self._ack(client)
            elif seq > client.max_seq:
                self._on_snapshot(client, seq, now, len(payload))
        elif kind == Kind.REPLY_OK or kind == Kind.REPLY_ERR:
            if not client.acked:
                if kind == Kind.REPLY_OK:
                    self._ack(client)
                else:
                    self.failed += 1
            elif client.mode == TRIGGER:
                client.mode = IDLE
                if self.triggered is not None and not self.triggered.done():
                    ok = kind == Kind.REPLY_OK
                    self.triggered.set_result((ok, seq_of(payload), client.sent_at))
            elif client.mode != IDLE:
                self._on_reply(client, kind == Kind.REPLY_OK, now)

    def _on_snapshot(self, client: Client, seq: int, now: int, size: int) -> None:
        previous = client.max_seq or seq - 1
        client.max_seq = seq
        if not self.recording:
            return
        self.seqs.append(seq)
        self.times.append(now)
        self.frame_bytes = size
        reached = self.reached
        for s in range(max(previous + 1, seq - 64), seq + 1):
            count = reached.get(s, 0) + 1
            reached[s] = count
            if count == self.acked:
                emit({"event": "complete", "seq": s, "t": now})

    def _on_reply(self, client: Client, ok: bool, now: int) -> None:
        self.reply_latencies.append(now - client.sent_at)
        self.last_reply = now
        if ok:
            self.replies_ok += 1
        else:
            self.replies_err += 1
        if client.mode == LOOP and now < self.loop_deadline:
            self._send_request(client, "get_latest", now)
            return
        client.mode = IDLE
        self.pending -= 1
        if self.pending == 0:
            self.done.set()

    def _send_request(self, client: Client, op: str, now: int) -> None:
        self.request_id += 1
        client.sent_at = now
        client.send(self.framing.request(op, self.request_id))

    # ---- commands --------------------------------------------------------
    async def connect(self, n: int, subscribe: bool, within: float) -> dict[str, Any]:
        self.subscribe = subscribe
        self.ack_target = self.acked + n
        self.acked_event.clear()
        started = monotonic_ns()
        semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
        extra = dict(json.loads(os.environ.get("BENCH_HEADERS") or "{}"))
        if self.framing.subprotocol:
            extra["Sec-WebSocket-Protocol"] = self.framing.subprotocol
        errors: list[str] = []

        async def one() -> None:
            async with semaphore:
                for attempt in range(3):
                    try:
                        _, client = await ws_connect(
                            lambda: Client(self),
                            self.url,
                            extra_headers=extra or None,
                            websocket_handshake_timeout=30,
                        )
                        assert isinstance(client, Client)
                        self.clients.append(client)
                        return
                    except Exception as exc:
                        if attempt == 2:
                            self.failed += 1
                            errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        await asyncio.sleep(0.05 * (attempt + 1))

        await asyncio.gather(*(one() for _ in range(n)))
        connected_ns = monotonic_ns() - started
        if self.acked < self.ack_target and self.failed == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acked_event.wait(), within)
        return {
            "clients": len(self.clients),
            "subscribed": self.acked,
            "failed": self.failed,
            "errors": errors[:3],
            "connect_s": connected_ns / 1e9,
            "elapsed_s": (monotonic_ns() - started) / 1e9,
        }

    def record(self) -> dict[str, Any]:
        self.recording = True
        self.seqs = array("q")
        self.times = array("q")
        self.reached = {}
        return {"subscribed": self.acked}

    def latencies(self, published: dict[str, int]) -> dict[str, Any]:
        """Latency in µs of every receipt of a published seq, and the count per seq."""
        pub = {int(seq): t for seq, t in published.items()}
        out: list[float] = []
        last: dict[int, int] = {}
        for seq, t in zip(self.seqs, self.times, strict=True):
            sent = pub.get(seq)
            if sent is not None:
                out.append(round((t - sent) / 1000, 1))
                if t > last.get(seq, 0):
                    last[seq] = t
        return {
            "latencies_us": out,
            "received": {str(s): self.reached.get(s, 0) for s in pub},
            "last_receipt": {str(s): t for s, t in last.items()},
            "frame_bytes": self.frame_bytes,
            "dropped": self.dropped,
        }

    async def requests(self, op: str, conns: int, duration: float, within: float) -> dict[str, Any]:
        clients = [c for c in self.clients if c.acked][: conns or None]
        self.reply_latencies = array("q")
        self.replies_ok = self.replies_err = 0
        self.pending = len(clients)
        self.done.clear()
        mode = LOOP if duration > 0 else STORM
        started = monotonic_ns()
        self.loop_deadline = started + int(duration * 1e9)
        for client in clients:
            client.mode = mode
            self._send_request(client, op, monotonic_ns())
        sent_all = monotonic_ns()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), within + duration)
        for client in clients:
            client.mode = IDLE
        return {
            "clients": len(clients),
            "ok": self.replies_ok,
            "errors": self.replies_err,
            "missing": self.pending,
            "send_spread_us": (sent_all - started) / 1000,
            "elapsed_s": (self.last_reply - started) / 1e9 if self.last_reply > started else 0.0,
            "latencies_us": [round(v / 1000, 1) for v in self.reply_latencies],
        }

    async def trigger(self, op: str, within: float) -> dict[str, Any]:
        """Send ``op`` (refresh) on the first client: how a window asks for an update."""
        client = next(c for c in self.clients if c.acked)
        self.triggered = asyncio.get_running_loop().create_future()
        client.mode = TRIGGER
        self._send_request(client, op, monotonic_ns())
        ok, seq, sent_at = await asyncio.wait_for(self.triggered, within)
        return {"ok": ok, "seq": seq, "t": sent_at}

    def close(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.disconnect()


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve_commands(gen: LoadGen) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        name = command["cmd"]
        reply: dict[str, Any]
        if name == "connect":
            reply = await gen.connect(
                command["n"], command.get("subscribe", True), command.get("timeout", 60.0)
            )
        elif name == "record":
            reply = gen.record()
        elif name == "latencies":
            reply = gen.latencies(command["published"])
        elif name == "requests":
            reply = await gen.requests(
                command["op"],
                command.get("conns", 0),
                command.get("duration", 0.0),
                command.get("timeout", 30.0),
            )
        elif name == "trigger":
            reply = await gen.trigger(command["op"], command.get("timeout", 30.0))
        elif name == "close":
            gen.close()
            emit({"id": command["id"], "closed": True})
            await asyncio.sleep(0.2)
            return
        else:
            reply = {"error": f"unknown command {name!r}"}
        emit({"id": command["id"], **reply})


def main() -> None:
    parser = argparse.ArgumentParser(description="WebSocket load generator (picows)")
    parser.add_argument("--framing", choices=sorted(FRAMINGS), required=True)
    parser.add_argument("--url", required=True, help="ws://host:port, the framing adds the path")
    args = parser.parse_args()
    raise_nofile_limit()
    framing = FRAMINGS[args.framing]

    async def run() -> None:
        gen = LoadGen(framing, args.url.rstrip("/") + framing.path)
        await serve_commands(gen)

    try:
        import uvloop
    except ImportError:  # plain asyncio works, at a higher cost per frame
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
