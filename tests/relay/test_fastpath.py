"""Pre-encoded events written straight to idle connections, without breaking order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from common.models import Snapshot
from monitor.service import UsageUpdated
from relay.fastpath import DirectWriter, encode_text_frame
from relay.hub import Outbox
from tests.conftest import RelayHarness

from .wire import connect, next_event, request, subscribe_with_snapshot

#: What DirectWriter.attach needs of the protocol object behind ``receive``.
REQUIRED = ("conn", "transport", "writable", "close_sent")


class RecordingWriter:
    """A direct writer that records what it wrote, or refuses as a paused socket would."""

    def __init__(self, accepts: bool = True) -> None:
        self.accepts = accepts
        self.written: list[bytes] = []

    def write(self, frame: bytes) -> bool:
        if self.accepts:
            self.written.append(frame)
        return self.accepts


def parse(wire: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(wire)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("text", ["{}", "é" * 200, "x" * 70_000])
def test_encoded_frame_is_one_unmasked_text_frame(text: str) -> None:
    """The pre-encoded bytes parse back as a single final text frame carrying the text."""
    frame = parse(encode_text_frame(text))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data.decode() == text


def test_idle_connection_gets_the_event_written_directly() -> None:
    """With nothing queued, an event's bytes go to the writer and nothing is queued."""
    writer = RecordingWriter()
    outbox = Outbox(direct=writer)
    outbox.put_event("usage", "{}", b"wire")
    assert writer.written == [b"wire"]


@pytest.mark.anyio
async def test_event_waits_behind_a_queued_reply() -> None:
    """An event never overtakes a reply still in the queue."""
    writer = RecordingWriter(accepts=False)  # the socket is paused: the reply waits
    outbox = Outbox(direct=writer)
    outbox.put_reply("reply")
    writer.accepts = True
    outbox.put_event("usage", "event", b"wire")
    outbox.close(1000, "end of test")
    sent: list[str] = []

    async def send(frame: str) -> None:
        sent.append(frame)

    with pytest.raises(anyio.EndOfStream):
        await outbox.drain(send)
    assert writer.written == []
    assert sent == ["reply", "event"]


@pytest.mark.anyio
async def test_event_waits_while_a_frame_is_being_sent() -> None:
    """During a send that has not finished, events are queued, not written around it."""
    writer = RecordingWriter(accepts=False)  # the reply goes through the queue
    outbox = Outbox(direct=writer)
    sending = anyio.Event()
    finish = anyio.Event()
    sent: list[str] = []

    async def slow_send(frame: str) -> None:
        sending.set()
        await finish.wait()
        sent.append(frame)

    async def drain_until_closed() -> None:
        with pytest.raises(anyio.EndOfStream):
            await outbox.drain(slow_send)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(drain_until_closed)
            outbox.put_reply("reply")
            await sending.wait()
            writer.accepts = True
            outbox.put_event("usage", "event", b"wire")
            finish.set()
            outbox.close(1000, "end of test")
    assert writer.written == []
    assert sent == ["reply", "event"]


@pytest.mark.anyio
async def test_refused_write_falls_back_to_the_queue() -> None:
    """When the socket cannot take the bytes, the event is queued like any other."""
    outbox = Outbox(direct=RecordingWriter(accepts=False))
    outbox.put_event("usage", "event", b"wire")
    outbox.put_event("usage", "newer", b"wire2")
    outbox.close(1000, "end of test")
    sent: list[str] = []

    async def send(frame: str) -> None:
        sent.append(frame)

    with pytest.raises(anyio.EndOfStream):
        await outbox.drain(send)
    assert sent == ["newer"]


@pytest.mark.anyio
async def test_relay_connections_take_the_direct_path(relay: RelayHarness) -> None:
    """Under the relay's uvicorn setup every connection gets a direct writer and events arrive."""
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as first, connect(relay.ws_url) as second:
            await subscribe_with_snapshot(first)
            await subscribe_with_snapshot(second)
            assert all(outbox._direct is not None for outbox in relay.hub.connections)
            reply = await request(first, "refresh")
            pushed = await next_event(second, "usage.updated")
    assert pushed["data"] == reply["result"]["latest"]


