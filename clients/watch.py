"""
A live terminal view of the relay: ``usage-monitor watch``.

``apply`` folds the client's events into a ``ViewState`` and ``render`` draws a
state as of a given time; both are pure, so the view is tested by rendering to
a recording console. ``watch`` wires them to a ``RelayClient`` and rich's Live,
which also redraws every second so reset countdowns keep moving between events,
and passes each alert to a notifier (by default a desktop notification).

The view follows every source the relay lists, one panel each with its
meters, status and freshness, or the one source it is given. A relay with a
single source (or one older than sources) is drawn as one panel, as before.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any

import anyio
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from common.models import Alert, Derived, Meter, Snapshot, SourceKind, Status, utc_now
from common.text import alert_text, meter_name, meter_value_label

from .client import (
    AlertReceived,
    ConnectionChanged,
    ConnectionState,
    RelayClient,
    RelayEvent,
    SnapshotReceived,
    SourcesReceived,
    StatusReceived,
)
from .exceptions import RelayClientError
from .format import age_label, forecast_label, reset_label

__all__ = ["Notifier", "SourceView", "ViewState", "apply", "notify_desktop", "render", "watch"]

#: The newest alerts shown; older ones scroll off so the view keeps its size.
_SHOWN_ALERTS = 3
#: notify-send returns at once; one that hangs (no session bus) is given up on.
_NOTIFY_TIMEOUT = 5.0

#: Shows one alert's text to the person, e.g. as a desktop notification.
Notifier = Callable[[str], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class SourceView:
    """What the view knows of one source; ``name`` None is the relay's default topic."""

    name: str | None
    kind: SourceKind | None = None
    snapshot: Snapshot | None = None
    status: Status | None = None


@dataclass(frozen=True)
class ViewState:
    """Everything the view shows; ``connection`` is None until the first attempt ends."""

    url: str
    #: The sources in the relay's order.
    sources: tuple[SourceView, ...] = ()
    connection: ConnectionState | None = None
    connection_error: str | None = None
    disconnected_since: datetime | None = None
    #: The newest alerts with the time each arrived, oldest first.
    alerts: tuple[tuple[datetime, Alert], ...] = ()

    def source(self, name: str | None) -> SourceView | None:
        return next((view for view in self.sources if view.name == name), None)

    def with_source(self, name: str | None, **changes: Any) -> ViewState:
        """This state with ``changes`` made to the source ``name`` (added last if new)."""
        known = self.source(name)
        if known is None:
            return replace(self, sources=(*self.sources, SourceView(name, **changes)))
        updated = replace(known, **changes)
        return replace(
            self, sources=tuple(updated if view is known else view for view in self.sources)
        )


def apply(state: ViewState, event: RelayEvent, now: datetime) -> ViewState:
    """The state after ``event``, which arrived at ``now``."""
    match event:
        case SourcesReceived(listing):
            views = []
            for info in listing.sources:
                known = state.source(info.name) or SourceView(info.name)
                views.append(replace(known, kind=info.kind))
            return replace(state, sources=tuple(views))
        case SnapshotReceived(snapshot, source):
            return state.with_source(source, snapshot=snapshot, kind=snapshot.kind)
        case StatusReceived(status, source):
            return state.with_source(source, status=status)
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
    # The same widths in every panel, so that the bars line up.
    meters = [meter for view in state.sources if view.snapshot for meter in view.snapshot.meters]
    widths = _Widths(
        name=max((len(meter_name(m.id, m.label)) for m in meters), default=0),
        value=max((len(meter_value_label(m)) for m in meters), default=0),
        note=max((len(_note(m, now, tz)) for m in meters), default=0),
    )
    if len(state.sources) <= 1:
        only = state.sources[0] if state.sources else SourceView(None)
        parts.extend(_source_parts(only, now, tz, widths, stale=stale))
    else:
        for view in state.sources:
            title = Text(str(view.name), "bold")
            if view.kind is not None:
                title.append(f" · {view.kind}", "dim")
            body = Group(*_source_parts(view, now, tz, widths, stale=stale))
            parts.append(Panel(body, title=title, title_align="left", box=box.ROUNDED))
    for arrived, alert in state.alerts:
        parts.append(Text(f"⚠ {arrived.astimezone(tz):%H:%M} {alert_text(alert, tz)}", "yellow"))
    parts.append(_connection_notice(state, tz))
    return Panel(Group(*parts), title="Usage", title_align="left", subtitle=state.url)


@dataclass(frozen=True)
class _Widths:
    """The widest meter name and reading of all the sources drawn."""

    name: int
    value: int
    note: int


