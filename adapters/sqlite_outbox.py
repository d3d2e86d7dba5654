"""The outbox of the SQLite ledger: the ``Outbox`` port (completion events) on the
``outbox`` table, as a mixin of ``SqliteLedger``.

``finish_batch_with_events`` updates the batch row and inserts the events in one
transaction; one writer at a time per file, so a claim (select the due rows, lease them)
inside one ``BEGIN IMMEDIATE`` transaction never gives one event to two owners.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import timedelta

import orjson

from sender.model import BatchState
from sender.ports import OutboxEvent, RouteStats
from sender_adapters._sql import Migration, routes_value, unknown_batch
from sender_adapters._sql_outbox import OUTBOX_COLUMNS, outbox_event
from sender_adapters.sqlite_store import SqliteStore, dt, ts

__all__ = ["OUTBOX_MIGRATION", "SqliteOutbox", "finish_row"]

# a schema step of the SQLite ledger: the outbox of completion events
OUTBOX_MIGRATION: Migration = (
    """
    CREATE TABLE outbox (
        event_id        TEXT NOT NULL,
        destination     TEXT NOT NULL,
        batch_id        TEXT NOT NULL,
        type            TEXT NOT NULL,
        body            BLOB NOT NULL,
        state           TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at TEXT NOT NULL,
        delivered_at    TEXT,
        owner           TEXT,
        lease_expires   TEXT,
        PRIMARY KEY (event_id, destination)
    )
    """,
    "CREATE INDEX outbox_due ON outbox (state, next_attempt_at)",
)

_SELECT = f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox"


def finish_row(
    conn: sqlite3.Connection,
    now: str,
    batch_id: str,
    state: BatchState,
    routes: dict[str, RouteStats],
    error: str | None,
) -> None:
    """The batch's end on its row (``Ledger.finish_batch``), inside the caller's transaction."""
    body = orjson.dumps(routes_value(routes)).decode()
    cursor = conn.execute(
        "UPDATE batches SET state = ?, routes = ?, error = ?, finished_at = ? WHERE batch_id = ?",
        (BatchState(state).value, body, error, now, batch_id),
    )
    if cursor.rowcount == 0:
        raise unknown_batch(batch_id)


class SqliteOutbox(SqliteStore):
    """The ``Outbox`` port on the store's ``outbox`` table (see the ``Outbox`` Protocol)."""

    async def finish_batch_with_events(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None,
        events: Sequence[OutboxEvent],
    ) -> None:
        now = ts(self._now())
        rows = [
            (e.event_id, e.destination, e.batch_id, e.type, bytes(e.body), now, now) for e in events
        ]

        def run(conn: sqlite3.Connection) -> None:
            finish_row(conn, now, batch_id, state, routes, error)
            conn.executemany(
                """
                INSERT INTO outbox
                    (event_id, destination, batch_id, type, body, state, created_at,
                     next_attempt_at)
                VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)
                ON CONFLICT (event_id, destination) DO NOTHING
                """,
                rows,
            )

        await self._call(run, write=True)

    async def claim_events(self, owner: str, limit: int, lease_s: float) -> list[OutboxEvent]:
        now = self._now()
        stamp, expires = ts(now), ts(now + timedelta(seconds=lease_s))

        def run(conn: sqlite3.Connection) -> list[OutboxEvent]:
            keys = conn.execute(
                """
                SELECT event_id, destination FROM outbox
                WHERE state = 'pending' AND next_attempt_at <= ?
                  AND (lease_expires IS NULL OR lease_expires <= ?)
                ORDER BY created_at, rowid LIMIT ?
                """,
                (stamp, stamp, max(0, limit)),
            ).fetchall()
            claimed = []
            for event_id, destination in keys:
                conn.execute(
                    "UPDATE outbox SET owner = ?, lease_expires = ? "
                    "WHERE event_id = ? AND destination = ?",
                    (owner, expires, event_id, destination),
                )
                row = conn.execute(
                    f"{_SELECT} WHERE event_id = ? AND destination = ?", (event_id, destination)
                ).fetchone()
                claimed.append(outbox_event(row, time=dt))
            return claimed

        return await self._call(run, write=True)

    async def settle_event(
        self,
        event_id: str,
        destination: str,
        *,
        error: str | None = None,
        retry_in_s: float = 0.0,
    ) -> None:
        now = self._now()
        if error is None:
            sql = (
                "UPDATE outbox SET state = 'delivered', delivered_at = ?, owner = NULL, "
                "lease_expires = NULL WHERE event_id = ? AND destination = ?"
            )
            args: tuple[object, ...] = (ts(now), event_id, destination)
        else:
            sql = (
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = ?, owner = NULL, lease_expires = NULL "
                "WHERE event_id = ? AND destination = ? AND state = 'pending'"
            )
            due = ts(now + timedelta(seconds=max(0.0, retry_in_s)))
            args = (error, due, event_id, destination)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(sql, args)

        await self._call(run, write=True)

    async def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        def run(conn: sqlite3.Connection) -> list[OutboxEvent]:
            rows = conn.execute(
                f"{_SELECT} WHERE state = 'pending' ORDER BY created_at, rowid LIMIT ?",
                (max(0, limit),),
            )
            return [outbox_event(row, time=dt) for row in rows]

        return await self._call(run)

    async def get_event(self, event_id: str, destination: str) -> OutboxEvent | None:
        def run(conn: sqlite3.Connection) -> OutboxEvent | None:
            row = conn.execute(
                f"{_SELECT} WHERE event_id = ? AND destination = ?", (event_id, destination)
            ).fetchone()
            return None if row is None else outbox_event(row, time=dt)

        return await self._call(run)