def test_reply_to_an_idle_connection_is_written_directly() -> None:
    """A reply with nothing ahead of it goes out at once as one text frame."""
    writer = RecordingWriter()
    outbox = Outbox(direct=writer)
    outbox.put_reply('{"pong":true}')
    assert [parse(wire).data for wire in writer.written] == [b'{"pong":true}']


# -- feature detection ----------------------------------------------------------------


class FakeTransport(asyncio.WriteTransport):
    """A transport that records what is written, or raises while ``broken``."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.broken = False

    def write(self, data: Any) -> None:
        if self.broken:
            raise ConnectionResetError("test: the socket broke")
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


class FakeProtocol(asyncio.Protocol):
    """The state DirectWriter reads, held (and flow-controlled) the way uvicorn's protocol does."""

    def __init__(self) -> None:
        self.conn = ServerProtocol()
        self.conn.state = State.OPEN
        self.transport = FakeTransport()
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = False

    async def receive(self) -> dict[str, Any]:
        raise AssertionError("not called by DirectWriter")

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class NoFlowControlProtocol(FakeProtocol):
    """A protocol that keeps asyncio's no-op flow control, as uvicorn's did before 0.52.1."""

    pause_writing = asyncio.BaseProtocol.pause_writing
    resume_writing = asyncio.BaseProtocol.resume_writing


def attached(protocol: FakeProtocol) -> DirectWriter:
    writer = DirectWriter.attach(protocol.receive)
    assert writer is not None
    return writer


def test_a_protocol_with_everything_gets_a_writer_that_writes() -> None:
    """A receive whose protocol has every attribute gets a writer that writes to its transport."""
    protocol = FakeProtocol()
    assert attached(protocol).write(b"frame")
    assert protocol.transport.written == [b"frame"]


@pytest.mark.parametrize("name", REQUIRED)
def test_a_protocol_missing_an_attribute_gets_no_writer(name: str) -> None:
    """Without any one of the attributes, attach gives no writer."""
    protocol = FakeProtocol()
    delattr(protocol, name)
    assert DirectWriter.attach(protocol.receive) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("conn", object()),
        ("transport", asyncio.ReadTransport()),
        ("writable", threading.Event()),
        ("close_sent", 0),
    ],
)
def test_a_protocol_with_an_attribute_of_the_wrong_kind_gets_no_writer(
    name: str, value: object
) -> None:
    """An attribute of another type than the writer relies on means no writer."""
    protocol = FakeProtocol()
    setattr(protocol, name, value)
    assert DirectWriter.attach(protocol.receive) is None


def test_a_plain_function_gets_no_writer() -> None:
    """A receive that is no bound method has no protocol behind it, so no writer."""

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    assert DirectWriter.attach(receive) is None


def test_a_protocol_without_flow_control_gets_no_writer() -> None:
    """A protocol that never clears writable (asyncio's no-op pause_writing) gets no writer."""
    protocol = NoFlowControlProtocol()
    assert DirectWriter.attach(protocol.receive) is None


def test_a_paused_transport_declines_the_write() -> None:
    """While the transport's buffer is full the writer declines, and writes again once resumed."""
    protocol = FakeProtocol()
    writer = attached(protocol)
    protocol.pause_writing()  # what the transport calls once its buffer is full
    assert not writer.write(b"frame")
    protocol.resume_writing()
    assert writer.write(b"frame")
    assert protocol.transport.written == [b"frame"]


# -- a write that raises ----------------------------------------------------------------


def test_a_write_that_raises_turns_the_writer_off_for_good() -> None:
    """After a write raised, the writer declines every frame, even once the transport works."""
    protocol = FakeProtocol()
    writer = attached(protocol)
    protocol.transport.broken = True
    assert not writer.write(b"first")
    assert not writer.enabled
    protocol.transport.broken = False
    assert not writer.write(b"second")
    assert protocol.transport.written == []


