"""
The long-lived usage monitor.

``UsageMonitorService`` polls one source on an interval, caches the latest
snapshot and tells subscribers about every successful poll (``UsageUpdated``)
and every change of its health (``StatusChanged``). A poll is a *flight*: the
scheduled poll and any number of ``refresh_now()`` calls that arrive while one
is in the air all share its single upstream request.

Lifetime is structured: ``async with UsageMonitorService(...) as monitor:``
starts the poll loop in a task group owned by the service, and leaving the
block stops it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, Self

import anyio
from anyio.abc import TaskGroup, TaskStatus

from common.backoff import Backoff
from common.lifetime import TaskGroupOwner
from common.models import Alert, MonitorState, Snapshot, SourceKind, Status, utc_now

from .adapters.base import Reading
from .exceptions import (
    LeaseLost,
    MonitorNotRunning,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UsageMonitorError,
)
from .foresight import Foresight
from .mailbox import Mailbox

__all__ = [
    "AlertRaised",
    "Flight",
    "MonitorEvent",
    "PollFailed",
    "StatusChanged",
    "Subscription",
    "UsageFetcher",
    "UsageMonitorService",
    "UsageUpdated",
]

logger = logging.getLogger("usage_monitor.monitor")

#: The longest a 429's Retry-After may delay the next poll, in seconds.
MAX_RETRY_AFTER = 3600.0


class UsageFetcher(Protocol):
    """Anything that can poll the source once (``GatewayClient`` in production)."""

    async def fetch(self) -> Reading: ...


@dataclass(frozen=True, slots=True)
class UsageUpdated:
    """A poll succeeded; ``snapshot`` is now the latest."""

    snapshot: Snapshot
    key: Hashable = "usage"


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """The monitor's state (or its last error) changed."""

    status: Status
    key: Hashable = "status"


_alert_numbers = itertools.count()


@dataclass(frozen=True, slots=True)
class AlertRaised:
    """A threshold was crossed or a limit is projected; each alert is delivered, none replaced."""

    alert: Alert
    # Unique for the life of the process, so no two alerts ever share a mailbox slot.
    key: Hashable = field(default_factory=lambda: ("alert", next(_alert_numbers)))


@dataclass(frozen=True, slots=True)
class PollFailed:
    """A poll of ``source`` failed at ``at``; the snapshot stays the last good one.

    Observers are told of every failed poll, unlike ``StatusChanged``, so the
    metering ledger can count them; subscriptions are not.
    """

    source: str
    at: datetime
    key: Hashable = "failed"


MonitorEvent = UsageUpdated | StatusChanged | AlertRaised | PollFailed

#: Called synchronously, in order, for every event; must not block.
Observer = Callable[[MonitorEvent], None]

#: Publishes a new snapshot and its alerts elsewhere first (a cluster's Redis) and gives
#: them back as published: numbered there, with the alerts no one raised before. Raises
#: ``LeaseLost`` when this process may no longer publish the source's snapshots.
Commit = Callable[[Snapshot, list[Alert]], Awaitable[tuple[Snapshot, list[Alert]]]]


