"""The embedded ledger: one SQLite file, WAL mode, driven from one worker thread.

``SqliteLedger`` is the ``Ledger``, ``ReplayLog``, ``Inbox`` and ``DiffStore`` ports on one
file: the store (``sqlite_store``: the worker thread, transactions, migrations) plus the inbox
(``sqlite_inbox``) and diff sync's tables (``sqlite_diff``); the batch, chunk, lease and
replay tables are here. It serves ``daemon.ledger`` values that are a plain path or a
``sqlite:///abs/path`` URL.

Usage::

    async with SqliteLedger("var/ledger.db") as ledger:
        record = await ledger.start_batch(message)

Every ``sqlite3`` or filesystem error leaves as ``LedgerError`` with the original as its cause.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import orjson

from sender.errors import LedgerError
from sender.model import BatchState, ObjectInfo, TriggerMessage
from sender.ports import BatchRecord, ChunkRecord, RouteStats
from sender_adapters._sql import (
    BATCH_SELECT,
    CHUNK_COLUMNS,
    CHUNK_KEY,
    Migration,
    batch_record,
    batch_where,
    chunk_record,
    chunk_values,
    objects_value,
    sort_chunks,
    unknown_batch,
    upsert,
)
from sender_adapters._sql_shards import SENT_BY_MIGRATION
from sender_adapters.sqlite_diff import DIFF_MIGRATION, SqliteDiff
from sender_adapters.sqlite_inbox import INBOX_MIGRATION, SqliteInbox
from sender_adapters.sqlite_outbox import OUTBOX_MIGRATION, SqliteOutbox, finish_row
from sender_adapters.sqlite_shards import SHARDS_MIGRATION, SqliteShards
from sender_adapters.sqlite_store import dt, ts

__all__ = ["MIGRATIONS", "SqliteLedger"]

# 1: batches, chunks, the replay log and leases
_BATCHES: Migration = (
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
)

# Version N of the schema is MIGRATIONS[:N]. Append new steps; never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (_BATCHES, INBOX_MIGRATION, DIFF_MIGRATION)
# the outbox of completion events (sender.events)
MIGRATIONS += (OUTBOX_MIGRATION,)
# the plans of sharded batches (sender.shards)
MIGRATIONS += (SHARDS_MIGRATION,)
# who last ran each shard (sender status after the batch is done)
MIGRATIONS += (SENT_BY_MIGRATION,)

_TAKE_LEASE = upsert("leases", ("batch_id", "owner", "expires"), ("batch_id",), ("?", "?", "?"))
_SAVE_CHUNKS = upsert("chunks", CHUNK_COLUMNS, CHUNK_KEY, ["?"] * len(CHUNK_COLUMNS))
_START_BATCH = upsert(
    "batches",
    ("batch_id", "dataset", "uri", "state", "message", "created_at", "started_at", "runs"),
    ("batch_id",),
    ("?", "?", "?", "?", "?", "?", "?", "1"),
    update=("dataset", "uri", "state", "message", "started_at"),
    also={"finished_at": "NULL", "error": "NULL", "runs": "batches.runs + 1"},
)


def _qmark(n: int) -> str:
    return "?"


def _batch(row: sqlite3.Row) -> BatchRecord:
    return batch_record(row, json=orjson.loads, time=dt)


def _require_batch(conn: sqlite3.Connection, batch_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        f"{BATCH_SELECT} WHERE b.batch_id = ?", (batch_id,)
    ).fetchone()
    if row is None:
        raise unknown_batch(batch_id)
    return row


class SqliteLedger(SqliteInbox, SqliteDiff, SqliteOutbox, SqliteShards):
    """The ``Ledger``, ``ReplayLog`` and ``Inbox`` ports on a SQLite file (the embedded
    default). ``SqliteLedger(path, clock=)``: see ``SqliteStore``."""

    schemes: ClassVar[tuple[str, ...]] = ("", "sqlite")  # a plain path, or sqlite:///abs/path
    migrations = MIGRATIONS

    # -- the Ledger port -----------------------------------------------------------------

    async def start_batch(self, message: TriggerMessage) -> BatchRecord:
        """Create the batch (running, runs 1), or run an existing one again: ``runs`` + 1,
        ``error`` and ``finished_at`` cleared, message/uri/dataset from ``message``; its
        ``created_at``, chunks, objects and lease are kept."""
        now = ts(self._now())
        body = orjson.dumps(message.model_dump(mode="json")).decode()

        def run(conn: sqlite3.Connection) -> BatchRecord:
            conn.execute(
                _START_BATCH,
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
            row = conn.execute(f"{BATCH_SELECT} WHERE b.batch_id = ?", (batch_id,)).fetchone()
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
        where, args = batch_where(
            _qmark, dataset=dataset, state=state, since=None if since is None else ts(since)
        )
        # rowid breaks ties between batches created within the same microsecond
        sql = f"{BATCH_SELECT}{where} ORDER BY b.created_at DESC, b.rowid DESC LIMIT ?"
        args.append(max(0, limit))

        def run(conn: sqlite3.Connection) -> list[BatchRecord]:
            return [_batch(row) for row in conn.execute(sql, args)]

        return await self._call(run)

    async def set_objects(self, batch_id: str, objects: Sequence[ObjectInfo]) -> None:
        """Record the source's objects as first read; ``LedgerError`` for an unknown batch."""
        body = orjson.dumps(objects_value(objects)).decode()

        def run(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE batches SET objects = ? WHERE batch_id = ?", (body, batch_id)
            )
            if cursor.rowcount == 0:
                raise unknown_batch(batch_id)

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
        now = ts(self._now())

        def run(conn: sqlite3.Connection) -> None:
            finish_row(conn, now, batch_id, state, routes, error)

        await self._call(run, write=True)

    async def chunks(self, batch_id: str, route: str | None = None) -> list[ChunkRecord]:
        """The batch's chunks ordered by route, then chunk id in natural order."""
        sql = f"SELECT {', '.join(CHUNK_COLUMNS)} FROM chunks WHERE batch_id = ?"
        args: tuple[str, ...] = (batch_id,)
        if route is not None:
            sql += " AND route = ?"
            args = (batch_id, route)

        def run(conn: sqlite3.Connection) -> list[ChunkRecord]:
            return [chunk_record(row, time=dt) for row in conn.execute(sql, args)]

        return sort_chunks(await self._call(run))

    async def save_chunks(self, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace these rows (keyed by batch, route, chunk id) in one transaction;
        ``updated_at`` becomes now. ``LedgerError`` if a row names an unknown batch."""
        if not records:
            return
        now = ts(self._now())
        rows = [(*chunk_values(c), now) for c in records]

        def run(conn: sqlite3.Connection) -> None:
            try:
                conn.executemany(_SAVE_CHUNKS, rows)
            except sqlite3.IntegrityError as exc:
                unknown = sorted({r.batch_id for r in records})
                raise LedgerError(f"chunks of an unknown batch ({', '.join(unknown)})") from exc

        await self._call(run, write=True)

    async def acquire_lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        """Take the lease when free or expired, renew it for the same owner (True); False
        while another owner holds an unexpired one. The batch need not exist yet: the engine
        leases a batch before ``start_batch`` creates it."""
        now = self._now()
        expires = ts(now + timedelta(seconds=ttl_s))

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
            conn.execute(_TAKE_LEASE, (batch_id, owner, expires))
            return True

        return await self._call(run, write=True)

    async def release_lease(self, batch_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it; otherwise do nothing."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE batch_id = ? AND owner = ?", (batch_id, owner))

        await self._call(run, write=True)

    async def ping(self) -> None:
        """Raise ``LedgerError`` unless the file is still the one opened (not deleted or
        replaced), readable at its schema (not corrupt), and its last write succeeded."""
        await self.check_health()

    # -- replays (on-call audit trail) ---------------------------------------------------

    async def record_replay(
        self, batch_id: str, who: str, selectors: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        """Append who replayed what (``selectors``: route, states, target, dry run) and how it
        went (``outcome``); ``LedgerError`` for an unknown batch."""
        at = ts(self._now())
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
