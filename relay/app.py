"""The relay's Starlette application; its lifespan owns the monitors, one per source, and
the daily usage reports."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from common.history import HistoryPoint
from common.models import Snapshot, utc_now
from common.reports import ReportEntry
from common.tokens import load_or_create_client_token
from monitor.adapters import make_adapter
from monitor.alerts import ThresholdTracker
from monitor.destinations import DirectoryDestination, ReportDestination, UrlDestination
from monitor.exceptions import StoreError
from monitor.forecast import Forecaster
from monitor.foresight import Foresight
from monitor.gateway import GatewayClient
from monitor.reporting import ReportScheduler, ReportSource
from monitor.rules import RuleBook
from monitor.service import MonitorEvent, PollFailed, UsageMonitorService, UsageUpdated
from monitor.store import AsyncSnapshotStore, SnapshotStore, new_epoch
from monitor.webhook import WebhookNotifier

from . import alert_rules, http, reports
from .demo import open_demo
from .endpoint import ConnectionConfig, WebSocketEndpoint
from .hub import Hub
from .limits import Limits, Rate, RateLimiter
from .middleware import SecurityMiddleware
from .policy import SecurityPolicy
from .settings import Settings, SourceConfig
from .state import RelayState, set_relay_state

if TYPE_CHECKING:
    from .cluster import ClusterLink, ClusterSource

__all__ = ["WEB_ROOT", "create_app"]

#: The dashboard and the JavaScript client, served at ``/``.
WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "web"

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
            demo = await open_demo(stack, settings.interval) if settings.demo else None
            sources = demo.sources if demo is not None else settings.source_configs()
            task_group = await stack.enter_async_context(anyio.create_task_group())
            store = AsyncSnapshotStore(
                SnapshotStore(
                    settings.database_path(),
                    detail_retention=timedelta(days=settings.history_detail_days),
                    downsampled_retention=timedelta(days=settings.history_hourly_days),
                    zone=settings.zone(),
                )
            )
            await task_group.start(store.run)
            stack.callback(store.close)  # runs after the monitors stop; the writer then drains
            epoch = _recall_epoch(store)
            if demo is not None and settings.demo_days:
                await demo.seed(store, settings.demo_days, epoch.id)
            rules = await RuleBook.load(store)
            link = _cluster_link(settings, epoch.id, stack)
            if link is not None:
                link.share_rules(rules)
            alert_rules.set_rule_book(app, rules)
            # Alerts go to their rule's webhook, else to the configured one (if any).
            webhook_url = settings.webhook_url
            notifier = WebhookNotifier(
                webhook_url.get_secret_value() if webhook_url is not None else None,
                route=rules.webhook_for,
            )
            await task_group.start(notifier.run)
            stack.callback(notifier.close)
            monitors: list[UsageMonitorService | ClusterSource] = []
            for source in sources:
                monitor = await _monitor(
                    source, settings, store, epoch, stack, rules, stores_polls=link is None
                )
                if link is None:
                    monitor.add_observer(notifier.observe)
                    monitors.append(monitor)
                else:
                    monitors.append(_clustered(monitor, link, store, settings, notifier))
            hub = Hub(
                monitors,
                cluster=None if link is None else link.cluster,
                # The demo's sources are not the configured ones; its first is the default.
                default_source=None if settings.demo else settings.default_source_name(),
                timezone=settings.timezone,
                history=store,
                max_connections=settings.max_connections,
                max_unauthenticated=settings.max_unauthenticated,
                refresh_polls=refresh_polls,
                max_history_queries=settings.max_history_queries,
            )
            if link is not None:
                await stack.enter_async_context(link)
            for started in monitors:
                await stack.enter_async_context(started)

            def report_failed(entry: ReportEntry) -> None:
                hub.publish_report("usage.report_failed", entry)
                notifier.report_failed(entry)

            hub.reports = ReportScheduler(
                store,
                [ReportSource(source.name, source.kind, source.interval) for source in sources],
                zone=settings.zone(),
                destinations=_report_destinations(settings, stack),
                delay=timedelta(seconds=settings.report_delay),
                since=settings.reports_since,
                catchup_days=settings.report_catchup_days,
                concurrency=settings.report_concurrency,
                on_delivered=partial(hub.publish_report, "usage.report_delivered"),
                on_failed=report_failed,
                claims=link,
                claim_for=2 * settings.report_timeout + 5,
            )
            if link is not None:
                link.on_report_settled = hub.reports.wake
            reporting = anyio.CancelScope()
            task_group.start_soon(_run_in, reporting, hub.reports.run)
            stack.callback(reporting.cancel)  # a delivery cut short is made again at next start
            set_relay_state(app, RelayState(hub))
            yield

    routes = [
        Route("/healthz", http.healthz),
        Route("/api/v1/sources", http.sources),
        Route("/api/v1/usage/latest", http.latest),
        Route("/api/v1/usage/refresh", http.refresh, methods=["POST"]),
        Route("/api/v1/usage/history", http.history),
        Route("/api/v1/usage/breakdown", http.breakdown),
        Route("/api/v1/usage/alerts", alert_rules.list_rules, methods=["GET"]),
        Route("/api/v1/usage/alerts", alert_rules.create_rule, methods=["POST"]),
        Route("/api/v1/usage/alerts/{rule_id}", alert_rules.delete_rule, methods=["DELETE"]),
        Route("/api/v1/reports", reports.list_reports),
        Route("/api/v1/reports/{source}/{day}", reports.get_report, methods=["GET"]),
        Route("/api/v1/reports/{source}/{day}", reports.deliver_report, methods=["POST"]),
        WebSocketRoute("/ws", WebSocketEndpoint(connection)),
        Mount("/", StaticFiles(directory=WEB_ROOT, html=True, check_dir=False)),
    ]
    middleware = [Middleware(SecurityMiddleware, policy=policy)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _report_destinations(settings: Settings, stack: AsyncExitStack) -> list[ReportDestination]:
    """The destinations ``settings`` name, closed with ``stack``."""
    destinations: list[ReportDestination] = []
    if settings.report_url is not None:
        url = UrlDestination(
            settings.report_url.get_secret_value(),
            token=settings.report_token(),
            timeout=settings.report_timeout,
        )
        stack.push_async_callback(url.aclose)
        destinations.append(url)
    directory = settings.report_directory()
    if directory is not None:
        destinations.append(DirectoryDestination(directory))
    return destinations


def _cluster_link(settings: Settings, epoch: str, stack: AsyncExitStack) -> ClusterLink | None:
    """The link to the team relay's Redis, when ``settings`` name one; closed with ``stack``."""
    if settings.redis_url is None:
        return None
    from .cluster import ClusterLink  # needs the redis extra, which a lone relay does without

    link = ClusterLink(
        settings.redis_url.get_secret_value(),
        settings.cluster,
        lease_seconds=settings.lease_seconds,
        retention=timedelta(days=settings.history_detail_days),
        epoch=epoch,
    )
    stack.push_async_callback(link.aclose)
    return link


