"""The committed JSON Schema and the message models agree with what the relay sends."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from pydantic import TypeAdapter

from common.messages import ClientMessage, ServerMessage
from relay.schema import render_schemas
from simulator import Failure, GatewaySimulator
from tests.conftest import RelayHarness

from .wire import connect

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"

SERVER_MESSAGE: TypeAdapter[object] = TypeAdapter(ServerMessage)


def test_committed_schema_matches_the_models() -> None:
    """docs/schema/ is what `make schema` generates from the models today."""
    committed = {path.name: path.read_text(encoding="utf-8") for path in SCHEMA_DIR.glob("*.json")}
    assert committed == render_schemas(), "run `make schema` and commit docs/schema/"


@pytest.mark.parametrize(
    "request_",
    [
        {"id": 1, "op": "subscribe", "topic": "usage"},
        {"id": "a", "op": "unsubscribe"},
        {"id": 2, "op": "get_latest"},
        {"id": 3, "op": "refresh"},
        {"id": 4, "op": "ping"},
        {"id": 5, "op": "get_history", "since": "2026-11-22T00:00:00Z", "limit": 10},
    ],
)
def test_every_documented_request_validates(request_: dict[str, object]) -> None:
    """Each request form of the protocol is accepted by the client message model."""
    TypeAdapter(ClientMessage).validate_python(request_)


@pytest.mark.anyio
async def test_every_frame_the_relay_sends_matches_the_models(
    relay: RelayHarness, simulator: GatewaySimulator
) -> None:
    """Replies, errors and events of a whole session validate against the schema models."""
    requests = [
        {"id": 1, "op": "subscribe"},
        {"id": 2, "op": "get_latest"},
        {"id": 3, "op": "refresh"},
        {"id": 4, "op": "ping"},
        {"id": 5, "op": "get_history", "limit": 5},
        {"id": 6, "op": "nope"},
        {"id": 7, "op": "refresh"},
        {"id": 8, "op": "unsubscribe"},
    ]
    frames = []
    with anyio.fail_after(10):
        async with connect(relay.ws_url) as ws:
            for request in requests:
                if request["id"] == 7:
                    simulator.inject(Failure.SERVER_ERROR)
                await ws.send(json.dumps(request))
                while True:
                    frames.append(json.loads(await ws.recv()))
                    if frames[-1].get("id") == request["id"]:
                        break
            await ws.send("{")
            frames.append(json.loads(await ws.recv()))
    for frame in frames:
        SERVER_MESSAGE.validate_python(frame)
    kinds = {frame.get("event") or ("ok" if frame.get("ok") else "error") for frame in frames}
    assert {"ok", "error", "usage.updated", "usage.status"} <= kinds
