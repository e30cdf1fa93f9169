"""
One pre-encoded frame to many connections, at the cost of a socket write each.

A WebSocket frame from server to client is not masked, so with compression off
the bytes of an update are identical for every subscriber. The hub frames each
update once (``encode_text_frame``) and a ``DirectWriter`` writes those bytes
straight to a connection's transport: the shortcut websockets' ``broadcast()``
takes, minus its per-connection framing.

It applies only under uvicorn's sans-I/O WebSocket implementation (the one the
relay configures, found through the ASGI ``receive`` callable, which Starlette
passes through unwrapped) and only while the connection is open, idle and
writable. In every other case the caller falls back to the connection's outbox
and the ordinary ASGI send, so correctness never depends on this module.
"""

from __future__ import annotations

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["DirectWriter", "encode_text_frame"]


def encode_text_frame(text: str) -> bytes:
    """The complete, unmasked wire bytes of one text frame."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


class DirectWriter:
    """Writes pre-encoded frames to one uvicorn WebSocket connection."""

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    @classmethod
    def attach(cls, websocket: WebSocket) -> DirectWriter | None:
        """A writer for ``websocket``, or None when the shortcut does not apply."""
        protocol = getattr(getattr(websocket, "_receive", None), "__self__", None)
        if not isinstance(protocol, WebSocketsSansIOProtocol) or protocol.conn.extensions:
            return None
        return cls(protocol)

    def write(self, frame: bytes) -> bool:
        """Write ``frame`` now if the connection can take it; False means "use the outbox"."""
        protocol = self._protocol
        if (
            protocol.close_sent
            or protocol.disconnected
            or not protocol.writable.is_set()
            or protocol.conn.state is not State.OPEN
            or protocol.transport.is_closing()
        ):
            return False
        protocol.transport.write(frame)
        return True