def _clustered(
    poller: UsageMonitorService,
    link: ClusterLink,
    store: AsyncSnapshotStore,
    settings: Settings,
    notifier: WebhookNotifier,
) -> ClusterSource:
    """``poller``'s source as one of the team relay's: polled here only under its lease."""
    from .cluster import ClusterSource

    clustered = ClusterSource(
        poller, link, store=store, refresh_timeout=settings.request_timeout + 2
    )
    clustered.add_alert_sender(notifier.observe)  # one post per cluster: the claimant's
    return clustered


async def _run_in(scope: anyio.CancelScope, task: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await task()


async def _monitor(
    source: SourceConfig,
    settings: Settings,
    store: AsyncSnapshotStore,
    epoch: _Epoch,
    stack: AsyncExitStack,
    rules: RuleBook | None = None,
    *,
    stores_polls: bool = True,
) -> UsageMonitorService:
    """The monitor of one source, resuming what the store remembers of it; its alerts
    follow the configured thresholds and the shared alert ``rules``. Without
    ``stores_polls`` its polls are stored by whoever publishes them (a team relay)."""
    gateway = GatewayClient(
        source.base_url,
        source.token,
        make_adapter(source.kind, product=source.product),
        timeout=settings.request_timeout,
        max_response_bytes=settings.max_response_bytes,
    )
    stack.push_async_callback(gateway.aclose)
    memory = await _recall(store, source.name, epoch)
    tracker = ThresholdTracker(settings.thresholds, state=memory.alert_state, rules=rules)
    forecaster = Forecaster()
    forecaster.seed(memory.recent)
    monitor = UsageMonitorService(
        gateway,
        interval=source.interval,
        source=source.name,
        kind=source.kind,
        epoch=epoch.id,
        initial=memory.latest,
        last_seq=memory.last_seq,
        foresight=Foresight(forecaster, tracker),
    )
    saved_alert_state = tracker.state()

    def persist(event: MonitorEvent) -> None:
        nonlocal saved_alert_state
        if isinstance(event, UsageUpdated):
            if stores_polls:
                store.submit(event.snapshot)
            # The tracker changes only when an alert fires or a window resets.
            alert_state = tracker.state()
            if alert_state != saved_alert_state:
                store.submit_alert_state(source.name, alert_state)
                saved_alert_state = alert_state
        elif isinstance(event, PollFailed) and stores_polls:
            store.submit_failed_poll(event.source, event.at)

    monitor.add_observer(persist)
    return monitor


@dataclass(frozen=True)
class _Epoch:
    """The numbering snapshots continue in: the store's epoch, or a fresh one not stored."""

    id: str
    stored: bool


def _recall_epoch(store: AsyncSnapshotStore) -> _Epoch:
    """The store's epoch; a fresh one when the store cannot be opened or has none.

    Within the store's epoch ``seq`` goes on from the highest stored one; in a
    fresh epoch continuity cannot be promised, so every source numbers from 1.
    """
    if store.epoch is not None:
        return _Epoch(store.epoch, stored=True)
    epoch = _Epoch(new_epoch(), stored=False)
    logger.warning("snapshots are numbered in a new epoch (%s) that is not stored", epoch.id)
    return epoch


@dataclass(frozen=True)
class _Memory:
    last_seq: int = 0
    latest: Snapshot | None = None
    alert_state: dict[str, Any] | None = None
    recent: list[HistoryPoint] = field(default_factory=list)


async def _recall(store: AsyncSnapshotStore, source: str, epoch: _Epoch) -> _Memory:
    """What the previous run left of ``source``: the last seq, the last snapshot, the alerts
    already sent, recent history. Each is left out on its own when it cannot be read."""
    memory = _Memory()
    if epoch.stored:
        try:
            memory = replace(memory, last_seq=await store.last_seq(source))
        except StoreError as exc:
            logger.error("cannot read the stored sequence numbers of %r: %s", source, exc)
    try:
        memory = replace(memory, latest=await store.latest(source))
    except StoreError as exc:
        logger.error("starting %r without its stored snapshot: %s", source, exc)
    try:
        memory = replace(memory, alert_state=await store.load_alert_state(source))
    except StoreError as exc:
        logger.error("starting %r without its stored alert state: %s", source, exc)
    try:
        since = utc_now() - RECENT_HISTORY
        memory = replace(memory, recent=await store.history(source, since, None, 5000))
    except StoreError as exc:
        logger.error("starting %r without its stored history: %s", source, exc)
    return memory
