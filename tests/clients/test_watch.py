"""Unit tests of the live view: events folded into a state, the state drawn as text."""

from __future__ import annotations

import io
from datetime import timedelta

from rich.console import Console

from clients.client import (
    ConnectionChanged,
    ConnectionState,
    RelayEvent,
    SnapshotReceived,
    StatusReceived,
)
from clients.watch import ViewState, apply, render
from monitor.models import Status

from .test_format import CET, NOW, make_snapshot

URL = "ws://127.0.0.1:8765/ws"
CONNECTED = ConnectionChanged(ConnectionState.CONNECTED)
DROPPED = ConnectionChanged(ConnectionState.DISCONNECTED, "the relay closed the connection")


def draw(state: ViewState, *, styles: bool = False) -> str:
    console = Console(
        file=io.StringIO(), record=True, width=80, force_terminal=True, color_system="standard"
    )
    console.print(render(state, NOW, CET))
    return console.export_text(styles=styles)


def live_state(*events: RelayEvent) -> ViewState:
    """A connected view showing the default snapshot, after ``events``."""
    state = ViewState(url=URL)
    for event in (CONNECTED, SnapshotReceived(make_snapshot()), *events):
        state = apply(state, event, NOW)
    return state


def test_meters_show_percent_and_reset() -> None:
    """Each window shows its name, percent used and when it resets."""
    text = draw(live_state())
    assert "Daily" in text and "37%" in text and "Resets in 6h" in text
    assert "Monthly" in text and "12%" in text and "Resets Dec 1 at 1:00 AM" in text
    assert "Live" in text


def test_exceeded_window_says_limit_reached_in_red() -> None:
    """An exceeded window replaces its reset label with a red "Limit reached"."""
    snapshot = make_snapshot(burst=100.0, burst_exceeded=True)
    state = apply(live_state(), SnapshotReceived(snapshot), NOW)
    assert "\x1b[1;31mLimit reached" in draw(state, styles=True)


def test_no_snapshot_yet() -> None:
    """Before the first poll the view says it is waiting instead of drawing meters."""
    text = draw(apply(ViewState(url=URL), CONNECTED, NOW))
    assert "No usage yet" in text and "Daily" not in text


def test_degraded_status_is_shown() -> None:
    """A degraded monitor is reported with its last error, over the last good figures."""
    status = Status(state="degraded", consecutive_failures=2, last_error="gateway error (HTTP 503)")
    text = draw(live_state(StatusReceived(status)))
    assert "Gateway unreachable (gateway error (HTTP 503))" in text and "37%" in text


def test_auth_error_status_is_shown() -> None:
    """An auth_error monitor tells the person to update the token."""
    text = draw(live_state(StatusReceived(Status(state="auth_error"))))
    assert "refused the credentials" in text


def test_disconnection_marks_figures_stale() -> None:
    """A lost connection is shown with its time and a warning that figures may be old."""
    text = draw(live_state(DROPPED))
    assert "Disconnected since 13:00:00" in text and "out of date" in text
    assert "Live" not in text


def test_disconnection_keeps_its_first_time() -> None:
    """Failed reconnections do not move the "disconnected since" time."""
    state = apply(live_state(DROPPED), DROPPED, NOW + timedelta(minutes=5))
    assert state.disconnected_since == NOW


def test_reconnection_clears_the_stale_state() -> None:
    """Once the connection is back the stale warning goes away."""
    text = draw(live_state(DROPPED, CONNECTED))
    assert "Disconnected" not in text and "Live" in text
