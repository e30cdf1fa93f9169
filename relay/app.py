"""The relay's Starlette application; its lifespan owns the monitor."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from common.history import HistoryPoint
from common.models import Snapshot, utc_now
from common.tokens import load_or_create_client_token
from monitor.alerts import ThresholdTracker
from monitor.exceptions import StoreError
from monitor.forecast import Forecaster
from monitor.foresight import Foresight
from monitor.gateway import GatewayClient
from monitor.service import MonitorEvent, UsageMonitorService, UsageUpdated
from monitor.store import AsyncSnapshotStore, SnapshotStore, new_epoch
from monitor.webhook import WebhookNotifier
from simulator import GatewaySimulator, SimulatorServer

from . import http
from .endpoint import ConnectionConfig, WebSocketEndpoint
from .hub import Hub
from .limits import Limits, Rate, RateLimiter
from .middleware import SecurityMiddleware
from .policy import SecurityPolicy
from .settings import Settings
from .state import RelayState, set_relay_state

__all__ = ["WEB_ROOT", "create_app"]

#: The dashboard and the JavaScript client, served at ``/``.
WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "web"

#: What the built-in simulator starts at in demo mode, so the dashboard has
#: something to show at once; usage then grows with simulated activity.
DEMO_BURST_PERCENT = 37.0
DEMO_SUSTAINED_PERCENT = 12.0
DEMO_USD_PER_HOUR = 6.0


#: How much stored history seeds the burn-rate forecast at start-up.
RECENT_HISTORY = timedelta(hours=2)

logger = logging.getLogger("usage_monitor.relay")


def create_app(settings: Settings) -> Starlette:
    """Build the relay for ``settings``; nothing starts until the lifespan runs.

    The client token is read (or created) here, so a relay that cannot
    authenticate its clients never starts: ``ClientTokenError`` says why.
    """
    token_file = settings.client_token_path()
    policy = SecurityPolicy.from_settings(settings, load_or_create_client_token(token_file))
    logger.info("clients authenticate with the client token in %s", token_file)
    limits = Limits(
        requests=Rate(settings.requests_per_second, settings.request_burst),
        refreshes=Rate(settings.refreshes_per_minute / 60, settings.refresh_burst),
        flood_close_after=settings.flood_close_after,
    )
    connection = ConnectionConfig(
        limits=limits,
        send_timeout=settings.send_timeout,
        auth_grace_period=settings.auth_grace_period,
    )
    # However clients connect, refreshes start at most this many gateway polls.
    refresh_polls = RateLimiter(
        Rate(settings.refresh_polls_per_minute / 60, settings.refresh_poll_burst)
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            gateway = await _open_gateway(settings, stack)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            store = AsyncSnapshotStore(
                SnapshotStore(
                    settings.database_path(),
                    detail_retention=timedelta(days=settings.history_detail_days),
                    downsampled_retention=timedelta(days=settings.history_hourly_days),
                )
            )
            await task_group.start(store.run)
            stack.callback(store.close)  # runs after the monitor stops; the writer then drains
            memory = await _recall(store)
            tracker = ThresholdTracker(settings.thresholds, state=memory.alert_state)
            forecaster = Forecaster()
            forecaster.seed(memory.recent)
            monitor = UsageMonitorService(
                gateway,
                interval=settings.interval,
                source=settings.source,
                epoch=memory.epoch,
                initial=memory.latest,
                last_seq=memory.last_seq,
                foresight=Foresight(forecaster, tracker),
            )

            saved_alert_state = tracker.state()

            def persist(event: MonitorEvent) -> None:
                nonlocal saved_alert_state
                if isinstance(event, UsageUpdated):
                    store.submit(event.snapshot)
                    # The tracker changes only when an alert fires or a window resets.
                    alert_state = tracker.state()
                    if alert_state != saved_alert_state:
                        store.submit_alert_state(alert_state)
                        saved_alert_state = alert_state

            monitor.add_observer(persist)
            if settings.webhook_url is not None:
                notifier = WebhookNotifier(settings.webhook_url.get_secret_value())
                await task_group.start(notifier.run)
                stack.callback(notifier.close)
                monitor.add_observer(notifier.observe)
            hub = Hub(
                monitor,
                history=store,
                max_connections=settings.max_connections,
                max_unauthenticated=settings.max_unauthenticated,
                refresh_polls=refresh_polls,
                max_history_queries=settings.max_history_queries,
            )
            await stack.enter_async_context(monitor)
            set_relay_state(app, RelayState(hub))
            yield

    routes = [
        Route("/healthz", http.healthz),
        Route("/api/v1/usage/latest", http.latest),
        Route("/api/v1/usage/refresh", http.refresh, methods=["POST"]),
        Route("/api/v1/usage/history", http.history),
        WebSocketRoute("/ws", WebSocketEndpoint(connection)),
        Mount("/", StaticFiles(directory=WEB_ROOT, html=True, check_dir=False)),
    ]
    middleware = [Middleware(SecurityMiddleware, policy=policy)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


async def _open_gateway(settings: Settings, stack: AsyncExitStack) -> GatewayClient:
    """The real gateway, or in demo mode a simulator started for the relay's lifetime."""
    if settings.demo:
        demo_token = secrets.token_urlsafe(16)
        simulator = GatewaySimulator(token=demo_token, activity_usd_per_hour=DEMO_USD_PER_HOUR)
        simulator.set_usage(
            burst_percent=DEMO_BURST_PERCENT, sustained_percent=DEMO_SUSTAINED_PERCENT
        )
        server = await stack.enter_async_context(SimulatorServer(simulator))
        base_url, token = server.url, (lambda: demo_token)
    else:
        base_url, token = settings.gateway_base_url(), settings.token_provider()
    gateway = GatewayClient(
        base_url,
        token,
        product=settings.product,
        timeout=settings.request_timeout,
        max_response_bytes=settings.max_response_bytes,
    )
    stack.push_async_callback(gateway.aclose)
    return gateway


@dataclass(frozen=True)
class _Memory:
    #: The store's epoch, or a fresh one when the stored numbering cannot be read.
    epoch: str
    last_seq: int = 0
    latest: Snapshot | None = None
    alert_state: dict[str, Any] | None = None
    recent: list[HistoryPoint] = field(default_factory=list)


async def _recall(store: AsyncSnapshotStore) -> _Memory:
    """What the previous run left: the last seq, the last snapshot, the alerts already sent,
    recent history. Each is left out on its own when it cannot be read.

    ``seq`` goes on from the highest stored one within the store's epoch; when
    that cannot be read (or the store cannot be opened at all), continuity
    cannot be promised, so the relay numbers from 1 in a new epoch of its own.
    """
    try:
        epoch, last_seq = store.epoch, await store.last_seq()
    except StoreError as exc:
        logger.error("cannot read the stored sequence numbers: %s", exc)
        epoch, last_seq = None, 0
    if epoch is None:
        epoch = new_epoch()
        logger.warning("snapshots are numbered in a new epoch (%s) that is not stored", epoch)
    memory = _Memory(epoch=epoch, last_seq=last_seq)
    try:
        memory = replace(memory, latest=await store.latest())
    except StoreError as exc:
        logger.error("starting without the stored snapshot: %s", exc)
    try:
        memory = replace(memory, alert_state=await store.load_alert_state())
    except StoreError as exc:
        logger.error("starting without the stored alert state: %s", exc)
    try:
        memory = replace(memory, recent=await store.history(since=utc_now() - RECENT_HISTORY))
    except StoreError as exc:
        logger.error("starting without stored history: %s", exc)
    return memory
