"""Batches and chunks as JSON: one shape for ``sender status --json`` and ``/v1/batches``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .ports import BatchRecord, ChunkRecord

__all__ = ["batch_json", "chunk_json", "duration_s"]


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
