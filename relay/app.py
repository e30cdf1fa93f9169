"""The relay's Starlette application; its lifespan owns the monitor."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TypedDict

from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from monitor.gateway import GatewayClient
from monitor.service import UsageMonitorService
from monitor.simulator import GatewaySimulator, SimulatorServer

from . import http
from .endpoint import websocket_endpoint
from .hub import Hub
from .settings import Settings

__all__ = ["WEB_ROOT", "create_app"]

#: The dashboard and the JavaScript client, served at ``/``.
WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "web"

#: What the built-in simulator starts at in demo mode, so the dashboard has
#: something to show at once; usage then grows with simulated activity.
DEMO_BURST_PERCENT = 37.0
DEMO_SUSTAINED_PERCENT = 12.0
DEMO_USD_PER_HOUR = 6.0


class State(TypedDict):
    hub: Hub


def create_app(settings: Settings) -> Starlette:
    """Build the relay for ``settings``; nothing starts until the lifespan runs."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            if settings.demo:
                demo_token = secrets.token_urlsafe(16)
                simulator = GatewaySimulator(
                    token=demo_token, activity_usd_per_hour=DEMO_USD_PER_HOUR
                )
                simulator.set_usage(
                    burst_percent=DEMO_BURST_PERCENT, sustained_percent=DEMO_SUSTAINED_PERCENT
                )
                server = await stack.enter_async_context(SimulatorServer(simulator))
                gateway = GatewayClient(
                    server.url,
                    lambda: demo_token,
                    product=settings.product,
                    timeout=settings.request_timeout,
                )
            else:
                gateway = GatewayClient(
                    settings.gateway_base_url(),
                    settings.token_provider(),
                    product=settings.product,
                    timeout=settings.request_timeout,
                )
            stack.push_async_callback(gateway.aclose)
            monitor = UsageMonitorService(
                gateway, interval=settings.interval, source=settings.source
            )
            hub = app.state.hub = Hub(monitor)
            await stack.enter_async_context(monitor)
            yield {"hub": hub}

    routes = [
        Route("/healthz", http.healthz),
        Route("/api/v1/usage/latest", http.latest),
        Route("/api/v1/usage/refresh", http.refresh, methods=["POST"]),
        WebSocketRoute("/ws", websocket_endpoint),
        Mount("/", StaticFiles(directory=WEB_ROOT, html=True, check_dir=False)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
