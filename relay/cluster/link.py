"""
A relay's link to its cluster's Redis (``team-relay.md``).

One ``ClusterLink`` per relay process holds a small connection pool and one
subscription, to three channels:

- ``<cluster>:events``: every source's published snapshots (with their
  alerts), statuses, failed polls, changes of the alert rules, and news of
  settled report deliveries;
- ``<cluster>:refresh``: refreshes asked on any relay, which the holder of
  the source's lease answers;
- ``<cluster>:relay:<id>``: the answers to this relay's own refreshes.

Everything the cluster shares is keyed under the cluster's name: per source
its lease and fencing number, ``seq``, the latest snapshot and status, and the
history stream; the epoch; the alert rules; the claims of alerts and report
deliveries.

While Redis cannot be reached the link says so to every source (they serve
their last snapshot as ``degraded``) and reconnects with capped, jittered
backoff; at each (re)connection it reads what it missed from the streams.
Every Redis error is translated to ``ClusterUnavailable`` here, in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, Protocol, cast

import anyio
from anyio.abc import TaskGroup
from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.backoff import Backoff
from common.lifetime import TaskGroupOwner
from common.models import Alert, Snapshot, Status, utc_now
from common.reports import ReportDelivery
from monitor.exceptions import ClusterUnavailable, UpstreamError, UsageMonitorError
from monitor.rules import RuleBook

from . import scripts

__all__ = ["ClusterLink", "Lease", "Member", "StreamEntry"]

logger = logging.getLogger("usage_monitor.cluster")

_NOT_YET: Final = "not connected to Redis yet"
#: Stream entries read per XRANGE while catching up.
_BATCH: Final = 500
#: How long a claim of an alert lasts without its window's reset time.
_ALERT_CLAIM: Final = timedelta(days=2)
#: How long a settled report delivery and a shared report body are kept.
_REPORT_CLAIM: Final = timedelta(days=400)

_ALERT: Final[TypeAdapter[Alert]] = TypeAdapter(Alert)

#: What a refresh answered through Redis comes to.
RefreshOutcome = Snapshot | UsageMonitorError


@dataclass(slots=True)
class Lease:
    """A source's lease as this relay holds it; ``valid_until`` is on anyio's clock, counted
    from when the last renewal was sent, so it never outlives the lease in Redis."""

    source: str
    value: str
    valid_until: float

    @property
    def fence(self) -> int:
        return int(self.value.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry of a source's history stream: a snapshot or the time of a failed poll."""

    id: tuple[int, int]
    snapshot: Snapshot | None = None
    failed_at: datetime | None = None


class Member(Protocol):
    """A source as the link feeds it (``ClusterSource``)."""

    @property
    def source(self) -> str: ...

    #: The last stream entry this relay has, or None before the first catch-up.
    stream_position: tuple[int, int] | None

    def stream_start(self) -> str: ...

    async def catch_up(self, entries: Sequence[StreamEntry]) -> None: ...

    def resync(self, latest: Snapshot | None, status: Status | None) -> None: ...

    def apply_update(self, entry: StreamEntry, alerts: list[Alert], ours: bool) -> None: ...

    def apply_status(self, status: Status) -> None: ...

    def apply_failed(self, entry: StreamEntry) -> None: ...

    def serve_refresh(self, after: int, reply: Callable[[RefreshOutcome], None]) -> bool: ...

    def link_down(self, reason: str) -> None: ...

    def link_up(self) -> None: ...


class _Keys:
    """The names the cluster uses in Redis."""

    def __init__(self, cluster: str, relay_id: str) -> None:
        self._prefix = f"{cluster}:"
        self.epoch = f"{cluster}:epoch"
        self.events = f"{cluster}:events"
        self.refresh = f"{cluster}:refresh"
        self.inbox = f"{cluster}:relay:{relay_id}"
        self.rules = f"{cluster}:alert_rules"
        # As the subscription names them, for the comparison each message makes.
        self.events_channel = self.events.encode()
        self.refresh_channel = self.refresh.encode()

    def of(self, source: str, what: str) -> str:
        return f"{self._prefix}source:{source}:{what}"

    def claim(self, what: str) -> str:
        return f"{self._prefix}claim:{what}"


