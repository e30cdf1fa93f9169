"""
``ConnectionGuard``: bounds on connections that have not finished their request.

uvicorn gives a connection all the time it wants to send its request: an idle
socket, or one that sends half a request line, holds an open file for good,
and a thousand of them use up the relay's open-file limit. The guard sits in
front of uvicorn's HTTP protocol (it wraps the class uvicorn loaded, in
``config.http_protocol_class``) and watches the bytes go by:

- **A cap on connections still sending a request** (``max_pending``). While
  more are, the *oldest* of them is answered 503 and closed, as soon as it has
  had a second (``EVICTABLE_AFTER``, or half the header timeout) to send its
  request, or at once past twice the cap. A crowd that connects and sends nothing then holds
  at most twice ``max_pending`` files, and a client that sends its request at
  once (every real one) still gets in, which refusing the newest would not
  allow; a burst of real clients accepted together, all pending for a moment,
  is not mistaken for a crowd.
- **A deadline for every request head** (``header_timeout``): from the moment
  a connection is made, and on a keep-alive connection from the first byte of
  each further request, the head must be complete in time, or the connection
  is answered 408 and closed. Request bodies are skipped by their
  ``Content-Length``; a request with ``Transfer-Encoding`` is answered 411
  (the relay takes no request bodies besides small JSON).
- **WebSocket handshakes that uvicorn would leave unanswered.** uvicorn's
  sans-I/O WebSocket protocol parses the handshake again with websockets,
  whose limits (a line of 8,192 bytes with its CRLF, 128 headers) are lower
  than h11's, and when that parser fails it writes nothing and never closes.
  The guard checks an upgrade request the way websockets will, first: a line
  or header count over websockets' limits gets 431 (414 for the request
  line), another head it cannot parse gets 400, and the connection is closed.
- Once a head asking for a WebSocket upgrade is complete, the guard steps
  aside: uvicorn hands the transport to its WebSocket protocol
  (``transport.set_protocol``), so no callback reaches the guard any more. It
  releases its count when the head is complete.

Every refusal goes to one ``Refusals`` log (the first at once, then a line a
minute with the counts), shared with ``AcceptErrors``: the event loop's
handler that turns asyncio's "accept() out of system resource" reports (one
with a traceback for every failed ``accept()``) into the same kind of line.

Like ``relay.fastpath``, the guard relies on nothing it has not found:
``ConnectionGuard.install`` looks once for what it needs (the loaded
protocol class, websockets' request parser and limits) and leaves uvicorn as
it is, logging one line, when something is missing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import uvicorn

from .refusals import Refusals

__all__ = ["AcceptErrors", "ConnectionGuard"]

logger = logging.getLogger("usage_monitor.relay")

#: Where a request head ends, as h11 finds it (a bare LF is tolerated).
_HEAD_END: Final = re.compile(b"\n\r?\n")
#: Seconds a connection has to send its request before the cap on pending ones may close it
#: (as long as there are at most twice as many as the cap: past that, at once).
EVICTABLE_AFTER: Final = 1.0
#: A head still incomplete at this size is answered 431 (h11 answers 400 at its 16 KiB first).
MAX_HEAD_BYTES: Final = 64 * 1024

_REASONS: Final = {
    400: "Bad Request",
    408: "Request Timeout",
    411: "Length Required",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def _response(status: int, text: str) -> bytes:
    body = f"{status} {_REASONS[status]}: {text}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class _WebSocketParser:
    """websockets' handshake parser and its limits, as uvicorn's WebSocket protocol uses them."""

    def __init__(self) -> None:
        from websockets import http11, streams

        self.max_line = http11.MAX_LINE_LENGTH
        self.max_headers = http11.MAX_NUM_HEADERS
        if not (isinstance(self.max_line, int) and isinstance(self.max_headers, int)):
            raise TypeError("websockets' limits are not numbers")
        self._parse = http11.Request.parse
        self._reader = streams.StreamReader
        # It must accept a plain handshake, or it would refuse every one.
        if self.refusal(b"GET", b"/ws", [(b"host", b"localhost")]) is not None:
            raise TypeError("websockets' parser refuses a plain handshake")

    def refusal(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> int | None:
        """The status for a head websockets would not parse, or None if it would.

        The head is rebuilt as uvicorn hands it over (``METHOD target HTTP/1.1``,
        lowercase names), and checked against the limits first, so that their
        status does not depend on how a websockets version reports them.
        """
        request_line = method + b" " + target + b" HTTP/1.1"
        if len(request_line) + 2 > self.max_line:
            return 414
        lines = [name + b": " + value + b"\r\n" for name, value in headers]
        if len(lines) > self.max_headers or any(len(line) > self.max_line for line in lines):
            return 431
        reader = self._reader()
        reader.feed_data(b"".join([request_line, b"\r\n", *lines, b"\r\n"]))
        reader.feed_eof()
        try:
            next(self._parse(reader.read_line))
        except StopIteration:
            return None
        except Exception:
            return 400
        return 400  # it wanted more than the whole head


class _Head:
    """What the guard needs to know of one request head."""

    def __init__(self, raw: bytes) -> None:
        lines = [line.removesuffix(b"\r") for line in raw.split(b"\n")]
        method, _, rest = lines[0].partition(b" ")
        target, _, version = rest.partition(b" ")
        #: Whether the request line has the shape h11 accepts (else h11 answers 400).
        self.well_formed = bool(method and target and version) and b" " not in version
        self.method, self.target = method, target
        self.headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                self.headers.append((name.strip().lower(), value.strip()))

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    @property
    def upgrade_to_websocket(self) -> bool:
        """Whether uvicorn will hand this request to its WebSocket protocol (its own test)."""
        connection: list[bytes] = []
        upgrade = None
        for name, value in self.headers:
            if name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
            elif name == b"upgrade":
                upgrade = value.lower()
        return b"upgrade" in connection and upgrade == b"websocket"

    @property
    def body_length(self) -> int:
        """The body's length by Content-Length; 0 if it has none, or one h11 will refuse."""
        values = {
            part.strip() for value in self.values(b"content-length") for part in value.split(b",")
        }
        if len(values) != 1:
            return 0
        (value,) = values
        return int(value) if value.isdigit() else 0


