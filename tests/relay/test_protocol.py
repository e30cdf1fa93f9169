"""I/O-free tests of relay.protocol: request parsing, sessions and the frames they produce."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.messages import DEFAULT_TOPIC, OPS, ErrorCode, ResultReply
from common.models import Snapshot, Status
from relay.exceptions import RequestError
from relay.protocol import (
    BreakdownRequested,
    FrameEncoder,
    HistoryRequested,
    RefreshRequested,
    ReportsRequested,
    Session,
    SourcesRequested,
    parse_request,
)

from .sessions import FakeMonitor, topics

T0 = datetime(2026, 11, 22, 12, 0, 3, 120000, tzinfo=UTC)

STARTING = Status(state="starting")
OK = Status(
    state="ok",
    last_success_at=datetime(2026, 11, 22, 12, 0, 3, tzinfo=UTC),
    next_poll_at=datetime(2026, 11, 22, 12, 0, 33, tzinfo=UTC),
)


def make_snapshot(seq: int = 42, burst: float = 37.5) -> Snapshot:
    """A snapshot as the monitor would cache it, with a field a newer gateway added."""
    return Snapshot.model_validate(
        {
            "seq": seq,
            "fetched_at": T0,
            "usage": {
                "product": "posthog_code",
                "user_id": 1234,
                "burst": {"used_percent": burst, "reset_at": "2026-11-22T18:00:00Z"},
                "sustained": {"used_percent": 12.1, "reset_at": "2026-12-01T00:00:00Z"},
                "is_pro": False,
                "ai_credits": {"exhausted": False, "used_usd": 3.2},
            },
        }
    )


def as_json(model: Snapshot | Status | None) -> Any:
    """What a model looks like once a client has parsed the frame that carries it."""
    return None if model is None else model.model_dump(mode="json")


def make_session(latest: Snapshot | None = None, status: Status = STARTING) -> Session:
    return Session(topics(FakeMonitor(status, latest)))


def request(id: Any = 1, op: str = "ping", **fields: Any) -> str:
    return json.dumps({"id": id, "op": op, **fields})


def receive(session: Session, text: str) -> Any:
    """Send one frame to the session and parse its reply frame."""
    reply = session.receive(text)
    assert isinstance(reply, str)
    return json.loads(reply)


def ok(request_id: Any, result: Any) -> dict[str, Any]:
    return {"type": "result", "id": request_id, "ok": True, "result": result}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- parse_request: accepted requests ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"id": 7, "op": "subscribe", "topic": "usage"}', (7, "subscribe", "usage")),
        ('{"id": "a-7", "op": "get_latest"}', ("a-7", "get_latest", DEFAULT_TOPIC)),
        ('{"op": "refresh", "id": ""}', ("", "refresh", DEFAULT_TOPIC)),
        ('{"id": -1, "op": "unsubscribe"}', (-1, "unsubscribe", DEFAULT_TOPIC)),
        (request(2**63 - 1), (2**63 - 1, "ping", DEFAULT_TOPIC)),
        (request(-(2**63)), (-(2**63), "ping", DEFAULT_TOPIC)),
        (request("x" * 128), ("x" * 128, "ping", DEFAULT_TOPIC)),
        (request(3, extra={"nested": [1, 2]}), (3, "ping", DEFAULT_TOPIC)),
        (request(4, topic="weather"), (4, "ping", "weather")),
        (' \n{"id":5,"op":"ping"}\t', (5, "ping", DEFAULT_TOPIC)),
    ],
    ids=[
        "int-id",
        "str-id-default-topic",
        "empty-str-id",
        "negative-id",
        "max-int64",
        "min-int64",
        "longest-id",
        "extra-fields-ignored",
        "ping-ignores-topic",
        "surrounding-whitespace",
    ],
)
def test_parse_request_accepts(text: str, expected: tuple[int | str, str, str]) -> None:
    """Well-formed requests parse into their op's model, with the topic defaulting to ``usage``."""
    parsed = parse_request(text)
    assert (parsed.id, parsed.op, getattr(parsed, "topic", DEFAULT_TOPIC)) == expected


