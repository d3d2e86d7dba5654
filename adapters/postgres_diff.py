"""Diff sync's state in the PostgreSQL ledger: the ``DiffStore`` port as a mixin of
``PostgresLedger`` (see ``sender.diff`` for what the baseline and plans are).

Keys and hashes are ``bytea``, compared bytewise like the planner sorts them. Plans are
copied in with ``COPY`` (``copy_records_to_table``): a million-row plan is one round trip
per page, not one per row. Every replica reads and commits the same baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from sender.ports import PlanRow
from sender_adapters._sql import PLAN_COLUMNS, Migration, plan_page_sql, plan_row
from sender_adapters.postgres_store import PostgresStore, affected

__all__ = ["DIFF_MIGRATION", "PostgresDiff"]

# schema version 3 of the PostgreSQL ledger: diff sync's baselines and plans
DIFF_MIGRATION: Migration = (
    """
    CREATE TABLE diff_baseline (
        dataset text NOT NULL,
        route   text NOT NULL,
        key     bytea NOT NULL,
        hash    bytea NOT NULL,
        PRIMARY KEY (dataset, route, key)
    )
    """,
    """
    CREATE TABLE diff_plans (
        batch_id text NOT NULL,
        route    text NOT NULL,
        kind     text NOT NULL,
        ordinal  bigint,
        seq      bigint,
        key      bytea,
        hash     bytea,
        reason   text
    )
    """,
    "CREATE INDEX diff_plans_ordinal ON diff_plans (batch_id, route, ordinal)",
    "CREATE INDEX diff_plans_seq ON diff_plans (batch_id, route, seq)",
    """
    CREATE TABLE diff_plan_state (
        batch_id text NOT NULL,
        route    text NOT NULL,
        finished boolean NOT NULL DEFAULT false,
        PRIMARY KEY (batch_id, route)
    )
    """,
)

_COLUMNS = ("batch_id", "route", *PLAN_COLUMNS)


class PostgresDiff(PostgresStore):
    """The ``DiffStore`` port on the ``diff_*`` tables (see the ``DiffStore`` Protocol)."""

    async def baseline_page(
        self, dataset: str, route: str, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "SELECT key, hash FROM diff_baseline WHERE dataset = $1 AND route = $2"
                " AND key > $3 ORDER BY key LIMIT $4",
                dataset,
                route,
                b"" if after is None else after,
                limit,
            )
        return [(bytes(row["key"]), bytes(row["hash"])) for row in rows]

    async def start_plan(self, batch_id: str, route: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "DELETE FROM diff_plans WHERE batch_id = $1 AND route = $2", batch_id, route
            )
            await conn.execute(
                "INSERT INTO diff_plan_state (batch_id, route, finished) VALUES ($1, $2, false)"
                " ON CONFLICT (batch_id, route) DO UPDATE SET finished = false",
                batch_id,
                route,
            )

    async def save_plan(self, batch_id: str, route: str, rows: Sequence[PlanRow]) -> None:
        if not rows:
            return
        records = [
            (batch_id, route, r.kind, r.ordinal, r.seq, r.key, r.hash, r.reason) for r in rows
        ]
        async with self._transaction() as conn:
            await conn.copy_records_to_table("diff_plans", records=records, columns=_COLUMNS)

    async def finish_plan(self, batch_id: str, route: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE diff_plan_state SET finished = true WHERE batch_id = $1 AND route = $2",
                batch_id,
                route,
            )

    async def has_plan(self, batch_id: str, route: str) -> bool:
        async with self._transaction() as conn:
            finished = await conn.fetchval(
                "SELECT finished FROM diff_plan_state WHERE batch_id = $1 AND route = $2",
                batch_id,
                route,
            )
        return bool(finished)

    async def plan_page(
        self, batch_id: str, route: str, after_ordinal: int, limit: int
    ) -> list[PlanRow]:
        return await self._plan_page("records", batch_id, route, after_ordinal, limit)

    async def tombstone_page(
        self, batch_id: str, route: str, after_seq: int, limit: int
    ) -> list[PlanRow]:
        return await self._plan_page("tombstones", batch_id, route, after_seq, limit)

    async def _plan_page(
        self, which: str, batch_id: str, route: str, after: int, limit: int
    ) -> list[PlanRow]:
        async with self._transaction() as conn:
            sql = plan_page_sql(which, lambda n: f"${n}")
            rows = await conn.fetch(sql, batch_id, route, after, limit)
        return [plan_row(row) for row in rows]

    async def commit_baseline(
        self,
        dataset: str,
        route: str,
        batch_id: str,
        delivered: Sequence[tuple[int, int]],
        *,
        replace: bool = False,
    ) -> int:
        moved = 0
        async with self._transaction() as conn:
            if replace:
                await conn.execute(
                    "DELETE FROM diff_baseline WHERE dataset = $1 AND route = $2", dataset, route
                )
            for start, end in delivered:
                args = (dataset, route, batch_id, start, end)
                moved += affected(
                    await conn.execute(
                        "INSERT INTO diff_baseline (dataset, route, key, hash)"
                        " SELECT $1, $2, key, hash FROM diff_plans WHERE batch_id = $3"
                        " AND route = $2 AND kind = 'send' AND seq >= $4 AND seq < $5"
                        " ON CONFLICT (dataset, route, key) DO UPDATE SET hash = excluded.hash",
                        *args,
                    )
                )
                moved += affected(
                    await conn.execute(
                        "DELETE FROM diff_baseline WHERE dataset = $1 AND route = $2 AND key IN"
                        " (SELECT key FROM diff_plans WHERE batch_id = $3 AND route = $2"
                        " AND kind = 'delete' AND seq >= $4 AND seq < $5)",
                        *args,
                    )
                )
        return moved
