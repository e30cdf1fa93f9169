"""The relay's state while it runs: made by the lifespan, read by every endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from .hub import Hub

__all__ = ["RelayState", "relay_state", "serving_state", "set_relay_state"]


@dataclass(slots=True)
class RelayState:
    """The hub, and whether the relay has begun to say goodbye to its clients."""

    hub: Hub
    shutting_down: bool = False


def set_relay_state(app: Starlette, state: RelayState) -> None:
    """Called by the lifespan once the relay is ready to serve."""
    app.state.relay = state


def relay_state(app: Starlette) -> RelayState | None:
    """The state of the relay ``app``; None until its lifespan has started."""
    state: RelayState | None = getattr(app.state, "relay", None)
    return state


def serving_state(connection: HTTPConnection) -> RelayState:
    """The state of the relay serving ``connection``; requests come only while it runs."""
    state = relay_state(connection.app)
    assert state is not None, "a request outside the relay's lifespan"
    return state
