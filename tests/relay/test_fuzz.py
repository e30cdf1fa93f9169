"""Property-based fuzzing of the protocol core and of a live relay."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from common.messages import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    OPS,
    ErrorCode,
)
from common.models import Status
from relay.limits import Limits, Rate
from relay.protocol import (
    BreakdownRequested,
    CloseConnection,
    HistoryRequested,
    RefreshRequested,
    Session,
    SourcesRequested,
)
from relay.settings import Settings
from tests.conftest import RelayHarness

from .sessions import FakeMonitor
from .sessions import topics as session_topics
from .wire import CLOSE, TEXT, connect, raw_client, request, subscribe_with_snapshot

pytestmark = pytest.mark.anyio

DOCUMENTED_CODES = frozenset(code.value for code in ErrorCode)
MAX_FRAME = 64 * 1024

# -- what to send -----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
request_ids = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers(min_value=2**63, max_value=2**200)
    | st.integers(min_value=-(2**200), max_value=-(2**63) - 1)
    | st.text(max_size=300)
    | json_values
)
ops = st.sampled_from(sorted(OPS)) | st.text(max_size=20) | json_values
topics = st.just("usage") | st.text(max_size=20) | json_values
request_like = st.fixed_dictionaries(
    {},
    optional={
        "id": request_ids,
        "op": ops,
        "topic": topics,
        "since": st.text(max_size=40) | json_values,
        "until": st.datetimes().map(lambda d: d.isoformat()) | json_values,
        "limit": st.integers() | json_values,
        "extra": json_values,
    },
).map(json.dumps)
nested = st.builds(
    lambda depth, opener, closer: opener * depth + closer * depth,
    st.integers(min_value=1, max_value=MAX_FRAME // 4),
    st.sampled_from(["[", '{"a":', '{"id":1,"op":']),
    st.sampled_from(["]", "}", ""]),
)
text_frames = (
    st.text(max_size=300)
    | json_values.map(json.dumps)
    | request_like
    | nested
    | st.binary(max_size=200).map(lambda raw: raw.decode("latin-1"))
)


def check_reply(text: str) -> dict[str, Any]:
    """A reply is a JSON result object with an id and a documented outcome."""
    frame = json.loads(text)
    assert frame["type"] == "result"
    request_id = frame["id"]
    assert request_id is None or (
        isinstance(request_id, int | str) and not isinstance(request_id, bool)
    )
    if frame["ok"] is True:
        assert isinstance(frame["result"], dict)
    else:
        assert frame["ok"] is False
        assert frame["error"]["code"] in DOCUMENTED_CODES
        assert frame["error"]["code"] != ErrorCode.INTERNAL
        assert isinstance(frame["error"]["message"], str)
        assert len(frame["error"]["message"]) < 300  # the reply never grows with the input
    return frame


# -- the protocol core -------------------------------------------------------------------


class TickingClock:
    """Time moves a little with every reading, so limiters both refuse and refill."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(text_frames, min_size=1, max_size=8),
    authenticated=st.booleans(),
    limited=st.booleans(),
)
def test_session_answers_any_text_with_a_documented_outcome(
    frames: list[str], authenticated: bool, limited: bool
) -> None:
    """Every frame gives a valid reply, a refresh or history action, or a 1008 close."""
    limiters = None
    if limited:
        limits = Limits(requests=Rate(20, 3), refreshes=Rate(1, 1), flood_close_after=4)
        limiters = limits.limiters(TickingClock())
    served = session_topics(FakeMonitor(Status(state="ok")))
    session = Session(served, authenticated=authenticated, limiters=limiters)
    for text in frames:
        action = session.receive(text)
        match action:
            case str():
                frame = check_reply(action)
                if not authenticated and not frame["ok"]:
                    assert frame["error"]["code"] in {"unauthorized", "rate_limited"}
            case (
                RefreshRequested() | HistoryRequested() | SourcesRequested() | BreakdownRequested()
            ):
                assert authenticated
            case CloseConnection(code, _):
                assert code == CLOSE_POLICY_VIOLATION
                return


