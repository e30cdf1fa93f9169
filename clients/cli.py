"""
The ``usage-monitor`` command.

``serve`` becomes the relay, ``python -m relay`` (it polls the gateway, and
this package never imports it); ``latest``, ``refresh``, ``history``,
``watch``, ``sources``, ``breakdown``, ``reports``, ``report``, ``alerts`` and
``token`` are clients of a running relay. All of them read the same configuration
(``common.settings``): the client commands find the relay where ``serve``
listens, from the same ``--host``/``--port`` flags, environment variables
and config file, unless ``--url`` or ``USAGE_MONITOR_URL`` names it, and
show every time in the configured ``timezone`` (``--timezone``; default:
the machine's zone).

``latest``, ``refresh``, ``history`` and ``watch`` take ``--source NAME``;
without it ``refresh`` and ``history`` are about the relay's default source,
and ``latest`` and ``watch`` show every source when the relay has several.

Exit codes of the client commands: 0 success; 1 the relay answered but has no
usage to give (no poll has succeeded yet, a refresh could not poll the gateway,
no history falls in the range, or a report was saved but not delivered); 2 the
relay cannot be reached, refused the request or serves no such source.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from pydantic import TypeAdapter
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.exceptions import ClientTokenError, SetupError
from common.history import HistoryPoint
from common.messages import DEFAULT_TOPIC, MAX_HISTORY_POINTS, SourcesResult
from common.models import Snapshot, SourceInfo, Status, utc_now
from common.reports import ReportList
from common.settings import LOCATION_FIELDS, ConnectionSettings, given, location_arguments
from common.tokens import read_client_token

from .breakdown import breakdown_csv, render_breakdown
from .client import RelayClient, SourceList
from .exceptions import (
    GatewayUnavailable,
    RelayClientError,
    RelayUnavailable,
    RequestFailed,
    Unauthorized,
    UnknownSource,
)
from .format import age_label, dominant_meter, meter_line, source_lines, state_label, status_line
from .history import render_history
from .reports import ReportsClient
from .rules import AlertRulesClient
from .watch import watch

__all__ = ["main"]

EXIT_OK = 0
EXIT_NO_DATA = 1
EXIT_RELAY = 2
EXIT_INTERRUPTED = 130

PROG = "usage-monitor"
#: Names the relay's WebSocket URL for the client commands, beating host and port.
URL_ENV = "USAGE_MONITOR_URL"
#: ``--since`` durations back from now: "30m", "24h", "7d", "2w".
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: A usage day on the command line: ``YYYY-MM-DD`` and nothing else ISO 8601 allows.
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_POINTS = TypeAdapter(list[HistoryPoint])
_SOURCES = TypeAdapter(list[SourceInfo])
#: The settings a client command's own flags may give, besides where the relay is.
_CLIENT_FIELDS = ("timezone",)

#: A command's handler: the parsed arguments in, the exit code out.
Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        _serve(arguments[1:])
    args = _parser().parse_args(arguments)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: "--token" must not quietly mean "--token-file".
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        description="Poll a metered LLM gateway's usage once and relay it live to every client.",
        epilog="Client commands exit with 0 on success, 1 when the relay has no usage to give "
        "and 2 when the relay cannot be reached or refuses the request.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    # Listed for the help only: main() hands "serve" to the relay before parsing.
    commands.add_parser(
        "serve",
        add_help=False,
        help="poll the gateway and relay its usage to clients (see `serve --help`)",
    )

    relay = argparse.ArgumentParser(
        add_help=False, parents=[location_arguments()], allow_abbrev=False
    )
    relay.add_argument(
        "--url",
        type=_relay_url,
        default=argparse.SUPPRESS,
        help=f"the relay's WebSocket URL (default: ${URL_ENV}, else ws://HOST:PORT/ws)",
    )
    relay.add_argument(
        "--timezone",
        default=argparse.SUPPRESS,
        metavar="ZONE",
        help="IANA zone to show times in, e.g. Europe/London (default: the config's "
        "timezone, else the machine's zone)",
    )

    def as_json(what: str) -> argparse.ArgumentParser:
        parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        parent.add_argument("--json", action="store_true", help=f"print {what} as JSON")
        return parent

    def one_source(default: str) -> argparse.ArgumentParser:
        parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        parent.add_argument(
            "--source", metavar="NAME", help=f"the source to show (default: {default})"
        )
        return parent

    def command(
        name: str, summary: str, handler: Handler, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=list(parents), allow_abbrev=False, help=summary)
        sub.set_defaults(handler=handler)
        return sub

    every = one_source("every source, one line each")
    default = one_source("the relay's default source")
    command(
        "latest",
        "print the current usage on one line (per source)",
        _latest,
        relay,
        as_json("the snapshot (with several sources: the list of sources)"),
        every,
    )
    command(
        "refresh",
        "poll the gateway now and print the usage",
        _refresh,
        relay,
        as_json("the snapshot"),
        default,
    )
    command(
        "sources",
        "list the relay's sources, their state and usage",
        _sources,
        relay,
        as_json("the relay's list of sources"),
    )
    history = command(
        "history", "print recent usage as a table and a sparkline", _history, relay, default
    )
    history.add_argument(
        "--since",
        type=_since,
        default="24h",
        metavar="WHEN",
        help="start of the range: a duration back from now (30m, 24h, 7d, 2w) or an ISO 8601 "
        "time (default: %(default)s)",
    )
    history.add_argument(
        "--limit",
        type=_point_limit,
        default=500,
        metavar="N",
        help="at most N points, thinned evenly (default: %(default)s)",
    )
    history.add_argument("--json", action="store_true", help="print the points as JSON")
    command("watch", "show the usage live until Ctrl-C", _watch, relay, one_source("every source"))
    breakdown = command(
        "breakdown",
        "print usage per source, meter, hour, day or month, with totals",
        _breakdown,
        relay,
    )
    breakdown.add_argument(
        "--since",
        type=_range_bound,
        metavar="WHEN",
        help="start: a duration back from now (24h, 7d, 2w), a day (YYYY-MM-DD, in the relay's "
        "timezone) or an ISO 8601 time (default: 24 hours ago)",
    )
    breakdown.add_argument(
        "--until", type=_range_bound, metavar="WHEN", help="end, the same way (default: now)"
    )
    breakdown.add_argument(
        "--group-by",
        default="",
        metavar="GROUPS",
        help="comma-separated: source, meter, hour, day, month (default: none, the totals)",
    )
    output = breakdown.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the relay's answer as JSON")
    output.add_argument("--csv", action="store_true", help="print the rows as CSV")
    reports = command(
        "reports",
        "list the daily usage reports and whether each was delivered",
        _reports,
        relay,
        as_json("the relay's answer"),
        one_source("every source"),
    )
    reports.add_argument(
        "--since",
        type=_report_since,
        metavar="WHEN",
        help="the first usage day: YYYY-MM-DD (in the relay's timezone) or a duration back "
        "from now (7d, 2w) (default: the last 14 closed days)",
    )
    report = command("report", "build and deliver a day's usage report now", _report, relay)
    report.add_argument(
        "--day",
        type=_usage_day,
        required=True,
        metavar="YYYY-MM-DD",
        help="the usage day, in the relay's timezone; it must have closed",
    )
    report.add_argument(
        "--source",
        metavar="NAME",
        help="the source to report (default: every source, one line each)",
    )
    _alerts_parser(commands, relay, as_json("the rules"))
    token = command(
        "token",
        "print the client token, for clients other than this command (keep it secret)",
        _token,
        location_arguments(),
    )
    token.add_argument("--path", action="store_true", help="print where the token is kept instead")
    return parser


def _alerts_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    relay: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """``alerts list|add|remove``: the alert rules set at run time."""
    alerts = commands.add_parser(
        "alerts", allow_abbrev=False, help="list, add or remove alert rules (thresholds)"
    )
    actions = alerts.add_subparsers(required=True, metavar="ACTION")

    def action(
        name: str, summary: str, handler: Handler, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, parents=[relay, *parents], allow_abbrev=False, help=summary)
        sub.set_defaults(handler=handler)
        return sub

    action("list", "print the alert rules as a table", _alerts_list, as_json)
    add = action("add", "add an alert rule and print its id", _alerts_add)
    add.add_argument(
        "--threshold",
        type=float,
        required=True,
        metavar="PERCENT",
        help="alert once per window when a meter reaches this percent (0 < PERCENT <= 100)",
    )
    add.add_argument("--source", metavar="NAME", help="only this source (default: every source)")
    add.add_argument("--meter", metavar="ID", help="only this meter, e.g. burst (default: any)")
    add.add_argument(
        "--webhook",
        metavar="URL",
        help="post this rule's alerts here (default: the relay's configured webhook)",
    )
    remove = action("remove", "remove an alert rule", _alerts_remove)
    remove.add_argument("id", metavar="ID", help="the rule's id, as `alerts list` shows it")


def _relay_url(value: str) -> str:
    try:
        RelayClient(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _since(value: str) -> datetime:
    duration = _DURATION.fullmatch(value)
    if duration is not None:
        amount, unit = duration.groups()
        return utc_now() - timedelta(**{_DURATION_UNITS[unit]: float(amount)})
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration like 24h or 7d, nor an ISO 8601 time: {value!r}"
        ) from None
    # A time typed without a zone means the local one.
    return at if at.tzinfo is not None else at.astimezone()


def _usage_day(value: str) -> date:
    try:
        if _DAY.fullmatch(value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {value!r}")


def _report_since(value: str) -> date | timedelta:
    """A day, or a duration back from now (made a day in the target's zone)."""
    duration = _DURATION.fullmatch(value)
    if duration is not None:
        amount, unit = duration.groups()
        return timedelta(**{_DURATION_UNITS[unit]: float(amount)})
    try:
        return _usage_day(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a day (YYYY-MM-DD) nor a duration like 7d: {value!r}"
        ) from None


def _range_bound(value: str) -> str:
    """A breakdown bound as the relay takes it: a duration back from now becomes a time."""
    if _DURATION.fullmatch(value):
        return _since(value).isoformat()
    return value


def _point_limit(value: str) -> int:
    if not value.isdecimal() or not 1 <= int(value) <= MAX_HISTORY_POINTS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_HISTORY_POINTS}, got {value!r}")
    return int(value)


