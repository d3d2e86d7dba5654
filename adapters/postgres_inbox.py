"""The inbox of the PostgreSQL ledger: the ``Inbox`` port (the ``http`` trigger's durable
queue) on the ``inbox`` table, as a mixin of ``PostgresLedger``.

Several replicas share one inbox: ``claim_messages`` picks rows with ``FOR UPDATE SKIP
LOCKED``, so replicas claiming at once each get different messages without waiting on each
other. ``seq`` orders messages received within the same microsecond.
"""

from __future__ import annotations

from datetime import timedelta

from sender.errors import LedgerError
from sender.ports import InboxMessage, InboxOutcome
from sender_adapters._sql import INBOX_COLUMNS, Migration, check_outcome, inbox_message
from sender_adapters.postgres_store import NOW, PostgresStore, affected

__all__ = ["INBOX_MIGRATION", "PostgresInbox"]

# schema version 2 of the PostgreSQL ledger: the inbox of the http trigger
INBOX_MIGRATION: Migration = (
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
)

_COLUMNS = ", ".join(("seq", *INBOX_COLUMNS))
_RETURNING = ", ".join(f"i.{c}" for c in ("seq", *INBOX_COLUMNS))


class PostgresInbox(PostgresStore):
    """The ``Inbox`` port on the database's ``inbox`` table (see the ``Inbox`` Protocol)."""

    async def enqueue_message(self, message_id: str, body: bytes) -> bool:
        """Store a pending message; False if one with this id is already pending. A settled
        one is queued again as the newest (see the ``Inbox`` port)."""
        async with self._transaction() as conn:
            queued = await conn.fetchval(
                f"""
                INSERT INTO inbox AS i (message_id, body, state, received_at)
                VALUES ($2, $3, 'pending', {NOW})
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
                      AND (lease_expires IS NULL OR lease_expires <= {NOW})
                    ORDER BY received_at, seq
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE inbox AS i
                SET owner = $3, lease_expires = {NOW} + $4::interval,
                    deliveries = i.deliveries + 1
                FROM free WHERE i.message_id = free.message_id
                RETURNING {_RETURNING}
                """,
                self._now(),
                limit,
                owner,
                timedelta(seconds=lease_s),
            )
        rows = sorted(rows, key=lambda r: (r["received_at"], r["seq"]))
        return [inbox_message(row) for row in rows]

    async def extend_message(self, message_id: str, owner: str, lease_s: float) -> bool:
        """Renew ``owner``'s claim; False when it no longer holds the message."""
        async with self._transaction() as conn:
            status = await conn.execute(
                f"""
                UPDATE inbox SET lease_expires = {NOW} + $4::interval
                WHERE message_id = $2 AND state = 'pending' AND owner = $3
                """,
                self._now(),
                message_id,
                owner,
                timedelta(seconds=lease_s),
            )
        return affected(status) > 0

    async def settle_message(
        self, message_id: str, outcome: InboxOutcome, reason: str | None = None
    ) -> None:
        """``done``/``rejected`` for good, or ``released`` back to pending."""
        check_outcome(outcome)
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
                    UPDATE inbox SET state = $2, settled_at = {NOW}, reason = $3,
                        owner = NULL, lease_expires = NULL
                    WHERE message_id = $4
                    """,
                    self._now(),
                    outcome,
                    reason,
                    message_id,
                )
                exists = affected(status) > 0
        if not exists:
            raise LedgerError(f"unknown inbox message {message_id!r}")

    async def get_message(self, message_id: str) -> InboxMessage | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM inbox WHERE message_id = $1", message_id
            )
        return None if row is None else inbox_message(row)
