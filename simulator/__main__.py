"""
Run the gateway simulator as a process until SIGINT or SIGTERM::

    python -m simulator --port 3308 --token sim-token --activity-usd-per-hour 5

It serves every dialect at once: PostHog's ``/v1/usage/{product}``,
OpenRouter's ``/api/v1/key`` and LiteLLM's ``/key/info``.

It prints its URL once listening (the one line on stdout, for scripts that
pass ``--port 0``).
"""

from __future__ import annotations

import argparse
import math
import signal
from collections.abc import Sequence

import anyio

from .accounts import parse_duration
from .gateway import GatewaySimulator, LimitReset
from .server import SimulatorServer

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the simulator standalone until SIGINT or SIGTERM; prints its URL once listening."""
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="keep it on loopback (default)")
    parser.add_argument("--port", type=int, default=3308, help="0 picks a free port")
    parser.add_argument("--token", default="sim-token")
    parser.add_argument("--product", default="posthog_code")
    parser.add_argument("--user-id", type=int, default=1234)
    parser.add_argument("--burst-limit-usd", type=float, default=100.0)
    parser.add_argument("--sustained-limit-usd", type=float, default=1000.0)
    parser.add_argument("--burst-percent", type=float, default=None)
    parser.add_argument("--sustained-percent", type=float, default=None)
    parser.add_argument("--activity-usd-per-hour", type=float, default=0.0)
    parser.add_argument("--legacy", action="store_true", help="send only resets_in_seconds")
    parser.add_argument(
        "--openrouter-limit-usd", type=_amount_or_none, default=100.0, help="a number, or none"
    )
    parser.add_argument(
        "--openrouter-limit-reset",
        choices=["daily", "weekly", "monthly", "none"],
        default="monthly",
    )
    parser.add_argument(
        "--litellm-max-budget-usd", type=_amount_or_none, default=100.0, help="a number, or none"
    )
    parser.add_argument(
        "--litellm-budget-duration",
        type=_duration_or_none,
        default="30d",
        help="e.g. 30d, 12h or 1w; none: never resets",
    )
    args = parser.parse_args(argv)
    simulator = GatewaySimulator(
        token=args.token,
        product=args.product,
        user_id=args.user_id,
        burst_limit_usd=args.burst_limit_usd,
        sustained_limit_usd=args.sustained_limit_usd,
        legacy=args.legacy,
        activity_usd_per_hour=args.activity_usd_per_hour,
        openrouter_limit_usd=args.openrouter_limit_usd,
        openrouter_limit_reset=_reset_or_none(args.openrouter_limit_reset),
        litellm_max_budget_usd=args.litellm_max_budget_usd,
        litellm_budget_duration=args.litellm_budget_duration,
    )
    simulator.set_usage(burst_percent=args.burst_percent, sustained_percent=args.sustained_percent)

    async def serve() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with SimulatorServer(simulator, host=args.host, port=args.port) as server:
                print(server.url, flush=True)  # the one stdout line, for scripts using --port 0
                async for _ in signals:
                    return

    anyio.run(serve)


def _amount_or_none(text: str) -> float | None:
    """A non-negative amount in US dollars, or ``none`` for no limit."""
    if text.lower() == "none":
        return None
    amount = float(text)
    if not 0 <= amount < math.inf:
        raise argparse.ArgumentTypeError("must be a non-negative number or none")
    return amount


def _duration_or_none(text: str) -> str | None:
    """A LiteLLM budget duration (``30d``), or ``none`` for a budget that never resets."""
    if text.lower() == "none":
        return None
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _reset_or_none(text: str) -> LimitReset | None:
    match text:
        case "daily" | "weekly" | "monthly":
            return text
    return None


if __name__ == "__main__":
    main()
