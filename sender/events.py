"""Completion events: one CloudEvent per batch outcome, written to the ledger's outbox in the
transaction that records the outcome (``sender.outbox`` delivers them).

Who is told: ``[daemon] notify`` names destinations; a route's own ``notify`` replaces the
daemon's for that route (``notify = []`` tells nobody of it), and a batch notifies the union
over its routes. Events are CloudEvents 1.0 in the structured JSON format:

- ``type``: ``sender.batch.completed`` (complete, with or without dead letters),
  ``sender.batch.failed``, ``sender.batch.replayed`` (a replay changed the outcome);
  an ``incomplete`` batch resumes, so it emits nothing;
- ``id``: a digest of the batch id, the type, the batch's run number and (for a replay) its
  new reconciliation: every redelivery of one outcome carries the same id;
- ``source``: ``integration-sender/<daemon.name or the host name>``; ``subject``: the batch id;
- ``data``: the batch as ``GET /v1/batches/{id}`` shows it (``sender.serialize.batch_json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from .config import AppConfig
from .ledger_ports import Ledger, Outbox, OutboxEvent, RouteStats
from .log import get_logger
from .model import BatchState, EncodedChunk
from .serialize import batch_json

__all__ = [
    "COMPLETED",
    "CONTENT_TYPE",
    "FAILED",
    "REPLAYED",
    "cloudevent",
    "event_chunk",
    "event_id",
    "event_source",
    "finish_batch",
    "notify_destinations",
]

log = get_logger("sender.events")

COMPLETED = "sender.batch.completed"
FAILED = "sender.batch.failed"
REPLAYED = "sender.batch.replayed"
CONTENT_TYPE = "application/cloudevents+json"

# the route and chunk an event travels as (file names, headers, logs)
EVENT_ROUTE = "_events"


def notify_destinations(config: AppConfig, routes: Iterable[str]) -> list[str]:
    """The destinations told of a batch of these routes (see module), in config order."""
    wanted: set[str] = set()
    for name in routes:
        route = config.routes.get(name)
        own = route.notify if route is not None else None
        wanted.update(config.daemon.notify if own is None else own)
    return [name for name in config.destinations if name in wanted]


def event_source(config: AppConfig) -> str:
    return f"integration-sender/{config.daemon.name or socket.gethostname()}"


def event_id(batch_id: str, type_: str, runs: int, routes: dict[str, RouteStats]) -> str:
    """Stable for one outcome: the same batch, type and run (and, for a replay, the same new
    reconciliation) give the same id."""
    parts: list[Any] = [batch_id, type_, runs]
    if type_ == REPLAYED:
        parts.append({name: stats.to_dict() for name, stats in sorted(routes.items())})
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


def cloudevent(
    *, id_: str, source: str, type_: str, subject: str, time: datetime, data: dict[str, Any]
) -> bytes:
    """A CloudEvent 1.0 in the structured JSON format."""
    event = {
        "specversion": "1.0",
        "id": id_,
        "source": source,
        "type": type_,
        "subject": subject,
        "time": time.isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }
    return orjson.dumps(event)


def event_chunk(event: OutboxEvent) -> EncodedChunk:
    """The event as one chunk for a destination's ``deliver`` (a JSON document)."""
    data = orjson.loads(event.body).get("data") or {}
    dataset = data.get("dataset", "") if isinstance(data, dict) else ""
    return EncodedChunk(
        batch_id=event.batch_id,
        dataset=dataset,
        route=EVENT_ROUTE,
        chunk_id=event.event_id[:16],
        records=1,
        format="json",
        codec="none",
        payload=event.body,
        raw_size=len(event.body),
        idempotency_key=event.event_id,
        kind="event",
        content_type=CONTENT_TYPE,
    )


def _type_of(state: BatchState, replayed: bool) -> str | None:
    if replayed:
        return REPLAYED
    if state is BatchState.COMPLETE:
        return COMPLETED
    if state is BatchState.FAILED:
        return FAILED
    return None


async def finish_batch(
    ledger: Ledger,
    config: AppConfig,
    batch_id: str,
    state: BatchState,
    routes: dict[str, RouteStats],
    error: str | None = None,
    *,
    replayed: bool = False,
) -> None:
    """``ledger.finish_batch`` plus, when the outcome is one to tell and someone is to be
    told, its events in the same transaction (``Outbox.finish_batch_with_events``)."""
    type_ = _type_of(BatchState(state), replayed)
    destinations = notify_destinations(config, routes) if type_ else []
    if type_ is None or not destinations:
        await ledger.finish_batch(batch_id, state, routes, error)
        return
    record = await ledger.get_batch(batch_id)
    if not isinstance(ledger, Outbox) or record is None:
        if record is not None:
            log.warning("events.no_outbox", batch_id=batch_id, ledger=type(ledger).__name__)
        await ledger.finish_batch(batch_id, state, routes, error)  # unknown batch: it raises
        return
    now = datetime.now(UTC)
    record = dataclasses.replace(
        record, state=BatchState(state), routes=dict(routes), error=error, finished_at=now
    )
    id_ = event_id(batch_id, type_, record.runs, routes)
    body = cloudevent(
        id_=id_,
        source=event_source(config),
        type_=type_,
        subject=batch_id,
        time=now,
        data=batch_json(record, await ledger.chunks(batch_id)),
    )
    events = [OutboxEvent(id_, name, batch_id, type_, body) for name in destinations]
    await ledger.finish_batch_with_events(batch_id, state, routes, error, events)
    log.info("events.queued", batch_id=batch_id, type=type_, destinations=destinations)
