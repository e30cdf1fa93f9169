"""
Snapshot history and alert state in an embedded SQLite database.

``SnapshotStore`` is synchronous and thread-safe; ``AsyncSnapshotStore`` runs
it in worker threads so that a slow or failing disk never stalls the poll loop.

The store holds any number of *sources* (``snapshot.source``); every row,
query, fold and alert state belongs to one, and no source sees another's.
Every snapshot is kept as its JSON, so fields the gateway adds survive a
restart, next to a few columns for history queries: its source, time, ``seq``
and ``readings``, its meters as compact JSON
``{"<meter id>": [used_percent, used, reset_at], ...}`` (``null`` for what a
meter does not report). Detailed rows older than ``detail_retention`` are
folded into one row per source and ``downsample_bucket`` (the last snapshot of
each bucket), which are kept for ``downsampled_retention``.

Next to them is the hourly metering ledger (``monitor.metering``): one row
per (source, meter, UTC hour), written with each snapshot in the same
transaction, counting failed polls too, kept as long as the downsampled points
and rebuilt from the stored snapshots when rows are missing (see
``_rebuild_ledger``). ``breakdown`` sums it as ``common.breakdown`` asks
(``monitor.ledger``).

Times are stored as integer microseconds since the epoch: exact, and they sort.
The schema's version is ``PRAGMA user_version``; a database written before
sources (version 0) or before the ledger (version 1) is migrated in place, in
one transaction, when opened.

Each database has an *epoch*: a random id made when the database is created
and kept in its ``state`` table. Sequence numbers rise within one epoch; a
fresh database (a new file, or a corrupt one moved aside) starts a new one.

The writer and the readers have a connection each (WAL lets readers work
while a write is in progress), so a long history read never holds up a write.
The directory is created private (0700), the database and its journal files
are readable by their owner only (0600), and a database file deleted or
replaced while it is open is reported on the next write instead of being
written to in vain. ``DatabaseLock`` keeps a second process off the database.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.abc
import anyio.to_thread

from common.breakdown import Breakdown, BreakdownQuery
from common.history import HistoryPoint, MeterReading
from common.models import Snapshot
from common.reports import ReportDelivery

from . import ledger
from .exceptions import DatabaseInUse, StoreError
from .metering import HOUR, LedgerRow, Metering, Observation, accumulate, hour_of

__all__ = [
    "WRITER_STALL_AFTER",
    "AsyncSnapshotStore",
    "DatabaseLock",
    "ReportRecord",
    "SnapshotStore",
    "new_epoch",
    "stored_body",
]

logger = logging.getLogger("usage_monitor.store")

#: Seconds a single write may run before the store reports its writer as stuck.
WRITER_STALL_AFTER: Final = 30.0

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALERT_STATE_PREFIX = "alert_state:"
_EPOCH_KEY = "epoch"
#: The source a database written before sources gives rows it cannot place.
_DEFAULT_SOURCE = "default"
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
#: What reading a stored value can raise besides SQLite errors: out-of-range
#: times (OverflowError), values of the wrong type or that do not validate
#: (ValueError, TypeError; pydantic's ValidationError is a ValueError).
_DECODE_ERRORS = (OverflowError, ValueError, TypeError)
_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600
_JOURNAL_SUFFIXES = ("-wal", "-shm")

#: ``PRAGMA user_version`` of the schema below; 0 is the schema before sources,
#: 1 the one before the metering ledger, 2 the one before daily reports.
_SCHEMA_VERSION: Final = 3

# ``(source, id)`` finds a source's last appended row, ``(source, seq)`` its
# highest seq and ``(source, fetched_at)`` its points in time, each in one descent.
_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS snapshots (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        fetched_at INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        readings TEXT NOT NULL,
        body TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS snapshots_source_fetched_at ON snapshots (source, fetched_at)",
    "CREATE INDEX IF NOT EXISTS snapshots_source_seq ON snapshots (source, seq)",
    "CREATE INDEX IF NOT EXISTS snapshots_source_id ON snapshots (source, id)",
    """
    CREATE TABLE IF NOT EXISTS downsampled (
        source TEXT NOT NULL,
        bucket_start INTEGER NOT NULL,
        fetched_at INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        readings TEXT NOT NULL,
        PRIMARY KEY (source, bucket_start)
    )
    """,
    "CREATE INDEX IF NOT EXISTS downsampled_source_fetched_at ON downsampled (source, fetched_at)",
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # The hourly metering ledger (monitor.metering): ``hour`` is the start of the
    # UTC hour. The key serves a range of hours of every source (the breakdown,
    # read in key order with no lookups) and pruning; ``(source, hour)`` one
    # source's hours (the ledger's rebuild).
    """
    CREATE TABLE IF NOT EXISTS ledger (
        source TEXT NOT NULL,
        meter TEXT NOT NULL,
        hour INTEGER NOT NULL,
        unit TEXT NOT NULL,
        consumed REAL NOT NULL,
        consumed_percent REAL,
        peak_used_percent REAL,
        close_used_percent REAL,
        resets INTEGER NOT NULL,
        polls INTEGER NOT NULL,
        failed_polls INTEGER NOT NULL,
        PRIMARY KEY (hour, source, meter)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS ledger_source_hour ON ledger (source, hour)",
    # Daily usage reports (monitor.reporting): the body of each (source, usage day)
    # as first saved, never replaced, and its delivery to each destination.
    # ``target`` tells two destinations of one kind apart (another URL or
    # directory starts afresh).
    """
    CREATE TABLE IF NOT EXISTS reports (
        source TEXT NOT NULL,
        usage_day TEXT NOT NULL,
        body TEXT NOT NULL,
        body_hash TEXT NOT NULL,
        saved_at INTEGER NOT NULL,
        PRIMARY KEY (source, usage_day)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS report_deliveries (
        source TEXT NOT NULL,
        usage_day TEXT NOT NULL,
        destination TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        delivered_at INTEGER,
        PRIMARY KEY (source, usage_day, destination, target)
    ) WITHOUT ROWID
    """,
)