@pytest.mark.anyio
async def test_outbox_sends_the_failed_frame_and_later_ones_through_drain_in_order() -> None:
    """When the direct write raises, that event and all later frames go through drain, in order."""
    protocol = FakeProtocol()
    outbox = Outbox(direct=attached(protocol))
    protocol.transport.broken = True
    sent_stream, sent = anyio.create_memory_object_stream[str](10)

    async def send(frame: str) -> None:
        sent_stream.send_nowait(frame)

    async def drain_until_closed() -> None:
        with pytest.raises(anyio.EndOfStream):
            await outbox.drain(send)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(drain_until_closed)
            outbox.put_event("usage", "first", encode_text_frame("first"))
            assert await sent.receive() == "first"
            # The outbox is idle and the socket works again, but the writer stays off.
            protocol.transport.broken = False
            outbox.put_event("usage", "second", encode_text_frame("second"))
            outbox.put_reply("reply")
            outbox.put_event("status", "third", encode_text_frame("third"))
            outbox.close(1000, "end of test")
            assert [await sent.receive() for _ in range(3)] == ["second", "reply", "third"]
    assert protocol.transport.written == []


# -- a real relay without the shortcut ----------------------------------------------------


def snapshot(seq: int) -> Snapshot:
    window = {"used_percent": 10.0, "reset_at": "2026-11-23T00:00:00Z", "exceeded": False}
    usage = {"product": "posthog_code", "user_id": 1, "burst": window, "sustained": window}
    return Snapshot.model_validate({"seq": seq, "fetched_at": datetime.now(UTC), "usage": usage})


async def publish_in_step(
    relay: RelayHarness, clients: Iterable[ClientConnection], seqs: Iterable[int]
) -> None:
    """Publish each update and see it reach every client before the next one is published."""
    for seq in seqs:
        relay.hub.publish(UsageUpdated(snapshot(seq)))
        for ws in clients:
            assert (await next_event(ws, "usage.updated"))["data"]["seq"] == seq


class CountingWriter:
    """Wraps a connection's writer and counts the frames it wrote."""

    def __init__(self, writer: DirectWriter) -> None:
        self.writer = writer
        self.written = 0

    def write(self, frame: bytes) -> bool:
        wrote = self.writer.write(frame)
        self.written += wrote
        return wrote


class BrokenTransport:
    """Stands in for one connection's transport in its writer only: every write raises."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        self.writes = 0

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def write(self, data: bytes) -> None:
        self.writes += 1
        raise ConnectionResetError("test: direct writes to this connection fail")


@pytest.mark.anyio
async def test_every_update_arrives_in_order_when_no_connection_has_the_shortcut(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no direct writer for any connection, every subscriber gets every update in order."""
    asked: list[object] = []

    def no_writer(receive: object) -> None:
        asked.append(receive)

    monkeypatch.setattr(DirectWriter, "attach", staticmethod(no_writer))
    await relay.hub.monitor.refresh_now()  # no poll of the relay's own from here on
    with anyio.fail_after(10):
        async with connect(relay.ws_url) as first, connect(relay.ws_url) as second:
            for ws in (first, second):
                await request(ws, "subscribe")
            assert len(asked) == 2
            assert all(outbox._direct is None for outbox in relay.hub.connections)
            await publish_in_step(relay, (first, second), range(1000, 1020))


@pytest.mark.anyio
async def test_a_connection_whose_direct_writes_start_failing_still_gets_every_update(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection whose direct writes start to fail gets every update; others are unaffected."""
    await relay.hub.monitor.refresh_now()
    with anyio.fail_after(10):
        async with connect(relay.ws_url) as failing:
            await request(failing, "subscribe")
            (failing_outbox,) = relay.hub.connections
            async with connect(relay.ws_url) as second, connect(relay.ws_url) as third:
                for ws in (second, third):
                    await request(ws, "subscribe")
                counters = {}
                for outbox in relay.hub.connections:
                    assert isinstance(outbox._direct, DirectWriter)
                    counters[outbox] = CountingWriter(outbox._direct)
                    monkeypatch.setattr(outbox, "_direct", counters[outbox])
                clients = (failing, second, third)
                await publish_in_step(relay, clients, range(1000, 1005))
                assert {counter.written for counter in counters.values()} == {5}

                failing_writer = counters[failing_outbox].writer
                broken = BrokenTransport(failing_writer._transport)
                monkeypatch.setattr(failing_writer, "_transport", broken)
                await publish_in_step(relay, clients, range(1005, 1025))
                assert (await request(failing, "ping"))["ok"] is True
    assert broken.writes == 1
    assert not failing_writer.enabled
    assert counters.pop(failing_outbox).written == 5
    assert [(c.writer.enabled, c.written) for c in counters.values()] == [(True, 25)] * 2
