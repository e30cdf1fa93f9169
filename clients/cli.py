"""
The ``usage-monitor`` command.

``serve`` becomes the relay, ``python -m relay`` (it polls the gateway, and
this package never imports it); ``latest``, ``refresh``,
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
from typing import NoReturn

import anyio
from pydantic import TypeAdapter
from rich.console import Console

from common.exceptions import ClientTokenError, SetupError
from common.history import HistoryPoint
from common.messages import MAX_HISTORY_POINTS
from common.models import Snapshot, utc_now
from common.settings import LOCATION_FIELDS, ConnectionSettings, given, location_arguments
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
#: ``--since`` durations back from now: "30m", "24h", "7d", "2w".
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_POINTS = TypeAdapter(list[HistoryPoint])

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
    as_json = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    as_json.add_argument("--json", action="store_true", help="print the snapshot as JSON")

    def command(
        name: str, summary: str, handler: Handler, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=list(parents), allow_abbrev=False, help=summary)
        sub.set_defaults(handler=handler)
        return sub

    command("latest", "print the current usage on one line", _latest, relay, as_json)
    command("refresh", "poll the gateway now and print the usage", _refresh, relay, as_json)
    history = command("history", "print recent usage as a table and a sparkline", _history, relay)
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
    command("watch", "show the usage live until Ctrl-C", _watch, relay)
    token = command(
        "token",
        "print the client token, for clients other than this command (keep it secret)",
        _token,
        location_arguments(),
    )
    token.add_argument("--path", action="store_true", help="print where the token is kept instead")
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


def _serve(arguments: Sequence[str]) -> NoReturn:
    """Become the relay: ``python -m relay`` with the same arguments, in this process."""
    # The server is a layer of its own with its own command line; the clients
    # never import it, so the process image is handed over instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "relay", *arguments])


@dataclass(frozen=True)
class _Target:
    """The relay a client command talks to, and the token file it keeps on this machine."""

    url: str
    token_file: Path

    def client(self) -> RelayClient:
        return RelayClient(self.url, token_file=self.token_file)


def _target(args: argparse.Namespace) -> _Target:
    """``--url``, else ``--host``/``--port``, else ``$USAGE_MONITOR_URL``, else the settings."""
    location = given(args, LOCATION_FIELDS)
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