def _serve(arguments: Sequence[str]) -> NoReturn:
    """Become the relay: ``python -m relay`` with the same arguments, in this process."""
    # The server is a layer of its own with its own command line; the clients
    # never import it, so the process image is handed over instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "relay", *arguments])


@dataclass(frozen=True)
class _Target:
    """The relay a client command talks to, the token file it keeps on this machine, and
    the zone times are shown in."""

    url: str
    token_file: Path
    zone: ZoneInfo

    def client(self) -> RelayClient:
        return RelayClient(self.url, token_file=self.token_file)


class _NoSuchSource(Exception):
    """A ``--source`` the relay does not serve; the message names the ones it does."""


def _target(args: argparse.Namespace) -> _Target:
    """``--url``, else ``--host``/``--port``, else ``$USAGE_MONITOR_URL``, else the settings."""
    location = given(args, LOCATION_FIELDS)
    settings = ConnectionSettings.load(
        config_file=getattr(args, "config", None),
        **location,
        **given(args, _CLIENT_FIELDS),
    )
    url = getattr(args, "url", None)
    if url is None:
        from_env = None if location else os.environ.get(URL_ENV)
        url = _relay_url(from_env) if from_env else settings.relay_url()
    return _Target(url, settings.client_token_path(), settings.zone())