def test_parse_request_accepts_any_served_topic() -> None:
    """A topic is accepted when it is among the topics served."""
    parsed = parse_request(request(1, "subscribe", topic="other"), ("usage", "other"))
    assert (parsed.id, parsed.op, parsed.topic) == (1, "subscribe", "other")


# -- parse_request: rejected requests ----------------------------------------------

BAD = ErrorCode.BAD_REQUEST

#: (frame, expected error code, expected echoed id)
REJECTED: dict[str, tuple[str, ErrorCode, Any]] = {
    "not-json": ("subscribe please", BAD, None),
    "empty": ("", BAD, None),
    "truncated": ('{"id": 1, "op": "ping"', BAD, None),
    "single-quotes": ("{'id': 1, 'op': 'ping'}", BAD, None),
    "list": ('[{"id": 1, "op": "ping"}]', BAD, None),
    "string": ('"ping"', BAD, None),
    "number": ("42", BAD, None),
    "null": ("null", BAD, None),
    "missing-id": ('{"op": "ping"}', BAD, None),
    "null-id": ('{"id": null, "op": "ping"}', BAD, None),
    "bool-id": (request(True), BAD, None),
    "float-id": (request(1.5), BAD, None),
    "integral-float-id": ('{"id": 1.0, "op": "ping"}', BAD, None),
    "object-id": (request({"n": 1}), BAD, None),
    "list-id": (request([1]), BAD, None),
    "id-too-long": (request("x" * 129), BAD, None),
    "id-above-int64": (request(2**63), BAD, None),
    "id-below-int64": (request(-(2**63) - 1), BAD, None),
    "id-with-5000-digits": ('{"id": 1' + "0" * 5000 + ', "op": "ping"}', BAD, None),
    "missing-op": ('{"id": 5}', BAD, 5),
    "null-op": ('{"id": 5, "op": null}', BAD, 5),
    "int-op": ('{"id": "five", "op": 5}', BAD, "five"),
    "list-op": ('{"id": 5, "op": ["ping"]}', BAD, 5),
    "unknown-op": (request(8, "subscirbe"), ErrorCode.UNKNOWN_OP, 8),
    "op-wrong-case": (request(8, "Ping"), ErrorCode.UNKNOWN_OP, 8),
    "unknown-topic": (request(9, "subscribe", topic="weather"), ErrorCode.UNKNOWN_TOPIC, 9),
    "int-topic": (request(9, "get_latest", topic=1), BAD, 9),
    "null-topic": (request(9, "get_latest", topic=None), BAD, 9),
    "list-topic": (request(9, "subscribe", topic=["usage"]), BAD, 9),
    "deeply-nested": (nested(100_000), BAD, None),
    "deeply-nested-field": ('{"id": 1, "op": "ping", "x": ' + nested(100_000) + "}", BAD, None),
}


@pytest.mark.parametrize(("text", "code", "request_id"), REJECTED.values(), ids=REJECTED.keys())
def test_parse_request_rejects(text: str, code: ErrorCode, request_id: Any) -> None:
    """A malformed request raises RequestError with the protocol's code and the id if known."""
    with pytest.raises(RequestError) as caught:
        parse_request(text)
    assert (caught.value.code, caught.value.request_id) == (code, request_id)


@pytest.mark.parametrize(("text", "code", "request_id"), REJECTED.values(), ids=REJECTED.keys())
def test_session_answers_a_rejected_request_with_an_error_frame(
    text: str, code: ErrorCode, request_id: Any
) -> None:
    """A malformed request gets a well-formed error reply, and the session stays usable."""
    session = make_session()
    reply = receive(session, text)
    assert reply == {
        "type": "result",
        "id": request_id,
        "ok": False,
        "error": {"code": code.value, "message": reply["error"]["message"]},
    }
    assert receive(session, request(2)) == ok(2, {"pong": True})


