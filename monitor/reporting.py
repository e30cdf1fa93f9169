"""
Daily usage reports that never go missing (``accounting-v1.md``, section 3).

``ReportScheduler`` needs no cron. It catches up at start, when each usage
day closes (plus ``delay``), at least hourly, and when a destination that
failed is due to be tried again: every (source, day) from the source's first
day with data (or ``since``, and at most ``catchup_days`` back) to the last
closed day whose report is not delivered everywhere is built and delivered,
oldest first, ``concurrency`` at a time.

Nothing is lost to a crash at any instant, because each step is saved before
the next one starts:

1. The report is built from the ledger and saved, unless one is saved
   already: a saved report is never built again, so every delivery of a
   (source, day), first or repeated, sends the same bytes under the same key.
2. It is delivered to each destination, and the outcome saved. A delivery cut
   short is made again on the next pass, which the receiver recognises by
   its ``Idempotency-Key`` and answers 2xx or 409.

A (source, day) is never run twice at once: a run waits for the one in
progress. A destination that fails in a way that may pass (5xx, timeout,
refused connection, full disk) is paused with capped, jittered backoff and
the reports wait for it as ``pending``; a receiver that refuses a report
(another 4xx) makes it ``failed``, which ``on_failed`` announces once and
which waits for someone to act (``deliver_now``, what ``usage-monitor report
--day`` asks for).

Several relays of one cluster share ``claims`` (``DeliveryClaims``): the
first relay to save a report shares its body, so every relay delivers the
same bytes, and each delivery is claimed first, so one relay makes it and
the others record its outcome.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, Literal, Protocol
from zoneinfo import ZoneInfo

import anyio
from anyio.abc import TaskStatus

from common.backoff import Backoff
from common.models import SourceKind, utc_now
from common.reports import (
    Destination,
    ReportDelivery,
    ReportEntry,
    ReportList,
    UsageReport,
    report_id,
)

from .destinations import Outcome, ReportDestination, SavedReport
from .exceptions import StoreError
from .reports import build_report, day_period, last_closed_day, next_closing, report_hours
from .store import AsyncSnapshotStore, ReportRecord

__all__ = ["DeliveryClaims", "ReportRefused", "ReportScheduler", "ReportSource"]

logger = logging.getLogger("usage_monitor.reports")

#: The longest the scheduler sleeps: a clock that jumped is noticed within this.
MAX_SLEEP: Final = 3600.0
#: The shortest, so that a store that keeps failing is not asked in a tight loop.
MIN_SLEEP: Final = 1.0
#: How many days ``report_list`` shows when not told.
LISTED_DAYS: Final = 14

_Key = tuple[str, date]


class DeliveryClaims(Protocol):
    """Where the relays of a cluster agree on each report (``relay.cluster.ClusterLink``)."""

    async def shared_report(self, report_id: str, body: str) -> str:
        """The report's body for the whole cluster: ``body``, unless another was first."""
        ...

    async def claim_delivery(
        self, key: str, busy_for: float
    ) -> Literal["ours", "busy"] | ReportDelivery:
        """``ours`` to make the delivery ``key`` now (for ``busy_for`` seconds at most),
        ``busy`` while another relay makes it, or the delivery as another relay settled it."""
        ...

    async def settle_delivery(self, key: str, delivery: ReportDelivery | None) -> None:
        """Record ``delivery`` for every relay; None gives the claim up, to be tried again."""
        ...


@dataclass(frozen=True, slots=True)
class ReportSource:
    """What a report needs to know of a source besides its ledger."""

    name: str
    kind: SourceKind
    interval: float


class ReportRefused(ValueError):
    """A report asked for by hand cannot be made (an open day, an unknown source...)."""


@dataclass(slots=True)
class _Health:
    """One destination's run of failures that may pass by themselves."""

    failures: int = 0
    #: When it may be tried again (``anyio.current_time()``).
    resume_at: float = -math.inf


