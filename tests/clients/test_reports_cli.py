"""The daily usage reports from the client side: ``usage-monitor reports`` and ``report``,
``ReportsClient`` and ``RelayClient.list_reports``, against a real relay that has caught up
on a seeded store and delivered to a real receiver."""

from __future__ import annotations

import calendar
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import date, timedelta

import anyio
import pytest
from pydantic import SecretStr

from clients import RelayClient, ReportsClient
from clients.cli import main
from common.models import utc_now
from common.reports import ReportList, idempotency_key
from monitor.store import SnapshotStore
from relay.settings import Settings
from simulator.history import simulated_history
from simulator.receiver import ReceiverServer, ReportReceiver
from tests.conftest import RelayHarness, running_relay

TIMEOUT = 20
SOURCE = "default"  # the single source of the relay_settings fixture
SEEDED_DAYS = 4


@pytest.fixture
async def receiver() -> AsyncIterator[ReceiverServer]:
    async with ReceiverServer(ReportReceiver()) as server:
        yield server


@pytest.fixture
def days() -> list[date]:
    """The closed usage days the seeded store has polls of, oldest first."""
    today = utc_now().date()
    return [today - timedelta(days=back) for back in range(SEEDED_DAYS, 0, -1)]


@pytest.fixture
def settings(relay_settings: Settings, receiver: ReceiverServer) -> Settings:
    """A relay's settings that report to ``receiver``, days in UTC, and a store that holds
    four days of polls up to now."""
    settings = relay_settings.model_copy(
        update={
            "report_url": SecretStr(f"{receiver.url}/usage-reports"),
            "timezone": "UTC",
            "report_delay": 0,
        }
    )
    store = SnapshotStore(settings.database_path())
    snapshots, _ = simulated_history(
        SOURCE,
        "posthog",
        end=utc_now(),
        days=SEEDED_DAYS,
        interval=1800,
        usd_per_hour=2.0,
        epoch=None,
    )
    store.append_many(snapshots)
    store.close()
    return settings


@asynccontextmanager
async def caught_up(
    settings: Settings, receiver: ReportReceiver, done: Callable[[ReportReceiver], bool]
) -> AsyncIterator[RelayHarness]:
    """The relay of ``settings``, once ``receiver`` has seen ``done`` and the relay has
    recorded every outcome of its first catch-up."""
    async with running_relay(settings) as harness:
        with anyio.fail_after(TIMEOUT):
            await receiver.wait_for(done)
            # The receiver has answered, but the relay may not have recorded it yet: a pass
            # of our own waits for the scheduler's to end (and finds nothing left to do).
            assert harness.hub.reports is not None
            await harness.hub.reports.catch_up()
        yield harness


@pytest.fixture
async def relay(
    settings: Settings, receiver: ReceiverServer, days: list[date]
) -> AsyncIterator[RelayHarness]:
    """The relay of ``settings``, once it has delivered the report of every closed day."""
    keys = {idempotency_key(SOURCE, day) for day in days}
    async with caught_up(
        settings, receiver.receiver, lambda seen: keys <= seen.accepted.keys()
    ) as harness:
        yield harness


async def cli(*args: str) -> int:
    """Run the command in a worker thread, as from a shell, while the relay serves here."""
    code: int = await anyio.to_thread.run_sync(main, list(args))
    return code


def long_day(day: date) -> str:
    """As in "Tuesday 1 December 2026"."""
    weekday, month = calendar.day_name[day.weekday()], calendar.month_name[day.month]
    return f"{weekday} {day.day} {month} {day.year}"


def reports_client(relay: RelayHarness) -> ReportsClient:
    return ReportsClient(relay.ws_url)


