"""
Snapshot history and alert state in an embedded SQLite database.

``SnapshotStore`` is synchronous and thread-safe; ``AsyncSnapshotStore`` runs
it in worker threads so that a slow or failing disk never stalls the poll loop.

Every snapshot is kept as its JSON, so fields the gateway adds survive a
restart, next to a few columns for history queries. Detailed rows older than
``detail_retention`` are folded into one row per ``downsample_bucket`` (the last
snapshot of each bucket), which are kept for ``downsampled_retention``.

Times are stored as integer microseconds since the epoch: exact, and they sort.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
from pydantic import ValidationError

from common.history import HistoryPoint, thin_evenly
from common.models import Snapshot

from .exceptions import StoreError

__all__ = ["AsyncSnapshotStore", "SnapshotStore"]

logger = logging.getLogger("usage_monitor.store")

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALERT_STATE_KEY = "alert_state"
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY,
    fetched_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    burst_percent REAL NOT NULL,
    sustained_percent REAL NOT NULL,
    burst_reset_at INTEGER NOT NULL,
    sustained_reset_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_fetched_at ON snapshots (fetched_at);
CREATE TABLE IF NOT EXISTS downsampled (
    bucket_start INTEGER PRIMARY KEY,
    fetched_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    burst_percent REAL NOT NULL,
    sustained_percent REAL NOT NULL,
    burst_reset_at INTEGER NOT NULL,
    sustained_reset_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_POINT_COLUMNS = (
    "fetched_at, seq, burst_percent, sustained_percent, burst_reset_at, sustained_reset_at"
)

# MAX() makes SQLite take the bare columns from the newest row of each group.
# The newest row is never pruned: after a long stop it is all that carries ``seq`` on.
_FOLD = f"""
INSERT INTO downsampled (bucket_start, {_POINT_COLUMNS})
SELECT fetched_at / :bucket * :bucket, MAX(fetched_at), seq,
       burst_percent, sustained_percent, burst_reset_at, sustained_reset_at
FROM snapshots
WHERE fetched_at < :cutoff AND id < (SELECT MAX(id) FROM snapshots)
GROUP BY fetched_at / :bucket
ON CONFLICT (bucket_start) DO UPDATE SET
    fetched_at = excluded.fetched_at, seq = excluded.seq,
    burst_percent = excluded.burst_percent, sustained_percent = excluded.sustained_percent,
    burst_reset_at = excluded.burst_reset_at, sustained_reset_at = excluded.sustained_reset_at
