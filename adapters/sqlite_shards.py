"""Sharded batches in the SQLite ledger: the ``Shards`` port on the ``shards`` table, as a
mixin of ``SqliteLedger``.

One writer at a time per file (``BEGIN IMMEDIATE``), so ``finish_shard``'s "was this the
last one" (mark the shard, then count those not complete) is decided in one transaction
that nobody else writes during.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from sender.ports import RouteStats
from sender.shard_ports import ShardEnd, ShardRecord, no_shard, plan_of
from sender_adapters._sql import Migration, routes_value, unknown_batch
from sender_adapters._sql_shards import SHARD_SELECT, shard_record
from sender_adapters.sqlite_store import SqliteStore, dt, ts

__all__ = ["SHARDS_MIGRATION", "SqliteShards"]

# a schema step of the SQLite ledger: sharded batches' plans
SHARDS_MIGRATION: Migration = (
    """
    CREATE TABLE shards (
        batch_id     TEXT NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
        shard        INTEGER NOT NULL,
        first_object INTEGER NOT NULL,
        objects      INTEGER NOT NULL,
        state        TEXT NOT NULL DEFAULT 'pending',
        routes       TEXT NOT NULL DEFAULT '{}',
        error        TEXT,
        runs         INTEGER NOT NULL DEFAULT 0,
        published    INTEGER NOT NULL DEFAULT 0,
        started_at   TEXT,
        finished_at  TEXT,
        PRIMARY KEY (batch_id, shard)
    )
    """,
)


def _shard(row: sqlite3.Row) -> ShardRecord:
    return shard_record(row, json=orjson.loads, time=dt)


def _plan(conn: sqlite3.Connection, batch_id: str) -> list[ShardRecord]:
    sql = f"{SHARD_SELECT} WHERE s.batch_id = ? ORDER BY s.shard"
    return [_shard(row) for row in conn.execute(sql, (batch_id,))]


class SqliteShards(SqliteStore):
    """The ``Shards`` port on the store's ``shards`` table (see the ``Shards`` Protocol)."""

    async def plan_shards(
        self, batch_id: str, sizes: Sequence[int], *, replace: bool = False
    ) -> list[ShardRecord]:
        rows = [(s.batch_id, s.shard, s.first_object, s.objects) for s in plan_of(batch_id, sizes)]

        def run(conn: sqlite3.Connection) -> list[ShardRecord]:
            if (
                conn.execute("SELECT 1 FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
                is None
            ):
                raise unknown_batch(batch_id)
            if replace:
                conn.execute("DELETE FROM shards WHERE batch_id = ?", (batch_id,))
            elif conn.execute("SELECT 1 FROM shards WHERE batch_id = ?", (batch_id,)).fetchone():
                return _plan(conn, batch_id)
            conn.executemany(
                "INSERT INTO shards (batch_id, shard, first_object, objects) VALUES (?, ?, ?, ?)",
                rows,
            )
            return _plan(conn, batch_id)

        return await self._call(run, write=True)

    async def shards(self, batch_id: str) -> list[ShardRecord]:
        return await self._call(lambda conn: _plan(conn, batch_id))

    async def set_shards_published(self, batch_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE shards SET published = 1 WHERE batch_id = ?", (batch_id,))

        await self._call(run, write=True)

    async def start_shard(self, batch_id: str, shard: int, owner: str | None = None) -> ShardRecord:
        now = ts(self._now())

        def run(conn: sqlite3.Connection) -> ShardRecord:
            cursor = conn.execute(
                """
                UPDATE shards SET runs = runs + 1, started_at = ?, sent_by = ?,
                    state = CASE state WHEN 'failed' THEN 'pending' ELSE state END,
                    error = CASE state WHEN 'failed' THEN NULL ELSE error END
                WHERE batch_id = ? AND shard = ?
                """,
                (now, owner, batch_id, shard),
            )
            if cursor.rowcount == 0:
                raise no_shard(batch_id, shard)
            started = next(s for s in _plan(conn, batch_id) if s.shard == shard)
            if started.runs > 1:
                conn.execute("UPDATE batches SET runs = runs + 1 WHERE batch_id = ?", (batch_id,))
            return started

        return await self._call(run, write=True)

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
        now = ts(self._now())
        body = orjson.dumps(routes_value(routes)).decode()

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT state FROM shards WHERE batch_id = ? AND shard = ?", (batch_id, shard)
            ).fetchone()
            if row is None:
                raise no_shard(batch_id, shard)
            if row["state"] == "complete":
                return False
            conn.execute(
                "UPDATE shards SET state = ?, routes = ?, error = ?, finished_at = ? "
                "WHERE batch_id = ? AND shard = ?",
                (state, body, error, now, batch_id, shard),
            )
            left = conn.execute(
                "SELECT count(*) FROM shards WHERE batch_id = ? AND state != 'complete'",
                (batch_id,),
            ).fetchone()[0]
            return state == "complete" and left == 0

        return await self._call(run, write=True)
