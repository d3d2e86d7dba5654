"""Sharded batches in the PostgreSQL ledger: the ``Shards`` port on the ``shards`` table, as
a mixin of ``PostgresLedger``.

Replicas finish shards of one batch at the same moment: ``finish_shard`` first locks the
batch's row (``SELECT ... FOR UPDATE``), so the calls for one batch take turns, and each
counts the shards left incomplete after its own update: of two replicas finishing the last
two shards at once, exactly one sees none left. ``plan_shards`` takes the same lock, so a
parent message delivered twice at once records one plan.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from sender.ports import RouteStats
from sender.shard_ports import ShardEnd, ShardRecord, no_shard, plan_of
from sender_adapters._sql import Migration, routes_value, unknown_batch
from sender_adapters._sql_shards import SHARD_SELECT, shard_record
from sender_adapters.postgres_store import NOW, PostgresStore, affected

__all__ = ["SHARDS_MIGRATION", "PostgresShards"]

# a schema step of the PostgreSQL ledger: sharded batches' plans
SHARDS_MIGRATION: Migration = (
    """
    CREATE TABLE shards (
        batch_id     text NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
        shard        integer NOT NULL,
        first_object integer NOT NULL,
        objects      integer NOT NULL,
        state        text NOT NULL DEFAULT 'pending',
        routes       jsonb NOT NULL DEFAULT '{}',
        error        text,
        runs         integer NOT NULL DEFAULT 0,
        published    boolean NOT NULL DEFAULT false,
        started_at   timestamptz,
        finished_at  timestamptz,
        PRIMARY KEY (batch_id, shard)
    )
    """,
)


async def _plan(conn: asyncpg.Connection, batch_id: str) -> list[ShardRecord]:
    rows = await conn.fetch(f"{SHARD_SELECT} WHERE s.batch_id = $1 ORDER BY s.shard", batch_id)
    return [shard_record(row) for row in rows]


async def _lock_batch(conn: asyncpg.Connection, batch_id: str) -> None:
    locked = await conn.fetchval(
        "SELECT true FROM batches WHERE batch_id = $1 FOR UPDATE", batch_id
    )
    if not locked:
        raise unknown_batch(batch_id)


class PostgresShards(PostgresStore):
    """The ``Shards`` port on the database's ``shards`` table (see the ``Shards`` Protocol)."""

    async def plan_shards(
        self, batch_id: str, sizes: Sequence[int], *, replace: bool = False
    ) -> list[ShardRecord]:
        rows = [(s.batch_id, s.shard, s.first_object, s.objects) for s in plan_of(batch_id, sizes)]
        async with self._transaction() as conn:
            await _lock_batch(conn, batch_id)
            if replace:
                await conn.execute("DELETE FROM shards WHERE batch_id = $1", batch_id)
            elif await conn.fetchval("SELECT true FROM shards WHERE batch_id = $1", batch_id):
                return await _plan(conn, batch_id)
            await conn.executemany(
                "INSERT INTO shards (batch_id, shard, first_object, objects) "
                "VALUES ($1, $2, $3, $4)",
                rows,
            )
            return await _plan(conn, batch_id)

    async def shards(self, batch_id: str) -> list[ShardRecord]:
        async with self._transaction() as conn:
            return await _plan(conn, batch_id)

    async def set_shards_published(self, batch_id: str) -> None:
        async with self._transaction() as conn:
            await conn.execute("UPDATE shards SET published = true WHERE batch_id = $1", batch_id)

    async def start_shard(self, batch_id: str, shard: int, owner: str | None = None) -> ShardRecord:
        async with self._transaction() as conn:
            status = await conn.execute(
                f"""
                UPDATE shards SET runs = runs + 1, started_at = {NOW}, sent_by = $4,
                    state = CASE state WHEN 'failed' THEN 'pending' ELSE state END,
                    error = CASE state WHEN 'failed' THEN NULL ELSE error END
                WHERE batch_id = $2 AND shard = $3
                """,
                self._now(),
                batch_id,
                shard,
                owner,
            )
            if affected(status) == 0:
                raise no_shard(batch_id, shard)
            started = next(s for s in await _plan(conn, batch_id) if s.shard == shard)
            if started.runs > 1:
                await conn.execute(
                    "UPDATE batches SET runs = runs + 1 WHERE batch_id = $1", batch_id
                )
            return started

    async def finish_shard(
        self,
        batch_id: str,
        shard: int,
        state: ShardEnd,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> bool:
        if state not in ("complete", "failed"):
            raise ValueError(f"unknown shard end {state!r}")
        async with self._transaction() as conn:
            await _lock_batch(conn, batch_id)  # finishers of one batch take turns here
            before = await conn.fetchval(
                "SELECT state FROM shards WHERE batch_id = $1 AND shard = $2", batch_id, shard
            )
            if before is None:
                raise no_shard(batch_id, shard)
            if before == "complete":
                return False
            await conn.execute(
                f"""
                UPDATE shards SET state = $2, routes = $3, error = $4, finished_at = {NOW}
                WHERE batch_id = $5 AND shard = $6
                """,
                self._now(),
                state,
                routes_value(routes),
                error,
                batch_id,
                shard,
            )
            left = await conn.fetchval(
                "SELECT count(*) FROM shards WHERE batch_id = $1 AND state != 'complete'",
                batch_id,
            )
            return state == "complete" and left == 0