WHERE excluded.fetched_at > downsampled.fetched_at
"""


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class _Corrupt(StoreError):
    """The file is not a usable SQLite database; it gets moved aside."""


class SnapshotStore:
    """Synchronous store; every method may block on disk and raises ``StoreError``."""

    def __init__(
        self,
        path: Path,
        *,
        detail_retention: timedelta = timedelta(days=7),
        downsampled_retention: timedelta = timedelta(days=400),
        downsample_bucket: timedelta = timedelta(hours=1),
    ) -> None:
        self.path = path
        self._detail_retention = detail_retention
        self._downsampled_retention = downsampled_retention
        self._bucket = downsample_bucket
        self._conn: sqlite3.Connection | None = None
        # One connection shared by the writer and the readers' worker threads.
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open (or create) the database now; otherwise the first call opens it."""
        self._run(lambda conn: None)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def append(self, snapshot: Snapshot) -> None:
        usage = snapshot.usage
        row = (
            _micros(snapshot.fetched_at),
            snapshot.seq,
            usage.burst.used_percent,
            usage.sustained.used_percent,
            _micros(usage.burst.reset_at),
            _micros(usage.sustained.reset_at),
            snapshot.model_dump_json(),
        )
        self._run(
            lambda conn: conn.execute(
                f"INSERT INTO snapshots ({_POINT_COLUMNS}, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )

    def latest(self) -> Snapshot | None:
        """The last snapshot appended, with every field it had."""
        row = self._run(
            lambda conn: conn.execute(
                "SELECT body FROM snapshots ORDER BY id DESC LIMIT 1"
            ).fetchone()
        )
        if row is None:
            return None
        try:
            return Snapshot.model_validate_json(row[0])
        except ValidationError as exc:
            raise StoreError(f"stored snapshot does not validate: {exc}") from exc

    def history(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[HistoryPoint]:
        """Points in ``[since, until]``, oldest first, evenly thinned to ``limit``."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        bounds = (
            _micros(since) if since is not None else -(2**63),
            _micros(until) if until is not None else 2**63 - 1,
        )
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {_POINT_COLUMNS} FROM snapshots WHERE fetched_at BETWEEN ? AND ?"
                f" UNION ALL SELECT {_POINT_COLUMNS} FROM downsampled"
                " WHERE fetched_at BETWEEN ? AND ? ORDER BY fetched_at",
                bounds * 2,
            ).fetchall()
        )
        rows = thin_evenly(rows, limit)
        return [
            HistoryPoint(
                fetched_at=_from_micros(fetched_at),
                seq=seq,
                burst_percent=burst,
                sustained_percent=sustained,
                burst_reset_at=_from_micros(burst_reset),
                sustained_reset_at=_from_micros(sustained_reset),
            )
            for fetched_at, seq, burst, sustained, burst_reset, sustained_reset in rows
        ]

    def prune(self, now: datetime) -> None:
        """Fold detailed rows past ``detail_retention``; drop folded ones past their retention."""
        params = {
            "bucket": self._bucket // timedelta(microseconds=1),
            "cutoff": _micros(now - self._detail_retention),
        }

        def fold_and_delete(conn: sqlite3.Connection) -> None:
            conn.execute(_FOLD, params)
            conn.execute(
                "DELETE FROM snapshots"
                " WHERE fetched_at < :cutoff AND id < (SELECT MAX(id) FROM snapshots)",
                params,
            )
            conn.execute(
                "DELETE FROM downsampled WHERE fetched_at < ?",
                (_micros(now - self._downsampled_retention),),
            )

        self._run(fold_and_delete)

    def load_alert_state(self) -> dict[str, Any]:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT value FROM state WHERE key = ?", (_ALERT_STATE_KEY,)
            ).fetchone()
        )
        try:
            state = json.loads(row[0]) if row is not None else {}
        except ValueError:
            state = None
        if not isinstance(state, dict):
            logger.warning("ignoring unreadable alert state in %s", self.path)
            return {}
        return state

    def save_alert_state(self, state: Mapping[str, Any]) -> None:
        value = json.dumps(state)
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_ALERT_STATE_KEY, value),
            )
        )

    def _run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                conn = self._connection()
                with conn:  # one transaction: commit on success, roll back on error
                    return op(conn)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = self._connect()
            except _Corrupt as exc:
                self._move_aside(str(exc))
                self._conn = self._connect()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # With WAL this loses at most the last writes on power loss, never consistency.
            conn.execute("PRAGMA synchronous = NORMAL")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check != ("ok",):
                raise _Corrupt(f"quick_check: {check[0] if check else 'no answer'}")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _CORRUPT_CODES:
                raise _Corrupt(str(exc)) from exc
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, reason: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        # Keep the journal files next to their database so the copy can still be inspected,
        # and so a stale WAL is never replayed into the fresh database.
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{aside}{suffix}"))
        logger.error(
            "database %s is corrupt (%s); moved it to %s and started a fresh one",
            self.path,
            reason,
            aside,
        )


class AsyncSnapshotStore:
    """
    Non-blocking writes and threaded reads over a ``SnapshotStore``.

    ``submit`` and ``submit_alert_state`` queue a write and return at once; the
    ``run`` task performs them one at a time in a worker thread and prunes
    old history every ``prune_every`` of snapshot time. When ``max_pending``
    writes are waiting the oldest is dropped: a newer snapshot or alert state
    supersedes it, and only a history point is lost. Write failures are logged
    once per episode and kept in ``last_error`` until a write succeeds.
    """

    def __init__(
        self,
        store: SnapshotStore,
        *,
        max_pending: int = 64,
        prune_every: timedelta = timedelta(hours=1),
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.store = store
        self.last_error: str | None = None
        self._prune_every = prune_every
        self._pruned_at: datetime | None = None
        self._dropping = False
        # Reads wait until every write submitted before them is done (or dropped).
        self._submitted = 0
        self._finished = 0
        self._progress = anyio.Event()
        self._send, self._receive = anyio.create_memory_object_stream[Callable[[], None]](
            max_pending
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the database, then perform queued writes until ``close()``; use ``tg.start``."""
        try:
            await self._perform(self.store.open)
            task_status.started()
            async with self._receive:
                async for write in self._receive:
                    await self._perform(write)
                    self._finish_one()
                    if self._receive.statistics().current_buffer_used == 0:
                        self._dropping = False
        finally:
            self.store.close()

    def submit(self, snapshot: Snapshot) -> None:
        """Queue ``snapshot`` for appending; never blocks."""
        self._enqueue(partial(self._append, snapshot))

    def submit_alert_state(self, state: Mapping[str, Any]) -> None:
        """Queue the alert tracker's state for saving; never blocks."""
        # Copy now (and fail here if it is not JSON): the caller goes on mutating its state.
        frozen = json.loads(json.dumps(state))
        self._enqueue(partial(self.store.save_alert_state, frozen))

    def close(self) -> None:
        """Let ``run`` finish the queued writes and return."""
        self._send.close()

    async def latest(self) -> Snapshot | None:
        await self._caught_up()
        return await anyio.to_thread.run_sync(self.store.latest)

    async def history(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[HistoryPoint]:
        await self._caught_up()
        return await anyio.to_thread.run_sync(self.store.history, since, until, limit)

    async def load_alert_state(self) -> dict[str, Any]:
        await self._caught_up()
        return await anyio.to_thread.run_sync(self.store.load_alert_state)

    async def _caught_up(self) -> None:
        target = self._submitted
        while self._finished < target:
            await self._progress.wait()

    def _finish_one(self) -> None:
        self._finished += 1
        self._progress.set()
        self._progress = anyio.Event()

    def _enqueue(self, write: Callable[[], None]) -> None:
        try:
            self._send.send_nowait(write)
        except anyio.WouldBlock:
            if not self._dropping:
                logger.warning("store writes are falling behind; dropping the oldest pending")
                self._dropping = True
            self._receive.receive_nowait()
            self._finish_one()
            self._send.send_nowait(write)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            logger.warning("store is closed; write dropped")
            return
        self._submitted += 1

    def _append(self, snapshot: Snapshot) -> None:
        self.store.append(snapshot)
        if self._pruned_at is None or snapshot.fetched_at - self._pruned_at >= self._prune_every:
            self.store.prune(snapshot.fetched_at)
            self._pruned_at = snapshot.fetched_at

    async def _perform(self, write: Callable[[], None]) -> None:
        try:
            await anyio.to_thread.run_sync(write)
        except StoreError as exc:
            if self.last_error is None:
                logger.error("cannot write to the store: %s", exc)
            self.last_error = str(exc)
        else:
            if self.last_error is not None:
                logger.info("store writes work again")
            self.last_error = None
