"""
One source in a cluster of relays: polled by whichever relay holds its lease,
served alike by all of them.

``ClusterSource`` stands where a lone relay has its ``UsageMonitorService``,
with the same face (``get_latest``, ``status``, ``refresh_now``, observers).
Behind it:

- a lease loop: take the source's lease when no relay holds it, renew it
  every third of ``lease_seconds``, and run the local monitor (the poller)
  only while the lease is certainly ours; when a renewal fails or comes too
  late, the poller stops at once;
- the poller's snapshots go out through Redis (``ClusterLink.commit``,
  fenced by the lease) and come back, like everyone else's, as updates that
  this relay fans out, stores and adopts;
- refreshes: on the holder they join the poller's single flight; elsewhere
  they are forwarded through Redis, one request per relay at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import timedelta

import anyio
from anyio.abc import TaskGroup

from common.lifetime import TaskGroupOwner
from common.models import Alert, Snapshot, SourceKind, Status
from monitor.exceptions import ClusterUnavailable, LeaseLost, StoreError, UpstreamUnavailable
from monitor.service import (
    AlertRaised,
    Flight,
    MonitorEvent,
    Observer,
    PollFailed,
    StatusChanged,
    UsageMonitorService,
    UsageUpdated,
)
from monitor.store import AsyncSnapshotStore

from .link import ClusterLink, Lease, RefreshOutcome, StreamEntry

__all__ = ["ClusterSource"]

logger = logging.getLogger("usage_monitor.cluster")

#: How far back of its last stored snapshot a relay reads the stream at start: the
#: stream's ids come from Redis's clock, which may differ a little from the relay's.
_CLOCK_SKEW = timedelta(minutes=5)
#: The poller's own states that the rest of the cluster hears of.
_SHARED_STATES = frozenset({"ok", "degraded", "auth_error"})


class ClusterSource(TaskGroupOwner):
    """A source of a relay cluster; ``async with`` it for the relay's life."""

    def __init__(
        self,
        poller: UsageMonitorService,
        link: ClusterLink,
        *,
        store: AsyncSnapshotStore | None = None,
        refresh_timeout: float = 15.0,
    ) -> None:
        self._poller = poller
        self._link = link
        self._store = store
        self._refresh_timeout = refresh_timeout
        self._latest = poller.get_latest()
        self._stored = self._latest
        self._shared_status = Status(state="starting")
        self._status = self._shared_status
        self._observers: list[Observer] = []
        #: Observers of the alerts this relay claimed (the webhook: one post per cluster).
        self._alert_senders: list[Observer] = []
        self._lease: Lease | None = None
        self._remote: Flight | None = None
        self._outgoing, self._outgoing_queue = anyio.create_memory_object_stream[
            StatusChanged | PollFailed
        ](64)
        self.stream_position: tuple[int, int] | None = None
        poller.add_observer(self._from_poller)
        poller.commit = self.commit
        link.attach(self)

    # -- the monitor's face -----------------------------------------------------------

    @property
    def source(self) -> str:
        return self._poller.source

    @property
    def kind(self) -> SourceKind:
        return self._poller.kind

    @property
    def interval(self) -> float:
        return self._poller.interval

    @property
    def status(self) -> Status:
        return self._status

    @property
    def holding(self) -> bool:
        """Whether this relay holds the source's lease (and so polls it) now."""
        lease = self._lease
        return lease is not None and anyio.current_time() < lease.valid_until

    @property
    def polling(self) -> bool:
        """Whether a refresh now would join a poll (here or forwarded) instead of asking one."""
        return self._poller.polling if self.holding else self._remote is not None

    def get_latest(self) -> Snapshot | None:
        return self._latest

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def add_alert_sender(self, observer: Observer) -> None:
        """Tell ``observer`` of the alerts this relay raised for the cluster, and no others."""
        self._alert_senders.append(observer)

    async def refresh_now(self) -> Snapshot:
        flight = Flight()
        self.refresh_soon(flight.land)
        return await flight.result()

    def refresh_soon(self, on_done: Callable[[RefreshOutcome], None]) -> None:
        if self.holding:
            self._poller.refresh_soon(on_done)
            return
        if not self._link.up or self._task_group is None:
            on_done(UpstreamUnavailable(self._link.last_error or "the relay is stopping"))
            return
        flight = self._remote
        if flight is None or flight.done.is_set():
            flight = self._remote = Flight()
            self._task_group.start_soon(self._forward, flight)
        flight.callbacks.append(on_done)

    async def _forward(self, flight: Flight) -> None:
        after = self._latest.seq if self._latest is not None else 0
        stop_waiting: Callable[[], None] | None = None
        try:
            stop_waiting = await self._link.ask_refresh(self.source, after, flight.land)
            with anyio.move_on_after(self._refresh_timeout):
                await flight.done.wait()
            flight.land(
                UpstreamUnavailable(
                    f"no relay of the cluster answered within {self._refresh_timeout:g} s"
                )
            )
        except ClusterUnavailable as exc:
            flight.land(UpstreamUnavailable(str(exc)))
        finally:
            if stop_waiting is not None:
                stop_waiting()
            if self._remote is flight:
                self._remote = None

    # -- what the link brings ---------------------------------------------------------

    def stream_start(self) -> str:
        """Where this relay's catch-up reads the stream from (XRANGE's start)."""
        if self.stream_position is not None:
            milliseconds, number = self.stream_position
            return f"({milliseconds}-{number}"
        if self._stored is None:
            return "-"
        start = self._stored.fetched_at - _CLOCK_SKEW
        return f"{max(0, int(start.timestamp() * 1000))}-0"

    async def catch_up(self, entries: Sequence[StreamEntry]) -> None:
        """Store what the stream has and this relay does not (not told to subscribers)."""
        snapshots: list[Snapshot] = []
        for entry in entries:
            if not self._is_new(entry):
                continue
            self.stream_position = entry.id
            if entry.snapshot is not None:
                if self._stored is None or _newer(entry.snapshot, self._stored):
                    snapshots.append(entry.snapshot)
                    self._stored = entry.snapshot
            elif entry.failed_at is not None and (
                self._stored is None or entry.failed_at > self._stored.fetched_at
            ):
                self._store_failed(entry)
        if snapshots and self._store is not None:
            try:
                await self._store.append_many(snapshots)
            except StoreError as exc:  # shown in /healthz's storage; the relay serves on
                logger.error("cannot store the history of %r from Redis: %s", self.source, exc)
        if self.stream_position is None:
            self.stream_position = (0, 0)  # the stream is empty: take everything from now

    def resync(self, latest: Snapshot | None, status: Status | None) -> None:
        """Redis's latest snapshot and status of the source, read at (re)connection."""
        if latest is not None:
            self._adopt(latest)
        if status is not None:
            self._shared_status = status

    def apply_update(self, entry: StreamEntry, alerts: list[Alert], ours: bool) -> None:
        if not self._is_new(entry) or entry.snapshot is None:
            return
        self.stream_position = entry.id
        snapshot = entry.snapshot
        if self._adopt(snapshot):
            self._shared_status = self._shared_status.model_copy(
                update={
                    "last_success_at": snapshot.fetched_at,
                    "next_poll_at": snapshot.fetched_at + timedelta(seconds=self.interval),
                }
            )
            self._show_status()
        for alert in alerts:
            event = AlertRaised(alert)
            self._emit(event)
            if ours:
                for sender in self._alert_senders:
                    _tell(sender, event)

    def apply_status(self, status: Status) -> None:
        self._shared_status = status
        self._show_status()

    def apply_failed(self, entry: StreamEntry) -> None:
        if not self._is_new(entry) or entry.failed_at is None:
            return
        self.stream_position = entry.id
        self._store_failed(entry)
        self._emit(PollFailed(self.source, entry.failed_at))

    def serve_refresh(self, after: int, reply: Callable[[RefreshOutcome], None]) -> bool:
        """Answer a refresh asked on another relay, if this one polls the source."""
        if not self.holding:
            return False
        latest = self._poller.get_latest()
        if latest is not None and latest.seq > after:
            reply(latest)  # polled since the asker last heard: that poll answers it
        else:
            self._poller.refresh_soon(reply)
        return True

    def link_down(self, reason: str) -> None:
        self._show_status(f"the cluster's Redis is unreachable: {reason}")

    def link_up(self) -> None:
        self._show_status()

    def _adopt(self, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` and, if it is newer than the latest, make it the latest and tell
        the observers; whether it was."""
        self._store_snapshot(snapshot)
        if self._latest is not None and not _newer(snapshot, self._latest):
            return False
        self._latest = snapshot
        self._poller.adopt(snapshot)
        self._emit(UsageUpdated(snapshot))
        return True

    def _store_snapshot(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` once: every relay keeps the whole history in its own store."""
        if self._stored is not None and not _newer(snapshot, self._stored):
            return
        self._stored = snapshot
        if self._store is not None:
            self._store.submit(snapshot)

    def _store_failed(self, entry: StreamEntry) -> None:
        if self._store is not None and entry.failed_at is not None:
            self._store.submit_failed_poll(self.source, entry.failed_at)

    def _is_new(self, entry: StreamEntry) -> bool:
        return self.stream_position is None or entry.id > self.stream_position

    # -- status -----------------------------------------------------------------------

    def _show_status(self, link_error: str | None = None) -> None:
        if link_error is None and not self._link.up:
            link_error = self._link.last_error
        status = self._shared_status
        if link_error is not None:
            status = status.model_copy(update={"state": "degraded", "last_error": link_error})
        previous, self._status = self._status, status
        if (status.state, status.last_error) != (previous.state, previous.last_error):
            self._emit(StatusChanged(status))

    def _emit(self, event: MonitorEvent) -> None:
        for observer in self._observers:
            _tell(observer, event)

    # -- holding the lease ------------------------------------------------------------

    async def _start(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._lead)

    async def _stop(self) -> None:
        self._outgoing.close()
        lease = self._lease
        if lease is not None:
            self._lease = None
            # Unreleased, it expires by itself.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(1),
                suppress(ClusterUnavailable),
            ):
                await self._link.release(lease)

    async def _lead(self) -> None:
        """Take the lease whenever no relay holds it, and poll while holding it.

        While another relay holds it, try again every third of its life, or the
        moment it would run out if that is sooner: a lease whose holder died is
        taken over as it expires.
        """
        retry = self._link.lease_seconds / 3
        while True:
            wait = retry
            try:
                outcome = await self._link.acquire(self.source) if self._link.up else retry
            except ClusterUnavailable:
                outcome = retry
            if isinstance(outcome, Lease):
                await self._hold(outcome)
            else:
                wait = min(retry, outcome + 0.005)
            await anyio.sleep(wait)

    async def _hold(self, lease: Lease) -> None:
        logger.info("polling source %r for the cluster (lease %d)", self.source, lease.fence)
        self._lease = lease
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._send_outgoing, lease)
                async with self._poller:
                    reason = await self._keep(lease)
                task_group.cancel_scope.cancel()
        finally:
            self._lease = None
        logger.warning("stopped polling source %r: %s", self.source, reason)

    async def _keep(self, lease: Lease) -> str:
        """Renew ``lease`` until that fails; returns why it ended."""
        while True:
            await anyio.sleep(self._link.lease_seconds / 3)
            try:
                with anyio.fail_after(max(0.0, lease.valid_until - anyio.current_time())):
                    if not await self._link.renew(lease):
                        return "its lease ended (it expired, or another relay holds it now)"
            except TimeoutError:
                return "its lease ran out before it could be renewed"
            except ClusterUnavailable as exc:
                return f"its lease could not be renewed ({exc})"

    async def commit(self, snapshot: Snapshot, alerts: list[Alert]) -> tuple[Snapshot, list[Alert]]:
        """The poller's ``commit``: publish through Redis, fenced by the lease."""
        lease = self._lease
        if lease is None or anyio.current_time() >= lease.valid_until:
            raise LeaseLost(f"this relay's lease of source {self.source!r} ran out")
        known = max(snapshot.seq - 1, self._latest.seq if self._latest is not None else 0)
        try:
            published = await self._link.commit(lease, snapshot, alerts, known)
        except ClusterUnavailable as exc:
            raise LeaseLost(
                f"the poll of source {self.source!r} was not published: {exc}"
            ) from None
        if published is None:
            logger.warning(
                "a poll of source %r was not published: another relay holds its lease", self.source
            )
            raise LeaseLost(f"another relay polls source {self.source!r} now")
        return published

    def _from_poller(self, event: MonitorEvent) -> None:
        """The poller's status changes and failed polls, for the whole cluster."""
        if isinstance(event, StatusChanged) and event.status.state not in _SHARED_STATES:
            return
        if isinstance(event, StatusChanged | PollFailed):
            try:
                self._outgoing.send_nowait(event)
            except (anyio.WouldBlock, anyio.ClosedResourceError):
                logger.warning("the cluster did not hear of a change of source %r", self.source)

    async def _send_outgoing(self, lease: Lease) -> None:
        async for event in self._outgoing_queue:
            try:
                if isinstance(event, StatusChanged):
                    await self._link.publish_status(lease, event.status)
                else:
                    await self._link.publish_failed(lease, event.at)
            except ClusterUnavailable:
                pass  # the link reconnects; the lease is renewed or lost meanwhile


def _newer(snapshot: Snapshot, than: Snapshot) -> bool:
    """Whether ``snapshot`` comes after ``than``: a higher seq, or another epoch."""
    return snapshot.epoch != than.epoch or snapshot.seq > than.seq


def _tell(observer: Observer, event: MonitorEvent) -> None:
    try:
        observer(event)
    except Exception:
        logger.exception("observer %r failed", observer)