def test_unknown_op_message_quotes_the_op() -> None:
    """The unknown-op message quotes the op as the spec shows it."""
    with pytest.raises(RequestError, match=r"^unknown op 'subscirbe'$"):
        parse_request(request(8, "subscirbe"))


@pytest.mark.parametrize(
    "fields",
    [{"op": "x" * 100_000}, {"op": "subscribe", "topic": "y" * 100_000}],
    ids=["op", "topic"],
)
def test_echoed_client_text_is_shortened(fields: dict[str, str]) -> None:
    """A long unknown op or topic is quoted shortened, so the reply does not grow with the input."""
    with pytest.raises(RequestError) as caught:
        parse_request(json.dumps({"id": 1, **fields}))
    message = caught.value.message
    assert len(message) < 80
    assert message.endswith("…'")


@pytest.mark.parametrize(
    "text",
    [
        request("ключ-😀", pad="😀" * 1_000_000),
        request(1, "😀" * 1_000_000),
        request(1, "subscribe", topic="日本語" * 300_000),
        '{"id": 1, "op": "ping", "pad": "' + "\\ud83d\\ude00" * 500_000 + '"}',
    ],
    ids=["huge-padding", "huge-op", "huge-topic", "huge-escaped-surrogates"],
)
def test_huge_unicode_frames_get_a_short_reply(text: str) -> None:
    """Megabytes of non-ASCII text are handled and answered with a reply of bounded size."""
    reply = make_session().receive(text)
    assert isinstance(reply, str)
    assert len(reply) < 1_000
    assert json.loads(reply)["type"] == "result"


@given(st.text(max_size=200))
def test_any_text_gets_valid_json_or_an_action(text: str) -> None:
    """Whatever a client sends, the session answers with one JSON result or asks for an action."""
    reply = make_session(make_snapshot(), OK).receive(text)
    if isinstance(reply, str):
        assert json.loads(reply)["type"] == "result"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    ),
    st.sampled_from(["subscribe", "unsubscribe", "get_latest", "ping", "nope"]),
)
def test_any_json_id_is_echoed_or_answered_with_null(request_id: Any, op: str) -> None:
    """Every reply to an object request is valid JSON whose id is the request's or null."""
    reply = receive(make_session(), json.dumps({"id": request_id, "op": op}))
    assert reply["id"] in (request_id, None)


# -- replies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id",
    [0, -1, 2**63 - 1, -(2**63), "7", "", "日本語", 'quote " and \\ back', "\u2028\x00", "\ud800"],
    ids=[
        "zero",
        "negative",
        "max",
        "min",
        "digits-string",
        "empty",
        "cjk",
        "escapes",
        "separators",
        "lone-surrogate",
    ],
)
def test_reply_echoes_the_id_exactly(request_id: int | str) -> None:
    """The reply's id is the request's id, with its type and every character intact."""
    reply = receive(make_session(), request(request_id))
    assert type(reply["id"]) is type(request_id)
    assert reply["id"] == request_id


@pytest.mark.parametrize("request_id", [8, "eight"])
def test_error_reply_echoes_the_id(request_id: int | str) -> None:
    """An error reply to a request whose id was readable carries that id."""
    reply = receive(make_session(), request(request_id, "subscirbe"))
    assert reply == {
        "type": "result",
        "id": request_id,
        "ok": False,
        "error": {"code": "unknown_op", "message": "unknown op 'subscirbe'"},
    }


# -- Session ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latest", "status"), [(None, STARTING), (make_snapshot(), OK)], ids=["starting", "ok"]
)
def test_subscribe_replies_with_latest_and_status(latest: Snapshot | None, status: Status) -> None:
    """``subscribe`` answers with the topic, the current snapshot (or null) and the status."""
    reply = receive(make_session(latest, status), request(1, "subscribe", topic="usage"))
    assert reply == ok(1, {"topic": "usage", "latest": as_json(latest), "status": as_json(status)})


