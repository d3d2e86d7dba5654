"""What every chaos scenario proves at the end, and the figures it reports.

``audit`` checks, from the ledger, the receivers and the dead-letter folder:

1. the batch is complete and every route reconciles: read = delivered + dead-lettered +
   rejected, also when summed over the chunk rows themselves (split chunks through their
   pieces);
2. a key always carried the same bytes, every time it was sent, to any receiver;
3. nothing is lost: every record is at a receiver (duplicates removed by Idempotency-Key) or
   in the dead-letter store;
4. no record arrived under two different keys (duplicates come only from resending the same
   chunk), unless the scenario says which records may (``allow_rekeyed``);
5. every chunk the ledger calls delivered to an HTTP target was accepted there with its key.

It returns the scenario's figures; ``record`` keeps them for ``var/chaos/figures.json``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sender.engine import SPLIT_TARGET
from sender.model import BatchState, ChunkState
from sender.ports import ChunkRecord, Ledger
from sender.testing.receiver import Receiver, decode_body, parse_records

__all__ = ["Figures", "audit", "dead_letter_records", "record", "recorded"]

_figures: list[Figures] = []


@dataclass
class Figures:
    """One scenario's outcome, as the README's Reliability table shows it."""

    scenario: str
    seed: int | None
    records: int
    delivered: int
    dead_lettered: int
    rejected: int
    duplicates: int  # records received more than once (the same chunk, the same key)
    lost: int
    requests: int
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record(figures: Figures) -> Figures:
    _figures.append(figures)
    return figures


def recorded() -> list[Figures]:
    return list(_figures)


def dead_letter_records(folder: Path) -> list[dict[str, Any]]:
    """Every data record in the dead-letter files under ``folder`` (by their sidecars)."""
    out: list[dict[str, Any]] = []
    if not folder.exists():
        return out
    for meta_path in sorted(folder.rglob("*.meta.json")):
        meta = orjson.loads(meta_path.read_bytes())
        if meta.get("kind", "data") != "data":
            continue
        payload = meta_path.with_name(meta_path.name.removesuffix(".meta.json")).read_bytes()
        codec = meta.get("codec", "none")
        payload = decode_body(payload, None if codec == "none" else codec)
        content_type = {"json": "application/json", "csv": "text/csv"}.get(meta["format"])
        out.extend(parse_records(payload, content_type))
    return out


def _leaves(chunks: Iterable[ChunkRecord]) -> list[ChunkRecord]:
    return [c for c in chunks if c.target != SPLIT_TARGET]


async def audit(
    scenario: str,
    *,
    ledger: Ledger,
    batch_id: str,
    expected_ids: set[str],
    receivers: Mapping[str, Receiver],
    dead_letter: Path,
    seed: int | None = None,
    allow_rekeyed: frozenset[str] = frozenset(),
    notes: dict[str, Any] | None = None,
) -> Figures:
    """Check a finished scenario (see the module docstring) and return its figures.

    ``receivers`` maps destination names to the receivers behind them."""
    batch = await ledger.get_batch(batch_id)
    assert batch is not None, f"{batch_id} not in the ledger"
    assert batch.state is BatchState.COMPLETE, (batch.state, batch.error)
    chunks = await ledger.chunks(batch_id)
    for route, stats in batch.routes.items():
        assert stats.reconciled, (route, stats)
        leaves = _leaves(c for c in chunks if c.route == route and c.kind == "data")
        assert all(c.state.terminal for c in chunks if c.route == route), route
        delivered = sum(c.records for c in leaves if c.state is ChunkState.DELIVERED)
        dead = sum(c.records for c in leaves if c.state is ChunkState.DEAD_LETTERED)
        assert (delivered, dead) == (stats.delivered, stats.dead_lettered), (route, stats)
    totals = batch.totals
    assert totals.read == len(expected_ids), (totals.read, len(expected_ids))

    # the receivers' requests for this batch only (a receiver may serve several batches)
    requests = {
        name: [r for r in receiver.requests if r.headers.get("X-Sender-Batch") == batch_id]
        for name, receiver in receivers.items()
    }

    # 2. a key always carried the same bytes
    bodies: dict[str, set[bytes]] = {}
    for sent in requests.values():
        for request in sent:
            bodies.setdefault(request.idempotency_key or "", set()).add(request.body_raw)
    changed = [key for key, seen in bodies.items() if len(seen) > 1]
    assert not changed, f"{len(changed)} keys were sent with different bytes"

    # 3./4. nothing lost; duplicates only by key
    received: list[dict[str, Any]] = []
    copies = 0
    for sent in requests.values():
        seen_keys: set[str | None] = set()
        for request in sent:
            if not request.accepted:
                continue
            if request.idempotency_key in seen_keys:
                copies += len(request.records)
                continue
            seen_keys.add(request.idempotency_key)
            received.extend(request.records)
    ids = Counter(r["id"] for r in received)
    rekeyed = {i for i, n in ids.items() if n > 1} - set(allow_rekeyed)
    assert not rekeyed, f"{len(rekeyed)} records arrived under two keys, e.g. {min(rekeyed)}"
    dead_ids = {r["id"] for r in dead_letter_records(dead_letter)}
    lost = expected_ids - set(ids) - dead_ids
    assert not lost, f"{len(lost)} records lost, e.g. {sorted(lost)[:3]}"

    # 5. what the ledger calls delivered is at that receiver, under its key
    accepted = {
        name: {r.idempotency_key for r in sent if r.accepted} for name, sent in requests.items()
    }
    for chunk in _leaves(chunks):
        if chunk.state is ChunkState.DELIVERED and chunk.target in accepted:
            assert chunk.idempotency_key in accepted[chunk.target], (chunk.chunk_id, chunk.target)

    return record(
        Figures(
            scenario=scenario,
            seed=seed,
            records=totals.read,
            delivered=totals.delivered,
            dead_lettered=totals.dead_lettered,
            rejected=totals.rejected,
            duplicates=copies,
            lost=len(lost),
            # requests dropped while their body was read never made it into ``requests``
            requests=sum(map(len, requests.values()))
            + sum(getattr(r, "faults", {}).get("partial_read", 0) for r in receivers.values()),
            notes=notes or {},
        )
    )
