"""Batches and chunks as JSON: one shape for ``sender status --json`` and ``/v1/batches``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .ports import BatchRecord, ChunkRecord, ShardRecord
from .shard_ports import shard_of

__all__ = ["batch_json", "chunk_json", "duration_s", "shard_json", "shard_progress"]


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def duration_s(record: BatchRecord) -> float | None:
    if record.started_at is None:
        return None
    end = record.finished_at
    if end is None:
        return None
    return round((end - record.started_at).total_seconds(), 3)


def chunk_json(chunk: ChunkRecord) -> dict[str, Any]:
    return {
        "route": chunk.route,
        "chunk": chunk.chunk_id,
        "kind": chunk.kind,
        "state": chunk.state.value,
        "records": chunk.records,
        "bytes": chunk.raw_size,
        "target": chunk.target,
        "attempts": chunk.attempts,
        "last_error": chunk.last_error,
        "idempotency_key": chunk.idempotency_key,
        "location": chunk.location,
        "sha256": chunk.checksum,
        "updated_at": _time(chunk.updated_at),
    }


def batch_json(
    record: BatchRecord, chunks: Sequence[ChunkRecord] | None = None, **extra: Any
) -> dict[str, Any]:
    totals = record.totals
    out: dict[str, Any] = {
        "batch_id": record.batch_id,
        "dataset": record.dataset,
        "uri": record.uri,
        "state": record.state.value,
        "created_at": _time(record.created_at),
        "started_at": _time(record.started_at),
        "finished_at": _time(record.finished_at),
        "duration_s": duration_s(record),
        "runs": record.runs,
        "error": record.error,
        "records": totals.to_dict(),
        "reconciled": totals.reconciled,
        "routes": {name: stats.to_dict() for name, stats in record.routes.items()},
        "lease_owner": record.lease_owner,
    }
    if chunks is not None:
        targets: dict[str, int] = {}
        for chunk in chunks:
            if chunk.target:
                targets[chunk.target] = targets.get(chunk.target, 0) + 1
        out["targets"] = targets
        out["chunks"] = [chunk_json(c) for c in chunks]
    out.update(extra)
    return out


def shard_progress(shard: ShardRecord, chunks: Sequence[ChunkRecord]) -> dict[str, int]:
    """What the ledger has of the shard's chunks so far: ``chunks`` known, ``settled`` of
    them (delivered, dead-lettered, skipped) and the records ``delivered``."""
    mine = [c for c in chunks if shard_of(c.chunk_id) == shard.shard and c.target != "(split)"]
    return {
        "chunks": len(mine),
        "settled": sum(c.state.terminal for c in mine),
        "delivered": sum(
            c.records for c in mine if c.state.value == "delivered" and c.kind == "data"
        ),
    }


def shard_json(
    shard: ShardRecord, chunks: Sequence[ChunkRecord], now: datetime | None = None
) -> dict[str, Any]:
    """One shard for ``sender status --json`` and ``GET /v1/batches/{id}``: its objects, its
    state, its ``owner`` (the replica holding its lease now, else the one that last ran it:
    who delivered a finished shard), who last ran it (``sent_by``), progress."""
    live = shard.owner is not None and (
        now is None or shard.lease_expires is None or shard.lease_expires > now
    )
    return {
        "shard": shard.shard,
        "first_object": shard.first_object,
        "objects": shard.objects,
        "state": shard.state,
        "owner": shard.owner if live else shard.sent_by,
        "lease_expires": _time(shard.lease_expires) if live else None,
        "sent_by": shard.sent_by,
        "runs": shard.runs,
        "started_at": _time(shard.started_at),
        "finished_at": _time(shard.finished_at),
        "error": shard.error,
        "progress": shard_progress(shard, chunks),
        "routes": {name: stats.to_dict() for name, stats in shard.routes.items()},
    }
