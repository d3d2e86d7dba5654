"""The embedded ledger: one SQLite file, WAL mode, driven from one worker thread.

``sqlite3`` blocks, so every call runs on a dedicated single-thread executor: the event loop
never waits on the disk, and the one thread serializes access to the one connection (no
"database is locked" between our own tasks). Each public method is one transaction;
writes take ``BEGIN IMMEDIATE`` so a second process (``sender replay`` next to the daemon)
waits up to ``busy_timeout`` instead of failing half-way. The schema is migrated at open from
a versioned list kept in ``PRAGMA user_version``.

Usage::

    async with SqliteLedger("var/ledger.db") as ledger:
        record = await ledger.start_batch(message)

Every ``sqlite3`` or filesystem error leaves as ``LedgerError`` with the original as its cause.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import orjson

from sender.errors import AdapterClosed, LedgerError
from sender.model import BatchState, ChunkState, ObjectInfo, TriggerMessage, chunk_sort_key
from sender.ports import BatchRecord, ChunkRecord, InboxMessage, InboxOutcome, Resource, RouteStats

__all__ = ["MIGRATIONS", "SqliteLedger"]

_T = TypeVar("_T")

# Version N of the schema is MIGRATIONS[:N]. Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE batches (
            batch_id      TEXT PRIMARY KEY,
            dataset       TEXT NOT NULL,
            uri           TEXT NOT NULL,
            state         TEXT NOT NULL,
            message       TEXT NOT NULL,
            created_at    TEXT NOT NULL,
            started_at    TEXT,
            finished_at   TEXT,
            error         TEXT,
            runs          INTEGER NOT NULL DEFAULT 0,
            routes        TEXT NOT NULL DEFAULT '{}',
            objects       TEXT
        )
        """,
        "CREATE INDEX batches_created_at ON batches (created_at)",
        "CREATE INDEX batches_dataset ON batches (dataset, created_at)",
        """
        CREATE TABLE chunks (
            batch_id        TEXT NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
            route           TEXT NOT NULL,
            chunk_id        TEXT NOT NULL,
            state           TEXT NOT NULL,
            records         INTEGER NOT NULL DEFAULT 0,
            raw_size        INTEGER NOT NULL DEFAULT 0,
            kind            TEXT NOT NULL DEFAULT 'data',
            idempotency_key TEXT NOT NULL DEFAULT '',
            target          TEXT,
            attempts        INTEGER NOT NULL DEFAULT 0,
            last_error      TEXT,
            location        TEXT,
            checksum        TEXT,
            updated_at      TEXT NOT NULL,
            PRIMARY KEY (batch_id, route, chunk_id)
        )
        """,
        """
        CREATE TABLE replays (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            batch_id  TEXT NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
            who       TEXT NOT NULL,
            at        TEXT NOT NULL,
            selectors TEXT NOT NULL,
            outcome   TEXT NOT NULL
        )
        """,
        "CREATE INDEX replays_batch ON replays (batch_id, id)",
        # Leases live apart from batches: the engine takes the lease *before* start_batch
        # creates the batch row, so that two owners never both start it.
        """
        CREATE TABLE leases (
            batch_id TEXT PRIMARY KEY,
            owner    TEXT NOT NULL,
            expires  TEXT NOT NULL
        )
        """,
    ),
    # 2: the inbox of the http trigger (messages accepted over HTTP, claimed by a daemon)
    (
        """
        CREATE TABLE inbox (
            message_id    TEXT PRIMARY KEY,
            body          BLOB NOT NULL,
            state         TEXT NOT NULL,
            received_at   TEXT NOT NULL,
            deliveries    INTEGER NOT NULL DEFAULT 0,
            owner         TEXT,
            lease_expires TEXT,
            settled_at    TEXT,
            reason        TEXT
        )
        """,
        "CREATE INDEX inbox_pending ON inbox (state, received_at)",
    ),
)

_BATCH_SELECT = (
    "SELECT b.batch_id, b.dataset, b.uri, b.state, b.message, b.created_at, b.started_at, "
    "b.finished_at, b.error, b.runs, b.routes, b.objects, "
    "l.owner AS lease_owner, l.expires AS lease_expires "
    "FROM batches AS b LEFT JOIN leases AS l ON l.batch_id = b.batch_id"
)
_CHUNK_COLUMNS = (
    "batch_id, route, chunk_id, state, records, raw_size, kind, idempotency_key, target, "
    "attempts, last_error, location, checksum, updated_at"
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime) -> str:
    # Fixed width (always microseconds, always +00:00) so that text order is time order,
    # which the created_at index and the `since` filter rely on.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _route_stats(data: dict[str, Any]) -> RouteStats:
    known = RouteStats.__dataclass_fields__
    return RouteStats(**{k: int(v) for k, v in data.items() if k in known})