async def _listing(client: RelayClient, target: _Target) -> SourceList:
    """The relay's sources; a relay older than sources has one, its default topic's, and
    no zone of its own (this client's is given)."""
    try:
        return await client.list_sources()
    except RequestFailed as exc:
        if exc.code != "unknown_op":
            raise
    latest = await client.get_latest()
    status = await client.status()
    only = SourceInfo(
        name=latest.source if latest is not None else "default",
        kind=latest.kind if latest is not None else "posthog",
        topic=DEFAULT_TOPIC,
        status=status,
        latest=latest,
    )
    return SourceList((only,), target.zone.key, only.name)


def _no_usage(status: Status, source: str | None = None) -> int:
    reason = f": {status.last_error}" if status.last_error else ""
    whose = "" if source is None else f" of {source!r}"
    return _fail(
        f"no usage yet: the relay has no successful poll{whose} of the gateway "
        f"(monitor {status.state}{reason})",
        EXIT_NO_DATA,
    )


def _latest(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        async with target.client() as client:
            if args.source is not None:
                snapshot = await client.get_latest(args.source)
                if snapshot is None:
                    return _no_usage(await client.status(args.source), args.source)
                _print_snapshot(snapshot, target, as_json=args.json)
                return EXIT_OK
            listing = await _listing(client, target)
        if len(listing.sources) == 1:  # as before there were sources
            [only] = listing.sources
            if only.latest is None:
                return _no_usage(only.status)
            _print_snapshot(only.latest, target, as_json=args.json)
            return EXIT_OK
        if args.json:
            print(_SOURCES.dump_json(list(listing.sources)).decode())
        else:
            print("\n".join(source_lines(listing.sources, utc_now(), target.zone)))
        if all(source.latest is None for source in listing.sources):
            return EXIT_NO_DATA
        return EXIT_OK

    return _run_client(args, fetch)


def _refresh(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        async with target.client() as client:
            try:
                snapshot = await client.refresh(args.source)
            except GatewayUnavailable as exc:
                message = exc.message  # the relay's words: "the gateway could not be polled: ..."
                if exc.latest is not None:
                    line = status_line(exc.latest, utc_now(), target.zone)
                    message += f"\nlast good usage: {line}"
                return _fail(message, EXIT_NO_DATA)
        _print_snapshot(snapshot, target, as_json=args.json)
        return EXIT_OK

    return _run_client(args, fetch)


def _sources(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        async with target.client() as client:
            listing = await _listing(client, target)
        if args.json:
            result = SourcesResult(
                sources=list(listing.sources),
                timezone=listing.timezone,
                default_source=listing.default_source,
            )
            print(result.model_dump_json())
        else:
            Console().print(_sources_table(listing, utc_now()))
        return EXIT_OK

    return _run_client(args, fetch)


def _sources_table(listing: SourceList, now: datetime) -> Table:
    """Name, kind, state, how fresh the figures are and the meter that binds, per source."""
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        caption=f"default source: {listing.default_source} · days in {listing.timezone}",
        caption_justify="left",
    )
    for header in ("Source", "Kind", "State", "Last poll", "Usage"):
        table.add_column(header)
    for source in listing.sources:
        latest = source.latest
        polled = source.status.last_success_at or (latest.fetched_at if latest else None)
        meter = dominant_meter(latest.meters) if latest is not None else None
        table.add_row(
            source.name,
            source.kind,
            state_label(source.status.state),
            "never" if polled is None else age_label(polled, now),
            "—" if meter is None else meter_line(meter),
        )
    return table


def _history(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        async with target.client() as client:
            points = await client.history(since=args.since, limit=args.limit, source=args.source)
            # The latest snapshot names the meters and says which are in dollars.
            latest = None if args.json or not points else await client.get_latest(args.source)
        if not points:
            return _fail("no usage history in that range yet", EXIT_NO_DATA)
        if args.json:
            print(_POINTS.dump_json(points).decode())
        else:
            meters = latest.meters if latest is not None else []
            Console().print(render_history(points, utc_now(), target.zone, meters))
        return EXIT_OK

    return _run_client(args, fetch)


def _watch(args: argparse.Namespace) -> int:
    async def show(target: _Target) -> int:
        async with target.client() as client:
            await watch(client, source=args.source, tz=target.zone)
        return EXIT_OK

    try:
        return _run_client(args, show)
    except KeyboardInterrupt:  # how a watch is meant to end
        return EXIT_OK


def _breakdown(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        groups = [group.strip() for group in args.group_by.split(",") if group.strip()]
        async with target.client() as client:
            breakdown = await client.breakdown(args.since, args.until, groups)
        if args.json:
            print(breakdown.to_json())
        elif args.csv:
            sys.stdout.write(breakdown_csv(breakdown))
        else:
            Console().print(render_breakdown(breakdown))
        return EXIT_OK

    return _run_client(args, lambda target: _refused("breakdown", fetch(target)))


def _reports_client(target: _Target) -> ReportsClient:
    return ReportsClient(target.url, token_file=target.token_file)


def _reports(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        since = args.since
        if isinstance(since, timedelta):
            since = (utc_now() - since).astimezone(target.zone).date()
        listing = await _reports_client(target).list(since, args.source)
        if args.json:
            print(listing.model_dump_json())
        else:
            # Times in the zone the relay counts days in, unless --timezone says otherwise.
            given_zone = "timezone" in vars(args)
            zone = target.zone if given_zone else _zone_named(listing.timezone, target.zone)
            Console().print(_reports_table(listing, zone))
        return EXIT_OK

    return _run_client(args, lambda target: _refused("reports", fetch(target)))


def _zone_named(name: str, fallback: ZoneInfo) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return fallback


def _reports_table(listing: ReportList, zone: ZoneInfo) -> Table:
    """Day, source, state, attempts, when delivered and the last error, oldest day first."""
    destinations = ", ".join(listing.destinations) or "none, reports are only saved"
    notes = [f"days in {listing.timezone}", f"times in {zone.key}", f"to {destinations}"]
    if not listing.reports:
        notes.insert(0, "no reports due in that range")
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        caption=" · ".join(notes),
        caption_justify="left",
    )
    for header in ("Day", "Source", "State", "Attempts", "Delivered at", "Last error"):
        table.add_column(header, justify="right" if header == "Attempts" else "left")
    for entry in sorted(listing.reports, key=lambda entry: entry.usage_day):
        delivered = entry.delivered_at
        table.add_row(
            entry.usage_day.isoformat(),
            entry.source,
            Text(entry.state, style="red" if entry.state == "failed" else ""),
            str(entry.attempts),
            "—" if delivered is None else f"{delivered.astimezone(zone):%Y-%m-%d %H:%M}",
            Text(entry.last_error or ""),  # the receiver's words: no rich markup
        )
    return table


def _report(args: argparse.Namespace) -> int:
    async def deliver(target: _Target) -> int:
        if args.source is not None:
            names = [args.source]
        else:
            async with target.client() as client:
                names = (await _listing(client, target)).names
        reports = _reports_client(target)
        code = EXIT_OK
        for name in names:
            code = max(code, await _deliver_report(reports, name, args.day, several=len(names) > 1))
        return code

    return _run_client(args, deliver)


async def _deliver_report(reports: ReportsClient, source: str, day: date, *, several: bool) -> int:
    """Deliver one source's report of ``day`` and say how it went; the exit code."""
    try:
        report, entry = await reports.deliver(source, day)
    except RequestFailed as exc:
        # A source named with --source that the relay lacks is _run_client's to tell.
        refused = exc.code in ("bad_request", "not_found") or (
            several and exc.code == "unknown_topic"
        )
        if not refused:
            raise
        whose = f"{source}: " if several else ""
        return _fail(f"report: {whose}{exc.message}", EXIT_RELAY)  # the relay says why
    day_label = f"{report.usage_day:%A} {report.usage_day.day} {report.usage_day:%B %Y}"
    what = f"the usage report of {day_label} ({report.timezone}) for {report.source}"
    if entry.state == "delivered":
        coverage = f"{report.coverage * 100:.1f} %"
        print(f"Delivered {what}: {report.polls:,} polls, coverage {coverage}")
        return EXIT_OK
    attempts = f"{entry.attempts} attempt{'' if entry.attempts == 1 else 's'}"
    error = f": {entry.last_error}" if entry.last_error else ""
    return _fail(
        f"report: saved {what}, but did not deliver it ({entry.state} after {attempts}){error}",
        EXIT_NO_DATA,
    )


def _rules_client(target: _Target) -> AlertRulesClient:
    return AlertRulesClient(target.url, token_file=target.token_file)


async def _refused(command: str, request: Awaitable[int]) -> int:
    """The command's exit code; a refused request is the relay's one line and exit 2."""
    try:
        return await request
    except RequestFailed as exc:
        if exc.code not in ("bad_request", "not_found"):
            raise
        return _fail(f"{command}: {exc.message}", EXIT_RELAY)  # the relay names what is wrong


def _alerts_list(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        rules = await _rules_client(target).list()
        if args.json:
            print(json.dumps({"rules": rules}))
        else:
            Console().print(_rules_table(rules, target.zone))
        return EXIT_OK

    return _run_client(args, fetch)


def _rules_table(rules: list[dict[str, Any]], zone: ZoneInfo) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in ("ID", "Threshold", "Source", "Meter", "Webhook", "Created"):
        table.add_column(header)
    for rule in rules:
        try:
            created = datetime.fromisoformat(str(rule.get("created_at")))
            shown = created.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            shown = "?"
        threshold = rule.get("threshold_percent")
        table.add_row(
            str(rule.get("id")),
            f"{threshold:g}%" if isinstance(threshold, int | float) else "?",
            rule.get("source") or "every source",
            rule.get("meter") or "any",
            rule.get("webhook_url") or "configured",
            shown,
        )
    if not rules:
        table.caption = "no alert rules: the configured thresholds apply"
    return table


def _alerts_add(args: argparse.Namespace) -> int:
    async def add(target: _Target) -> int:
        rule = await _rules_client(target).add(
            args.threshold, source=args.source, meter=args.meter, webhook_url=args.webhook
        )
        print(rule["id"])
        return EXIT_OK

    return _run_client(args, lambda target: _refused("alerts", add(target)))


def _alerts_remove(args: argparse.Namespace) -> int:
    async def remove(target: _Target) -> int:
        await _rules_client(target).remove(args.id)
        return EXIT_OK

    return _run_client(args, lambda target: _refused("alerts", remove(target)))


def _run_client(args: argparse.Namespace, command: Callable[[_Target], Awaitable[int]]) -> int:
    try:
        target = _target(args)
    except (SetupError, argparse.ArgumentTypeError) as exc:
        return _fail(str(exc), EXIT_RELAY)
    url = target.url

    async def run(target: _Target) -> int:
        try:
            return await command(target)
        except UnknownSource:
            name = getattr(args, "source", None)
            raise _NoSuchSource(await _unknown_source(target, name)) from None

    try:
        return anyio.run(run, target)
    except _NoSuchSource as exc:
        return _fail(str(exc), EXIT_RELAY)
    except RelayUnavailable as exc:
        return _fail(f"{exc} (is `{PROG} serve` running?)", EXIT_RELAY)
    except Unauthorized as exc:
        return _fail(f"the relay at {url} refused this client: {exc.message}", EXIT_RELAY)
    except RelayClientError as exc:
        return _fail(f"the relay at {url} failed the request: {exc}", EXIT_RELAY)


async def _unknown_source(target: _Target, name: str | None) -> str:
    """One line saying the relay has no source ``name``, and which it has if it says."""
    message = f"the relay at {target.url} has no source {name!r}"
    try:
        async with target.client() as client:
            names = (await client.list_sources()).names
    except RelayClientError:
        return message
    return f"{message}; its sources: {', '.join(names)}"


def _print_snapshot(snapshot: Snapshot, target: _Target, *, as_json: bool) -> None:
    if as_json:
        print(snapshot.model_dump_json())
    else:
        print(status_line(snapshot, utc_now(), target.zone))


def _token(args: argparse.Namespace) -> int:
    try:
        path = _target(args).token_file
    except (SetupError, argparse.ArgumentTypeError) as exc:
        return _fail(f"token: {exc}", EXIT_RELAY)
    if args.path:
        print(path)
        return EXIT_OK
    try:
        token = read_client_token(path)
    except ClientTokenError as exc:
        return _fail(f"token: {exc}", EXIT_RELAY)
    if token is None:
        return _fail(
            f"token: no client token yet; `usage-monitor serve` creates {path}", EXIT_NO_DATA
        )
    print(token)
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
