"""The shared ledger: PostgreSQL through an asyncpg connection pool, for several replicas.

``daemon.ledger = "postgresql://sender@db:5432/sender"`` selects it (``postgres://`` too).
Every daemon, ``sender status`` and ``sender replay`` on any machine then see the same
batches, chunks and leases. Usage::

    async with PostgresLedger.from_url("postgresql://sender@db/sender") as ledger:
        record = await ledger.start_batch(message)

How replicas share work safely:

- **Migrations** are versioned (``MIGRATIONS``; version N is the first N steps, recorded in
  ``schema_migrations``), applied once however many replicas start together
  (``postgres_store``); a database newer than this code is refused.
- **Leases**: ``acquire_lease`` is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` — the
  conflicting row is locked and the ``WHERE`` (same owner, or expired) is judged on its latest
  committed version, so of any number of replicas racing for a batch exactly one wins. A
  replica that dies stops renewing; once its lease expires another one takes the batch over
  and resumes its unfinished chunks.
- **Chunk state changes** are atomic: ``save_chunks`` writes all its rows in one
  transaction or none (an unknown batch rolls everything back).
- **Inbox** (the ``http`` trigger's queue, ``postgres_inbox``): replicas claiming at once
  each get different messages without waiting on each other.
- **Diff sync** (``postgres_diff``): one baseline per dataset and route for every replica.
- **Destination limits** (``postgres_limits``): one rate limit, pause and circuit per
  destination for every replica (``SharedLimits``), and the replicas' heartbeats.
- **One clock**: times come from the database server (``now()``), not from each replica, so
  lease expiry does not depend on the replicas' clocks agreeing. Tests may inject ``clock``.

``asyncpg`` errors, refused connections and timeouts leave as ``LedgerError`` (cause kept).
URL query parameters other than ``pool_min_size``/``pool_max_size`` go to the server as
settings, e.g. ``?search_path=sender`` to keep the tables in their own schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

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
from sender_adapters.postgres_diff import DIFF_MIGRATION, PostgresDiff
from sender_adapters.postgres_inbox import INBOX_MIGRATION, PostgresInbox
from sender_adapters.postgres_limits import LIMITS_MIGRATION, PostgresLimits
from sender_adapters.postgres_outbox import OUTBOX_MIGRATION, PostgresOutbox, finish_row
from sender_adapters.postgres_shards import SHARDS_MIGRATION, PostgresShards
from sender_adapters.postgres_store import NOW, affected

__all__ = ["MIGRATIONS", "PostgresLedger"]

# 1: batches, chunks, the replay log and leases
_BATCHES: Migration = (
    """
    CREATE TABLE batches (
        batch_id    text PRIMARY KEY,
        seq         bigserial NOT NULL,
        dataset     text NOT NULL,
        uri         text NOT NULL,
        state       text NOT NULL,
        message     jsonb NOT NULL,
        created_at  timestamptz NOT NULL,
        started_at  timestamptz,
        finished_at timestamptz,
        error       text,
        runs        integer NOT NULL DEFAULT 0,
        routes      jsonb NOT NULL DEFAULT '{}',
        objects     jsonb
    )
    """,
    "CREATE INDEX batches_created_at ON batches (created_at DESC, seq DESC)",
    "CREATE INDEX batches_dataset ON batches (dataset, created_at DESC)",
    "CREATE INDEX batches_state ON batches (state, created_at DESC)",
    """
    CREATE TABLE chunks (
        batch_id        text NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
        route           text NOT NULL,
        chunk_id        text NOT NULL,
        state           text NOT NULL,
        records         integer NOT NULL DEFAULT 0,
        raw_size        bigint NOT NULL DEFAULT 0,
        kind            text NOT NULL DEFAULT 'data',
        idempotency_key text NOT NULL DEFAULT '',
        target          text,
        attempts        integer NOT NULL DEFAULT 0,
        last_error      text,
        location        text,
        checksum        text,
        updated_at      timestamptz NOT NULL,
        PRIMARY KEY (batch_id, route, chunk_id)
    )
    """,
    """
    CREATE TABLE replays (
        id        bigserial PRIMARY KEY,
        batch_id  text NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
        who       text NOT NULL,
        at        timestamptz NOT NULL,
        selectors jsonb NOT NULL,
        outcome   jsonb NOT NULL
    )
    """,
    "CREATE INDEX replays_batch ON replays (batch_id, id)",
    # Leases live apart from batches: the engine takes the lease *before* start_batch
    # creates the batch row, so that two owners never both start it.
    """
    CREATE TABLE leases (
        batch_id text PRIMARY KEY,
        owner    text NOT NULL,
        expires  timestamptz NOT NULL
    )
    """,
)

# Version N of the schema is MIGRATIONS[:N]. Append new steps; never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (_BATCHES, INBOX_MIGRATION, DIFF_MIGRATION)
# the outbox of completion events (sender.events)
MIGRATIONS += (OUTBOX_MIGRATION,)
# destination limits shared by the replicas, and their heartbeats (sender.shared_limits)
MIGRATIONS += (LIMITS_MIGRATION,)
# the plans of sharded batches (sender.shards)
MIGRATIONS += (SHARDS_MIGRATION,)
# who last ran each shard (sender status after the batch is done)
MIGRATIONS += (SENT_BY_MIGRATION,)

# $1 is the clock (NOW) in every statement that takes it
_SAVE_CHUNKS = upsert(
    "chunks",
    CHUNK_COLUMNS,
    CHUNK_KEY,
    [f"${n}" for n in range(2, len(CHUNK_COLUMNS) + 1)] + [NOW],
)
_START_BATCH = upsert(
    "batches",
    ("batch_id", "dataset", "uri", "state", "message", "created_at", "started_at", "runs"),
    ("batch_id",),
    ("$2", "$3", "$4", "$5", "$6", NOW, NOW, "1"),
    update=("dataset", "uri", "state", "message", "started_at"),
    also={"finished_at": "NULL", "error": "NULL", "runs": "batches.runs + 1"},
)


def _numbered(n: int) -> str:
    return f"${n}"


def _batch(row: asyncpg.Record) -> BatchRecord:
    return batch_record(row)


class PostgresLedger(PostgresInbox, PostgresDiff, PostgresOutbox, PostgresLimits, PostgresShards):
    """The ``Ledger``, ``ReplayLog``, ``Inbox``, ``DiffStore``, ``Outbox``,
    ``SharedLimits`` and ``Shards`` ports on PostgreSQL (see the module docstring);
    ``PostgresLedger(dsn, clock=)`` or ``from_url``: see ``PostgresStore``."""

    migrations = MIGRATIONS

    # -- the Ledger port -----------------------------------------------------------------

    async def start_batch(self, message: TriggerMessage) -> BatchRecord:
        """Create the batch (running, runs 1), or run an existing one again: ``runs`` + 1,
        ``error`` and ``finished_at`` cleared, message/uri/dataset from ``message``; its
        ``created_at``, chunks, objects and lease are kept."""
        async with self._transaction() as conn:
            await conn.execute(
                _START_BATCH,
                self._now(),
                message.batch_id,
                message.dataset,
                message.uri,
                BatchState.RUNNING.value,
                message.model_dump(mode="json"),
            )
            row = await conn.fetchrow(f"{BATCH_SELECT} WHERE b.batch_id = $1", message.batch_id)
        assert row is not None
        return _batch(row)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(f"{BATCH_SELECT} WHERE b.batch_id = $1", batch_id)
        return None if row is None else _batch(row)

    async def list_batches(
        self,
        *,
        dataset: str | None = None,
        state: BatchState | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[BatchRecord]:
        """Most recent first (by ``created_at``); ``since`` keeps ``created_at >= since``."""
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        where, args = batch_where(_numbered, dataset=dataset, state=state, since=since)
        args.append(max(0, limit))
        # seq breaks ties between batches created within the same microsecond
        sql = f"{BATCH_SELECT}{where} ORDER BY b.created_at DESC, b.seq DESC LIMIT ${len(args)}"
        async with self._transaction() as conn:
            rows = await conn.fetch(sql, *args)
        return [_batch(row) for row in rows]

    async def set_objects(self, batch_id: str, objects: Sequence[ObjectInfo]) -> None:
        """Record the source's objects as first read; ``LedgerError`` for an unknown batch."""
        body = objects_value(objects)
        async with self._transaction() as conn:
            status = await conn.execute(
                "UPDATE batches SET objects = $1 WHERE batch_id = $2", body, batch_id
            )
        if affected(status) == 0:
            raise unknown_batch(batch_id)

    async def finish_batch(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> None:
        """Store the outcome, the routes' reconciliation and ``finished_at``; ``LedgerError``
        for an unknown batch."""
        async with self._transaction() as conn:
            await finish_row(conn, self._now(), batch_id, state, routes, error)

    async def chunks(self, batch_id: str, route: str | None = None) -> list[ChunkRecord]:
        """The batch's chunks ordered by route, then chunk id in natural order."""
        sql = f"SELECT {', '.join(CHUNK_COLUMNS)} FROM chunks WHERE batch_id = $1"
        args: list[str] = [batch_id]
        if route is not None:
            sql += " AND route = $2"
            args.append(route)
        async with self._transaction() as conn:
            rows = await conn.fetch(sql, *args)
        return sort_chunks([chunk_record(row) for row in rows])

    async def save_chunks(self, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace these rows (keyed by batch, route, chunk id) in one transaction;
        ``updated_at`` becomes now. ``LedgerError``, writing nothing, if a row names an
        unknown batch."""
        if not records:
            return
        now = self._now()
        rows = [(now, *chunk_values(c)) for c in records]
        try:
            async with self._transaction() as conn:
                await conn.executemany(_SAVE_CHUNKS, rows)
        except LedgerError as exc:
            if isinstance(exc.__cause__, asyncpg.ForeignKeyViolationError):
                unknown = sorted({r.batch_id for r in records})
                raise LedgerError(
                    f"chunks of an unknown batch ({', '.join(unknown)})"
                ) from exc.__cause__
            raise

    async def acquire_lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        """Take the lease when free or expired, renew it for the same owner (True); False
        while another owner holds an unexpired one. The batch need not exist yet: the engine
        leases a batch before ``start_batch`` creates it. Atomic across replicas."""
        async with self._transaction() as conn:
            taken = await conn.fetchval(
                f"""
                INSERT INTO leases AS l (batch_id, owner, expires)
                VALUES ($2, $3, {NOW} + $4::interval)
                ON CONFLICT (batch_id) DO UPDATE SET
                    owner = excluded.owner, expires = excluded.expires
                WHERE l.owner = excluded.owner OR l.expires <= {NOW}
                RETURNING true
                """,
                self._now(),
                batch_id,
                owner,
                timedelta(seconds=ttl_s),
            )
        return bool(taken)

    async def release_lease(self, batch_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it; otherwise do nothing."""
        async with self._transaction() as conn:
            await conn.execute(
                "DELETE FROM leases WHERE batch_id = $1 AND owner = $2", batch_id, owner
            )

    async def ping(self) -> None:
        """Raise ``LedgerError`` unless the server answers ``SELECT 1``."""
        async with self._transaction() as conn:
            await conn.fetchval("SELECT 1")

    # -- replays (on-call audit trail) ---------------------------------------------------

    async def record_replay(
        self, batch_id: str, who: str, selectors: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        """Append who replayed what (``selectors``) and how it went (``outcome``);
        ``LedgerError`` for an unknown batch."""
        try:
            async with self._transaction() as conn:
                await conn.execute(
                    f"""
                    INSERT INTO replays (batch_id, who, at, selectors, outcome)
                    VALUES ($2, $3, {NOW}, $4, $5)
                    """,
                    self._now(),
                    batch_id,
                    who,
                    selectors,
                    outcome,
                )
        except LedgerError as exc:
            if isinstance(exc.__cause__, asyncpg.ForeignKeyViolationError):
                raise unknown_batch(batch_id) from exc.__cause__
            raise

    async def replays(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's replays, oldest first: ``{id, batch_id, who, at, selectors, outcome}``."""
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "SELECT id, batch_id, who, at, selectors, outcome FROM replays "
                "WHERE batch_id = $1 ORDER BY id",
                batch_id,
            )
        return [dict(row) for row in rows]
