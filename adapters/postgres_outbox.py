"""The outbox of the PostgreSQL ledger: the ``Outbox`` port (completion events) on the
``outbox`` table, as a mixin of ``PostgresLedger``.

``finish_batch_with_events`` updates the batch row and inserts its events in one
transaction. Several replicas share one outbox: ``claim_events`` picks due rows with ``FOR
UPDATE SKIP LOCKED`` and leases them, so replicas claiming at once each get other events and
an event whose owner died is claimed again once its lease runs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from sender.model import BatchState
from sender.ports import OutboxEvent, RouteStats
from sender_adapters._sql import Migration, routes_value, unknown_batch
from sender_adapters._sql_outbox import OUTBOX_COLUMNS, outbox_event
from sender_adapters.postgres_store import NOW, PostgresStore, affected

__all__ = ["OUTBOX_MIGRATION", "PostgresOutbox", "finish_row"]

# a schema step of the PostgreSQL ledger: the outbox of completion events
OUTBOX_MIGRATION: Migration = (
    """
    CREATE TABLE outbox (
        event_id        text NOT NULL,
        destination     text NOT NULL,
        seq             bigserial NOT NULL,
        batch_id        text NOT NULL,
        type            text NOT NULL,
        body            bytea NOT NULL,
        state           text NOT NULL,
        created_at      timestamptz NOT NULL,
        attempts        integer NOT NULL DEFAULT 0,
        last_error      text,
        next_attempt_at timestamptz NOT NULL,
        delivered_at    timestamptz,
        owner           text,
        lease_expires   timestamptz,
        PRIMARY KEY (event_id, destination)
    )
    """,
    "CREATE INDEX outbox_due ON outbox (state, next_attempt_at)",
)

_COLUMNS = ", ".join(OUTBOX_COLUMNS)
_RETURNING = ", ".join(f"o.{c}" for c in ("seq", *OUTBOX_COLUMNS))


async def finish_row(
    conn: asyncpg.Connection,
    now: object,
    batch_id: str,
    state: BatchState,
    routes: dict[str, RouteStats],
    error: str | None,
) -> None:
    """The batch's end on its row (``Ledger.finish_batch``), inside the caller's transaction;
    ``now`` is the ledger's clock (None: the database's)."""
    status = await conn.execute(
        f"""
        UPDATE batches SET state = $2, routes = $3, error = $4, finished_at = {NOW}
        WHERE batch_id = $5
        """,
        now,
        BatchState(state).value,
        routes_value(routes),
        error,
        batch_id,
    )
    if affected(status) == 0:
        raise unknown_batch(batch_id)


class PostgresOutbox(PostgresStore):
    """The ``Outbox`` port on the database's ``outbox`` table (see the ``Outbox`` Protocol)."""

    async def finish_batch_with_events(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None,
        events: Sequence[OutboxEvent],
    ) -> None:
        now = self._now()
        async with self._transaction() as conn:
            await finish_row(conn, now, batch_id, state, routes, error)
            for e in events:
                await conn.execute(
                    f"""
                    INSERT INTO outbox (event_id, destination, batch_id, type, body, state,
                        created_at, next_attempt_at)
                    VALUES ($2, $3, $4, $5, $6, 'pending', {NOW}, {NOW})
                    ON CONFLICT (event_id, destination) DO NOTHING
                    """,
                    now,
                    e.event_id,
                    e.destination,
                    e.batch_id,
                    e.type,
                    bytes(e.body),
                )

    async def claim_events(self, owner: str, limit: int, lease_s: float) -> list[OutboxEvent]:
        """Lease up to ``limit`` due, free events to ``owner``, oldest first; rows another
        replica is claiming right now are skipped, not waited for."""
        if limit <= 0:
            return []
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"""
                WITH free AS (
                    SELECT event_id, destination FROM outbox
                    WHERE state = 'pending' AND next_attempt_at <= {NOW}
                      AND (lease_expires IS NULL OR lease_expires <= {NOW})
                    ORDER BY created_at, seq
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE outbox AS o SET owner = $3, lease_expires = {NOW} + $4::interval
                FROM free
                WHERE o.event_id = free.event_id AND o.destination = free.destination
                RETURNING {_RETURNING}
                """,
                self._now(),
                limit,
                owner,
                timedelta(seconds=lease_s),
            )
        rows = sorted(rows, key=lambda r: (r["created_at"], r["seq"]))
        return [outbox_event(row) for row in rows]

    async def settle_event(
        self,
        event_id: str,
        destination: str,
        *,
        error: str | None = None,
        retry_in_s: float = 0.0,
    ) -> None:
        async with self._transaction() as conn:
            if error is None:
                await conn.execute(
                    f"""
                    UPDATE outbox SET state = 'delivered', delivered_at = {NOW}, owner = NULL,
                        lease_expires = NULL
                    WHERE event_id = $2 AND destination = $3
                    """,
                    self._now(),
                    event_id,
                    destination,
                )
            else:
                await conn.execute(
                    f"""
                    UPDATE outbox SET attempts = attempts + 1, last_error = $4,
                        next_attempt_at = {NOW} + $5::interval, owner = NULL,
                        lease_expires = NULL
                    WHERE event_id = $2 AND destination = $3 AND state = 'pending'
                    """,
                    self._now(),
                    event_id,
                    destination,
                    error,
                    timedelta(seconds=max(0.0, retry_in_s)),
                )

    async def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' "
                "ORDER BY created_at, seq LIMIT $1",
                max(0, limit),
            )
        return [outbox_event(row) for row in rows]

    async def get_event(self, event_id: str, destination: str) -> OutboxEvent | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM outbox WHERE event_id = $1 AND destination = $2",
                event_id,
                destination,
            )
        return None if row is None else outbox_event(row)