def _batch(row: sqlite3.Row) -> BatchRecord:
    objects = row["objects"]
    return BatchRecord(
        batch_id=row["batch_id"],
        dataset=row["dataset"],
        uri=row["uri"],
        state=BatchState(row["state"]),
        message=orjson.loads(row["message"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        error=row["error"],
        runs=row["runs"],
        routes={name: _route_stats(stats) for name, stats in orjson.loads(row["routes"]).items()},
        objects=None
        if objects is None
        else [ObjectInfo(o["uri"], o["size"], o.get("version", "")) for o in orjson.loads(objects)],
        lease_owner=row["lease_owner"],
        lease_expires=_dt(row["lease_expires"]),
    )


def _chunk(row: sqlite3.Row) -> ChunkRecord:
    return ChunkRecord(
        batch_id=row["batch_id"],
        route=row["route"],
        chunk_id=row["chunk_id"],
        state=ChunkState(row["state"]),
        records=row["records"],
        raw_size=row["raw_size"],
        kind=row["kind"],
        idempotency_key=row["idempotency_key"],
        target=row["target"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        location=row["location"],
        checksum=row["checksum"],
        updated_at=_dt(row["updated_at"]),
    )


def _inbox(row: sqlite3.Row) -> InboxMessage:
    return InboxMessage(
        message_id=row["message_id"],
        body=bytes(row["body"]),
        state=row["state"],
        received_at=datetime.fromisoformat(row["received_at"]),
        deliveries=row["deliveries"],
        owner=row["owner"],
        lease_expires=_dt(row["lease_expires"]),
        settled_at=_dt(row["settled_at"]),
        reason=row["reason"],
    )


def _require_batch(conn: sqlite3.Connection, batch_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        f"{_BATCH_SELECT} WHERE b.batch_id = ?", (batch_id,)
    ).fetchone()
    if row is None:
        raise LedgerError(f"unknown batch {batch_id!r}")
    return row


class SqliteLedger(Resource):
    """The ``Ledger`` port on a SQLite file (the embedded default).

    ``path`` is a file path (parent folders are created) or ``":memory:"``. The file opens on
    ``open()``, ``async with``, or lazily on the first call. ``clock`` returns the current
    time as an aware UTC datetime; tests inject one to move time without sleeping.
    """

    schemes: ClassVar[tuple[str, ...]] = ("", "sqlite")  # a plain path, or sqlite:///abs/path

    def __init__(self, path: str | Path, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.path = str(path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # One thread: sqlite3 connections are not shared across threads, and one writer at a
        # time is what SQLite does anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-ledger")

    @classmethod
    def from_url(cls, url: str, *, clock: Callable[[], datetime] = _utcnow) -> SqliteLedger:
        """A plain path, or ``sqlite:///abs/path`` (``sqlite:///:memory:`` for a throwaway)."""
        if "://" not in url:
            return cls(url, clock=clock)
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path:
            raise LedgerError(f"not a SQLite ledger URL: {url!r} (use sqlite:///abs/path)")
        path = parts.path
        if path == "/:memory:":
            return cls(":memory:", clock=clock)
        return cls("/" + path.lstrip("/"), clock=clock)

    def __repr__(self) -> str:
        return f"SqliteLedger({self.path!r})"

    def _now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the file and migrate the schema; a no-op when already open."""
        await self._call(lambda conn: None)

    _on_enter = open  # async with opens the ledger

    async def aclose(self) -> None:
        """Close the file; idempotent. Calls already queued finish first."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_connection)
        finally:
            self._executor.shutdown(wait=False)

    def _close_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        # Runs on the worker thread.
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(
                    f"cannot create the folder of ledger {self.path}: {exc.strerror or exc}"
                ) from exc
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if self.path != ":memory:" and str(mode).lower() != "wal":
                raise LedgerError(f"cannot open ledger {self.path}: WAL mode refused ({mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise LedgerError(
                    f"ledger {self.path} has schema version {version}, newer than this "
                    f"sender understands ({len(MIGRATIONS)}): upgrade integration-sender"
                )
            for number, steps in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in steps:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- plumbing ------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        if self._closed:
            raise AdapterClosed(f"ledger {self.path}")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._transaction, fn, write)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: {exc}") from exc
        except RuntimeError as exc:  # the executor was shut down under a queued call
            if self._closed:
                raise AdapterClosed(f"ledger {self.path}") from exc
            raise

    def _transaction(self, fn: Callable[[sqlite3.Connection], _T], write: bool) -> _T:
        # Runs on the worker thread: one transaction per public method.
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    # -- the Ledger port -----------------------------------------------------------------

    async def start_batch(self, message: TriggerMessage) -> BatchRecord:
        """Create the batch (running, runs 1), or run an existing one again: ``runs`` + 1,
        ``error`` and ``finished_at`` cleared, message/uri/dataset from ``message``; its
        ``created_at``, chunks, objects and lease are kept."""
        now = _ts(self._now())
        body = orjson.dumps(message.model_dump(mode="json")).decode()

        def run(conn: sqlite3.Connection) -> BatchRecord:
            conn.execute(
                """
                INSERT INTO batches (batch_id, dataset, uri, state, message, created_at,
                                     started_at, runs)
                VALUES (?, ?, ?, ?, ?, ?, ?, 1)
                ON CONFLICT (batch_id) DO UPDATE SET
                    dataset = excluded.dataset,
                    uri = excluded.uri,
                    state = excluded.state,
                    message = excluded.message,
                    started_at = excluded.started_at,
                    finished_at = NULL,
                    error = NULL,
                    runs = batches.runs + 1
                """,
                (
                    message.batch_id,
                    message.dataset,
                    message.uri,
                    BatchState.RUNNING.value,
                    body,
                    now,
                    now,
                ),
            )
            return _batch(_require_batch(conn, message.batch_id))

        return await self._call(run, write=True)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        def run(conn: sqlite3.Connection) -> BatchRecord | None:
            row = conn.execute(f"{_BATCH_SELECT} WHERE b.batch_id = ?", (batch_id,)).fetchone()
            return None if row is None else _batch(row)

        return await self._call(run)

    async def list_batches(
        self,
        *,
        dataset: str | None = None,
        state: BatchState | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[BatchRecord]:
        """Most recent first (by ``created_at``); ``since`` keeps ``created_at >= since``."""
        where: list[str] = []
        args: list[Any] = []
        if dataset is not None:
            where.append("b.dataset = ?")
            args.append(dataset)
        if state is not None:
            where.append("b.state = ?")
            args.append(BatchState(state).value)
        if since is not None:
            where.append("b.created_at >= ?")
            args.append(_ts(since))
        sql = _BATCH_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        # rowid breaks ties between batches created within the same microsecond
        sql += " ORDER BY b.created_at DESC, b.rowid DESC LIMIT ?"
        args.append(max(0, limit))

        def run(conn: sqlite3.Connection) -> list[BatchRecord]:
            return [_batch(row) for row in conn.execute(sql, args)]

        return await self._call(run)

    async def set_objects(self, batch_id: str, objects: Sequence[ObjectInfo]) -> None:
        """Record the source's objects as first read; ``LedgerError`` for an unknown batch."""
        body = orjson.dumps(
            [{"uri": o.uri, "size": o.size, "version": o.version} for o in objects]
        ).decode()

        def run(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE batches SET objects = ? WHERE batch_id = ?", (body, batch_id)
            )
            if cursor.rowcount == 0:
                raise LedgerError(f"unknown batch {batch_id!r}")

        await self._call(run, write=True)

    async def finish_batch(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> None:
        """Store the outcome, the routes' reconciliation and ``finished_at``; ``LedgerError``
        for an unknown batch."""
        now = _ts(self._now())
        body = orjson.dumps({name: stats.to_dict() for name, stats in routes.items()}).decode()

        def run(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                """
                UPDATE batches SET state = ?, routes = ?, error = ?, finished_at = ?
                WHERE batch_id = ?
                """,
                (BatchState(state).value, body, error, now, batch_id),
            )
            if cursor.rowcount == 0:
                raise LedgerError(f"unknown batch {batch_id!r}")

        await self._call(run, write=True)

    async def chunks(self, batch_id: str, route: str | None = None) -> list[ChunkRecord]:
        """The batch's chunks ordered by route, then chunk id in natural order."""
        sql = f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE batch_id = ?"
        args: tuple[str, ...] = (batch_id,)
        if route is not None:
            sql += " AND route = ?"
            args = (batch_id, route)

        def run(conn: sqlite3.Connection) -> list[ChunkRecord]:
            return [_chunk(row) for row in conn.execute(sql, args)]

        records = await self._call(run)
        # natural order is done here: SQL has no collation for dotted numbers
        records.sort(key=lambda c: (c.route, chunk_sort_key(c.chunk_id)))
        return records

    async def save_chunks(self, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace these rows (keyed by batch, route, chunk id) in one transaction;
        ``updated_at`` becomes now. ``LedgerError`` if a row names an unknown batch."""
        if not records:
            return
        now = _ts(self._now())
        rows = [
            (
                c.batch_id,
                c.route,
                c.chunk_id,
                ChunkState(c.state).value,
                c.records,
                c.raw_size,
                c.kind,
                c.idempotency_key,
                c.target,
                c.attempts,
                c.last_error,
                c.location,
                c.checksum,
                now,
            )
            for c in records
        ]

        def run(conn: sqlite3.Connection) -> None:
            try:
                conn.executemany(
                    f"""
                    INSERT INTO chunks ({_CHUNK_COLUMNS})
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (batch_id, route, chunk_id) DO UPDATE SET
                        state = excluded.state,
                        records = excluded.records,
                        raw_size = excluded.raw_size,
                        kind = excluded.kind,
                        idempotency_key = excluded.idempotency_key,
                        target = excluded.target,
                        attempts = excluded.attempts,
                        last_error = excluded.last_error,
                        location = excluded.location,
                        checksum = excluded.checksum,
                        updated_at = excluded.updated_at
                    """,
                    rows,
                )
            except sqlite3.IntegrityError as exc:
                unknown = sorted({r.batch_id for r in records})
                raise LedgerError(f"chunks of an unknown batch ({', '.join(unknown)})") from exc

        await self._call(run, write=True)

    async def acquire_lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        """Take the lease when free or expired, renew it for the same owner (True); False
        while another owner holds an unexpired one. The batch need not exist yet: the engine
        leases a batch before ``start_batch`` creates it."""
        now = self._now()
        expires = _ts(now + timedelta(seconds=ttl_s))

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT owner, expires FROM leases WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if (
                row is not None
                and row["owner"] != owner
                and datetime.fromisoformat(row["expires"]) > now
            ):
                return False
            conn.execute(
                """
                INSERT INTO leases (batch_id, owner, expires) VALUES (?, ?, ?)
                ON CONFLICT (batch_id) DO UPDATE SET
                    owner = excluded.owner, expires = excluded.expires
                """,
                (batch_id, owner, expires),
            )
            return True

        return await self._call(run, write=True)

    async def release_lease(self, batch_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it; otherwise do nothing."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE batch_id = ? AND owner = ?", (batch_id, owner))

        await self._call(run, write=True)

    async def ping(self) -> None:
        """Raise ``LedgerError`` unless the file answers ``SELECT 1``."""
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- the inbox (http trigger) --------------------------------------------------------

    async def enqueue_message(self, message_id: str, body: bytes) -> bool:
        """Store a pending message; False if one with this id is already pending. A settled
        one is queued again (see the ``Ledger`` port)."""
        now = _ts(self._now())

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                """
                INSERT INTO inbox (message_id, body, state, received_at)
                VALUES (?, ?, 'pending', ?)
                ON CONFLICT (message_id) DO UPDATE SET
                    body = excluded.body, state = 'pending', received_at = excluded.received_at,
                    deliveries = 0, owner = NULL, lease_expires = NULL, settled_at = NULL,
                    reason = NULL
                WHERE inbox.state != 'pending'
                """,
                (message_id, bytes(body), now),
            )
            return cursor.rowcount > 0

        return await self._call(run, write=True)

    async def claim_messages(self, owner: str, limit: int, lease_s: float) -> list[InboxMessage]:
        """Lease up to ``limit`` free pending messages to ``owner``, oldest first."""
        now = self._now()
        stamp, expires = _ts(now), _ts(now + timedelta(seconds=lease_s))

        def run(conn: sqlite3.Connection) -> list[InboxMessage]:
            ids = [
                row["message_id"]
                for row in conn.execute(
                    """
                    SELECT message_id FROM inbox
                    WHERE state = 'pending' AND (lease_expires IS NULL OR lease_expires <= ?)
                    ORDER BY received_at, rowid LIMIT ?
                    """,
                    (stamp, max(0, limit)),
                )
            ]
            claimed = []
            for message_id in ids:
                conn.execute(
                    "UPDATE inbox SET owner = ?, lease_expires = ?, deliveries = deliveries + 1 "
                    "WHERE message_id = ?",
                    (owner, expires, message_id),
                )
                row = conn.execute(
                    "SELECT * FROM inbox WHERE message_id = ?", (message_id,)
                ).fetchone()
                claimed.append(_inbox(row))
            return claimed

        return await self._call(run, write=True)

    async def extend_message(self, message_id: str, owner: str, lease_s: float) -> bool:
        """Renew ``owner``'s claim; False when it no longer holds the message. A lease that
        expired but was not claimed by anyone else is still ``owner``'s to renew."""
        expires = _ts(self._now() + timedelta(seconds=lease_s))

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE inbox SET lease_expires = ? "
                "WHERE message_id = ? AND state = 'pending' AND owner = ?",
                (expires, message_id, owner),
            )
            return cursor.rowcount > 0

        return await self._call(run, write=True)

    async def settle_message(
        self, message_id: str, outcome: InboxOutcome, reason: str | None = None
    ) -> None:
        """``done``/``rejected`` for good, or ``released`` back to pending."""
        if outcome not in ("done", "rejected", "released"):
            raise ValueError(f"unknown inbox outcome {outcome!r}")
        now = _ts(self._now())

        def run(conn: sqlite3.Connection) -> None:
            if outcome == "released":
                cursor = conn.execute(
                    "UPDATE inbox SET owner = NULL, lease_expires = NULL "
                    "WHERE message_id = ? AND state = 'pending'",
                    (message_id,),
                )
                exists = (
                    cursor.rowcount > 0
                    or conn.execute(
                        "SELECT 1 FROM inbox WHERE message_id = ?", (message_id,)
                    ).fetchone()
                )
            else:
                cursor = conn.execute(
                    "UPDATE inbox SET state = ?, settled_at = ?, reason = ?, owner = NULL, "
                    "lease_expires = NULL WHERE message_id = ?",
                    (outcome, now, reason, message_id),
                )
                exists = cursor.rowcount > 0
            if not exists:
                raise LedgerError(f"unknown inbox message {message_id!r}")

        await self._call(run, write=True)

    async def get_message(self, message_id: str) -> InboxMessage | None:
        def run(conn: sqlite3.Connection) -> InboxMessage | None:
            row = conn.execute("SELECT * FROM inbox WHERE message_id = ?", (message_id,)).fetchone()
            return None if row is None else _inbox(row)

        return await self._call(run)

    # -- replays (on-call audit trail) ---------------------------------------------------

    async def record_replay(
        self, batch_id: str, who: str, selectors: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        """Append who replayed what (``selectors``: route, states, target, dry run) and how it
        went (``outcome``); ``LedgerError`` for an unknown batch."""
        at = _ts(self._now())
        args = (batch_id, who, at, orjson.dumps(selectors).decode(), orjson.dumps(outcome).decode())

        def run(conn: sqlite3.Connection) -> None:
            _require_batch(conn, batch_id)
            conn.execute(
                "INSERT INTO replays (batch_id, who, at, selectors, outcome) "
                "VALUES (?, ?, ?, ?, ?)",
                args,
            )

        await self._call(run, write=True)

    async def replays(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's replays, oldest first: ``{id, batch_id, who, at, selectors, outcome}``."""

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [
                {
                    "id": row["id"],
                    "batch_id": row["batch_id"],
                    "who": row["who"],
                    "at": datetime.fromisoformat(row["at"]),
                    "selectors": orjson.loads(row["selectors"]),
                    "outcome": orjson.loads(row["outcome"]),
                }
                for row in conn.execute(
                    "SELECT id, batch_id, who, at, selectors, outcome FROM replays "
                    "WHERE batch_id = ? ORDER BY id",
                    (batch_id,),
                )
            ]

        return await self._call(run)