@pytest.mark.anyio
async def test_reports_table_lists_the_delivered_days(
    relay: RelayHarness,
    days: list[date],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``reports`` prints a row per closed day with data, oldest first, each delivered."""
    monkeypatch.setenv("COLUMNS", "200")
    with anyio.fail_after(TIMEOUT):
        code = await cli("reports", "--url", relay.ws_url)
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    rows = [line.split() for line in out.splitlines()]
    listed = [row for row in rows if row and row[0][:1].isdigit()]
    assert [row[0] for row in listed] == [day.isoformat() for day in days], out
    assert all(row[1:4] == [SOURCE, "delivered", "1"] for row in listed), out
    assert "days in UTC" in out


@pytest.mark.anyio
async def test_reports_json_is_the_relays_list(
    relay: RelayHarness, days: list[date], capsys: pytest.CaptureFixture[str]
) -> None:
    """``reports --json --since DAY`` prints the relay's ReportList from that day."""
    since = days[1]
    with anyio.fail_after(TIMEOUT):
        code = await cli(
            "reports", "--json", "--since", since.isoformat(), "--source", SOURCE, "--url",
            relay.ws_url,
        )  # fmt: skip
        out, err = capsys.readouterr()
        assert (code, err) == (0, "")
        listing = ReportList.model_validate_json(out)
        assert listing == await reports_client(relay).list(since, SOURCE)
    assert [entry.usage_day for entry in listing.reports] == days[1:]
    assert (listing.timezone, listing.destinations) == ("UTC", ["report_url"])


@pytest.mark.anyio
async def test_report_day_delivers_the_same_report_again(
    relay: RelayHarness,
    receiver: ReceiverServer,
    days: list[date],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``report --day`` of a delivered day sends the same key and body again (409) and says
    which day, zone, polls and coverage it delivered."""
    day = days[1]
    key = idempotency_key(SOURCE, day)
    with anyio.fail_after(TIMEOUT):
        saved = await reports_client(relay).get(SOURCE, day)
        code = await cli("report", "--day", day.isoformat(), "--url", relay.ws_url)
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == (
        f"Delivered the usage report of {long_day(day)} (UTC) for {SOURCE}: "
        f"{saved.polls:,} polls, coverage {saved.coverage * 100:.1f} %\n"
    )
    statuses = [request.status for request in receiver.receiver.requests if request.key == key]
    assert statuses == [201, 409]
    assert receiver.receiver.bodies_by_key()[key] == {receiver.receiver.accepted[key]}


@pytest.mark.anyio
async def test_report_not_taken_by_the_destination_exits_1(
    settings: Settings,
    receiver: ReceiverServer,
    days: list[date],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``report --day`` that the destination refuses says saved, not delivered and why; exit 1."""
    receiver.receiver.fail(400)
    keys = {idempotency_key(SOURCE, day) for day in days}

    def all_refused(seen: ReportReceiver) -> bool:
        return keys <= {request.key for request in seen.requests if request.status == 400}

    async with caught_up(settings, receiver.receiver, all_refused) as relay:
        with anyio.fail_after(TIMEOUT):
            code = await cli("report", "--day", days[0].isoformat(), "--url", relay.ws_url)
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith(
        f"usage-monitor: report: saved the usage report of {long_day(days[0])} (UTC) for "
        f"{SOURCE}, but did not deliver it (failed after 2 attempts): report_url: HTTP 400"
    )
    assert err.count("\n") == 1


@pytest.mark.anyio
@pytest.mark.parametrize("ahead", [0, 1], ids=["today", "tomorrow"])
async def test_report_of_an_open_day_is_refused(
    relay: RelayHarness, capsys: pytest.CaptureFixture[str], ahead: int
) -> None:
    """``report --day`` of a day not closed yet is the relay's one line and exit 2."""
    day = utc_now().date() + timedelta(days=ahead)
    with anyio.fail_after(TIMEOUT):
        code = await cli("report", "--day", day.isoformat(), "--url", relay.ws_url)
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith(f"usage-monitor: report: the usage day {day} has not closed yet in UTC")
    assert err.count("\n") == 1


@pytest.mark.anyio
async def test_report_of_an_unknown_source_exits_2(
    relay: RelayHarness, days: list[date], capsys: pytest.CaptureFixture[str]
) -> None:
    """``report --source`` that the relay lacks names it and the relay's sources, exit 2."""
    with anyio.fail_after(TIMEOUT):
        code = await cli(
            "report", "--day", days[0].isoformat(), "--source", "nope", "--url", relay.ws_url
        )
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (
        f"usage-monitor: the relay at {relay.ws_url} has no source 'nope'; its sources: {SOURCE}\n"
    )


@pytest.mark.parametrize("day", ["yesterday", "2026-13-01", "20261201"])
def test_report_rejects_a_malformed_day(day: str) -> None:
    """``report --day`` takes YYYY-MM-DD and nothing else, as an argparse error (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--day", day])
    assert exit_.value.code == 2


@pytest.mark.anyio
async def test_list_reports_over_websocket_is_the_http_answer(
    relay: RelayHarness, days: list[date]
) -> None:
    """``RelayClient.list_reports`` answers what ``GET /api/v1/reports`` does."""
    with anyio.fail_after(TIMEOUT):
        async with RelayClient(relay.ws_url) as client:
            over_ws = await client.list_reports(since=days[0], source=SOURCE)
        over_http = await reports_client(relay).list(days[0], SOURCE)
    assert over_ws == over_http
    assert [entry.state for entry in over_ws.reports] == ["delivered"] * len(days)
