"""Unit tests of the live view: events folded into a state, the state drawn as text."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from clients.client import (
    AlertReceived,
    ConnectionChanged,
    ConnectionState,
    RelayEvent,
    SnapshotReceived,
    StatusReceived,
)
from clients.watch import ViewState, apply, render
from common.models import (
    Derived,
    LimitProjected,
    Snapshot,
    Status,
    ThresholdCrossed,
    WindowForecast,
)

from .test_format import CET, NOW, make_snapshot

URL = "ws://127.0.0.1:8765/ws"
PICTURE = Path(__file__).resolve().parents[2] / "docs" / "images" / "watch.svg"
#: Daily fills at 12.5 %/h and reaches its limit before its reset; Monthly barely moves.
DERIVED = Derived(
    burst=WindowForecast(
        burn_rate_percent_per_hour=12.5,
        projected_limit_at=NOW + timedelta(hours=5, minutes=2),
        limit_before_reset=True,
    ),
    sustained=WindowForecast(
        burn_rate_percent_per_hour=0.3, projected_limit_at=None, limit_before_reset=False
    ),
)
CROSSED = ThresholdCrossed(
    bucket="burst", threshold=90.0, used_percent=95.0, reset_at=NOW + timedelta(hours=6)
)
CONNECTED = ConnectionChanged(ConnectionState.CONNECTED)
DROPPED = ConnectionChanged(ConnectionState.DISCONNECTED, "the relay closed the connection")


def draw(state: ViewState, *, styles: bool = False) -> str:
    console = Console(
        file=io.StringIO(), record=True, width=80, force_terminal=True, color_system="standard"
    )
    console.print(render(state, NOW, CET))
    return console.export_text(styles=styles)


def live_state(*events: RelayEvent, snapshot: Snapshot | None = None) -> ViewState:
    """A connected view showing ``snapshot`` (default: the usual one), after ``events``."""
    state = ViewState(url=URL)
    for event in (CONNECTED, SnapshotReceived(snapshot or make_snapshot()), *events):
        state = apply(state, event, NOW)
    return state


def save_watch_picture(path: Path) -> None:
    """Write an SVG of the view in a representative state: rising usage and one alert."""
    projected = LimitProjected(
        bucket="burst",
        projected_at=NOW + timedelta(hours=5, minutes=2),
        reset_at=NOW + timedelta(hours=6),
        burn_rate_percent_per_hour=12.5,
    )
    state = live_state(
        AlertReceived(projected),
        snapshot=make_snapshot().model_copy(update={"derived": DERIVED}),
    )
    console = Console(file=io.StringIO(), record=True, width=72, force_terminal=True)
    console.print(render(state, NOW, CET))
    path.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(path), title="usage-monitor watch")


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


def test_burn_rate_and_projection_are_shown() -> None:
    """Each window with a burn rate shows it and where it leads."""
    text = draw(live_state(snapshot=make_snapshot().model_copy(update={"derived": DERIVED})))
    assert "+12.5%/h · limit at 18:02, before reset" in text
    assert "+0.3%/h · not before reset" in text


def test_no_forecast_without_derived() -> None:
    """A snapshot without a derived block shows the meters alone."""
    assert "%/h" not in draw(live_state())


def test_alert_is_shown_as_a_line() -> None:
    """An alert appears as a line with the time it arrived."""
    text = draw(live_state(AlertReceived(CROSSED)))
    assert "13:00 Daily usage crossed 90% (now 95%)." in text


def test_only_the_newest_alerts_are_kept() -> None:
    """Older alerts scroll off, so the view keeps its size."""
    events = [AlertReceived(CROSSED.model_copy(update={"threshold": t})) for t in (50, 75, 90, 100)]
    text = draw(live_state(*events))
    assert "crossed 50%" not in text and "crossed 75%" in text and "crossed 100%" in text


def test_picture_of_the_view() -> None:
    """Writes docs/images/watch.svg from the current code."""
    save_watch_picture(PICTURE)
    svg = PICTURE.read_text(encoding="utf-8")
    assert "Daily" in svg and "12.5%/h" in svg
