"""Diff sync's state in the SQLite ledger: the ``DiffStore`` port as a mixin of
``SqliteLedger`` (see ``sender.diff`` for what the baseline and plans are).

The baseline is one row per (dataset, route, key) holding a 16-byte hash, ``WITHOUT ROWID``
so the key is the table's own b-tree order: pages are read in key order, which is what the
planner's sorted merge needs. A plan is written once per batch and route, then only read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sender.ports import PlanRow
from sender_adapters._sql import PLAN_COLUMNS, Migration, plan_page_sql, plan_row
from sender_adapters.sqlite_store import SqliteStore

__all__ = ["DIFF_MIGRATION", "SqliteDiff"]

# schema version 3 of the SQLite ledger: diff sync's baselines and plans
DIFF_MIGRATION: Migration = (
    """
    CREATE TABLE diff_baseline (
        dataset TEXT NOT NULL,
        route   TEXT NOT NULL,
        key     BLOB NOT NULL,
        hash    BLOB NOT NULL,
        PRIMARY KEY (dataset, route, key)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE diff_plans (
        batch_id TEXT NOT NULL,
        route    TEXT NOT NULL,
        kind     TEXT NOT NULL,
        ordinal  INTEGER,
        seq      INTEGER,
        key      BLOB,
        hash     BLOB,
        reason   TEXT
    )
    """,
    "CREATE INDEX diff_plans_ordinal ON diff_plans (batch_id, route, ordinal)",
    "CREATE INDEX diff_plans_seq ON diff_plans (batch_id, route, seq)",
    """
    CREATE TABLE diff_plan_state (
        batch_id TEXT NOT NULL,
        route    TEXT NOT NULL,
        finished INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (batch_id, route)
    )
    """,
)


class SqliteDiff(SqliteStore):
    """The ``DiffStore`` port on the ``diff_*`` tables (see the ``DiffStore`` Protocol)."""

    async def baseline_page(
        self, dataset: str, route: str, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        def run(conn: sqlite3.Connection) -> list[tuple[bytes, bytes]]:
            rows = conn.execute(
                "SELECT key, hash FROM diff_baseline WHERE dataset = ? AND route = ?"
                " AND key > ? ORDER BY key LIMIT ?",
                (dataset, route, b"" if after is None else after, limit),
            )
            return [(bytes(key), bytes(digest)) for key, digest in rows]

        return await self._call(run)

    async def start_plan(self, batch_id: str, route: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM diff_plans WHERE batch_id = ? AND route = ?", (batch_id, route)
            )
            conn.execute(
                "INSERT INTO diff_plan_state (batch_id, route, finished) VALUES (?, ?, 0)"
                " ON CONFLICT (batch_id, route) DO UPDATE SET finished = 0",
                (batch_id, route),
            )

        await self._call(run, write=True)

    async def save_plan(self, batch_id: str, route: str, rows: Sequence[PlanRow]) -> None:
        values = [
            (batch_id, route, r.kind, r.ordinal, r.seq, r.key, r.hash, r.reason) for r in rows
        ]

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                f"INSERT INTO diff_plans (batch_id, route, {', '.join(PLAN_COLUMNS)})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

        await self._call(run, write=True)

    async def finish_plan(self, batch_id: str, route: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE diff_plan_state SET finished = 1 WHERE batch_id = ? AND route = ?",
                (batch_id, route),
            )

        await self._call(run, write=True)

    async def has_plan(self, batch_id: str, route: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT finished FROM diff_plan_state WHERE batch_id = ? AND route = ?",
                (batch_id, route),
            ).fetchone()
            return bool(row and row["finished"])

        return await self._call(run)

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
        sql = plan_page_sql(which, lambda _n: "?")

        def run(conn: sqlite3.Connection) -> list[PlanRow]:
            return [plan_row(row) for row in conn.execute(sql, (batch_id, route, after, limit))]

        return await self._call(run)

    async def commit_baseline(
        self,
        dataset: str,
        route: str,
        batch_id: str,
        delivered: Sequence[tuple[int, int]],
        *,
        replace: bool = False,
    ) -> int:
        def run(conn: sqlite3.Connection) -> int:
            if replace:
                conn.execute(
                    "DELETE FROM diff_baseline WHERE dataset = ? AND route = ?", (dataset, route)
                )
            moved = 0
            for start, end in delivered:
                plan = (batch_id, route, start, end)
                moved += conn.execute(
                    "INSERT INTO diff_baseline (dataset, route, key, hash)"
                    " SELECT ?, ?, key, hash FROM diff_plans WHERE batch_id = ? AND route = ?"
                    " AND kind = 'send' AND seq >= ? AND seq < ?"
                    " ON CONFLICT (dataset, route, key) DO UPDATE SET hash = excluded.hash",
                    (dataset, route, *plan),
                ).rowcount
                moved += conn.execute(
                    "DELETE FROM diff_baseline WHERE dataset = ? AND route = ? AND key IN"
                    " (SELECT key FROM diff_plans WHERE batch_id = ? AND route = ?"
                    " AND kind = 'delete' AND seq >= ? AND seq < ?)",
                    (dataset, route, *plan),
                ).rowcount
            return moved

        return await self._call(run, write=True)
