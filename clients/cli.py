"""
The ``usage-monitor`` command.

``serve`` runs the relay (it polls the gateway); ``latest``, ``refresh``,
``history``, ``watch`` and ``token`` are clients of a running relay. All of them
read the same configuration (``common.settings``): the client commands find the
relay where ``serve`` listens, from the same ``--host``/``--port`` flags,
environment variables and config file, unless ``--url`` or
``USAGE_MONITOR_URL`` names it.

Exit codes of the client commands: 0 success; 1 the relay answered but has no
usage to give (no poll has succeeded yet, a refresh could not poll the gateway,
or no history falls in the range); 2 the relay cannot be reached or refused the
request.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from pydantic import TypeAdapter
from rich.console import Console

from common.exceptions import ClientTokenError, SetupError
from common.history import HistoryPoint
from common.messages import MAX_HISTORY_POINTS
from common.models import Snapshot, utc_now
from common.settings import ConnectionSettings
from common.tokens import read_client_token

from .client import RelayClient
from .exceptions import GatewayUnavailable, RelayClientError, RelayUnavailable, Unauthorized
from .format import status_line
from .history import render_history
from .watch import watch

__all__ = ["main"]

EXIT_OK = 0
EXIT_NO_DATA = 1
EXIT_RELAY = 2
EXIT_INTERRUPTED = 130

PROG = "usage-monitor"
#: Names the relay's WebSocket URL for the client commands, beating host and port.
URL_ENV = "USAGE_MONITOR_URL"
# Settings fields that flags may override; a flag the user did not give is
# absent from the namespace, so the environment and the config file still apply.
_SERVE_FIELDS = (
    "demo",
    "gateway_url",
    "region",
    "product",
    "gateway_token_file",
    "host",
    "port",
    "interval",
    "database",
)
_LOCATION_FIELDS = ("host", "port")
#: ``--since`` durations back from now: "30m", "24h", "7d", "2w".
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_POINTS = TypeAdapter(list[HistoryPoint])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
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

    # Where the relay is: ``serve`` listens there and the client commands connect there.
    location = argparse.ArgumentParser(
        add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS
    )
    location.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="TOML config file (default: $USAGE_MONITOR_CONFIG or "
        "~/.config/usage-monitor/config.toml)",
    )
    location.add_argument("--host", help="the relay's address (default: 127.0.0.1)")
    location.add_argument("--port", type=int, help="the relay's port (default: 8765)")

    serve = commands.add_parser(
        "serve",
        parents=[location],
        allow_abbrev=False,
        help="poll the gateway and relay its usage to clients",
        argument_default=argparse.SUPPRESS,
        epilog="The gateway token comes from USAGE_MONITOR_GATEWAY_TOKEN or --token-file, "
        "never from a flag value.",
    )
    serve.add_argument("--demo", action="store_true", help="poll a built-in gateway simulator")
    serve.add_argument("--gateway-url", metavar="URL", help="gateway base URL (beats --region)")
    serve.add_argument("--region", choices=("us", "eu"), help="gateway region")
    serve.add_argument("--product", help="product whose usage to poll")
    serve.add_argument(
        "--token-file",
        dest="gateway_token_file",
        type=Path,
        metavar="PATH",
        help="file holding the gateway token, read again before every poll",
    )
    serve.add_argument("--interval", type=float, metavar="SECONDS", help="seconds between polls")
    serve.add_argument(
        "--database", type=Path, metavar="PATH", help="SQLite file of stored snapshots and history"
    )
    serve.set_defaults(handler=_serve)

    relay = argparse.ArgumentParser(add_help=False, parents=[location], allow_abbrev=False)
    relay.add_argument(
        "--url",
        type=_relay_url,
        default=argparse.SUPPRESS,
        help=f"the relay's WebSocket URL (default: ${URL_ENV}, else ws://HOST:PORT/ws)",
    )
    as_json = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    as_json.add_argument("--json", action="store_true", help="print the snapshot as JSON")

    latest = commands.add_parser(
        "latest",
        parents=[relay, as_json],
        allow_abbrev=False,
        help="print the current usage on one line",
    )
    latest.set_defaults(handler=_latest)
    refresh = commands.add_parser(
        "refresh",
        parents=[relay, as_json],
        allow_abbrev=False,
        help="poll the gateway now and print the usage",
    )
    refresh.set_defaults(handler=_refresh)
    history = commands.add_parser(
        "history",
        parents=[relay],
        allow_abbrev=False,
        help="print recent usage as a table and a sparkline",
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
    history.set_defaults(handler=_history)
    live = commands.add_parser(
        "watch", parents=[relay], allow_abbrev=False, help="show the usage live until Ctrl-C"
    )
    live.set_defaults(handler=_watch)
    token = commands.add_parser(
        "token",
        parents=[location],
        allow_abbrev=False,
        help="print the client token, for clients other than this command (keep it secret)",
    )
    token.add_argument("--path", action="store_true", help="print where the token is kept instead")
    token.set_defaults(handler=_token)
    return parser


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


def _point_limit(value: str) -> int:
    if not value.isdecimal() or not 1 <= int(value) <= MAX_HISTORY_POINTS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_HISTORY_POINTS}, got {value!r}")
    return int(value)


def _given(args: argparse.Namespace, fields: Sequence[str]) -> dict[str, Any]:
    return {name: value for name, value in vars(args).items() if name in fields}


def _serve(args: argparse.Namespace) -> int:
    from relay.server import run  # the server stack is only needed by this command
    from relay.settings import Settings

    try:
        settings = Settings.load(
            config_file=getattr(args, "config", None), **_given(args, _SERVE_FIELDS)
        )
        if not settings.demo:
            settings.token_provider()  # fail now, not at the first poll
    except SetupError as exc:
        return _fail(f"serve: {exc}", EXIT_RELAY)
    token_file = settings.gateway_token_file
    if not settings.demo and token_file is not None and not token_file.is_file():
        return _fail(f"serve: token file not found: {token_file}", EXIT_RELAY)
    run(settings)
    return EXIT_OK


@dataclass(frozen=True)
class _Target:
    """The relay a client command talks to, and the token file it keeps on this machine."""

    url: str
    token_file: Path

    def client(self) -> RelayClient:
        return RelayClient(self.url, token_file=self.token_file)


def _target(args: argparse.Namespace) -> _Target:
    """``--url``, else ``--host``/``--port``, else ``$USAGE_MONITOR_URL``, else the settings."""
    location = _given(args, _LOCATION_FIELDS)
    settings = ConnectionSettings.load(config_file=getattr(args, "config", None), **location)
    url = getattr(args, "url", None)
    if url is None:
        from_env = None if location else os.environ.get(URL_ENV)
        url = _relay_url(from_env) if from_env else settings.relay_url()
    return _Target(url, settings.client_token_path())


def _latest(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        async with target.client() as client:
            snapshot = await client.get_latest()
            if snapshot is None:
                status = await client.status()
                reason = f": {status.last_error}" if status.last_error else ""
                return _fail(
                    f"no usage yet: the relay has no successful poll of the gateway "
                    f"(monitor {status.state}{reason})",
                    EXIT_NO_DATA,
                )
        _print_snapshot(snapshot, as_json=args.json)
        return EXIT_OK

    return _run_client(args, fetch)


def _refresh(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        async with target.client() as client:
            try:
                snapshot = await client.refresh()
            except GatewayUnavailable as exc:
                message = exc.message  # the relay's words: "the gateway could not be polled: ..."
                if exc.latest is not None:
                    message += f"\nlast good usage: {status_line(exc.latest, utc_now())}"
                return _fail(message, EXIT_NO_DATA)
        _print_snapshot(snapshot, as_json=args.json)
        return EXIT_OK

    return _run_client(args, fetch)


def _history(args: argparse.Namespace) -> int:
    async def fetch(target: _Target) -> int:
        async with target.client() as client:
            points = await client.history(since=args.since, limit=args.limit)
        if not points:
            return _fail("no usage history in that range yet", EXIT_NO_DATA)
        if args.json:
            print(_POINTS.dump_json(points).decode())
        else:
            Console().print(render_history(points, utc_now()))
        return EXIT_OK

    return _run_client(args, fetch)


def _watch(args: argparse.Namespace) -> int:
    async def show(target: _Target) -> int:
        async with target.client() as client:
            await watch(client)
        return EXIT_OK

    try:
        return _run_client(args, show)
    except KeyboardInterrupt:  # how a watch is meant to end
        return EXIT_OK


def _run_client(args: argparse.Namespace, command: Callable[[_Target], Awaitable[int]]) -> int:
    try:
        target = _target(args)
    except (SetupError, argparse.ArgumentTypeError) as exc:
        return _fail(str(exc), EXIT_RELAY)
    url = target.url
    try:
        return anyio.run(command, target)
    except RelayUnavailable as exc:
        return _fail(f"{exc} (is `{PROG} serve` running?)", EXIT_RELAY)
    except Unauthorized as exc:
        return _fail(f"the relay at {url} refused this client: {exc.message}", EXIT_RELAY)
    except RelayClientError as exc:
        return _fail(f"the relay at {url} failed the request: {exc}", EXIT_RELAY)


def _print_snapshot(snapshot: Snapshot, *, as_json: bool) -> None:
    print(snapshot.model_dump_json() if as_json else status_line(snapshot, utc_now()))


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