def test_subscribe_registers_the_session() -> None:
    """``subscribe`` marks the session as subscribed."""
    session = make_session()
    receive(session, request(1, "subscribe"))
    assert session.subscribed == {"usage"}


def test_subscribe_is_idempotent() -> None:
    """A second ``subscribe`` gets the same answer and leaves the session subscribed."""
    session = make_session(make_snapshot(), OK)
    first = receive(session, request(1, "subscribe"))
    second = receive(session, request(1, "subscribe"))
    assert (second, session.subscribed) == (first, {"usage"})


def test_a_session_subscribes_to_several_sources() -> None:
    """Subscriptions to two source topics add up; unsubscribing one keeps the other."""
    session = Session(topics(FakeMonitor(), us=FakeMonitor(), eu=FakeMonitor()))
    receive(session, request(1, "subscribe", topic="usage:us"))
    receive(session, request(2, "subscribe", topic="usage:eu"))
    receive(session, request(3, "unsubscribe", topic="usage:us"))
    assert session.subscribed == {"usage:eu"}


def test_a_source_topic_answers_with_its_own_source() -> None:
    """``get_latest`` on ``usage:<source>`` answers with that source's snapshot."""
    other = make_snapshot(seq=9, burst=80.0)
    session = Session(topics(FakeMonitor(OK, make_snapshot()), eu=FakeMonitor(OK, other)))
    reply = receive(session, request(1, "get_latest", topic="usage:eu"))
    assert reply["result"]["latest"] == as_json(other)


def test_an_unknown_source_topic_is_refused() -> None:
    """A topic naming no source gets ``unknown_topic``."""
    session = Session(topics(FakeMonitor(), us=FakeMonitor()))
    reply = receive(session, request(1, "subscribe", topic="usage:nowhere"))
    assert reply["error"]["code"] == "unknown_topic"


@pytest.mark.parametrize("subscribed_first", [True, False])
def test_unsubscribe_clears_the_subscription(subscribed_first: bool) -> None:
    """``unsubscribe`` answers with the topic and leaves the session unsubscribed."""
    session = make_session()
    if subscribed_first:
        receive(session, request(1, "subscribe"))
    reply = receive(session, request(2, "unsubscribe"))
    assert (reply, session.subscribed) == (ok(2, {"topic": "usage"}), set())


@pytest.mark.parametrize(
    ("latest", "status"), [(None, STARTING), (make_snapshot(), OK)], ids=["starting", "ok"]
)
def test_get_latest_replies_with_latest_and_status(latest: Snapshot | None, status: Status) -> None:
    """``get_latest`` answers with the snapshot (or null) and the status, and does not subscribe."""
    session = make_session(latest, status)
    reply = receive(session, request("g", "get_latest"))
    assert reply == ok("g", {"latest": as_json(latest), "status": as_json(status)})
    assert not session.subscribed


def test_get_latest_follows_the_monitor() -> None:
    """A reply reflects the monitor's current snapshot and status, not the ones encoded earlier."""
    monitor = FakeMonitor(OK, make_snapshot(seq=1))
    session = Session(topics(monitor))
    receive(session, request(1, "get_latest"))
    monitor.latest, monitor.status = make_snapshot(seq=2), Status(state="degraded")
    reply = receive(session, request(2, "get_latest"))
    assert reply["result"] == {"latest": as_json(monitor.latest), "status": as_json(monitor.status)}


def test_ping_replies_pong() -> None:
    """``ping`` answers ``{"pong": true}``."""
    assert receive(make_session(), request(3, "ping")) == ok(3, {"pong": True})