def _source_parts(
    view: SourceView, now: datetime, tz: tzinfo | None, widths: _Widths, *, stale: bool
) -> list[RenderableType]:
    """One source's meters, forecasts, freshness and status notice."""
    parts: list[RenderableType] = []
    snapshot = view.snapshot
    if snapshot is None:
        parts.append(Text("No usage yet: waiting for the first poll of the gateway.", "dim"))
    else:
        parts.append(_meters(snapshot.meters, now, tz, widths, stale=stale))
        if snapshot.derived:
            forecasts = _forecasts(snapshot.meters, snapshot.derived, now, tz, widths)
            if forecasts.row_count:
                parts.append(forecasts)
        fetched = snapshot.fetched_at.astimezone(tz)
        parts.append(
            Text(
                f"Updated {fetched:%H:%M:%S} ({age_label(snapshot.fetched_at, now)}) "
                f"· seq {snapshot.seq}",
                "dim",
            )
        )
    notice = _status_notice(view.status)
    if notice is not None:
        parts.append(notice)
    return parts


def _meters(
    meters: list[Meter], now: datetime, tz: tzinfo | None, widths: _Widths, *, stale: bool
) -> Table:
    # The bar takes whatever width the labels leave, so narrow terminals do not wrap them.
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(min_width=max(8, widths.name))
    table.add_column(ratio=1)
    table.add_column(justify="right", min_width=max(5, widths.value))
    table.add_column(min_width=widths.note)
    for meter in meters:
        table.add_row(*_meter_row(meter, now, tz, stale=stale))
    return table


def _meter_row(
    meter: Meter, now: datetime, tz: tzinfo | None, *, stale: bool
) -> tuple[RenderableType, ...]:
    percent = meter.used_percent
    colour = "red" if meter.exceeded else _colour(percent or 0.0)
    if stale:
        colour = "grey50"
    bar: RenderableType = Text("")
    if percent is not None:  # a meter without a limit has nothing to fill
        bar = ProgressBar(
            total=100, completed=min(percent, 100), complete_style=colour, finished_style=colour
        )
    note = Text(_note(meter, now, tz), "bold red" if meter.exceeded else "")
    value = Text(meter_value_label(meter), colour if percent is not None else "")
    return Text(meter_name(meter.id, meter.label), "bold"), bar, value, note


def _note(meter: Meter, now: datetime, tz: tzinfo | None) -> str:
    """After a meter's reading: "Limit reached", else when it resets (if it ever does)."""
    if meter.exceeded:
        return "Limit reached"
    return "" if meter.reset_at is None else reset_label(meter.reset_at, now, tz)


def _forecasts(
    meters: list[Meter], derived: Derived, now: datetime, tz: tzinfo | None, widths: _Widths
) -> Table:
    """Each meter's burn rate and projection, aligned under the meters; none without a rate."""
    table = Table.grid(padding=(0, 1))
    table.add_column(min_width=max(8, widths.name))
    table.add_column()
    names = {meter.id: meter_name(meter.id, meter.label) for meter in meters}
    # In the meters' order, then any meter the snapshot no longer shows.
    order = [*names, *(meter_id for meter_id in derived if meter_id not in names)]
    for meter_id in order:
        forecast = derived.get(meter_id)
        label = None if forecast is None else forecast_label(forecast, now, tz)
        if label is not None:
            name = names.get(meter_id) or meter_name(meter_id)
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
    if any(view.snapshot is not None for view in state.sources):
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
    client: RelayClient,
    console: Console | None = None,
    notify: Notifier = notify_desktop,
    *,
    source: str | None = None,
    tz: tzinfo | None = None,
) -> None:
    """Show the relay's usage live until cancelled (Ctrl-C), passing each alert to ``notify``.

    Every source the relay lists, or ``source`` alone; times in ``tz`` (None:
    the system's zone). Raises ``UnknownSource`` for a source the relay does
    not serve, and ``Unauthorized`` when it refuses the credentials.
    """
    state = ViewState(url=client.url)
    events = client.events(source) if source is not None else client.events(every_source=True)
    failure: RelayClientError | None = None
    async with contextlib.aclosing(events):
        # The first event (connected, or not) comes before anything is drawn, so that a
        # source the relay does not serve ends the command with nothing on the screen.
        first = await anext(events, None)
        if first is None:
            return
        async with anyio.create_task_group() as notifications:

            def show(event: RelayEvent) -> None:
                nonlocal state
                state = apply(state, event, utc_now())
                live.refresh()
                if isinstance(event, AlertReceived):
                    # In the background, so a slow notifier never holds up the view.
                    notifications.start_soon(notify, alert_text(event.alert, tz=tz))

            # Live calls this from its refresh thread; it reads ``state`` once, and every
            # update replaces the frozen state whole, so it never sees half an update.
            with Live(
                get_renderable=lambda: render(state, utc_now(), tz),
                console=console,
                refresh_per_second=1,
            ) as live:
                show(first)
                try:
                    async for event in events:
                        show(event)
                except RelayClientError as exc:  # what retrying cannot fix: end the view
                    failure = exc
                    notifications.cancel_scope.cancel()
    if failure is not None:
        raise failure
