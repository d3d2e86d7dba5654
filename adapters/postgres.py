"""The shared ledger: PostgreSQL through an asyncpg connection pool, for several replicas.

``daemon.ledger = "postgresql://sender@db:5432/sender"`` selects it (``postgres://`` too).
Every daemon, ``sender status`` and ``sender replay`` on any machine then see the same
batches, chunks and leases. Usage::

    async with PostgresLedger.from_url("postgresql://sender@db/sender") as ledger:
        record = await ledger.start_batch(message)

How replicas share work safely:

- **Migrations** are versioned (``MIGRATIONS``; version N is the first N steps, recorded in
  ``schema_migrations``), applied at open inside one transaction under an advisory lock, so
  replicas starting together migrate once and never race; a database newer than this code
  is refused.
- **Leases**: ``acquire_lease`` is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` — the
  conflicting row is locked and the ``WHERE`` (same owner, or expired) is judged on its latest
  committed version, so of any number of replicas racing for a batch exactly one wins. A
  replica that dies stops renewing; once its lease expires another one takes the batch over
  and resumes its unfinished chunks.
- **Chunk state changes** are atomic: ``save_chunks`` writes all its rows in one
  transaction or none (an unknown batch rolls everything back).
- **Inbox** (the ``http`` trigger's queue): ``claim_messages`` picks rows with
  ``FOR UPDATE SKIP LOCKED``, so replicas claiming at once each get different messages
  without waiting on each other.
- **One clock**: times come from the database server (``now()``), not from each replica, so
  lease expiry does not depend on the replicas' clocks agreeing. Tests may inject ``clock``.

``asyncpg`` errors, refused connections and timeouts leave as ``LedgerError`` (cause kept).
URL query parameters other than ``pool_min_size``/``pool_max_size`` go to the server as
settings, e.g. ``?search_path=sender`` to keep the tables in their own schema.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from sender.config import mask_url
from sender.errors import AdapterClosed, LedgerError
from sender.model import BatchState, ChunkState, ObjectInfo, TriggerMessage, chunk_sort_key
from sender.ports import BatchRecord, ChunkRecord, InboxMessage, InboxOutcome, Resource, RouteStats

__all__ = ["MIGRATIONS", "PostgresLedger"]

# Version N of the schema is MIGRATIONS[:N]. Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
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
    ),
    # 2: the inbox of the http trigger (messages accepted over HTTP, claimed by a daemon)
    (
        """
        CREATE TABLE inbox (
            message_id    text PRIMARY KEY,
            seq           bigserial NOT NULL,
            body          bytea NOT NULL,
            state         text NOT NULL,
            received_at   timestamptz NOT NULL,
            deliveries    integer NOT NULL DEFAULT 0,
            owner         text,
            lease_expires timestamptz,
            settled_at    timestamptz,
            reason        text
        )
        """,
        "CREATE INDEX inbox_pending ON inbox (state, received_at, seq)",
    ),
)

# pg_advisory_xact_lock key for migrations ("SENDER" in ASCII); advisory locks are per database
_MIGRATION_LOCK = 0x53454E444552

# $1 is the injected clock's time, or NULL for the server's transaction time
_NOW = "COALESCE($1::timestamptz, now())"

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
_INBOX_COLUMNS = (
    "message_id, seq, body, state, received_at, deliveries, owner, lease_expires, settled_at, "
    "reason"
)
_POOL_KEYS = {"pool_min_size", "pool_max_size"}


def _route_stats(data: dict[str, Any]) -> RouteStats:
    known = RouteStats.__dataclass_fields__
    return RouteStats(**{k: int(v) for k, v in data.items() if k in known})


def _batch(row: asyncpg.Record) -> BatchRecord:
    objects = row["objects"]
    return BatchRecord(
        batch_id=row["batch_id"],
        dataset=row["dataset"],
        uri=row["uri"],
        state=BatchState(row["state"]),
        message=row["message"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        runs=row["runs"],
        routes={name: _route_stats(stats) for name, stats in row["routes"].items()},
        objects=None
        if objects is None
        else [ObjectInfo(o["uri"], o["size"], o.get("version", "")) for o in objects],
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
    )


def _chunk(row: asyncpg.Record) -> ChunkRecord:
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
        updated_at=row["updated_at"],
    )


def _inbox(row: asyncpg.Record) -> InboxMessage:
    return InboxMessage(
        message_id=row["message_id"],
        body=bytes(row["body"]),
        state=row["state"],
        received_at=row["received_at"],
        deliveries=row["deliveries"],
        owner=row["owner"],
        lease_expires=row["lease_expires"],
        settled_at=row["settled_at"],
        reason=row["reason"],
    )


def _affected(status: str) -> int:
    """Rows touched, from a command status such as ``"UPDATE 1"`` or ``"DELETE 0"``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, through orjson
    await conn.set_type_codec("jsonb", encoder=_json, decoder=orjson.loads, schema="pg_catalog")


