"""The live view: events folded into a state, the state drawn as text (unit tests), and
one run of ``watch`` against a relay with several sources."""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from rich.console import Console

from clients.client import (
    AlertReceived,
    ConnectionChanged,
    ConnectionState,
    RelayClient,
    RelayEvent,
    SnapshotReceived,
    SourceList,
    SourcesReceived,
    StatusReceived,
)
from clients.watch import ViewState, apply, render, watch
from common.models import (
    Derived,
    LimitProjected,
    Snapshot,
    SourceInfo,
    Status,
    ThresholdCrossed,
    WindowForecast,
)
from tests.conftest import RelayHarness

from .test_client import SOURCES, sources_relay
from .test_format import CET, NOW, ROUTER_METERS, make_snapshot, make_source_snapshot

__all__ = ["sources_relay"]  # a fixture, used below

URL = "ws://127.0.0.1:8765/ws"
PICTURE = Path(__file__).resolve().parents[2] / "docs" / "images" / "watch.svg"
#: Daily fills at 12.5 %/h and reaches its limit before its reset; Monthly barely moves.
DERIVED: Derived = {
    "burst": WindowForecast(
        burn_rate_percent_per_hour=12.5,
        projected_limit_at=NOW + timedelta(hours=5, minutes=2),
        limit_before_reset=True,
    ),
    "sustained": WindowForecast(
        burn_rate_percent_per_hour=0.3, projected_limit_at=None, limit_before_reset=False
    ),
}
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


def listing(*names_and_kinds: tuple[str, str]) -> SourcesReceived:
    """The relay's list of sources, none polled yet."""
    sources = tuple(
        SourceInfo(
            name=name,
            kind=kind,
            topic=f"usage:{name}",
            status=Status(state="starting"),
            latest=None,
        )
        for name, kind in names_and_kinds
    )
    return SourcesReceived(SourceList(sources, "Europe/London", sources[0].name))


def several_sources(*events: RelayEvent) -> ViewState:
    """A connected view of two sources, ``us`` and ``router``, each with a snapshot."""
    state = ViewState(url=URL)
    router = make_source_snapshot("openrouter", ROUTER_METERS)
    for event in (
        CONNECTED,
        listing(("us", "posthog"), ("router", "openrouter")),
        StatusReceived(Status(state="ok"), "us"),
        SnapshotReceived(make_snapshot().model_copy(update={"source": "us"}), "us"),
        StatusReceived(Status(state="ok"), "router"),
        SnapshotReceived(router, "router"),
        *events,
    ):
        state = apply(state, event, NOW)
    return state


def test_every_source_has_a_panel_with_its_meters() -> None:
    """With several sources each is drawn under its name and kind, with its own meters."""
    text = draw(several_sources())
    assert text.index("us · posthog") < text.index("Daily") < text.index("router · openrouter")
    assert text.index("router · openrouter") < text.index("Key limit")
    assert "$12.50 of $50.00" in text and "$3.10" in text


def test_each_source_shows_how_fresh_its_figures_are() -> None:
    """Every source's panel says when its figures were fetched and how long ago."""
    assert draw(several_sources()).count("(just now) · seq") == 2


def test_a_source_status_is_shown_in_its_own_panel() -> None:
    """A degraded source is reported under its name, the others are not."""
    degraded = Status(state="degraded", last_error="gateway error (HTTP 503)")
    text = draw(several_sources(StatusReceived(degraded, "router")))
    assert text.index("router · openrouter") < text.index("Gateway unreachable")
    assert text.count("Gateway unreachable") == 1


def test_a_listed_source_without_usage_waits_for_its_first_poll() -> None:
    """A source the relay lists but has not polled yet says it is waiting."""
    state = apply(
        several_sources(),
        listing(("us", "posthog"), ("router", "openrouter"), ("team", "litellm")),
        NOW,
    )
    text = draw(state)
    assert "team · litellm" in text and "No usage yet" in text


def test_the_relays_list_keeps_its_order_and_drops_sources_gone() -> None:
    """A new list of sources reorders the panels and forgets the sources no longer served."""
    state = apply(several_sources(), listing(("router", "openrouter")), NOW)
    assert [view.name for view in state.sources] == ["router"]
    assert state.sources[0].snapshot is not None


def test_a_meter_without_a_limit_has_no_bar() -> None:
    """A dollar meter with no limit shows its amount and no bar to fill."""
    text = draw(several_sources())
    today = next(line for line in text.splitlines() if "Today" in line)
    assert "━" not in today and "$3.10" in today


def test_an_alert_of_another_source_names_it() -> None:
    """An alert says which source it is about when there are several."""
    alert = CROSSED.model_copy(update={"source": "us", "label": "Daily"})
    assert "us: Daily usage crossed 90%" in draw(several_sources(AlertReceived(alert, "us")))


async def quiet(text: str) -> None:
    """A notifier that shows nothing."""


@pytest.mark.anyio
async def test_watch_draws_every_source_of_the_relay(
    sources_relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a relay with several sources, ``watch`` draws a panel for each, by name and kind."""
    polled: set[str | None] = set()
    every_source_shown = anyio.Event()
    console = Console(file=io.StringIO(), record=True, width=100)
    with anyio.fail_after(10):
        async with RelayClient(sources_relay.ws_url) as client, anyio.create_task_group() as tg:
            events = client.events

            async def observed(*args: Any, **kwargs: Any) -> AsyncGenerator[RelayEvent, None]:
                async for event in events(*args, **kwargs):
                    yield event  # watch has drawn it when it asks for the next one
                    if isinstance(event, SnapshotReceived):
                        polled.add(event.source)
                    if polled >= {name for name, _ in SOURCES}:
                        every_source_shown.set()

            monkeypatch.setattr(client, "events", observed)
            tg.start_soon(lambda: watch(client, console, quiet, tz=ZoneInfo("Europe/London")))
            await every_source_shown.wait()
            tg.cancel_scope.cancel()
    text = console.export_text()
    for name, kind in SOURCES:
        assert f"{name} · {kind}" in text
    assert "Key limit" in text and "● Live" in text
