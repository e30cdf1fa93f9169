"""
A live terminal view of the relay: ``usage-monitor watch``.

``apply`` folds the client's events into a ``ViewState`` and ``render`` draws a
state as of a given time; both are pure, so the view is tested by rendering to
a recording console. ``watch`` wires them to a ``RelayClient`` and rich's Live,
which also redraws every second so reset countdowns keep moving between events,
and passes each alert to a notifier (by default a desktop notification).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any

import anyio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from common.models import Alert, Derived, Snapshot, Status, UsageWindow, utc_now
from common.text import WINDOW_LABELS, alert_text, percent_label

from .client import (
    AlertReceived,
    ConnectionChanged,
    ConnectionState,
    RelayClient,
    RelayEvent,
    SnapshotReceived,
    StatusReceived,
)
from .format import forecast_label, labelled_windows, reset_label

__all__ = ["Notifier", "ViewState", "apply", "notify_desktop", "render", "watch"]

#: The newest alerts shown; older ones scroll off so the view keeps its size.
_SHOWN_ALERTS = 3
#: notify-send returns at once; one that hangs (no session bus) is given up on.
_NOTIFY_TIMEOUT = 5.0

#: Shows one alert's text to the person, e.g. as a desktop notification.
Notifier = Callable[[str], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ViewState:
    """Everything the view shows; ``connection`` is None until the first attempt ends."""

    url: str
    snapshot: Snapshot | None = None
    status: Status | None = None
    connection: ConnectionState | None = None
    connection_error: str | None = None
    disconnected_since: datetime | None = None
    #: The newest alerts with the time each arrived, oldest first.
    alerts: tuple[tuple[datetime, Alert], ...] = ()


def apply(state: ViewState, event: RelayEvent, now: datetime) -> ViewState:
    """The state after ``event``, which arrived at ``now``."""
    match event:
        case SnapshotReceived(snapshot):
            return replace(state, snapshot=snapshot)
        case StatusReceived(status):
            return replace(state, status=status)
        case AlertReceived(alert):
            return replace(state, alerts=(*state.alerts, (now, alert))[-_SHOWN_ALERTS:])
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
        if state.snapshot.derived is not None:
            parts.append(_forecasts(state.snapshot.derived, now, tz))
        fetched = state.snapshot.fetched_at.astimezone(tz)
        parts.append(Text(f"Updated {fetched:%H:%M:%S} · seq {state.snapshot.seq}", "dim"))
    for arrived, alert in state.alerts:
        parts.append(Text(f"⚠ {arrived.astimezone(tz):%H:%M} {alert_text(alert, tz)}", "yellow"))
    notice = _status_notice(state.status)
    if notice is not None:
        parts.append(notice)
    parts.append(_connection_notice(state, tz))
    return Panel(Group(*parts), title="Usage", title_align="left", subtitle=state.url)


def _meters(snapshot: Snapshot, now: datetime, tz: tzinfo | None, *, stale: bool) -> Table:
    # The bar takes whatever width the labels leave, so narrow terminals do not wrap them.
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(min_width=8)
    table.add_column(ratio=1)
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
        complete_style=colour,
        finished_style=colour,
    )
    note = (
        Text("Limit reached", "bold red")
        if window.exceeded
        else Text(reset_label(window.reset_at, now, tz))
    )
    return Text(label, "bold"), bar, Text(percent_label(window.used_percent), colour), note


def _forecasts(derived: Derived, now: datetime, tz: tzinfo | None) -> Table:
    """Each window's burn rate and projection, aligned under the meters; none without a rate."""
    table = Table.grid(padding=(0, 1))
    table.add_column(min_width=8)
    table.add_column()
    windows = (
        (WINDOW_LABELS["burst"], derived.burst),
        (WINDOW_LABELS["sustained"], derived.sustained),
    )
    for name, forecast in windows:
        label = forecast_label(forecast, now, tz)
        if label is not None:
            table.add_row(Text(name, "dim"), Text(label, "dim"))
    return table


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


async def notify_desktop(text: str) -> None:
    """Show ``text`` as a desktop notification with notify-send, where the platform has it."""
    program = shutil.which("notify-send")
    if program is None:
        return
    # A notification is a courtesy: a missing session bus must not end the view.
    with anyio.move_on_after(_NOTIFY_TIMEOUT), contextlib.suppress(OSError):
        await anyio.run_process([program, "Usage monitor", text], check=False)


async def watch(
    client: RelayClient, console: Console | None = None, notify: Notifier = notify_desktop
) -> None:
    """Show the relay's usage live until cancelled (Ctrl-C), passing each alert to ``notify``."""
    state = ViewState(url=client.url)
    # Live calls this from its refresh thread; it reads ``state`` once, and every
    # update replaces the frozen state whole, so it never sees half an update.
    async with anyio.create_task_group() as notifications:
        with Live(
            get_renderable=lambda: render(state, utc_now()),
            console=console,
            refresh_per_second=1,
        ) as live:
            async for event in client.events():
                state = apply(state, event, utc_now())
                live.refresh()
                if isinstance(event, AlertReceived):
                    # In the background, so a slow notifier never holds up the view.
                    notifications.start_soon(notify, alert_text(event.alert, tz=None))
