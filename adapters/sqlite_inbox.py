"""The inbox of the SQLite ledger: the ``Inbox`` port (the ``http`` trigger's durable queue)
on the ``inbox`` table, as a mixin of ``SqliteLedger``.

One file has one writer at a time, so a claim (select the oldest free rows, then lease them)
runs inside one ``BEGIN IMMEDIATE`` transaction and two daemons on the same file never hold
the same message.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta

from sender.errors import LedgerError
from sender.ports import InboxMessage, InboxOutcome
from sender_adapters._sql import INBOX_COLUMNS, Migration, check_outcome, inbox_message
from sender_adapters.sqlite_store import SqliteStore, dt, ts

__all__ = ["INBOX_MIGRATION", "SqliteInbox"]

# schema version 2 of the SQLite ledger: the inbox of the http trigger
INBOX_MIGRATION: Migration = (
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
)


_SELECT = f"SELECT {', '.join(INBOX_COLUMNS)} FROM inbox WHERE message_id = ?"


def _message(row: sqlite3.Row) -> InboxMessage:
    return inbox_message(row, time=dt)


class SqliteInbox(SqliteStore):
    """The ``Inbox`` port on the store's ``inbox`` table (see the ``Inbox`` Protocol)."""

    async def enqueue_message(self, message_id: str, body: bytes) -> bool:
        """Store a pending message; False if one with this id is already pending. A settled
        one is queued again (see the ``Inbox`` port)."""
        now = ts(self._now())

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
        stamp, expires = ts(now), ts(now + timedelta(seconds=lease_s))

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
                row = conn.execute(_SELECT, (message_id,)).fetchone()
                claimed.append(_message(row))
            return claimed

        return await self._call(run, write=True)

    async def extend_message(self, message_id: str, owner: str, lease_s: float) -> bool:
        """Renew ``owner``'s claim; False when it no longer holds the message. A lease that
        expired but was not claimed by anyone else is still ``owner``'s to renew."""
        expires = ts(self._now() + timedelta(seconds=lease_s))

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
        check_outcome(outcome)
        now = ts(self._now())

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
            row = conn.execute(_SELECT, (message_id,)).fetchone()
            return None if row is None else _message(row)

        return await self._call(run)