# The migration from the schema before sources (user_version 0): its tables are
# renamed, copied into the new ones and dropped. A detail row's source is the
# one its body names (``default`` when it names none); the downsampled rows and
# the alert state, which name none, go to the source of the newest detail row.
_V0_SOURCE = f"""
CASE WHEN json_valid(body) AND json_type(body, '$.source') = 'text'
     THEN json_extract(body, '$.source') ELSE '{_DEFAULT_SOURCE}' END
"""
_V0_NEWEST_SOURCE = (
    f"COALESCE((SELECT source FROM snapshots ORDER BY id DESC LIMIT 1), '{_DEFAULT_SOURCE}')"
)
_V0_READINGS = """
json_object('burst', json_array(burst_percent, NULL, burst_reset_at),
            'sustained', json_array(sustained_percent, NULL, sustained_reset_at))
"""
_MIGRATE_FROM_V0: Final = (
    "ALTER TABLE snapshots RENAME TO snapshots_v0",
    "ALTER TABLE downsampled RENAME TO downsampled_v0",
    *_SCHEMA,
    f"""
    INSERT INTO snapshots (id, source, fetched_at, seq, readings, body)
    SELECT id, {_V0_SOURCE}, fetched_at, seq, {_V0_READINGS}, body FROM snapshots_v0
    """,
    f"""
    INSERT INTO downsampled (source, bucket_start, fetched_at, seq, readings)
    SELECT {_V0_NEWEST_SOURCE}, bucket_start, fetched_at, seq, {_V0_READINGS}
    FROM downsampled_v0
    """,
    f"""
    UPDATE state SET key = '{_ALERT_STATE_PREFIX}' || {_V0_NEWEST_SOURCE}
    WHERE key = 'alert_state'
    """,
    "DROP TABLE snapshots_v0",
    "DROP TABLE downsampled_v0",
)

_POINT_COLUMNS = "fetched_at, seq, readings"


def _qualified(alias: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in _POINT_COLUMNS.split(", "))


# Every source with stored rows, one index descent each (a loose index scan:
# DISTINCT would read every row).
_SOURCES = """
WITH RECURSIVE
    s(source) AS (
        SELECT MIN(source) FROM snapshots
        UNION ALL
        SELECT (SELECT MIN(source) FROM snapshots WHERE source > s.source)
        FROM s WHERE s.source IS NOT NULL
    ),
    d(source) AS (
        SELECT MIN(source) FROM downsampled
        UNION ALL
        SELECT (SELECT MIN(source) FROM downsampled WHERE source > d.source)
        FROM d WHERE d.source IS NOT NULL
    )
SELECT source FROM s WHERE source IS NOT NULL
UNION
SELECT source FROM d WHERE source IS NOT NULL
ORDER BY source
"""

# The newest row of the source (``_KEEP``) is never pruned: after a long stop
# it is all that carries ``seq`` on. MAX() makes SQLite take the bare columns
# from the newest row of each group. ``+id`` keeps SQLite on the
# ``(source, fetched_at)`` index (here and in the DELETE that follows the
# fold): by ``(source, id)`` it would read every row of the source.
_KEEP = "(SELECT MAX(id) FROM snapshots WHERE source = :source)"
_FOLD = f"""
INSERT INTO downsampled (source, bucket_start, {_POINT_COLUMNS})
SELECT :source, fetched_at / :bucket * :bucket, MAX(fetched_at), seq, readings
FROM snapshots
WHERE source = :source AND fetched_at < :cutoff AND +id < {_KEEP}
GROUP BY fetched_at / :bucket
ON CONFLICT (source, bucket_start) DO UPDATE SET
    fetched_at = excluded.fetched_at, seq = excluded.seq, readings = excluded.readings
WHERE excluded.fetched_at > downsampled.fetched_at
"""
_DELETE_FOLDED = f"""
DELETE FROM snapshots WHERE source = :source AND fetched_at < :cutoff AND +id < {_KEEP}
"""
_DELETE_EXPIRED = "DELETE FROM downsampled WHERE source = :source AND fetched_at < :expired"

# The oldest ``:n`` points of the source in range of each table: all of them
# when there are at most ``limit``, which is decided without reading further.
_OLDEST = f"""
SELECT * FROM (SELECT {_POINT_COLUMNS} FROM snapshots
               WHERE source = :source AND fetched_at BETWEEN :lo AND :hi
               ORDER BY fetched_at LIMIT :n)
UNION ALL
SELECT * FROM (SELECT {_POINT_COLUMNS} FROM downsampled
               WHERE source = :source AND fetched_at BETWEEN :lo AND :hi
               ORDER BY fetched_at LIMIT :n)
ORDER BY fetched_at
"""

_NEWEST_TIME = """
SELECT MAX(fetched_at) FROM (
    SELECT (SELECT fetched_at FROM snapshots
            WHERE source = :source AND fetched_at BETWEEN :lo AND :hi
            ORDER BY fetched_at DESC LIMIT 1) AS fetched_at
    UNION ALL
    SELECT (SELECT fetched_at FROM downsampled
            WHERE source = :source AND fetched_at BETWEEN :lo AND :hi
            ORDER BY fetched_at DESC LIMIT 1)
)
"""

# ``:count`` points of the source evenly spread in time from ``:first`` to
# ``:last``: for each target time, the first point at or after it, from
# whichever table has the earlier one. Each pick is one descent of a
# ``(source, fetched_at)`` index, so a query costs O(count · log n) however
# many rows there are; the last target is ``:last`` itself, so the newest
# point is always among them. Targets that fall into a gap share a point,
# which is returned once.
_SAMPLE = f"""
WITH RECURSIVE
    k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < :count),
    target(t) AS (
        SELECT CASE WHEN i + 1 = :count THEN :last
                    ELSE :first + CAST(i * :step AS INTEGER) END
        FROM k
    ),
    candidate AS (
        SELECT t, {_qualified("s")} FROM target JOIN snapshots AS s ON s.id = (
            SELECT id FROM snapshots WHERE source = :source AND fetched_at >= t
            ORDER BY fetched_at, id LIMIT 1)
        UNION ALL
        SELECT t, {_qualified("d")} FROM target JOIN downsampled AS d ON d.rowid = (
            SELECT rowid FROM downsampled WHERE source = :source AND fetched_at >= t
            ORDER BY fetched_at LIMIT 1)
    ),
    chosen AS (
        SELECT MIN(fetched_at) AS fetched_at, seq, readings FROM candidate GROUP BY t
    )
SELECT DISTINCT {_POINT_COLUMNS} FROM chosen ORDER BY fetched_at
"""