class ConnectionGuard:
    """The state every guarded connection of one server shares: the pending ones, the limits."""

    def __init__(
        self,
        *,
        max_pending: int,
        header_timeout: float,
        refusals: Refusals | None = None,
    ) -> None:
        self.max_pending = max_pending
        self.header_timeout = header_timeout
        self.refusals = refusals or Refusals("connections")
        #: Connections sending a request head, oldest first, with the loop time each began.
        self._pending: dict[GuardedProtocol, float] = {}
        self._trim_timer: asyncio.TimerHandle | None = None
        self._websocket: _WebSocketParser | None = None

    @property
    def pending(self) -> int:
        """How many connections are sending a request head now."""
        return len(self._pending)

    @property
    def evictable_after(self) -> float:
        """Seconds a connection has to send its request before the cap may close it."""
        return min(EVICTABLE_AFTER, self.header_timeout / 2)

    def install(self, config: uvicorn.Config) -> bool:
        """Load ``config`` and put the guard in front of its HTTP protocol.

        Returns False, having logged why, when this uvicorn or websockets lacks
        something the guard relies on; uvicorn then serves as it is.
        """
        try:
            if not config.loaded:
                config.load()
            inner = config.http_protocol_class
            if not (isinstance(inner, type) and issubclass(inner, asyncio.Protocol)):
                raise TypeError(f"the HTTP protocol is {inner!r}, not an asyncio.Protocol class")
            self._websocket = _WebSocketParser()
        except Exception as exc:  # anything missing or of another shape
            logger.warning(
                "the connection guard does not apply (%s); incomplete requests are not timed out",
                exc,
            )
            return False

        def guarded(*args: Any, **kwargs: Any) -> GuardedProtocol:
            return GuardedProtocol(self, inner(*args, **kwargs))

        config.http_protocol_class = guarded  # type: ignore[assignment]
        return True

    # -- what the connections tell it -------------------------------------------------

    def _head_started(self, connection: GuardedProtocol) -> None:
        self._pending[connection] = asyncio.get_running_loop().time()
        self._trim()

    def _trim(self) -> None:
        """Over ``max_pending``, close the oldest, each once it has had ``evictable_after``.

        Connections accepted together all start pending before any of their
        requests is read, so a burst of real clients may go over the cap for a
        moment; only a connection that has had time to send its request and
        did not is taken for the crowd. Past twice the cap, the oldest go at
        once: a crowd that comes back as fast as it is closed must not hold
        more open files than that.
        """
        loop = asyncio.get_running_loop()
        while len(self._pending) > self.max_pending:
            oldest, started = next(iter(self._pending.items()))
            due = started + self.evictable_after
            if loop.time() < due and len(self._pending) <= 2 * self.max_pending:
                if self._trim_timer is None:
                    self._trim_timer = loop.call_at(due, self._trim_due)
                return
            self.refusals.log(
                f"closed with 503, over the cap of {self.max_pending} connections "
                "still sending a request",
                "more than %d connections are sending a request; closed the oldest (%s) with 503",
                self.max_pending,
                oldest.peer,
            )
            oldest.refuse(503, "too many connections are sending a request; try again")

    def _trim_due(self) -> None:
        self._trim_timer = None
        self._trim()

    def _head_ended(self, connection: GuardedProtocol) -> None:
        self._pending.pop(connection, None)

    def _refusal(self, head: _Head) -> _Refusal | None:
        """How the guard answers a complete head itself, or None if uvicorn is to have it."""
        if not head.well_formed:
            return None  # h11 answers it with 400
        if head.upgrade_to_websocket:
            assert self._websocket is not None
            status = self._websocket.refusal(head.method, head.target, head.headers)
            return None if status is None else _WEBSOCKET_REFUSALS[status]
        if head.values(b"transfer-encoding"):
            return _CHUNKED
        return None


class _Refusal(NamedTuple):
    status: int
    #: What the refusals log counts it as.
    kind: str
    #: What the client is told.
    text: str


