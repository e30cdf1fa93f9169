"""
The relay's command line: ``python -m relay``, which ``usage-monitor serve`` runs.

It reads ``Settings`` from the flags below, the environment and the config
file (``common.settings``), checks them, and serves until SIGINT or SIGTERM.
Exit code 2 and one line on stderr when the relay cannot start: settings it
cannot use, a port it cannot listen on, a database another relay holds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from common.exceptions import SetupError
from common.settings import LOCATION_FIELDS, given, location_arguments

from .server import run
from .settings import Settings

__all__ = ["main"]

EXIT_OK = 0
EXIT_SETTINGS = 2

PROG = "usage-monitor serve"
# Settings fields that flags may override; a flag the user did not give is
# absent from the namespace, so the environment and the config file still apply.
_FLAG_FIELDS = (
    *LOCATION_FIELDS,
    "demo",
    "demo_days",
    "gateway_url",
    "region",
    "product",
    "gateway_token_file",
    "interval",
    "database",
    "timezone",
    "redis_url",
    "cluster",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve with the settings ``argv`` and the environment give; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(
            config_file=getattr(args, "config", None), **given(args, _FLAG_FIELDS)
        )
        if not settings.demo:
            settings.check_tokens()  # fail now, not at the first poll
    except SetupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    run(settings)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: "--token" must not quietly mean "--token-file".
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[location_arguments()],
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
        description="Poll the gateway and relay its usage to every client.",
        epilog="The gateway token comes from USAGE_MONITOR_GATEWAY_TOKEN or --token-file, "
        "never from a flag value.",
    )
    parser.add_argument("--demo", action="store_true", help="poll a built-in gateway simulator")
    parser.add_argument(
        "--demo-days",
        type=int,
        metavar="N",
        help="days of simulated history the demo stores at its first start (default: 14)",
    )
    parser.add_argument("--gateway-url", metavar="URL", help="gateway base URL (beats --region)")
    parser.add_argument("--region", choices=("us", "eu"), help="gateway region")
    parser.add_argument("--product", help="product whose usage to poll")
    parser.add_argument(
        "--token-file",
        dest="gateway_token_file",
        type=Path,
        metavar="PATH",
        help="file holding the gateway token, read again before every poll",
    )
    parser.add_argument("--interval", type=float, metavar="SECONDS", help="seconds between polls")
    parser.add_argument(
        "--database", type=Path, metavar="PATH", help="SQLite file of stored snapshots and history"
    )
    parser.add_argument(
        "--timezone", metavar="ZONE", help="IANA zone of days and resets (default: the machine's)"
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="join a team relay on this Redis (redis://host:port/db); better given as "
        "USAGE_MONITOR_REDIS_URL when it holds a password",
    )
    parser.add_argument(
        "--cluster", metavar="NAME", help="the team relay's name in Redis (default: usage-monitor)"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