class Subscription:
    """One subscriber's mailbox.

    It holds at most one undelivered event per key: a newer snapshot replaces an
    older one that was not read yet, and likewise for status. So the mailbox is
    bounded, putting never blocks the poller, and a subscriber that stops reading
    costs nothing but the newest event of each kind.
    """

    def __init__(self, on_close: Callable[[Subscription], None]) -> None:
        self._mailbox: Mailbox[MonitorEvent] = Mailbox()
        self._closed = False
        self._on_close = on_close

    def put(self, event: MonitorEvent) -> None:
        self._mailbox.put(event.key, event)

    async def receive(self) -> MonitorEvent:
        """Return the oldest pending event; raise ``anyio.EndOfStream`` once closed and drained."""
        await self._mailbox.wait(lambda: self._closed)
        if not self._mailbox:
            raise anyio.EndOfStream
        return self._mailbox.pop()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._mailbox.wake()
            self._on_close(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MonitorEvent:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


#: Receives the outcome of a poll: its snapshot, or why there is none.
RefreshCallback = Callable[["Snapshot | UsageMonitorError"], None]


class Flight:
    """One poll and everyone waiting for its outcome; ``land`` tells them all, once."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outcome: Snapshot | UsageMonitorError = MonitorNotRunning(
            "the monitor stopped during the poll"
        )
        self.callbacks: list[RefreshCallback] = []

    async def result(self) -> Snapshot:
        """The poll's snapshot once it lands; raises the error if it failed."""
        await self.done.wait()
        if isinstance(self.outcome, Snapshot):
            return self.outcome
        raise self.outcome

    def land(self, outcome: Snapshot | UsageMonitorError) -> None:
        if self.done.is_set():
            return
        self.outcome = outcome
        self.done.set()
        for callback in self.callbacks:
            try:
                callback(outcome)
            except Exception:
                logger.exception("refresh callback %r failed", callback)


class UsageMonitorService(TaskGroupOwner):
    """Polls the gateway, caches the latest snapshot and notifies subscribers."""

    def __init__(
        self,
        fetcher: UsageFetcher,
        *,
        interval: float = 30.0,
        source: str = "default",
        kind: SourceKind = "posthog",
        epoch: str | None = None,
        backoff: Backoff | None = None,
        auth_error_interval: float = 300.0,
        initial: Snapshot | None = None,
        last_seq: int = 0,
        foresight: Foresight | None = None,
        observers: Iterable[Observer] = (),
        commit: Commit | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not 0 < interval < math.inf:
            raise ValueError("interval must be a positive number of seconds")
        self._fetcher = fetcher
        self._interval = interval
        self._source = source
        self._kind = kind
        self._epoch = epoch
        self._backoff = backoff or Backoff()
        self._auth_error_interval = auth_error_interval
        self._latest = initial
        # The stored history may have numbered past a snapshot it can no longer load.
        self._seq = max(last_seq, initial.seq if initial else 0)
        self._foresight = foresight
        #: Set before the monitor starts; see ``Commit``.
        self.commit = commit
        self._clock = clock
        self._status = Status(state="starting")
        self._observers = list(observers)
        self._subscriptions: set[Subscription] = set()
        self._flight: Flight | None = None
        self._next_poll_at = -math.inf
        self._quiet_until = -math.inf
        self._reschedule = anyio.Event()

    # -- public API ---------------------------------------------------------

    @property
    def source(self) -> str:
        return self._source

    @property
    def kind(self) -> SourceKind:
        """The dialect of the source, known before its first snapshot."""
        return self._kind

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def status(self) -> Status:
        return self._status

    @property
    def holding(self) -> bool:
        """Whether this monitor polls its source now: while it runs."""
        return self._task_group is not None

    @property
    def polling(self) -> bool:
        """Whether a poll is in the air now (a refresh would join it, not start one)."""
        return self._flight is not None

    def get_latest(self) -> Snapshot | None:
        """The cached snapshot, or None before the first successful poll."""
        return self._latest

    async def refresh_now(self) -> Snapshot:
        """Poll at once (or join the poll in flight) and return its snapshot.

        Raises an ``UpstreamError`` when that poll fails; the cached snapshot
        stays as it was.
        """
        return await self._board().result()

    def refresh_soon(self, on_done: RefreshCallback) -> None:
        """``refresh_now()`` for callers that cannot wait: ``on_done`` gets the outcome.

        It is called once, with the snapshot or the ``UsageMonitorError``, as soon
        as the poll lands (at once if no poll can start). A relay answering a
        storm of refreshes this way needs no task per request.
        """
        try:
            flight = self._board()
        except UsageMonitorError as exc:
            on_done(exc)
        else:
            flight.callbacks.append(on_done)

    def subscribe(self) -> Subscription:
        """Register a subscriber; use it as a context manager so it is always removed."""
        subscription = Subscription(self._subscriptions.discard)
        self._subscriptions.add(subscription)
        return subscription

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def adopt(self, snapshot: Snapshot) -> None:
        """Make ``snapshot``, polled by another process, the latest without telling anyone.

        The forecast and the alert state follow it, so that this monitor goes
        on from there, without raising the same alerts again, if it takes over.
        """
        if self._latest is not None and snapshot.seq <= self._latest.seq:
            return
        self._foresee(snapshot)
        self._latest = snapshot
        self._seq = max(self._seq, snapshot.seq)

    async def _start(self, task_group: TaskGroup) -> None:
        await task_group.start(self._run)

    async def _stop(self) -> None:
        # Polls in flight are cancelled after this; their waiters get MonitorNotRunning.
        self._set_status(state="stopped", next_poll_at=None)
        for subscription in list(self._subscriptions):
            subscription.close()

    # -- polling ------------------------------------------------------------

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            delay = self._next_poll_at - anyio.current_time()
            if delay <= 0:
                try:
                    await self.refresh_now()
                except MonitorNotRunning:
                    return
                except UsageMonitorError:
                    pass  # already recorded in the status and logged
                continue
            # Any finished poll (a refresh included) sets the event, so the
            # interval restarts from the most recent poll.
            self._reschedule = anyio.Event()
            with anyio.move_on_after(delay):
                await self._reschedule.wait()

    def _board(self) -> Flight:
        """The poll in flight, or a new one; raises if no poll may start now."""
        flight = self._flight
        if flight is None:
            if self._task_group is None:
                raise MonitorNotRunning("the monitor is not running")
            wait = self._quiet_until - anyio.current_time()
            if wait > 0:
                # The gateway asked for quiet; a refresh must not spend its patience.
                raise UpstreamRateLimited(
                    f"the gateway asked the monitor to wait {wait:.0f} s more", wait
                )
            flight = self._flight = Flight()
            # The request runs in the service's task group, not in the caller's,
            # so a caller that gives up does not cancel it for everyone else.
            self._task_group.start_soon(self._fly, flight)
        return flight

    async def _fly(self, flight: Flight) -> None:
        outcome = flight.outcome  # the monitor stopped, unless the poll gets further
        try:
            reading = await self._fetcher.fetch()
            snapshot, alerts = self._foresee(self._snapshot_of(reading))
            if self.commit is not None:
                snapshot, alerts = await self.commit(snapshot, alerts)
        except UpstreamError as exc:
            outcome = exc
            self._record_failure(exc)
        except LeaseLost as exc:
            outcome = exc  # the poll belongs to the lease's new holder now
            self._schedule(self._interval)
        except Exception as exc:
            # A bug in a fetcher must degrade the monitor, not kill it.
            logger.exception("unexpected error while polling source %r", self._source)
            outcome = UpstreamError(f"internal error while polling ({type(exc).__name__})")
            self._record_failure(outcome)
        else:
            self._record_success(snapshot, alerts)
            outcome = snapshot
        finally:
            self._flight = None
            flight.land(outcome)

    def _snapshot_of(self, reading: Reading) -> Snapshot:
        return Snapshot(
            seq=self._seq + 1,
            epoch=self._epoch,
            source=self._source,
            kind=reading.kind,
            fetched_at=self._clock(),
            usage=reading.usage,
            meters=reading.meters,
        )

    def _record_success(self, snapshot: Snapshot, alerts: list[Alert]) -> None:
        now = snapshot.fetched_at
        self._seq = snapshot.seq
        self._latest = snapshot
        next_poll_at = self._schedule(self._interval)
        self._publish(UsageUpdated(snapshot))
        for alert in alerts:
            self._publish(AlertRaised(alert))
        self._set_status(
            state="ok",
            consecutive_failures=0,
            last_error=None,
            last_success_at=now,
            next_poll_at=next_poll_at,
        )

    def _foresee(self, snapshot: Snapshot) -> tuple[Snapshot, list[Alert]]:
        """The snapshot with its forecast, and the alerts it raises; never stops the poll.

        What is derived from a snapshot is a bonus: if deriving fails, the
        snapshot goes out without it, one line is logged, and polling goes on.
        """
        if self._foresight is None:
            return snapshot, []
        try:
            return self._foresight.observe(snapshot)
        except Exception as exc:
            logger.error(
                "no forecast or alerts for seq %d: %s: %s", snapshot.seq, type(exc).__name__, exc
            )
            return snapshot, []

    def _record_failure(self, error: UpstreamError) -> None:
        failures = self._status.consecutive_failures + 1
        delay = self._backoff.delay(failures)
        state: MonitorState = "degraded"
        if isinstance(error, UpstreamRateLimited) and error.retry_after is not None:
            # Honour the gateway's advice, but a broken header must not park the monitor forever.
            retry_after = min(error.retry_after, MAX_RETRY_AFTER)
            self._quiet_until = anyio.current_time() + retry_after
            delay = max(delay, retry_after)
        elif isinstance(error, UpstreamAuthError):
            state = "auth_error"
            delay = max(delay, self._auth_error_interval)
        self._publish(PollFailed(self._source, self._clock()))
        logger.warning(
            "poll of source %r failed (%s); next attempt in %.1f s", self._source, error, delay
        )
        self._set_status(
            state=state,
            consecutive_failures=failures,
            last_error=str(error),
            next_poll_at=self._schedule(delay),
        )

    def _schedule(self, delay: float) -> datetime:
        self._next_poll_at = anyio.current_time() + delay
        self._reschedule.set()
        return self._clock() + timedelta(seconds=delay)

    # -- notification -------------------------------------------------------

    def _set_status(self, **changes: object) -> None:
        previous = self._status
        self._status = previous.model_copy(update=changes)
        if (self._status.state, self._status.last_error) != (previous.state, previous.last_error):
            self._publish(StatusChanged(self._status))

    def _publish(self, event: MonitorEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                logger.exception("monitor observer %r failed", observer)
        if isinstance(event, PollFailed):
            return  # for observers (the ledger); subscribers follow the status
        for subscription in self._subscriptions:
            subscription.put(event)