_WEBSOCKET_REFUSALS: Final = {
    414: _Refusal(
        414,
        "a WebSocket handshake with a request line over websockets' limit",
        "the request line is longer than a WebSocket handshake may have (8,192 bytes)",
    ),
    431: _Refusal(
        431,
        "a WebSocket handshake over websockets' header limits",
        "a header line or the number of headers is over what a WebSocket handshake may "
        "have (8,192 bytes a line with its CRLF, 128 headers)",
    ),
    400: _Refusal(
        400,
        "a WebSocket handshake websockets cannot parse",
        "this WebSocket handshake cannot be parsed",
    ),
}
_CHUNKED: Final = _Refusal(
    411, "a request body with Transfer-Encoding", "send the request body with a Content-Length"
)
_HEAD_TOO_LARGE: Final = _Refusal(
    431, f"a request head over {MAX_HEAD_BYTES // 1024} KiB", "the request head is too large"
)


#: The states of a guarded connection.
_IDLE, _HEAD, _BODY, _ASIDE, _CLOSED = range(5)


class GuardedProtocol(asyncio.Protocol):
    """One connection: uvicorn's protocol behind the guard's checks.

    Every callback goes on to uvicorn's protocol, except the data of a head the
    guard answers itself. A connection the guard closes before uvicorn has
    seen it never reaches uvicorn at all.
    """

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._state = _IDLE
        self._head = bytearray()
        self._body_left = 0
        self._timer: asyncio.TimerHandle | None = None
        self.peer = "client"

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self._start_head()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._state == _CLOSED:
            return
        if self._state != _ASIDE and not self._watch(data):
            return
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        self._state = _CLOSED
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- the guard's part -------------------------------------------------------------

    def refuse(self, status: int, text: str) -> None:
        """Answer ``status`` and close; the rest of what the client sends is ignored."""
        self._end_head()
        self._state = _CLOSED
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_response(status, text))
            transport.close()

    def _watch(self, data: bytes) -> bool:
        """Follow the request heads and bodies in ``data``; False if it must not go on."""
        position, size = 0, len(data)
        while position < size:
            if self._state == _IDLE:
                self._start_head()
            if self._state == _BODY:
                taken = min(self._body_left, size - position)
                self._body_left -= taken
                position += taken
                if self._body_left == 0:
                    self._state = _IDLE
                continue
            # _HEAD: the head may straddle chunks; its end may too.
            already = len(self._head)
            self._head += data[position:]
            end = _HEAD_END.search(self._head, max(0, already - 2))
            if end is None:
                if len(self._head) > MAX_HEAD_BYTES:
                    self._refuse_head(_HEAD_TOO_LARGE)
                    return False
                return True
            head = _Head(bytes(self._head[: end.end()]))
            position += end.end() - already
            self._head.clear()
            self._end_head()
            refusal = self._guard._refusal(head)
            if refusal is not None:
                self._refuse_head(refusal)
                return False
            if head.upgrade_to_websocket:
                self._state = _ASIDE  # uvicorn hands the transport over; nothing more comes here
                return True
            self._body_left = head.body_length
            self._state = _BODY if self._body_left else _IDLE
        return True

    def _start_head(self) -> None:
        self._state = _HEAD
        self._guard._head_started(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout, self._timed_out)

    def _end_head(self) -> None:
        self._guard._head_ended(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        transport = self._transport
        if self._state != _HEAD or transport is None:
            return
        if not transport.is_reading():
            # uvicorn stopped reading (a pipelined request waits for a response): not the
            # client's delay, so the deadline starts again.
            self._timer = asyncio.get_running_loop().call_later(
                self._guard.header_timeout, self._timed_out
            )
            return
        timeout = self._guard.header_timeout
        self._guard.refusals.log(
            f"closed with 408, no complete request within {timeout:g} s",
            "closed %s with 408: no complete request within %g s",
            self.peer,
            timeout,
        )
        self.refuse(408, f"no complete request within {timeout:g} s")

    def _refuse_head(self, refusal: _Refusal) -> None:
        status = refusal.status
        self._guard.refusals.log(
            f"answered {status}, {refusal.kind}",
            "answered %s with %d: %s",
            self.peer,
            status,
            refusal.kind,
        )
        self.refuse(status, refusal.text)


class AcceptErrors:
    """An event loop exception handler: failed ``accept()`` calls as a line a minute.

    When the process is out of open files, asyncio reports every failed
    ``accept()`` with a traceback (hundreds of thousands a minute under a
    crowd); this handler counts them in ``refusals`` instead, and passes every
    other report on to the handler it replaced (or the loop's default one).
    """

    _ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE})

    def __init__(self, refusals: Refusals) -> None:
        self.refusals = refusals
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._previous = loop, loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        """Put the previous handler back, unless another one was installed since."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.get_exception_handler() is self:
            loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if isinstance(exc, OSError) and exc.errno in self._ERRNOS and "accept" in message:
            name = errno.errorcode.get(exc.errno or 0, "?")
            self.refusals.log(
                f"not accepted, out of open files ({name})",
                "cannot accept connections: %s (%s); asyncio tries again in a second",
                exc.strerror,
                name,
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