# A poll's delta added to its ledger row (as ``LedgerRow.add`` does): in the
# DO UPDATE, a bare column is the stored row's.
_LEDGER_COLUMNS = (
    "source, meter, hour, unit, consumed, consumed_percent, peak_used_percent,"
    " close_used_percent, resets, polls, failed_polls"
)
_LEDGER_ADD = f"""
INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (hour, source, meter) DO UPDATE SET
    unit = excluded.unit,
    consumed = consumed + excluded.consumed,
    consumed_percent = CASE WHEN excluded.consumed_percent IS NULL THEN consumed_percent
                            ELSE COALESCE(consumed_percent, 0.0) + excluded.consumed_percent END,
    peak_used_percent = CASE WHEN excluded.peak_used_percent IS NULL THEN peak_used_percent
                             WHEN peak_used_percent IS NULL THEN excluded.peak_used_percent
                             ELSE MAX(peak_used_percent, excluded.peak_used_percent) END,
    close_used_percent = COALESCE(excluded.close_used_percent, close_used_percent),
    resets = resets + excluded.resets,
    polls = polls + excluded.polls,
    failed_polls = failed_polls + excluded.failed_polls
"""
_HOUR_MICROS: Final = HOUR // timedelta(microseconds=1)
_ROLLUP_ADD = """
INSERT INTO ledger_days (day, source, meter, unit, consumed, consumed_percent, polls, failed_polls)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, source, meter) DO UPDATE SET
    unit = excluded.unit,
    consumed = consumed + excluded.consumed,
    consumed_percent = CASE WHEN excluded.consumed_percent IS NULL THEN consumed_percent
                            ELSE COALESCE(consumed_percent, 0.0) + excluded.consumed_percent END,
    polls = polls + excluded.polls,
    failed_polls = failed_polls + excluded.failed_polls
"""
_ROLLUP_ZONE_KEY = "rollup_zone"


# The ledger's replay: the last point of the source before ``:start`` (its seed),
# then its detailed snapshots from ``:start`` on, in the order they were taken.
_BEFORE = """
SELECT readings FROM (
    SELECT * FROM (SELECT fetched_at, readings FROM snapshots
                   WHERE source = :source AND fetched_at < :start
                   ORDER BY fetched_at DESC LIMIT 1)
    UNION ALL
    SELECT * FROM (SELECT fetched_at, readings FROM downsampled
                   WHERE source = :source AND fetched_at < :start
                   ORDER BY fetched_at DESC LIMIT 1)
) ORDER BY fetched_at DESC LIMIT 1
"""
_REPLAY = """
SELECT fetched_at, readings FROM snapshots
WHERE source = :source AND fetched_at >= :start ORDER BY fetched_at, id
"""


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _readings(snapshot: Snapshot) -> str:
    """The ``readings`` column of ``snapshot``: its meters, compact."""
    return json.dumps(
        {
            meter.id: [
                meter.used_percent,
                meter.used,
                None if meter.reset_at is None else _micros(meter.reset_at),
            ]
            for meter in snapshot.meters
        },
        separators=(",", ":"),
    )


def _meter_readings(text: str) -> dict[str, MeterReading]:
    """The meters of a ``readings`` column; raises ValueError or TypeError if it is not one."""
    stored = json.loads(text)
    if not isinstance(stored, dict):
        raise ValueError(f"stored readings {text[:100]!r} are not an object")
    meters = {}
    for meter_id, reading in stored.items():
        if not isinstance(reading, list):
            raise TypeError(f"stored reading {reading!r} of {meter_id!r} is not a list")
        used_percent, used, reset_at = reading
        meters[meter_id] = MeterReading(
            used_percent=used_percent,
            used=used,
            reset_at=None if reset_at is None else _from_micros(reset_at),
        )
    return meters


def _observations(text: str) -> dict[str, Observation]:
    """What the ledger needs of the meters of a ``readings`` column.

    The unit is not stored there: a meter that reports ``used`` counts dollars
    (every ``usd`` meter does), one that does not is a percentage.
    """
    stored = json.loads(text)
    if not isinstance(stored, dict):
        raise ValueError(f"stored readings {text[:100]!r} are not an object")
    observed = {}
    for meter_id, reading in stored.items():
        used_percent, used, reset_at = reading
        for value in (used_percent, used):
            if value is not None and not isinstance(value, int | float):
                raise TypeError(f"stored reading {reading!r} of {meter_id!r} is not numbers")
        observed[meter_id] = Observation(
            "percent" if used is None else "usd",
            used,
            used_percent,
            None if reset_at is None else _from_micros(reset_at),
        )
    return observed


def _ledger_values(row: LedgerRow) -> tuple[Any, ...]:
    return (
        row.source,
        row.meter,
        _micros(row.hour),
        row.unit,
        row.consumed,
        row.consumed_percent,
        row.peak_used_percent,
        row.close_used_percent,
        row.resets,
        row.polls,
        row.failed_polls,
    )


def _ledger_row(values: tuple[Any, ...]) -> LedgerRow:
    source, meter, hour, unit, consumed, percent, peak, close, resets, polls, failed = values
    return LedgerRow(
        source,
        meter,
        _from_micros(hour),
        unit,
        consumed,
        percent,
        peak,
        close,
        resets,
        polls,
        failed,
    )


def _alert_state_key(source: str) -> str:
    return f"{_ALERT_STATE_PREFIX}{source}"


def _state_value(conn: sqlite3.Connection, key: str) -> str | None:
    """The value stored under ``key`` in the ``state`` table, or None."""
    row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def stored_body(snapshot: Snapshot) -> str:
    """The JSON a snapshot is stored as.

    PostHog's meters are left out: loading rebuilds them from its usage, and
    they would be a third of the row.
    """
    return snapshot.model_dump_json(exclude={"meters"} if snapshot.kind == "posthog" else None)


def new_epoch() -> str:
    """A fresh random epoch id."""
    return secrets.token_hex(8)