class ReportScheduler:
    """Builds, saves and delivers every source's daily usage reports; run ``run`` in a
    task group (``tg.start``).

    ``on_delivered`` is called with a (source, day) once it is delivered
    everywhere (again after a ``deliver_now``), ``on_failed`` when a
    destination has just refused it; both must not block. ``pending``,
    ``failed`` and ``last_error`` describe the days due, as of the last pass.
    """

    def __init__(
        self,
        store: AsyncSnapshotStore,
        sources: Sequence[ReportSource],
        *,
        zone: ZoneInfo,
        destinations: Sequence[ReportDestination] = (),
        delay: timedelta = timedelta(minutes=30),
        since: date | None = None,
        catchup_days: int = 35,
        concurrency: int = 4,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = utc_now,
        on_delivered: Callable[[ReportEntry], None] | None = None,
        on_failed: Callable[[ReportEntry], None] | None = None,
        claims: DeliveryClaims | None = None,
        claim_for: float = 60.0,
    ) -> None:
        if catchup_days < 1 or concurrency < 1:
            raise ValueError("catchup_days and concurrency must be at least 1")
        self._store = store
        self._sources = {source.name: source for source in sources}
        self.zone = zone
        self.destinations = list(destinations)
        self._delay = delay
        self._since = since
        self._catchup_days = catchup_days
        self._concurrency = concurrency
        self._backoff = backoff or Backoff(initial=5.0, maximum=900.0)
        self._clock = clock
        self._on_delivered = on_delivered
        self._on_failed = on_failed
        self._claims = claims
        self._claim_for = claim_for
        self._health = {destination.name: _Health() for destination in self.destinations}
        self._locks: dict[_Key, anyio.Lock] = {}
        self._passing = anyio.Lock()
        self._wake = anyio.Event()
        self.pending = 0
        self.failed = 0
        self.last_error: str | None = None

    # -- running ----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Catch up now, then whenever a day closes, hourly, and when a destination is due."""
        task_status.started()
        while True:
            try:
                await self.catch_up()
            except Exception as exc:  # a bug here must not take the relay down with it
                error = f"internal error ({type(exc).__name__}); see the relay's log"
                if self.last_error != error:
                    logger.exception("the usage reports failed; trying again later")
                self.last_error = error
            with anyio.move_on_after(self._sleep_seconds()):
                await self._wake.wait()
            self._wake = anyio.Event()

    def wake(self) -> None:
        """Catch up now rather than at the next planned time."""
        self._wake.set()

    async def catch_up(self) -> None:
        """Build and deliver every report due and not delivered, oldest first; one pass at a
        time. A store that cannot be read or written is reported, and tried on the next."""
        async with self._passing:
            try:
                entries = await self._entries(None)
                settled = [entry for entry in entries if entry.state != "pending"]
                outcomes = await self._work_through([e for e in entries if e.state == "pending"])
                self._tally([*settled, *outcomes])
            except StoreError as exc:
                if self.last_error is None or not self.last_error.startswith("store"):
                    logger.error("cannot make the usage reports: %s", exc)
                self.last_error = f"store: {exc}"
                return
        delivered = [entry for entry in outcomes if entry.state == "delivered"]
        if delivered:
            logger.info("delivered %d usage reports, %s", len(delivered), _days(delivered))

    async def deliver_now(self, source: str, day: date) -> tuple[UsageReport, ReportEntry]:
        """Build (if not saved) and deliver the report of ``source`` for ``day`` now, to every
        destination, whatever its state; raises ``ReportRefused`` if it cannot be made."""
        if source not in self._sources:
            raise ReportRefused(f"unknown source {source!r}")
        now = self._clock()
        if day > last_closed_day(now, self.zone, self._delay):
            due = day_period(day, self.zone).end + self._delay
            raise ReportRefused(
                f"the usage day {day} has not closed yet in {self.zone}: its report is due "
                f"at {due.astimezone(self.zone):%Y-%m-%d %H:%M}"
            )
        if self._since is not None and day < self._since:
            raise ReportRefused(f"reports start on {self._since} (reports_since), after {day}")
        first = await self._first_day(source)
        if first is None or day < first:
            since = "nothing yet" if first is None else f"nothing before {first}"
            raise ReportRefused(f"the store has {since} of {source!r}: no report for {day}")
        body, entry = await self._run(source, day, forced=True)
        await self._count()
        return UsageReport.model_validate_json(body), entry

    # -- listing ----------------------------------------------------------------------

    async def report_list(self, since: date | None = None, source: str | None = None) -> ReportList:
        """The state of every (source, day) due from ``since`` (default: the last
        ``LISTED_DAYS`` closed days), of ``source`` (None: every source)."""
        if source is not None and source not in self._sources:
            raise ReportRefused(f"unknown source {source!r}")
        if since is None:
            last = last_closed_day(self._clock(), self.zone, self._delay)
            since = last - timedelta(days=LISTED_DAYS - 1)
        return ReportList(
            timezone=str(self.zone),
            destinations=[destination.name for destination in self.destinations],
            reports=await self._entries(since, source),
        )

    async def saved_report(self, source: str, day: date) -> str | None:
        """The report of ``source`` for ``day`` exactly as saved (and delivered), or None."""
        return await self._store.saved_report(source, day)

    # -- the work ---------------------------------------------------------------------

    async def _entries(self, since: date | None, source: str | None = None) -> list[ReportEntry]:
        """Every (source, day) due, from its first day (and ``since``) to the last closed day,
        by day and source order. ``since`` None: from where catching up starts."""
        last = last_closed_day(self._clock(), self.zone, self._delay)
        floor = self._since or last - timedelta(days=self._catchup_days - 1)
        if since is None:
            since = floor
        starts = {}
        for name in self._sources if source is None else [source]:
            first = await self._first_day(name)
            if first is not None:
                starts[name] = max(first, since)
        if not starts:
            return []
        records = {
            (record.source, record.usage_day): record
            for record in await self._store.report_records(min(starts.values()), last, source)
        }
        order = {name: number for number, name in enumerate(self._sources)}
        keys = sorted(
            (
                (name, start + timedelta(days=offset))
                for name, start in starts.items()
                for offset in range((last - start).days + 1)
            ),
            key=lambda key: (key[1], order[key[0]]),
        )
        return [self._entry(name, day, records.get((name, day))) for name, day in keys]

    async def _first_day(self, source: str) -> date | None:
        """The first usage day with data of ``source``, or None."""
        first = await self._store.first_ledger_hour(source)
        return None if first is None else first.astimezone(self.zone).date()

    async def _work_through(self, due: list[ReportEntry]) -> list[ReportEntry]:
        """Run ``due`` in order, ``concurrency`` at a time; their entries afterwards."""
        queue = deque(due)
        outcomes: list[ReportEntry] = []

        async def worker() -> None:
            while queue:
                entry = queue.popleft()
                _, outcome = await self._run(entry.source, entry.usage_day, forced=False)
                outcomes.append(outcome)

        async with anyio.create_task_group() as task_group:
            for _ in range(min(self._concurrency, len(due))):
                task_group.start_soon(worker)
        return outcomes

    async def _run(self, source: str, day: date, *, forced: bool) -> tuple[str, ReportEntry]:
        """Save the report of (``source``, ``day``) if it is not, and deliver it where it is
        pending (``forced``: everywhere, whatever the state or the pauses)."""
        async with self._lock((source, day)):
            body, saved_now = await self._saved(source, day)
            report = SavedReport(source, day, body)
            deliveries = self._deliveries(await self._record(source, day))
            succeeded = saved_now and not self.destinations
            refused = False
            for destination in self.destinations:
                before = deliveries[destination.name]
                if not forced and (before.state != "pending" or self._paused(destination.name)):
                    continue
                key = f"{source}:{day}:{destination.name}:{destination.target}"
                claim = await self._claim(key, forced)
                if claim == "busy":
                    continue
                if isinstance(claim, ReportDelivery):  # another relay of the cluster made it
                    after = claim
                    delivered = after.state == "delivered"
                else:
                    outcome = await destination.deliver(report)
                    self._note(destination.name, outcome)
                    after = self._after(before, outcome)
                    refused |= after.state == "failed" and outcome.state == "failed"
                    delivered = outcome.state == "delivered"
                await self._store.record_delivery(
                    source, day, destination.name, destination.target, after
                )
                if self._claims is not None and claim == "ours":
                    settled = None if after.state == "pending" else after
                    await self._claims.settle_delivery(key, settled)
                succeeded |= delivered
            entry = self._entry(source, day, await self._record(source, day))
        if succeeded and entry.state == "delivered" and self._on_delivered is not None:
            self._on_delivered(entry)
        if refused:
            logger.error("the usage report %s was refused: %s", entry.report_id, entry.last_error)
            if self._on_failed is not None:
                self._on_failed(entry)
        return body, entry

    async def _claim(self, key: str, forced: bool) -> Literal["ours", "busy"] | ReportDelivery:
        """Whether this scheduler makes the delivery ``key`` (see ``DeliveryClaims``); a
        forced one is always made here."""
        if self._claims is None or forced:
            return "ours"
        return await self._claims.claim_delivery(key, self._claim_for)

    async def _record(self, source: str, day: date) -> ReportRecord | None:
        records = await self._store.report_records(day, day, source)
        return records[0] if records else None

    async def _saved(self, source: str, day: date) -> tuple[str, bool]:
        """The saved report of (``source``, ``day``), built and saved first if there is none;
        and whether it was saved just now."""
        body = await self._store.saved_report(source, day)
        if body is not None:
            return body, False
        first, stop = report_hours(day_period(day, self.zone))
        rows = await self._store.day_ledger(source, first, stop)
        now = self._clock()
        report = build_report(
            source=source,
            kind=self._sources[source].kind,
            day=day,
            zone=self.zone,
            rows=rows,
            interval=self._sources[source].interval,
            generated_at=now,
        )
        body = report.model_dump_json()
        if self._claims is not None:
            body = await self._claims.shared_report(report_id(source, day), body)
        return await self._store.save_report(source, day, body, now), True

    def _after(self, before: ReportDelivery, outcome: Outcome) -> ReportDelivery:
        """A destination's state after ``outcome``; a delivered report stays delivered."""
        attempts = before.attempts + 1
        if outcome.state == "delivered":
            return ReportDelivery(state="delivered", attempts=attempts, delivered_at=self._clock())
        state = "delivered" if before.state == "delivered" else outcome.state
        return before.model_copy(
            update={"state": state, "attempts": attempts, "last_error": outcome.error}
        )

    def _deliveries(self, record: ReportRecord | None) -> dict[str, ReportDelivery]:
        """Each configured destination's state of ``record`` (pending where it has none)."""
        pending = ReportDelivery(state="pending")
        if record is None:
            return {destination.name: pending for destination in self.destinations}
        return {
            destination.name: record.deliveries.get((destination.name, destination.target), pending)
            for destination in self.destinations
        }

    def _entry(self, source: str, day: date, record: ReportRecord | None) -> ReportEntry:
        deliveries = self._deliveries(record)
        states = {delivery.state for delivery in deliveries.values()}
        if "failed" in states:
            state = "failed"
        elif record is None or "pending" in states:
            state = "pending"
        else:
            state = "delivered"
        unsettled = [d for d in deliveries.values() if d.state != "delivered" and d.last_error]
        times = [d.delivered_at for d in deliveries.values() if d.delivered_at is not None]
        if record is not None and not deliveries:
            times = [record.saved_at]  # saved is all there is to do
        return ReportEntry(
            report_id=report_id(source, day),
            source=source,
            usage_day=day,
            state=state,
            saved=record is not None,
            attempts=sum(delivery.attempts for delivery in deliveries.values()),
            last_error=unsettled[0].last_error if unsettled else None,
            delivered_at=max(times) if state == "delivered" and times else None,
            destinations=deliveries,
        )

    async def _count(self) -> None:
        self._tally(await self._entries(None))

    def _tally(self, entries: list[ReportEntry]) -> None:
        """Count the days due that are pending and failed; forget the last error when none
        is pending."""
        states = Counter(entry.state for entry in entries)
        self.pending, self.failed = states["pending"], states["failed"]
        if not self.pending:
            self.last_error = None

    # -- destinations' health -----------------------------------------------------------

    def _paused(self, name: Destination) -> bool:
        return anyio.current_time() < self._health[name].resume_at

    def _note(self, name: Destination, outcome: Outcome) -> None:
        """Pause a destination after a failure that may pass; resume it after a success."""
        health = self._health[name]
        if outcome.state == "pending":
            health.failures += 1
            wait = self._backoff.delay(health.failures)
            if outcome.retry_after is not None:
                wait = min(max(wait, outcome.retry_after), self._backoff.maximum)
            health.resume_at = anyio.current_time() + wait
            if health.failures == 1:
                logger.warning("%s; reports wait for it (next try in %.0f s)", outcome.error, wait)
            self.last_error = outcome.error
        elif outcome.state == "delivered" and health.failures:
            logger.info("%s takes reports again", name)
            health.failures, health.resume_at = 0, -math.inf

    def _sleep_seconds(self) -> float:
        """Until the next day's report is due, an hour at most, or until a paused destination
        may be tried again while reports wait for it."""
        now = self._clock()
        wait = min(MAX_SLEEP, (next_closing(now, self.zone, self._delay) - now).total_seconds())
        if self.pending or self.last_error is not None:
            resumes = [h.resume_at for h in self._health.values() if h.failures]
            if resumes:
                wait = min(wait, min(resumes) - anyio.current_time())
            elif self.last_error is not None:  # the last pass failed: try again soon
                wait = min(wait, self._backoff.initial)
        return max(MIN_SLEEP, wait)

    @asynccontextmanager
    async def _lock(self, key: _Key) -> AsyncIterator[None]:
        """Hold the lock of one (source, day), dropped once nobody holds or awaits it."""
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(key, None)


def _days(entries: list[ReportEntry]) -> str:
    """The days of ``entries``: "2026-12-01" or "2026-11-01 to 2026-12-01"."""
    days = sorted({entry.usage_day for entry in entries})
    return str(days[0]) if len(days) == 1 else f"{days[0]} to {days[-1]}"
