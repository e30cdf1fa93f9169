"""
A live terminal view of the relay: ``usage-monitor watch``.

``apply`` folds the client's events into a ``ViewState`` and ``render`` draws a
state as of a given time; both are pure, so the view is tested by rendering to
a recording console. ``watch`` wires them to a ``RelayClient`` and rich's Live,
which also redraws every second so reset countdowns keep moving between events.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, tzinfo

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from monitor.models import Snapshot, Status, UsageWindow, utc_now

from .client import (
    ConnectionChanged,
    ConnectionState,
    RelayClient,
    RelayEvent,
    SnapshotReceived,
    StatusReceived,
)
from .format import labelled_windows, percent_label, reset_label

__all__ = ["ViewState", "apply", "render", "watch"]

_BAR_WIDTH = 36


@dataclass(frozen=True)
class ViewState:
    """Everything the view shows; ``connection`` is None until the first attempt ends."""

    url: str
    snapshot: Snapshot | None = None
    status: Status | None = None
    connection: ConnectionState | None = None
    connection_error: str | None = None
    disconnected_since: datetime | None = None


def apply(state: ViewState, event: RelayEvent, now: datetime) -> ViewState:
    """The state after ``event``, which arrived at ``now``."""
    match event:
        case SnapshotReceived(snapshot):
            return replace(state, snapshot=snapshot)
        case StatusReceived(status):
            return replace(state, status=status)
        case ConnectionChanged(ConnectionState.CONNECTED):
            return replace(
                state,
                connection=ConnectionState.CONNECTED,
                connection_error=None,
                disconnected_since=None,
            )
        case ConnectionChanged(_, error):
            return replace(
                state,
                connection=ConnectionState.DISCONNECTED,
                connection_error=error,
                disconnected_since=state.disconnected_since or now,
            )
    raise AssertionError(f"unhandled event {event!r}")


def render(state: ViewState, now: datetime, tz: tzinfo | None = None) -> RenderableType:
    """Draw ``state`` as of ``now``; times are shown in ``tz`` (default: the system's)."""
    stale = state.connection is not ConnectionState.CONNECTED
    parts: list[RenderableType] = []
    if state.snapshot is None:
        parts.append(Text("No usage yet: waiting for the first poll of the gateway.", "dim"))
    else:
        parts.append(_meters(state.snapshot, now, tz, stale=stale))
        fetched = state.snapshot.fetched_at.astimezone(tz)
        parts.append(Text(f"Updated {fetched:%H:%M:%S} · seq {state.snapshot.seq}", "dim"))
    notice = _status_notice(state.status)
    if notice is not None:
        parts.append(notice)
    parts.append(_connection_notice(state, tz))
    return Panel(Group(*parts), title="Usage", title_align="left", subtitle=state.url)


def _meters(snapshot: Snapshot, now: datetime, tz: tzinfo | None, *, stale: bool) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(min_width=8)
    table.add_column(width=_BAR_WIDTH)
    table.add_column(justify="right", min_width=5)
    table.add_column()
    for label, window in labelled_windows(snapshot):
        table.add_row(*_meter_row(label, window, now, tz, stale=stale))
    return table


def _meter_row(
    label: str, window: UsageWindow, now: datetime, tz: tzinfo | None, *, stale: bool
) -> tuple[RenderableType, ...]:
    colour = "red" if window.exceeded else _colour(window.used_percent)
    if stale:
        colour = "grey50"
    bar = ProgressBar(
        total=100,
        completed=min(window.used_percent, 100),
        width=_BAR_WIDTH,
        complete_style=colour,
        finished_style=colour,
    )
    note = (
        Text("Limit reached", "bold red")
        if window.exceeded
        else Text(reset_label(window.reset_at, now, tz))
    )
    return Text(label, "bold"), bar, Text(percent_label(window.used_percent), colour), note


def _colour(percent: float) -> str:
    if percent >= 90:
        return "red"
    if percent >= 75:
        return "yellow"
    return "green"


def _status_notice(status: Status | None) -> Text | None:
    if status is None:
        return None
    match status.state:
        case "degraded":
            reason = f" ({status.last_error})" if status.last_error else ""
            return Text(f"Gateway unreachable{reason}: showing the last good figures.", "yellow")
        case "auth_error":
            return Text("The gateway refused the credentials: update the token.", "bold red")
        case "stopped":
            return Text("The monitor has stopped polling the gateway.", "yellow")
    return None


def _connection_notice(state: ViewState, tz: tzinfo | None) -> Text:
    match state.connection:
        case ConnectionState.CONNECTED:
            return Text("● Live", "green")
        case None:
            return Text("Connecting to the relay…", "dim")
    assert state.disconnected_since is not None
    since = state.disconnected_since.astimezone(tz)
    text = Text(f"○ Disconnected since {since:%H:%M:%S}, reconnecting", "bold yellow")
    if state.snapshot is not None:
        text.append(": figures may be out of date", "yellow")
    if state.connection_error:
        text.append(f"\n  {state.connection_error}", "dim")
    return text


async def watch(client: RelayClient, console: Console | None = None) -> None:
    """Show the relay's usage live until cancelled (Ctrl-C)."""
    state = ViewState(url=client.url)
    # Live calls this from its refresh thread; it reads ``state`` once, and every
    # update replaces the frozen state whole, so it never sees half an update.
    with Live(
        get_renderable=lambda: render(state, utc_now()),
        console=console,
        refresh_per_second=1,
    ) as live:
        async for event in client.events():
            state = apply(state, event, utc_now())
            live.refresh()
