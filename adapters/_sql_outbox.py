"""What the SQLite and PostgreSQL outboxes share: the columns and how a row reads back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sender.ports import OutboxEvent

__all__ = ["OUTBOX_COLUMNS", "outbox_event"]

OUTBOX_COLUMNS = (
    "event_id",
    "destination",
    "batch_id",
    "type",
    "body",
    "state",
    "created_at",
    "attempts",
    "last_error",
    "next_attempt_at",
    "delivered_at",
    "owner",
    "lease_expires",
)


def _same(value: Any) -> Any:
    return value


def outbox_event(row: Any, *, time: Callable[[Any], Any] = _same) -> OutboxEvent:
    return OutboxEvent(
        event_id=row["event_id"],
        destination=row["destination"],
        batch_id=row["batch_id"],
        type=row["type"],
        body=bytes(row["body"]),
        state=row["state"],
        created_at=time(row["created_at"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        next_attempt_at=time(row["next_attempt_at"]),
        delivered_at=time(row["delivered_at"]),
        owner=row["owner"],
        lease_expires=time(row["lease_expires"]),
    )
