"""
Run the gateway simulator as a process until SIGINT or SIGTERM::

    python -m simulator --port 3308 --token sim-token --activity-usd-per-hour 5

It prints its URL once listening (the one line on stdout, for scripts that
pass ``--port 0``).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence

import anyio

from .gateway import GatewaySimulator
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
    args = parser.parse_args(argv)
    simulator = GatewaySimulator(
        token=args.token,
        product=args.product,
        user_id=args.user_id,
        burst_limit_usd=args.burst_limit_usd,
        sustained_limit_usd=args.sustained_limit_usd,
        legacy=args.legacy,
        activity_usd_per_hour=args.activity_usd_per_hour,
    )
    simulator.set_usage(burst_percent=args.burst_percent, sustained_percent=args.sustained_percent)

    async def serve() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with SimulatorServer(simulator, host=args.host, port=args.port) as server:
                print(server.url, flush=True)  # the one stdout line, for scripts using --port 0
                async for _ in signals:
                    return

    anyio.run(serve)


if __name__ == "__main__":
    main()
