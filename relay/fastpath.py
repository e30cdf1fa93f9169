"""
One pre-encoded frame to many connections, at the cost of a socket write each.

A WebSocket frame from server to client is not masked, so with compression off
the bytes of an update are identical for every subscriber. The hub frames each
update once (``encode_text_frame``) and a ``DirectWriter`` writes those bytes
straight to a connection's transport: the shortcut websockets' ``broadcast()``
takes, minus its per-connection framing.

The shortcut reads the state of uvicorn's sans-I/O WebSocket protocol, which
is not public API. So it is an optimisation that can only ever be switched
off, never a dependency:

- ``DirectWriter.attach`` looks for every attribute it needs once, when the
  connection is accepted, and gives no writer (the connection then uses the
  ordinary ASGI send) when anything is missing or of the wrong kind;
- ``write`` declines (returns False, and the caller queues the frame for the
  ASGI send) unless the connection is open, idle and writable;
- an exception inside ``write`` turns the shortcut off for that connection
  for good, and the frame goes the ordinary way too, so no update is lost.

"Writable" is the protocol's ``writable`` event, which its own ASGI send waits
for too. It means something only when the protocol clears it as the
transport's buffer fills, i.e. when its class overrides asyncio's no-op
``pause_writing`` (uvicorn 0.52.1 on); without that a direct write would never
wait for a client that stops reading, so such a protocol gets no writer.

The uvicorn versions it was verified with are the range pinned in
``pyproject.toml``; CI runs the relay's tests on both ends of that range.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import Receive
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State

__all__ = ["DirectWriter", "encode_text_frame"]

logger = logging.getLogger("usage_monitor.relay")


def encode_text_frame(text: str) -> bytes:
    """The complete, unmasked wire bytes of one text frame."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


class DirectWriter:
    """Writes pre-encoded frames to one uvicorn sans-I/O WebSocket connection."""

    # Each is logged once per process, not once per connection.
    _unavailable_logged = False
    _failure_logged = False

    def __init__(
        self,
        protocol: Any,
        conn: Protocol,
        transport: asyncio.WriteTransport,
        writable: asyncio.Event,
    ) -> None:
        self._protocol = protocol
        self._conn = conn
        self._transport = transport
        self._writable = writable
        self.enabled = True

    @classmethod
    def attach(cls, receive: Receive) -> DirectWriter | None:
        """A writer for the connection behind the ASGI ``receive``, or None when it cannot have one.

        uvicorn hands each connection's ``receive`` bound method to the app;
        its ``__self__`` is the protocol object whose state the writer reads.
        """
        protocol = getattr(receive, "__self__", None)
        conn = getattr(protocol, "conn", None)
        transport = getattr(protocol, "transport", None)
        writable = getattr(protocol, "writable", None)
        usable = (
            isinstance(conn, Protocol)
            and isinstance(transport, asyncio.WriteTransport)
            and isinstance(writable, asyncio.Event)
            and isinstance(getattr(protocol, "close_sent", None), bool)
        )
        if not usable:
            DirectWriter._log_unavailable(protocol)
            return None
        assert isinstance(conn, Protocol)
        assert isinstance(transport, asyncio.WriteTransport)
        assert isinstance(writable, asyncio.Event)
        no_flow_control = asyncio.BaseProtocol.pause_writing
        if getattr(type(protocol), "pause_writing", no_flow_control) is no_flow_control:
            DirectWriter._log_unavailable(protocol)  # nothing would ever clear writable
            return None
        if conn.extensions:  # a compressed connection frames each message its own way
            return None
        return cls(protocol, conn, transport, writable)

    def write(self, frame: bytes) -> bool:
        """Write ``frame`` now if the connection can take it; False means "use the ASGI send"."""
        if not self.enabled:
            return False
        try:
            if (
                self._protocol.close_sent
                or not self._writable.is_set()
                or self._conn.state is not State.OPEN
                or self._transport.is_closing()
            ):
                return False
            self._transport.write(frame)
        except Exception:
            self.enabled = False
            if not DirectWriter._failure_logged:
                DirectWriter._failure_logged = True
                logger.exception("a direct write failed; that connection uses the ASGI send now")
            return False
        return True

    @staticmethod
    def _log_unavailable(protocol: object) -> None:
        if not DirectWriter._unavailable_logged:
            DirectWriter._unavailable_logged = True
            logger.warning(
                "the fan-out shortcut does not apply to %s; connections use the ASGI send",
                type(protocol).__name__,
            )
