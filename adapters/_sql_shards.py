"""What both SQL ledgers share of the ``shards`` table (sharded batches, ``sender.shards``):
its columns, the select that joins each shard's lease, and the row mapping."""

from __future__ import annotations

from typing import Any

from sender.shard_ports import ShardRecord
from sender_adapters._sql import Decode, Migration, Row, route_stats

__all__ = ["SENT_BY_MIGRATION", "SHARD_COLUMNS", "SHARD_SELECT", "shard_record"]

# a schema step of both SQL ledgers, after their shards table: who last ran each shard, kept
# after its lease is released (sender status shows who delivered a finished shard)
SENT_BY_MIGRATION: Migration = ("ALTER TABLE shards ADD COLUMN sent_by TEXT",)


def _same(value: Any) -> Any:
    return value


SHARD_COLUMNS = (
    "batch_id",
    "shard",
    "first_object",
    "objects",
    "state",
    "routes",
    "error",
    "runs",
    "published",
    "started_at",
    "finished_at",
    "sent_by",
)

# a shard's lease is kept under "<batch id>/<shard>" (sender.shard_ports.shard_lease_key)
SHARD_SELECT = (
    f"SELECT {', '.join(f's.{c}' for c in SHARD_COLUMNS)}, "
    "l.owner AS lease_owner, l.expires AS lease_expires "
    "FROM shards AS s LEFT JOIN leases AS l ON l.batch_id = s.batch_id || '/' || s.shard"
)


def shard_record(row: Row, *, json: Decode = _same, time: Decode = _same) -> ShardRecord:
    """A ``SHARD_SELECT`` row as a record, with the dialect's decoders."""
    return ShardRecord(
        batch_id=row["batch_id"],
        shard=row["shard"],
        first_object=row["first_object"],
        objects=row["objects"],
        state=row["state"],
        routes={name: route_stats(stats) for name, stats in json(row["routes"]).items()},
        error=row["error"],
        runs=row["runs"],
        published=bool(row["published"]),
        started_at=time(row["started_at"]),
        finished_at=time(row["finished_at"]),
        owner=row["lease_owner"],
        lease_expires=time(row["lease_expires"]),
        sent_by=row["sent_by"],
    )