# -- a live relay ------------------------------------------------------------------------


@pytest.fixture
def relay_settings(relay_settings: Settings) -> Settings:
    # Limits high enough that the fuzzer reaches the parser, not only the rate limiter.
    return relay_settings.model_copy(
        update={
            "requests_per_second": 100_000.0,
            "request_burst": 100_000,
            "refreshes_per_minute": 1_000_000.0,
            "refresh_burst": 100_000,
        }
    )


class Fuzzer:
    """One fuzzing connection, reopened whenever the relay closes it, and a bystander."""

    def __init__(self, relay: RelayHarness, bystander: ClientConnection) -> None:
        self.relay = relay
        self.bystander = bystander
        self.ws: ClientConnection | None = None
        self.close_codes: list[int] = []

    async def aclose(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def send(self, frame: str | bytes) -> None:
        """Send ``frame``; expect a documented reply, or a documented close for it."""
        if self.ws is None:
            self.ws = await connect(self.relay.ws_url, max_size=None)
        ws = self.ws
        expected_close = None
        if isinstance(frame, bytes):
            expected_close = CLOSE_UNSUPPORTED_DATA
        elif len(frame.encode()) > MAX_FRAME:
            expected_close = CLOSE_MESSAGE_TOO_BIG
        await ws.send(frame)
        if expected_close is None:
            while True:  # events (after a refresh) may come first
                message = json.loads(await ws.recv())
                if message["type"] == "result":
                    check_reply(json.dumps(message))
                    break
                assert message["type"] == "event"
        else:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == expected_close
            self.close_codes.append(expected_close)
            self.ws = None
        # Whatever that frame did, the other client is still served.
        assert (await request(self.bystander, "ping"))["result"] == {"pong": True}


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def fuzzer(relay: RelayHarness) -> AsyncIterator[Fuzzer]:
    """One per test function: every example of the test shares the relay and the bystander."""
    async with connect(relay.ws_url) as bystander:
        await subscribe_with_snapshot(bystander)
        fuzzer = Fuzzer(relay, bystander)
        yield fuzzer
        await fuzzer.aclose()


live_frames = (
    text_frames
    | st.binary(max_size=100)
    | st.integers(min_value=MAX_FRAME + 1, max_value=MAX_FRAME + 4096).map(lambda n: "x" * n)
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=live_frames)
async def test_live_relay_answers_every_frame_and_keeps_serving_others(
    fuzzer: Fuzzer, caplog: pytest.LogCaptureFixture, frame: str | bytes
) -> None:
    """Random, malformed, binary and oversized frames get documented replies or closes,
    a subscribed bystander is served after each, and no error is logged."""
    caplog.set_level(logging.INFO)
    with anyio.fail_after(10):
        await fuzzer.send(frame)
    no_errors_logged(caplog)


@pytest.mark.parametrize(
    ("payload", "opcode", "code"),
    [
        (b"\xff\xfe not UTF-8", TEXT, 1007),  # invalid UTF-8 in a text frame
        (b"", 0x3, 1002),  # a reserved opcode
    ],
)
async def test_frames_no_library_would_send_get_a_protocol_close(
    relay: RelayHarness, caplog: pytest.LogCaptureFixture, payload: bytes, opcode: int, code: int
) -> None:
    """Broken WebSocket framing is closed by the WebSocket layer with RFC 6455's code."""
    caplog.set_level(logging.INFO)
    with anyio.fail_after(5):
        async with connect(relay.ws_url) as bystander, raw_client(relay.ws_url) as client:
            await client.send(payload, opcode)
            frames = await client.frames_until_eof()
            assert (await request(bystander, "ping"))["ok"] is True
    assert frames[-1].opcode == CLOSE
    assert frames[-1].close_code == code
    no_errors_logged(caplog)