class ClusterLink(TaskGroupOwner):
    """The relay's connection to its cluster; ``async with`` it for the relay's life."""

    def __init__(
        self,
        url: str,
        cluster: str,
        *,
        lease_seconds: float,
        retention: timedelta,
        epoch: str,
        relay_id: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.cluster = cluster
        self.relay_id = relay_id or secrets.token_hex(6)
        self.lease_seconds = lease_seconds
        #: The epoch snapshots are numbered in: the cluster's once connected.
        self.epoch = epoch
        self._retention = retention
        self._keys = _Keys(cluster, self.relay_id)
        self._redis = Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=max(1.0, min(5.0, lease_seconds / 2)),
            socket_keepalive=True,
            health_check_interval=5,
            # One quick retry on a fresh connection covers a pooled one that a Redis restart
            # broke; anything longer is the link's own backoff.
            retry=Retry(NoBackoff(), 1),
        )
        self._backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self._scripts = {
            name: self._redis.register_script(getattr(scripts, name))
            for name in ("ACQUIRE", "RENEW", "RELEASE", "COMMIT", "STATUS", "FAILED", "SETTLE")
        }
        self._members: dict[str, Member] = {}
        #: The highest fencing number seen of each source, for the next lease after Redis
        #: lost its data.
        self._fences: dict[str, int] = {}
        self._waiting: dict[str, Callable[[RefreshOutcome], None]] = {}
        self._replies, self._reply_queue = anyio.create_memory_object_stream[tuple[str, str]](1024)
        self._listening: anyio.CancelScope | None = None
        self.up = False
        #: Why Redis cannot be used now; None while it can.
        self.last_error: str | None = _NOT_YET
        #: Called when another relay settled a report delivery.
        self.on_report_settled: Callable[[], None] | None = None
        self._rules: RuleBook | None = None

    def attach(self, member: Member) -> None:
        self._members[member.source] = member

    def share_rules(self, book: RuleBook) -> None:
        """Keep ``book`` the same on every relay: each change goes to Redis and to the others."""
        self._rules = book
        book.share(self._save_rules)

    async def _save_rules(self, value: list[dict[str, Any]]) -> None:
        rules = json.dumps(value)
        async with self._errors("share the alert rules"):
            await self._redis.set(self._keys.rules, rules)
            await self._redis.publish(self._keys.events, f'{{"t":"rules","rules":{rules}}}')

    # -- lifetime ---------------------------------------------------------------------

    async def _start(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._send_replies)
        await task_group.start(self._stay_connected)

    async def _stop(self) -> None:
        self._replies.close()

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _stay_connected(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Subscribe, catch up, listen; after a failure, say so once and try again later.

        Readiness comes after the first attempt either way: a relay whose Redis
        is down at start serves its stored snapshots as ``degraded``.
        """
        failures = 0
        ready = False
        while True:
            try:
                async with self._subscription() as pubsub:
                    await self._sync()
                    failures = 0
                    self._set_up()
                    if not ready:
                        task_status.started()
                        ready = True
                    await self._listen(pubsub)
            except ClusterUnavailable as exc:
                failures += 1
                self._set_down(str(exc))
            except Exception as exc:  # a bug here must not take the relay down with it
                failures += 1
                if self.up or self.last_error == _NOT_YET:
                    logger.exception("the link to Redis failed; reconnecting")
                self._set_down(f"internal error ({type(exc).__name__}); see the relay's log")
            if not ready:
                task_status.started()
                ready = True
            await anyio.sleep(self._backoff.delay(failures))

    @asynccontextmanager
    async def _subscription(self) -> AsyncIterator[PubSub]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with self._errors("subscribe"):
                await pubsub.subscribe(self._keys.events, self._keys.refresh, self._keys.inbox)
            yield pubsub
        finally:
            # The connection may be gone already: closing it is then all there is to do.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(1),
                suppress(RedisError, OSError),
            ):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _listen(self, pubsub: PubSub) -> None:
        try:
            with anyio.CancelScope() as self._listening:
                while True:
                    async with self._errors("read the subscription"):
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["channel"], message["data"])
        finally:
            self._listening = None
        raise ClusterUnavailable(self.last_error or "Redis stopped answering")

    def _set_up(self) -> None:
        if not self.up:
            if self.last_error != _NOT_YET:
                logger.warning("Redis is reachable again; cluster %r goes on", self.cluster)
            else:
                logger.info("joined cluster %r as relay %s", self.cluster, self.relay_id)
        self.up = True
        self.last_error = None
        for member in self._members.values():
            member.link_up()

    def _set_down(self, reason: str) -> None:
        # One line per outage: the attempts that follow fail alike.
        if self.up or self.last_error == _NOT_YET:
            logger.error(
                "cannot use Redis (%s); serving the last snapshots as degraded and retrying",
                reason,
            )
        self.up = False
        self.last_error = reason
        for member in self._members.values():
            member.link_down(reason)

    def lost_contact(self, error: ClusterUnavailable) -> None:
        """A command failed: stop listening, so the link reconnects and catches up."""
        if self.up and self._listening is not None:
            self.last_error = str(error)
            self._listening.cancel()

    @asynccontextmanager
    async def _errors(self, doing: str) -> AsyncIterator[None]:
        """Translate every Redis and socket error into ``ClusterUnavailable``."""
        try:
            yield
        except (RedisError, OSError) as exc:
            # redis-py's messages name the host and port at most, never the password.
            detail = str(exc).strip() or type(exc).__name__
            raise ClusterUnavailable(f"Redis: cannot {doing}: {detail[:200]}") from None

    async def _command(self, doing: str, call: Awaitable[Any]) -> Any:
        try:
            async with self._errors(doing):
                return await call
        except ClusterUnavailable as exc:
            self.lost_contact(exc)
            raise

    # -- catching up ------------------------------------------------------------------

    async def _sync(self) -> None:
        """Agree on the epoch, then give every source what Redis has: its stream since the
        relay's position, then its latest snapshot and status."""
        async with self._errors("read the cluster's state"):
            await self._redis.set(self._keys.epoch, self.epoch, nx=True)
            epoch = cast("bytes | None", await self._redis.get(self._keys.epoch))
            self.epoch = epoch.decode() if epoch is not None else self.epoch
            if self._rules is not None:
                # The first relay brings its rules; the others take the cluster's.
                mine = json.dumps(self._rules.stored())
                await self._redis.set(self._keys.rules, mine, nx=True)
                shared = await self._redis.get(self._keys.rules)
                if shared is not None:
                    self._rules.replace(json.loads(shared))
            for name, member in self._members.items():
                await member.catch_up(await self._stream_since(name, member.stream_start()))
                latest, status = await self._redis.mget(
                    self._keys.of(name, "latest"), self._keys.of(name, "status")
                )
                member.resync(
                    None if latest is None else Snapshot.model_validate_json(latest),
                    None if status is None else Status.model_validate_json(status),
                )

    async def _stream_since(self, source: str, start: str) -> list[StreamEntry]:
        key = self._keys.of(source, "history")
        entries: list[StreamEntry] = []
        while True:
            batch = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await self._redis.xrange(key, min=start, count=_BATCH),
            )
            entries.extend(_entry(raw_id, fields) for raw_id, fields in batch)
            if len(batch) < _BATCH:
                return entries
            start = "(" + batch[-1][0].decode()

    # -- the subscription -------------------------------------------------------------

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        try:
            message = json.loads(data)
            if channel == self._keys.events_channel:
                self._event(message)
            elif channel == self._keys.refresh_channel:
                self._refresh_asked(message)
            else:
                self._answered(message)
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("ignored a malformed cluster message on %s: %s", channel.decode(), exc)

    def _event(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "report":
            if self.on_report_settled is not None:
                self.on_report_settled()
            return
        if kind == "rules":
            if self._rules is not None:
                self._rules.replace(message["rules"])
            return
        member = self._members.get(message["source"])
        if member is None:
            return  # a source this relay's config does not have
        if kind == "update":
            entry = StreamEntry(
                _stream_id(message["id"]), snapshot=Snapshot.model_validate(message["snapshot"])
            )
            alerts = [_ALERT.validate_python(alert) for alert in message["alerts"]]
            holder, _, fence = str(message["by"]).rpartition(":")
            self._fences[member.source] = max(self._fences.get(member.source, 0), int(fence))
            member.apply_update(entry, alerts, ours=holder == self.relay_id)
        elif kind == "status":
            member.apply_status(Status.model_validate(message["status"]))
        elif kind == "failed":
            at = datetime.fromisoformat(message["at"])
            member.apply_failed(StreamEntry(_stream_id(message["id"]), failed_at=at))

    def _refresh_asked(self, message: dict[str, Any]) -> None:
        member = self._members.get(message["source"])
        if member is None:
            return
        reply_to, request = str(message["reply_to"]), message["id"]

        def reply(outcome: RefreshOutcome) -> None:
            if isinstance(outcome, Snapshot):
                answer = f'{{"id":{json.dumps(request)},"snapshot":{outcome.model_dump_json()}}}'
            else:
                answer = json.dumps({"id": request, "error": str(outcome)})
            try:
                self._replies.send_nowait((reply_to, answer))
            except anyio.WouldBlock:
                logger.warning("dropped the answer to a refresh: too many are waiting to be sent")

        member.serve_refresh(int(message["after"]), reply)

    def _answered(self, message: dict[str, Any]) -> None:
        waiter = self._waiting.pop(message["id"], None)
        if waiter is None:
            return  # answered after its timeout
        if "snapshot" in message:
            waiter(Snapshot.model_validate(message["snapshot"]))
        else:
            waiter(UpstreamError(str(message["error"])))

    async def _send_replies(self) -> None:
        async for channel, answer in self._reply_queue:
            # Unsent, the asking relay times out and answers its callers itself.
            with suppress(ClusterUnavailable):
                await self._command("answer a refresh", self._redis.publish(channel, answer))

    # -- leases -----------------------------------------------------------------------

    def _lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    async def acquire(self, source: str) -> Lease | float:
        """Take ``source``'s lease if no relay holds it; else the seconds the holder's lease
        has left."""
        sent = anyio.current_time()
        keys = [self._keys.of(source, "lease"), self._keys.of(source, "fence")]
        arguments: list[str | int] = [self.relay_id, self._lease_ms(), self._fences.get(source, 0)]
        value = await self._command("take a lease", self._scripts["ACQUIRE"](keys, arguments))
        if isinstance(value, int):
            return max(0, value) / 1000
        lease = Lease(source, value.decode(), sent + self.lease_seconds)
        self._fences[source] = lease.fence
        return lease

    async def renew(self, lease: Lease) -> bool:
        """Extend ``lease``; False if another relay holds it now."""
        sent = anyio.current_time()
        renewed = await self._command(
            "renew a lease",
            self._scripts["RENEW"](
                [self._keys.of(lease.source, "lease")], [lease.value, self._lease_ms()]
            ),
        )
        if renewed:
            lease.valid_until = sent + self.lease_seconds
        return bool(renewed)

    async def release(self, lease: Lease) -> None:
        """Give ``lease`` up, so another relay takes the source over at once."""
        await self._command(
            "give a lease up",
            self._scripts["RELEASE"]([self._keys.of(lease.source, "lease")], [lease.value]),
        )

    # -- publishing as the holder -----------------------------------------------------

    def _oldest_kept(self) -> str:
        oldest = utc_now() - self._retention
        return f"{int(oldest.timestamp() * 1000)}-0"

    async def commit(
        self, lease: Lease, snapshot: Snapshot, alerts: list[Alert], known_seq: int
    ) -> tuple[Snapshot, list[Alert]] | None:
        """Publish ``snapshot`` under ``lease`` (``scripts.COMMIT``): the snapshot as numbered
        by the cluster and the alerts no relay claimed before; None without the lease."""
        source = lease.source
        text = snapshot.model_copy(update={"epoch": self.epoch}).model_dump_json()
        head = f'{{"seq":{snapshot.seq}'
        if not text.startswith(head):  # Snapshot's first field is its seq
            raise AssertionError("a snapshot's JSON must start with its seq")
        keys = [
            self._keys.of(source, "lease"),
            self._keys.of(source, "seq"),
            self._keys.of(source, "latest"),
            self._keys.of(source, "history"),
            *(self._keys.claim(f"alert:{_alert_digest(alert)}") for alert in alerts),
        ]
        arguments: list[str | int] = [
            lease.value,
            known_seq,
            text[len(head) :],
            self._oldest_kept(),
            self._keys.events,
            json.dumps(source),
            self.relay_id,
            int(_ALERT_CLAIM.total_seconds() * 1000),
            *(alert.model_dump_json() for alert in alerts),
        ]
        reply = await self._command("publish a snapshot", self._scripts["COMMIT"](keys, arguments))
        if reply is None:
            return None
        seq, _, *claimed = reply
        numbered = snapshot.model_copy(update={"seq": int(seq), "epoch": self.epoch})
        return numbered, [alert for alert, won in zip(alerts, claimed, strict=True) if won]

    async def publish_status(self, lease: Lease, status: Status) -> None:
        keys = [self._keys.of(lease.source, "lease"), self._keys.of(lease.source, "status")]
        arguments = [
            lease.value,
            status.model_dump_json(),
            self._keys.events,
            json.dumps(lease.source),
        ]
        await self._command("publish a status", self._scripts["STATUS"](keys, arguments))

    async def publish_failed(self, lease: Lease, at: datetime) -> None:
        keys = [self._keys.of(lease.source, "lease"), self._keys.of(lease.source, "history")]
        arguments = [
            lease.value,
            json.dumps(at.isoformat()),
            self._oldest_kept(),
            self._keys.events,
            json.dumps(lease.source),
        ]
        await self._command("publish a failed poll", self._scripts["FAILED"](keys, arguments))

    # -- refreshes anywhere -----------------------------------------------------------

    async def ask_refresh(
        self, source: str, after: int, answer: Callable[[RefreshOutcome], None]
    ) -> Callable[[], None]:
        """Ask the holder of ``source``'s lease for a snapshot newer than ``after``;
        ``answer`` gets it. Returns what to call to stop waiting."""
        request = secrets.token_hex(8)
        self._waiting[request] = answer
        message = {"source": source, "id": request, "reply_to": self._keys.inbox, "after": after}
        try:
            await self._command(
                "forward a refresh", self._redis.publish(self._keys.refresh, json.dumps(message))
            )
        except ClusterUnavailable:
            self._waiting.pop(request, None)
            raise

        def stop_waiting() -> None:
            self._waiting.pop(request, None)

        return stop_waiting

    # -- report deliveries, once per cluster ------------------------------------------

    async def shared_report(self, report_id: str, body: str) -> str:
        """The body of report ``report_id`` the cluster delivers: ``body`` unless another
        relay saved its own first."""
        key = self._keys.claim(f"report:{report_id}")
        ttl = int(_REPORT_CLAIM.total_seconds())
        # SET NX GET: set only if absent, and say what was there.
        shared = await self._command(
            "share a report", self._redis.set(key, body, nx=True, ex=ttl, get=True)
        )
        return body if shared is None else str(shared.decode())

    async def claim_delivery(
        self, key: str, busy_for: float
    ) -> Literal["ours", "busy"] | ReportDelivery:
        """``ours`` to deliver it now, ``busy`` while another relay does, or the settled
        ``ReportDelivery`` of another relay."""
        claim = self._keys.claim(f"delivery:{key}")
        held = await self._command(
            "claim a delivery",
            self._redis.set(
                claim, f"busy:{self.relay_id}", nx=True, px=int(busy_for * 1000), get=True
            ),
        )
        if held is None:
            return "ours"
        if held.startswith(b"busy:"):
            return "busy"
        return ReportDelivery.model_validate_json(held)

    async def settle_delivery(self, key: str, delivery: ReportDelivery | None) -> None:
        """Record ``delivery`` for the cluster (None: give the claim up, to be tried again)."""
        body = "" if delivery is None else delivery.model_dump_json()
        arguments: list[str | int] = [
            body,
            int(_REPORT_CLAIM.total_seconds() * 1000),
            self._keys.events,
        ]
        await self._command(
            "settle a delivery",
            self._scripts["SETTLE"]([self._keys.claim(f"delivery:{key}")], arguments),
        )


def _stream_id(text: str | bytes) -> tuple[int, int]:
    if isinstance(text, bytes):
        text = text.decode()
    milliseconds, _, number = text.partition("-")
    return int(milliseconds), int(number or 0)


def _entry(raw_id: bytes, fields: dict[bytes, bytes]) -> StreamEntry:
    if b"snapshot" in fields:
        return StreamEntry(
            _stream_id(raw_id), snapshot=Snapshot.model_validate_json(fields[b"snapshot"])
        )
    return StreamEntry(
        _stream_id(raw_id), failed_at=datetime.fromisoformat(json.loads(fields[b"failed"]))
    )


def _alert_digest(alert: Alert) -> str:
    """The same for the same alert raised by any relay: the meter, the threshold or the
    projection, and the window it belongs to."""
    identity = alert.model_dump(
        mode="json", include={"kind", "source", "bucket", "threshold", "rule", "reset_at"}
    )
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