#: The ops the session cannot answer by itself: it asks its adapter to act instead.
ADAPTER_ACTIONS: dict[
    str,
    type[
        RefreshRequested
        | HistoryRequested
        | SourcesRequested
        | BreakdownRequested
        | ReportsRequested
    ],
] = {
    "refresh": RefreshRequested,
    "get_history": HistoryRequested,
    "list_sources": SourcesRequested,
    "get_breakdown": BreakdownRequested,
    "list_reports": ReportsRequested,
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_gets_its_kind_of_answer(op: str) -> None:
    """Each op gets a valid result frame, or its adapter action; only ping answers pong."""
    answer = make_session(make_snapshot(), OK).receive(request(7, op))
    if op in ADAPTER_ACTIONS:
        assert isinstance(answer, ADAPTER_ACTIONS[op])
        assert answer.request_id == 7
        return
    assert isinstance(answer, str)
    reply = ResultReply.model_validate_json(answer)
    assert reply.id == 7
    assert (json.loads(answer)["result"] == {"pong": True}) is (op == "ping")


@pytest.mark.parametrize("request_id", [4, "r-4"])
def test_refresh_asks_the_adapter_to_poll(request_id: int | str) -> None:
    """``refresh`` returns RefreshRequested carrying the request id instead of a frame."""
    assert make_session().receive(request(request_id, "refresh")) == RefreshRequested(
        request_id, "usage"
    )


def test_refresh_of_a_source_names_its_topic() -> None:
    """``refresh`` on ``usage:<source>`` asks the adapter to poll that topic's source."""
    session = Session(topics(FakeMonitor(), eu=FakeMonitor()))
    assert session.receive(request(1, "refresh", topic="usage:eu")) == RefreshRequested(
        1, "usage:eu"
    )


def test_refresh_succeeded_replies_with_the_snapshot() -> None:
    """A refresh that got a snapshot answers with it as ``latest``."""
    snapshot = make_snapshot()
    reply = json.loads(make_session().refresh_succeeded(4, "usage", snapshot))
    assert reply == ok(4, {"latest": as_json(snapshot)})


@pytest.mark.parametrize("latest", [None, make_snapshot()], ids=["no-snapshot", "last-good"])
def test_refresh_failed_replies_upstream_unavailable(latest: Snapshot | None) -> None:
    """A failed refresh answers ``upstream_unavailable`` with the last good snapshot or null."""
    reply = json.loads(make_session(latest, OK).refresh_failed(4, "usage", "gateway timed out"))
    assert reply == {
        "type": "result",
        "id": 4,
        "ok": False,
        "error": {
            "code": "upstream_unavailable",
            "message": "the gateway could not be polled: gateway timed out",
            "data": {"latest": as_json(latest)},
        },
    }


def test_session_serves_only_its_topics() -> None:
    """A session refuses a topic that is not among its topics."""
    session = make_session()
    reply = receive(session, request(1, "subscribe", topic="other"))
    assert reply["error"]["code"] == "unknown_topic"


# -- FrameEncoder -----------------------------------------------------------------


def spec_view(actual: Any, expected: Any) -> Any:
    """``actual`` cut to the keys ``expected`` names: the relay may add optional fields."""
    if isinstance(actual, dict) and isinstance(expected, dict):
        return {key: spec_view(actual.get(key), expected[key]) for key in expected}
    return actual


def test_snapshot_in_a_frame_has_the_spec_shape() -> None:
    """A snapshot travels as the spec's Snapshot object, unknown usage fields included."""
    frame = json.loads(FrameEncoder().updated(make_snapshot()))
    expected = {
        "type": "event",
        "topic": "usage",
        "event": "usage.updated",
        "data": {
            "seq": 42,
            "source": "default",
            "fetched_at": "2026-11-22T12:00:03.120000Z",
            "usage": {
                "product": "posthog_code",
                "user_id": 1234,
                "burst": {
                    "used_percent": 37.5,
                    "reset_at": "2026-11-22T18:00:00Z",
                    "exceeded": False,
                },
                "sustained": {
                    "used_percent": 12.1,
                    "reset_at": "2026-12-01T00:00:00Z",
                    "exceeded": False,
                },
                "is_rate_limited": False,
                "is_pro": False,
                "billing_period_end": None,
                "ai_credits": {"exhausted": False, "used_usd": 3.2},
            },
        },
    }
    assert spec_view(frame, expected) == expected


def test_status_event_has_the_spec_shape() -> None:
    """A status travels in a ``usage.status`` event as the spec's Status object."""
    frame = json.loads(FrameEncoder().status_event(OK))
    expected = {
        "type": "event",
        "topic": "usage",
        "event": "usage.status",
        "data": {
            "state": "ok",
            "consecutive_failures": 0,
            "last_error": None,
            "last_success_at": "2026-11-22T12:00:03Z",
            "next_poll_at": "2026-11-22T12:00:33Z",
        },
    }
    assert spec_view(frame, expected) == expected


@pytest.mark.parametrize("topic", ["usage", 'we"ird\\topic', "日本語\n"])
def test_event_frames_carry_the_encoders_topic(topic: str) -> None:
    """Event frames are valid JSON whatever characters the topic holds."""
    encoder = FrameEncoder(topic=topic)
    frames = [encoder.updated(make_snapshot()), encoder.status_event(OK)]
    assert [json.loads(frame)["topic"] for frame in frames] == [topic, topic]


def test_error_frame_with_plain_data_is_valid_json() -> None:
    """Error data that is not a snapshot is encoded as plain JSON next to the message."""
    error = RequestError("rate_limited", 'slow "down"\n', 3, {"retry_after": 1.5, "latest": None})
    assert json.loads(FrameEncoder().error(error)) == {
        "type": "result",
        "id": 3,
        "ok": False,
        "error": {
            "code": "rate_limited",
            "message": 'slow "down"\n',
            "data": {"retry_after": 1.5, "latest": None},
        },
    }


@pytest.fixture
def dump_counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Count calls of model_dump_json on Snapshot and Status."""
    counts: dict[str, int] = {"Snapshot": 0, "Status": 0}

    def counting(cls: type[Snapshot] | type[Status]) -> Callable[..., str]:
        original = cls.model_dump_json

        def model_dump_json(self: Any, *args: Any, **kwargs: Any) -> str:
            counts[cls.__name__] += 1
            return original(self, *args, **kwargs)

        return model_dump_json

    for cls in (Snapshot, Status):
        monkeypatch.setattr(cls, "model_dump_json", counting(cls))
    yield counts


def test_each_snapshot_and_status_is_encoded_once(dump_counts: dict[str, int]) -> None:
    """One snapshot and one status are serialised once, however many frames carry them."""
    snapshot = make_snapshot()
    monitor = FakeMonitor(OK, snapshot)
    served = topics(monitor)
    encoder = served[DEFAULT_TOPIC].encoder
    sessions = [Session(served) for _ in range(5)]
    encoder.updated(snapshot)
    encoder.status_event(OK)
    for number, session in enumerate(sessions):
        session.receive(request(number, "subscribe"))
        session.receive(request(number, "get_latest"))
        session.refresh_succeeded(number, "usage", snapshot)
        session.refresh_failed(number, "usage", "timed out")
    assert dump_counts == {"Snapshot": 1, "Status": 1}


def test_a_new_snapshot_is_encoded_again(dump_counts: dict[str, int]) -> None:
    """Each new snapshot is serialised once, and frames carry the new one."""
    encoder = FrameEncoder()
    first, second = make_snapshot(seq=1), make_snapshot(seq=2, burst=50.0)
    encoder.updated(first)
    frames = [encoder.updated(second), encoder.updated(second)]
    assert dump_counts["Snapshot"] == 2
    assert [json.loads(frame)["data"] for frame in frames] == [as_json(second)] * 2