class PostgresLedger(Resource):
    """The ``Ledger`` port on PostgreSQL (see the module docstring).

    ``dsn`` is a ``postgresql://`` URL. The pool opens (and the schema migrates) on
    ``open()``, ``async with``, or lazily on the first call. ``clock`` (aware UTC datetimes)
    replaces the server's clock, for tests only: replicas should share the server's.
    """

    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 30.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max(min_size, max_size)
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._where = mask_url(dsn)

    @classmethod
    def from_url(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> PostgresLedger:
        """``postgresql://user[:password]@host[:port]/db[?pool_max_size=10&...]``."""
        parts = urlsplit(url)
        if parts.scheme not in cls.schemes or not parts.hostname:
            raise LedgerError(
                f"not a PostgreSQL ledger URL: {mask_url(url)!r} "
                "(use postgresql://user@host:5432/db)"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        sizes = {k: v for k, v in query if k in _POOL_KEYS}
        rest = [(k, v) for k, v in query if k not in _POOL_KEYS]
        try:
            min_size = int(sizes.get("pool_min_size", 1))
            max_size = int(sizes.get("pool_max_size", 10))
        except ValueError:
            raise LedgerError(f"{mask_url(url)}: pool sizes must be whole numbers") from None
        if min_size < 0 or max_size < 1:
            raise LedgerError(f"{mask_url(url)}: pool_max_size must be >= 1")
        dsn = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(dsn, min_size=min_size, max_size=max_size, clock=clock)

    def __repr__(self) -> str:
        return f"PostgresLedger({self._where!r})"

    def _now(self) -> datetime | None:
        if self._clock is None:
            return None
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the pool and migrate the schema; a no-op when already open."""
        await self._ensure_pool()

    _on_enter = open  # async with opens the ledger

    async def aclose(self) -> None:
        """Close the pool (waiting briefly for calls under way); idempotent."""
        self._closed = True
        async with self._opening:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self.command_timeout_s)
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                pool.terminate()

    async def _ensure_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise AdapterClosed(f"ledger {self._where}")
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise AdapterClosed(f"ledger {self._where}")
            if self._pool is None:
                self._pool = await self._create_pool()
            return self._pool

    async def _create_pool(self) -> asyncpg.Pool:
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                init=_init_connection,
                timeout=self.connect_timeout_s,
                command_timeout=self.command_timeout_s,
                server_settings={"application_name": "integration-sender"},
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise LedgerError(f"cannot open ledger {self._where}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
                raise LedgerError(f"cannot migrate ledger {self._where}: {exc}") from exc
            raise
        return pool

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        # the common case, every replica at the current version, takes no lock
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            current = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            if current == len(MIGRATIONS):
                return
        async with conn.transaction():
            # one migrator at a time; the others wait here, then find nothing left to do
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            applied = {
                r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
            }
            newest = max(applied, default=0)
            if newest > len(MIGRATIONS):
                raise LedgerError(
                    f"ledger {self._where} has schema version {newest}, newer than this "
                    f"sender understands ({len(MIGRATIONS)}): upgrade integration-sender"
                )
            for number, steps in enumerate(MIGRATIONS, start=1):
                if number in applied:
                    continue
                for statement in steps:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside one transaction; driver errors become ``LedgerError``."""
        pool = await self._ensure_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                yield conn
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if self._closed:
                raise AdapterClosed(f"ledger {self._where}") from exc
            raise LedgerError(f"ledger {self._where}: {exc}") from exc

    # -- the Ledger port -----------------------------------------------------------------

    async def start_batch(self, message: TriggerMessage) -> BatchRecord:
        """Create the batch (running, runs 1), or run an existing one again: ``runs`` + 1,
        ``error`` and ``finished_at`` cleared, message/uri/dataset from ``message``; its
        ``created_at``, chunks, objects and lease are kept."""
        async with self._transaction() as conn:
            await conn.execute(
                f"""
                INSERT INTO batches (batch_id, dataset, uri, state, message, created_at,
                                     started_at, runs)
                VALUES ($2, $3, $4, $5, $6, {_NOW}, {_NOW}, 1)
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
                self._now(),
                message.batch_id,
                message.dataset,
                message.uri,
                BatchState.RUNNING.value,
                message.model_dump(mode="json"),
            )
            row = await conn.fetchrow(f"{_BATCH_SELECT} WHERE b.batch_id = $1", message.batch_id)
        assert row is not None
        return _batch(row)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(f"{_BATCH_SELECT} WHERE b.batch_id = $1", batch_id)
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
        where: list[str] = []
        args: list[Any] = []
        if dataset is not None:
            args.append(dataset)
            where.append(f"b.dataset = ${len(args)}")
        if state is not None:
            args.append(BatchState(state).value)
            where.append(f"b.state = ${len(args)}")
        if since is not None:
            args.append(since if since.tzinfo is not None else since.replace(tzinfo=UTC))
            where.append(f"b.created_at >= ${len(args)}")
        sql = _BATCH_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(max(0, limit))
        # seq breaks ties between batches created within the same microsecond
        sql += f" ORDER BY b.created_at DESC, b.seq DESC LIMIT ${len(args)}"
        async with self._transaction() as conn:
            rows = await conn.fetch(sql, *args)
        return [_batch(row) for row in rows]

    async def set_objects(self, batch_id: str, objects: Sequence[ObjectInfo]) -> None:
        """Record the source's objects as first read; ``LedgerError`` for an unknown batch."""
        body = [{"uri": o.uri, "size": o.size, "version": o.version} for o in objects]
        async with self._transaction() as conn:
            status = await conn.execute(
                "UPDATE batches SET objects = $1 WHERE batch_id = $2", body, batch_id
            )
        if _affected(status) == 0:
            raise LedgerError(f"unknown batch {batch_id!r}")

    async def finish_batch(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> None:
        """Store the outcome, the routes' reconciliation and ``finished_at``; ``LedgerError``
        for an unknown batch."""
        body = {name: stats.to_dict() for name, stats in routes.items()}
        async with self._transaction() as conn:
            status = await conn.execute(
                f"""
                UPDATE batches SET state = $2, routes = $3, error = $4, finished_at = {_NOW}
                WHERE batch_id = $5
                """,
                self._now(),
                BatchState(state).value,
                body,
                error,
                batch_id,
            )
        if _affected(status) == 0:
            raise LedgerError(f"unknown batch {batch_id!r}")

    async def chunks(self, batch_id: str, route: str | None = None) -> list[ChunkRecord]:
        """The batch's chunks ordered by route, then chunk id in natural order."""
        sql = f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE batch_id = $1"
        args: list[str] = [batch_id]
        if route is not None:
            sql += " AND route = $2"
            args.append(route)
        async with self._transaction() as conn:
            rows = await conn.fetch(sql, *args)
        records = [_chunk(row) for row in rows]
        # natural order is done here: no SQL collation sorts dotted numbers
        records.sort(key=lambda c: (c.route, chunk_sort_key(c.chunk_id)))
        return records

    async def save_chunks(self, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace these rows (keyed by batch, route, chunk id) in one transaction;
        ``updated_at`` becomes now. ``LedgerError``, writing nothing, if a row names an
        unknown batch."""
        if not records:
            return
        now = self._now()
        rows = [
            (
                now,
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
            )
            for c in records
        ]
        try:
            async with self._transaction() as conn:
                await conn.executemany(
                    f"""
                    INSERT INTO chunks ({_CHUNK_COLUMNS})
                    VALUES ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, {_NOW})
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
                VALUES ($2, $3, {_NOW} + $4::interval)
                ON CONFLICT (batch_id) DO UPDATE SET
                    owner = excluded.owner, expires = excluded.expires
                WHERE l.owner = excluded.owner OR l.expires <= {_NOW}
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
                    VALUES ($2, $3, {_NOW}, $4, $5)
                    """,
                    self._now(),
                    batch_id,
                    who,
                    selectors,
                    outcome,
                )
        except LedgerError as exc:
            if isinstance(exc.__cause__, asyncpg.ForeignKeyViolationError):
                raise LedgerError(f"unknown batch {batch_id!r}") from exc.__cause__
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

    # -- the inbox (http trigger) --------------------------------------------------------

    async def enqueue_message(self, message_id: str, body: bytes) -> bool:
        """Store a pending message; False if one with this id is already pending. A settled
        one is queued again as the newest (see the ``Ledger`` port)."""
        async with self._transaction() as conn:
            queued = await conn.fetchval(
                f"""
                INSERT INTO inbox AS i (message_id, body, state, received_at)
                VALUES ($2, $3, 'pending', {_NOW})
                ON CONFLICT (message_id) DO UPDATE SET
                    seq = nextval(pg_get_serial_sequence('inbox', 'seq')),
                    body = excluded.body, state = 'pending', received_at = excluded.received_at,
                    deliveries = 0, owner = NULL, lease_expires = NULL, settled_at = NULL,
                    reason = NULL
                WHERE i.state <> 'pending'
                RETURNING true
                """,
                self._now(),
                message_id,
                bytes(body),
            )
        return bool(queued)

    async def claim_messages(self, owner: str, limit: int, lease_s: float) -> list[InboxMessage]:
        """Lease up to ``limit`` free pending messages to ``owner``, oldest first. Rows another
        replica is claiming right now are skipped, not waited for (``SKIP LOCKED``)."""
        if limit <= 0:
            return []
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"""
                WITH free AS (
                    SELECT message_id FROM inbox
                    WHERE state = 'pending'
                      AND (lease_expires IS NULL OR lease_expires <= {_NOW})
                    ORDER BY received_at, seq
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE inbox AS i
                SET owner = $3, lease_expires = {_NOW} + $4::interval,
                    deliveries = i.deliveries + 1
                FROM free WHERE i.message_id = free.message_id
                RETURNING {", ".join(f"i.{c.strip()}" for c in _INBOX_COLUMNS.split(","))}
                """,
                self._now(),
                limit,
                owner,
                timedelta(seconds=lease_s),
            )
        rows = sorted(rows, key=lambda r: (r["received_at"], r["seq"]))
        return [_inbox(row) for row in rows]

    async def extend_message(self, message_id: str, owner: str, lease_s: float) -> bool:
        """Renew ``owner``'s claim; False when it no longer holds the message."""
        async with self._transaction() as conn:
            status = await conn.execute(
                f"""
                UPDATE inbox SET lease_expires = {_NOW} + $4::interval
                WHERE message_id = $2 AND state = 'pending' AND owner = $3
                """,
                self._now(),
                message_id,
                owner,
                timedelta(seconds=lease_s),
            )
        return _affected(status) > 0

    async def settle_message(
        self, message_id: str, outcome: InboxOutcome, reason: str | None = None
    ) -> None:
        """``done``/``rejected`` for good, or ``released`` back to pending."""
        if outcome not in ("done", "rejected", "released"):
            raise ValueError(f"unknown inbox outcome {outcome!r}")
        async with self._transaction() as conn:
            if outcome == "released":
                exists = await conn.fetchval(
                    """
                    WITH released AS (
                        UPDATE inbox SET owner = NULL, lease_expires = NULL
                        WHERE message_id = $1 AND state = 'pending'
                    )
                    SELECT EXISTS (SELECT 1 FROM inbox WHERE message_id = $1)
                    """,
                    message_id,
                )
            else:
                status = await conn.execute(
                    f"""
                    UPDATE inbox SET state = $2, settled_at = {_NOW}, reason = $3,
                        owner = NULL, lease_expires = NULL
                    WHERE message_id = $4
                    """,
                    self._now(),
                    outcome,
                    reason,
                    message_id,
                )
                exists = _affected(status) > 0
        if not exists:
            raise LedgerError(f"unknown inbox message {message_id!r}")

    async def get_message(self, message_id: str) -> InboxMessage | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE message_id = $1", message_id
            )
        return None if row is None else _inbox(row)
