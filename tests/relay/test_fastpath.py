"""Pre-encoded events written straight to idle connections, without breaking order."""

from __future__ import annotations

import anyio
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from relay.fastpath import encode_text_frame
from relay.hub import Outbox
from tests.conftest import RelayHarness

from .wire import connect, next_event, request, subscribe_with_snapshot


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