def _make_private(path: Path) -> None:
    """Take group and other permissions off ``path``, if it exists and they are set."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        try:
            path.chmod(mode & 0o700)
        except OSError as exc:
            logger.warning("cannot make %s private to its owner: %s", path, exc)
        else:
            logger.info("made %s private to its owner (it was %o)", path, mode)


def _read_error(path: Path, exc: BaseException) -> StoreError:
    if isinstance(exc, sqlite3.Error | OSError):
        return StoreError(f"{path}: {exc}")
    return StoreError(f"{path}: unreadable stored data: {type(exc).__name__}: {exc}")


@dataclass(slots=True)
class ReportRecord:
    """What the store keeps of one saved report: when it was saved, and its delivery to each
    (destination, target)."""

    source: str
    usage_day: date
    saved_at: datetime
    deliveries: dict[tuple[str, str], ReportDelivery] = field(default_factory=dict)


class _Corrupt(StoreError):
    """The file is not a usable SQLite database; it gets moved aside."""


class SnapshotStore:
    """Synchronous store; every method may block on disk and raises ``StoreError``.

    ``epoch`` is the database's epoch once it has been opened (None before,
    or when it cannot be read).
    """

    def __init__(
        self,
        path: Path,
        *,
        detail_retention: timedelta = timedelta(days=7),
        downsampled_retention: timedelta = timedelta(days=400),
        downsample_bucket: timedelta = timedelta(hours=1),
        zone: tzinfo = UTC,
    ) -> None:
        self.path = path
        #: The zone whose calendar days the ledger's daily rollup is kept in.
        self.zone = zone
        self.epoch: str | None = None
        self._detail_retention = detail_retention
        self._downsampled_retention = downsampled_retention
        self._bucket = downsample_bucket
        # The writer's connection, and the (device, inode) of the file it opened.
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._schema_ready = False
        self._write_lock = threading.Lock()
        # The readers' read-only connection: reads wait for each other, never for a write.
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        # The ledger arithmetic of each source written since the schema was prepared.
        self._meterings: dict[str, Metering] = {}

    def open(self) -> None:
        """Open (or create) the database now; otherwise the first call opens it.

        A database that can be read but not written (a read-only file or
        disk) still serves reads, and ``epoch``; the write error is raised.
        """
        try:
            self._write(lambda conn: None)
        except StoreError:
            with contextlib.suppress(StoreError):
                self._read(lambda conn: None)
            raise
        self._read(lambda conn: None)

    def close(self) -> None:
        # The writer closes last: the last connection to close checkpoints the WAL
        # into the database and removes it, which a read-only one cannot do.
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._write_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._schema_ready = False

    # -- writes ---------------------------------------------------------------

    def append(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` under its source and add its poll to the ledger, in one
        transaction."""
        self.append_many([snapshot])

    def append_many(self, snapshots: Sequence[Snapshot]) -> None:
        """Store ``snapshots`` (in the order taken) and their polls, in one transaction."""
        rows = [
            (
                snapshot.source,
                _micros(snapshot.fetched_at),
                snapshot.seq,
                _readings(snapshot),
                stored_body(snapshot),
            )
            for snapshot in snapshots
        ]

        def write(conn: sqlite3.Connection) -> list[Metering]:
            meterings: dict[str, Metering] = {}
            deltas = []
            for snapshot in snapshots:
                metering = meterings.get(snapshot.source)
                if metering is None:
                    metering = meterings[snapshot.source] = self._metering(conn, snapshot.source)
                deltas += metering.observe_snapshot(snapshot)
            conn.executemany(
                f"INSERT INTO snapshots (source, {_POINT_COLUMNS}, body) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            self._add_to_ledger(conn, deltas)
            return list(meterings.values())

        self._write(write, committed=self._keep_meterings)

    def record_failed_poll(self, source: str, at: datetime) -> None:
        """Count a failed poll of ``source`` at ``at`` in the ledger hour of ``at``, for each
        meter of the source's last snapshot (nothing before its first snapshot)."""

        def write(conn: sqlite3.Connection) -> list[Metering]:
            metering = self._metering(conn, source)
            self._add_to_ledger(conn, metering.failed_poll(at))
            return [metering]

        self._write(write, committed=self._keep_meterings)

    def _add_to_ledger(self, conn: sqlite3.Connection, deltas: Sequence[LedgerRow]) -> None:
        """Add polls' deltas to their hours and to the days of the rollup."""
        conn.executemany(_LEDGER_ADD, [_ledger_values(delta) for delta in deltas])
        days = [
            (
                ledger.local_day(delta.hour, self.zone),
                delta.source,
                delta.meter,
                delta.unit,
                delta.consumed,
                delta.consumed_percent,
                delta.polls,
                delta.failed_polls,
            )
            for delta in deltas
        ]
        conn.executemany(_ROLLUP_ADD, days)

    def _metering(self, conn: sqlite3.Connection, source: str) -> Metering:
        """A copy of the ledger arithmetic of ``source``, seeded from its last stored snapshot
        the first time; kept (``_keep_meterings``) once the write that uses it commits."""
        metering = self._meterings.get(source)
        if metering is not None:
            return metering.copy()
        found = conn.execute(
            "SELECT readings FROM snapshots WHERE source = ? ORDER BY id DESC LIMIT 1", (source,)
        ).fetchone()
        seed: dict[str, Observation] = {}
        if found is not None:
            try:
                seed = _observations(found[0])
            except (*_DECODE_ERRORS, RecursionError) as exc:
                logger.warning("the ledger of %s starts afresh: %s", source, exc)
        return Metering(source, seed)

    def _keep_meterings(self, meterings: list[Metering]) -> None:
        for metering in meterings:
            self._meterings[metering.source] = metering

    def _rebuild_ledger(self, conn: sqlite3.Connection) -> None:
        """Rebuild, for each source, the ledger rows missing for its stored detail snapshots.

        Rows are missing in a database from before the ledger (every hour), or
        when snapshots were stored without their rows: hours after the last
        one with polls, or more snapshots in that hour than it counts polls. The
        rows from the first such hour on are replayed from the snapshots,
        seeded with the last stored point before it; failed polls are kept.
        """
        replayed = False
        for (source,) in conn.execute(_SOURCES).fetchall():
            start = self._ledger_gap(conn, source)
            if start is not None:
                self._replay(conn, source, start)
                replayed = True
        zone = str(self.zone)
        if replayed or _state_value(conn, _ROLLUP_ZONE_KEY) != zone:
            ledger.rebuild_rollup(conn, self.zone)
            conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_ROLLUP_ZONE_KEY, zone),
            )

    @staticmethod
    def _ledger_gap(conn: sqlite3.Connection, source: str) -> int | None:
        """The hour (microseconds) from which the ledger of ``source`` must be replayed, or
        None when nothing is missing."""
        # The last hour with polls (a later one may have failed polls only).
        (last_hour,) = conn.execute(
            "SELECT MAX(hour) FROM ledger WHERE source = ? AND polls > 0", (source,)
        ).fetchone()
        if last_hour is None:
            some = conn.execute("SELECT 1 FROM snapshots WHERE source = ? LIMIT 1", (source,))
            return -(2**63) if some.fetchone() else None
        next_hour = last_hour + _HOUR_MICROS
        (stored,) = conn.execute(
            "SELECT COUNT(*) FROM snapshots"
            " WHERE source = ? AND fetched_at >= ? AND fetched_at < ?",
            (source, last_hour, next_hour),
        ).fetchone()
        (polled,) = conn.execute(
            "SELECT MAX(polls) FROM ledger WHERE source = ? AND hour = ?", (source, last_hour)
        ).fetchone()
        if stored > polled:
            return int(last_hour)
        later = conn.execute(
            "SELECT 1 FROM snapshots WHERE source = ? AND fetched_at >= ? LIMIT 1",
            (source, next_hour),
        ).fetchone()
        return next_hour if later else None

    def _replay(self, conn: sqlite3.Connection, source: str, start: int) -> None:
        params = {"source": source, "start": start}
        metering = Metering(source)
        seed = conn.execute(_BEFORE, params).fetchone()
        if seed is not None:
            with contextlib.suppress(*_DECODE_ERRORS, RecursionError):
                metering = Metering(source, _observations(seed[0]))
        kept = [
            _ledger_row(values)
            for values in conn.execute(
                f"SELECT {_LEDGER_COLUMNS} FROM ledger"
                " WHERE source = :source AND hour >= :start AND failed_polls > 0",
                params,
            )
        ]
        conn.execute("DELETE FROM ledger WHERE source = :source AND hour >= :start", params)
        rows: dict[tuple[str, str, datetime], LedgerRow] = {}
        replayed = 0
        for fetched_at, readings in conn.execute(_REPLAY, params):
            try:
                observed = _observations(readings)
            except (*_DECODE_ERRORS, RecursionError) as exc:
                logger.warning("a stored snapshot of %s is left out of its ledger: %s", source, exc)
                continue
            accumulate(metering.observe(_from_micros(fetched_at), observed), rows)
            replayed += 1
        for old in kept:
            row = rows.setdefault(old.key, LedgerRow(source, old.meter, old.hour, old.unit))
            row.failed_polls = old.failed_polls
        conn.executemany(_LEDGER_ADD, [_ledger_values(row) for row in rows.values()])
        logger.info(
            "rebuilt the ledger of %s in %s from %d stored snapshots",
            source,
            self.path,
            replayed,
        )

    def prune(self, now: datetime) -> None:
        """Fold detailed rows past ``detail_retention``; drop folded ones past their retention.

        Each source is folded on its own, and keeps its newest row however old.
        """
        params = {
            "bucket": self._bucket // timedelta(microseconds=1),
            "cutoff": _micros(now - self._detail_retention),
            "expired": _micros(now - self._downsampled_retention),
        }

        # The ledger is kept as long as the downsampled points: an hour goes once it is
        # wholly past their retention.
        expired_hour = _micros(hour_of(now - self._downsampled_retention))

        def fold_and_delete(conn: sqlite3.Connection) -> None:
            for (source,) in conn.execute(_SOURCES).fetchall():
                for statement in (_FOLD, _DELETE_FOLDED, _DELETE_EXPIRED):
                    conn.execute(statement, {**params, "source": source})
            conn.execute("DELETE FROM ledger WHERE hour < ?", (expired_hour,))
            expired_day = ledger.local_day(_from_micros(expired_hour), self.zone)
            conn.execute("DELETE FROM ledger_days WHERE day < ?", (expired_day,))
            for table in ("reports", "report_deliveries"):
                conn.execute(f"DELETE FROM {table} WHERE usage_day < ?", (expired_day,))

        self._write(fold_and_delete)

    def save_alert_state(self, source: str, state: Mapping[str, Any]) -> None:
        """Keep ``state`` as the alert state of ``source``, replacing the one before."""
        value = json.dumps(state)
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_alert_state_key(source), value),
            )
        )

    def save_value(self, key: str, value: Any) -> None:
        """Keep the JSON ``value`` under ``key`` in the state table, replacing the one before."""
        text = json.dumps(value)
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )
        )

    # -- reads ----------------------------------------------------------------

    def load_value(self, key: str) -> Any:
        """The JSON value saved under ``key``, or None; raises ``StoreError`` if unreadable."""
        text = self._read(partial(_state_value, key=key))
        if text is None:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise StoreError(f"the stored {key} in {self.path} is not JSON") from None

    def sources(self) -> list[str]:
        """The sources that have stored snapshots, in order of name."""
        return self._read(lambda conn: [source for (source,) in conn.execute(_SOURCES)])

    def latest(self, source: str) -> Snapshot | None:
        """The last snapshot appended for ``source``, with every field it had."""

        def read(conn: sqlite3.Connection) -> Snapshot | None:
            row = conn.execute(
                "SELECT body FROM snapshots WHERE source = ? ORDER BY id DESC LIMIT 1", (source,)
            ).fetchone()
            return None if row is None else Snapshot.model_validate_json(row[0])

        return self._read(read)

    def last_seq(self, source: str) -> int:
        """The highest ``seq`` of ``source`` stored in either table (0 when there is none).

        It is read from the ``seq`` columns, so it holds even when the newest
        snapshot's body can no longer be loaded.
        """

        def read(conn: sqlite3.Connection) -> int:
            found = conn.execute(
                "SELECT MAX(seq) FROM snapshots WHERE source = :source"
                " UNION ALL SELECT MAX(seq) FROM downsampled WHERE source = :source",
                {"source": source},
            ).fetchall()
            values = [value for (value,) in found if value is not None]
            for value in values:
                if not isinstance(value, int):
                    raise TypeError(f"stored seq {value!r} is not an integer")
            return max(values, default=0)

        return self._read(read)

    def history(
        self,
        source: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[HistoryPoint]:
        """Points of ``source`` in ``[since, until]``, oldest first, at most ``limit``
        evenly spread in time.

        When more points fall in the range, the ones returned are the first
        at or after ``limit`` evenly spaced times from the oldest to the
        newest, so the newest is always kept.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        bounds = {
            "source": source,
            "lo": _micros(since) if since is not None else -(2**63),
            "hi": _micros(until) if until is not None else 2**63 - 1,
        }

        def read(conn: sqlite3.Connection) -> list[HistoryPoint]:
            rows = conn.execute(_OLDEST, {**bounds, "n": limit + 1}).fetchall()
            if len(rows) > limit:
                first = rows[0][0]
                (last,) = conn.execute(_NEWEST_TIME, bounds).fetchone()
                step = (last - first) / (limit - 1) if limit > 1 else 0.0
                sample = {"count": limit, "first": first, "last": last, "step": step}
                rows = conn.execute(_SAMPLE, {"source": source, **sample}).fetchall()
            return [
                HistoryPoint.of(_from_micros(fetched_at), seq, _meter_readings(readings))
                for fetched_at, seq, readings in rows
            ]

        return self._read(read)

    def breakdown(self, query: BreakdownQuery, zone: tzinfo) -> Breakdown:
        """The ledger summed as ``query`` asks, days and months in ``zone`` (``monitor.ledger``)."""
        rolled_up = str(zone) == str(self.zone)
        return self._read(partial(ledger.breakdown, query=query, zone=zone, rolled_up=rolled_up))

    def ledger_rows(self, source: str | None = None) -> list[LedgerRow]:
        """Every ledger row (of ``source``, if given), by source, hour and meter."""
        where, params = ("WHERE source = ?", (source,)) if source is not None else ("", ())
        return self._read(
            lambda conn: [
                _ledger_row(values)
                for values in conn.execute(
                    f"SELECT {_LEDGER_COLUMNS} FROM ledger {where} ORDER BY source, hour, meter",
                    params,
                )
            ]
        )

    def day_ledger(self, source: str, first: datetime, stop: datetime) -> list[LedgerRow]:
        """The ledger rows of ``source`` whose hour starts from ``first`` to ``stop``, excluded."""
        return self._read(
            lambda conn: [
                _ledger_row(values)
                for values in conn.execute(
                    f"SELECT {_LEDGER_COLUMNS} FROM ledger"
                    " WHERE source = ? AND hour >= ? AND hour < ? ORDER BY hour, meter",
                    (source, _micros(first), _micros(stop)),
                )
            ]
        )

    def first_ledger_hour(self, source: str) -> datetime | None:
        """The first hour the ledger of ``source`` has a row for, or None."""
        (first,) = self._read(
            lambda conn: conn.execute(
                "SELECT MIN(hour) FROM ledger WHERE source = ?", (source,)
            ).fetchone()
        )
        return None if first is None else _from_micros(first)

    def save_report(self, source: str, usage_day: date, body: str, saved_at: datetime) -> str:
        """Keep ``body`` as the report of (``source``, ``usage_day``) unless one is kept
        already; return the kept one. A saved report is never replaced."""
        day = usage_day.isoformat()
        digest = hashlib.sha256(body.encode()).hexdigest()

        def write(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO reports (source, usage_day, body, body_hash, saved_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, usage_day) DO NOTHING",
                (source, day, body, digest, _micros(saved_at)),
            )
            (kept,) = conn.execute(
                "SELECT body FROM reports WHERE source = ? AND usage_day = ?", (source, day)
            ).fetchone()
            return str(kept)

        return self._write(write)

    def saved_report(self, source: str, usage_day: date) -> str | None:
        """The saved report of (``source``, ``usage_day``), as saved; None if there is none."""
        found = self._read(
            lambda conn: conn.execute(
                "SELECT body FROM reports WHERE source = ? AND usage_day = ?",
                (source, usage_day.isoformat()),
            ).fetchone()
        )
        return None if found is None else str(found[0])

    def record_delivery(
        self,
        source: str,
        usage_day: date,
        destination: str,
        target: str,
        delivery: ReportDelivery,
    ) -> None:
        """Keep ``delivery`` as the state of the report at (``destination``, ``target``)."""
        delivered_at = delivery.delivered_at
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO report_deliveries (source, usage_day, destination, target, state,"
                " attempts, last_error, delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (source, usage_day, destination, target) DO UPDATE SET"
                " state = excluded.state, attempts = excluded.attempts,"
                " last_error = excluded.last_error, delivered_at = excluded.delivered_at",
                (
                    source,
                    usage_day.isoformat(),
                    destination,
                    target,
                    delivery.state,
                    delivery.attempts,
                    delivery.last_error,
                    None if delivered_at is None else _micros(delivered_at),
                ),
            )
        )

    def report_records(
        self, since: date, until: date | None = None, source: str | None = None
    ) -> list[ReportRecord]:
        """What is saved of the reports of the usage days from ``since`` to ``until``
        (included; None: every later day), of ``source`` (None: every source); by day,
        then source; bodies left out."""
        where = "usage_day >= ?"
        params = [since.isoformat()]
        if until is not None:
            where += " AND usage_day <= ?"
            params.append(until.isoformat())
        if source is not None:
            where += " AND source = ?"
            params.append(source)

        def read(conn: sqlite3.Connection) -> list[ReportRecord]:
            records = {
                (name, day): ReportRecord(name, date.fromisoformat(day), _from_micros(saved_at))
                for name, day, saved_at in conn.execute(
                    f"SELECT source, usage_day, saved_at FROM reports WHERE {where}", params
                )
            }
            for name, day, destination, target, state, attempts, error, delivered in conn.execute(
                "SELECT source, usage_day, destination, target, state, attempts, last_error,"
                f" delivered_at FROM report_deliveries WHERE {where}",
                params,
            ):
                record = records.get((name, day))
                if record is not None:
                    record.deliveries[(destination, target)] = ReportDelivery(
                        state=state,
                        attempts=attempts,
                        last_error=error,
                        delivered_at=None if delivered is None else _from_micros(delivered),
                    )
            return sorted(records.values(), key=lambda record: (record.usage_day, record.source))

        return self._read(read)

    def load_alert_state(self, source: str) -> dict[str, Any]:
        """The alert state last saved for ``source`` ({} when there is none or it is unreadable)."""
        value = self._read(partial(_state_value, key=_alert_state_key(source)))
        try:
            state = json.loads(value) if value is not None else {}
        except (ValueError, TypeError, RecursionError):
            state = None
        if not isinstance(state, dict):
            logger.warning("ignoring unreadable alert state of %s in %s", source, self.path)
            return {}
        return state

    # -- connections ----------------------------------------------------------

    def _write(
        self,
        op: Callable[[sqlite3.Connection], _T],
        committed: Callable[[_T], None] | None = None,
    ) -> _T:
        """Run ``op`` in one write transaction; then ``committed`` with its result, if it
        committed (still holding the write lock)."""
        with self._write_lock:
            try:
                conn = self._writer()
                self._check_identity()
                with conn:  # one transaction: commit on success, roll back on error
                    result = op(conn)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
            if committed is not None:
                committed(result)
            return result

    def _read(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``op`` in one read transaction; any error reading becomes ``StoreError``."""
        with self._read_lock:
            try:
                conn = self._reader_connection()
                conn.execute("BEGIN")
                try:
                    return op(conn)
                finally:
                    if conn.in_transaction:
                        conn.rollback()
            except StoreError:
                raise
            except (sqlite3.Error, OSError, *_DECODE_ERRORS) as exc:
                raise _read_error(self.path, exc) from exc

    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except _Corrupt as exc:
                self._move_aside(str(exc))
                self._conn = self._connect()
            status = os.stat(self.path)
            self._identity = (status.st_dev, status.st_ino)
        if not self._schema_ready:
            # A read-only database fails here on every write, and is still read.
            self.epoch = self._prepare_schema(self._conn)
            self._schema_ready = True
        return self._conn

    def _reader_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            if self._conn is None:
                # The writer creates the file, or moves a corrupt one aside, first;
                # a database it cannot write can still be read.
                with contextlib.suppress(StoreError):
                    self._write(lambda conn: None)
            uri = f"{self.path.absolute().as_uri()}?mode=ro"
            reader = sqlite3.connect(uri, uri=True, check_same_thread=False)
            try:
                if self.epoch is None:
                    self.epoch = self._stored_epoch(reader)
            except BaseException:
                reader.close()
                raise
            self._reader = reader
        return self._reader

    def _prepare_files(self) -> None:
        """The directory (0700 when created here) and the file (0600), before SQLite opens it.

        SQLite gives the ``-wal`` and ``-shm`` files the database's mode.
        """
        self.path.parent.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, _PRIVATE_FILE)
        os.close(fd)
        for suffix in ("", *_JOURNAL_SUFFIXES):
            _make_private(Path(f"{self.path}{suffix}"))

    def _connect(self) -> sqlite3.Connection:
        self._prepare_files()
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # With WAL this loses at most the last writes on power loss, never consistency.
            conn.execute("PRAGMA synchronous = NORMAL")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check != ("ok",):
                raise _Corrupt(f"quick_check: {check[0] if check else 'no answer'}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _CORRUPT_CODES:
                raise _Corrupt(str(exc)) from exc
            raise
        except BaseException:
            conn.close()
            raise
        self._schema_ready = False
        return conn

    def _prepare_schema(self, conn: sqlite3.Connection) -> str:
        """Create or migrate the schema and make sure of the epoch, in one transaction.

        Returns the epoch. A database of a later schema than this code knows is
        refused rather than written.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, written by a later "
                    f"usage-monitor; this one knows versions up to {_SCHEMA_VERSION}"
                )
            if version >= 1:  # 1 and 2 lack tables, which _SCHEMA creates
                statements: tuple[str, ...] = _SCHEMA
            elif conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'snapshots'").fetchone():
                logger.info("migrating %s to schema version %d", self.path, _SCHEMA_VERSION)
                statements = _MIGRATE_FROM_V0
            else:  # a new database
                statements = _SCHEMA
            for statement in (*statements, ledger.ROLLUP_TABLE):
                conn.execute(statement)
            if version != _SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            self._meterings.clear()
            self._rebuild_ledger(conn)
            epoch = self._ensure_epoch(conn)
            conn.commit()
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return epoch

    @staticmethod
    def _ensure_epoch(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (_EPOCH_KEY, new_epoch()),
        )
        epoch = _state_value(conn, _EPOCH_KEY)
        assert epoch is not None  # inserted just above, or there before
        return epoch

    @staticmethod
    def _stored_epoch(conn: sqlite3.Connection) -> str | None:
        """The epoch a database that cannot be written has, if it has one."""
        try:
            return _state_value(conn, _EPOCH_KEY)
        except sqlite3.OperationalError:  # no state table: it was never written
            return None

    def _check_identity(self) -> None:
        """Raise if the file at ``path`` is no longer the one the writer opened."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            raise StoreError(
                f"{self.path} was deleted while in use (its directory too, perhaps); "
                "snapshots are not being stored until usage-monitor restarts"
            ) from None
        if (status.st_dev, status.st_ino) != self._identity:
            raise StoreError(
                f"{self.path} was replaced by another file while in use; "
                "snapshots are not being stored until usage-monitor restarts"
            )

    def _move_aside(self, reason: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        # Keep the journal files next to their database so the copy can still be inspected,
        # and so a stale WAL is never replayed into the fresh database.
        for suffix in ("", *_JOURNAL_SUFFIXES):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{aside}{suffix}"))
        logger.error(
            "database %s is corrupt (%s); moved it to %s and started a fresh one",
            self.path,
            reason,
            aside,
        )


class DatabaseLock:
    """An exclusive lock on a database for one process, held in ``<database>.lock``.

    ``acquire`` raises ``DatabaseInUse`` naming the holder's pid when another
    process holds it. When the lock file cannot be created at all (the
    database's directory cannot be made), there is no database to share
    either: it logs a warning and goes on without the lock.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = Path(f"{database}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE_FILE)
        except OSError as exc:
            self._unlocked(exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                self._unlocked(exc)
                return
            raise DatabaseInUse(
                f"database {self.database} is in use by another usage-monitor (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _unlocked(self, exc: OSError) -> None:
        logger.warning("cannot lock %s (%s); a second relay would not be refused", self.path, exc)

    def release(self) -> None:
        """Let the database go (the file stays: removing it could race a new holder)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


class AsyncSnapshotStore:
    """
    Non-blocking writes and threaded reads over a ``SnapshotStore``.

    ``submit``, ``submit_failed_poll`` and ``submit_alert_state`` queue a write
    and return at once; the ``run`` task performs them one at a time in a
    worker thread and prunes old history every ``prune_every`` of snapshot
    time. When ``max_pending`` writes are waiting the oldest is dropped: a
    newer snapshot or alert state supersedes it, and only a history point (or
    a failed poll's count) is lost. Write failures are logged once per
    episode and kept in ``last_error`` until a write succeeds; a write that
    has run longer than ``stall_after`` seconds shows there too.
    """

    def __init__(
        self,
        store: SnapshotStore,
        *,
        max_pending: int = 64,
        prune_every: timedelta = timedelta(hours=1),
        stall_after: float | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.store = store
        self._last_error: str | None = None
        self._stall_after = WRITER_STALL_AFTER if stall_after is None else stall_after
        # When the write in progress began (time.monotonic()), or None between writes.
        self._write_began: float | None = None
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

    @property
    def epoch(self) -> str | None:
        """The database's epoch, once ``run`` has opened it (None if it could not be read)."""
        return self.store.epoch

    @property
    def last_error(self) -> str | None:
        """Why snapshots are not being stored right now: the last write error, or a stuck writer."""
        began = self._write_began
        if began is not None:
            running = time.monotonic() - began
            if running > self._stall_after:
                return f"the store's writer is stuck: a write has been running for {running:.0f} s"
        return self._last_error

    @last_error.setter
    def last_error(self, error: str | None) -> None:
        self._last_error = error

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
        """Queue ``snapshot`` for appending under its source; never blocks."""
        self._enqueue(partial(self._append, snapshot))

    def submit_failed_poll(self, source: str, at: datetime) -> None:
        """Queue counting a failed poll of ``source`` at ``at`` in the ledger; never blocks."""
        self._enqueue(partial(self.store.record_failed_poll, source, at))

    def submit_alert_state(self, source: str, state: Mapping[str, Any]) -> None:
        """Queue the alert tracker's state of ``source`` for saving; never blocks."""
        # Copy now (and fail here if it is not JSON): the caller goes on mutating its state.
        frozen = json.loads(json.dumps(state))
        self._enqueue(partial(self.store.save_alert_state, source, frozen))

    def close(self) -> None:
        """Let ``run`` finish the queued writes and return."""
        self._send.close()

    async def sources(self) -> list[str]:
        return await self._after_writes(self.store.sources)

    async def latest(self, source: str) -> Snapshot | None:
        return await self._after_writes(self.store.latest, source)

    async def last_seq(self, source: str) -> int:
        return await self._after_writes(self.store.last_seq, source)

    async def history(
        self,
        source: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[HistoryPoint]:
        return await self._after_writes(self.store.history, source, since, until, limit)

    async def append_many(self, snapshots: Sequence[Snapshot]) -> None:
        """Store ``snapshots`` now, after the queued writes, in one transaction; returns once
        they are on disk (or raises ``StoreError``)."""
        await self._after_writes(self.store.append_many, snapshots)

    async def breakdown(self, query: BreakdownQuery, zone: tzinfo) -> Breakdown:
        return await self._after_writes(self.store.breakdown, query, zone)

    async def load_alert_state(self, source: str) -> dict[str, Any]:
        return await self._after_writes(self.store.load_alert_state, source)

    async def save_value(self, key: str, value: Any) -> None:
        """Save now, after the queued writes, and return once it is on disk (or raise)."""
        await self._after_writes(self.store.save_value, key, value)

    async def load_value(self, key: str) -> Any:
        return await self._after_writes(self.store.load_value, key)

    # The reports' reads and writes, each after the queued writes (a report counts every
    # poll submitted before it); writes return once on disk.

    async def day_ledger(self, source: str, first: datetime, stop: datetime) -> list[LedgerRow]:
        return await self._after_writes(self.store.day_ledger, source, first, stop)

    async def first_ledger_hour(self, source: str) -> datetime | None:
        return await self._after_writes(self.store.first_ledger_hour, source)

    async def save_report(self, source: str, usage_day: date, body: str, saved_at: datetime) -> str:
        return await self._after_writes(self.store.save_report, source, usage_day, body, saved_at)

    async def saved_report(self, source: str, usage_day: date) -> str | None:
        return await self._after_writes(self.store.saved_report, source, usage_day)

    async def record_delivery(
        self, source: str, usage_day: date, destination: str, target: str, delivery: ReportDelivery
    ) -> None:
        await self._after_writes(
            self.store.record_delivery, source, usage_day, destination, target, delivery
        )

    async def report_records(
        self, since: date, until: date | None = None, source: str | None = None
    ) -> list[ReportRecord]:
        return await self._after_writes(self.store.report_records, since, until, source)

    async def _after_writes(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` in a worker thread, once every write queued before it is done."""
        await self._caught_up()
        return await anyio.to_thread.run_sync(call, *args)

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
        self._write_began = time.monotonic()
        try:
            await anyio.to_thread.run_sync(write)
        except StoreError as exc:
            if self._last_error is None:
                logger.error("cannot write to the store: %s", exc)
            self._last_error = str(exc)
        else:
            if self._last_error is not None:
                logger.info("store writes work again")
            self._last_error = None
        finally:
            self._write_began = None
