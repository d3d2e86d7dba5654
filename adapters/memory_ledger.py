"""The in-memory ledger: the ``Ledger``, ``ReplayLog`` and ``Inbox`` ports (and the optional
``DiffStore``, ``Outbox`` and ``SharedLimits``) in a few dicts,
for fast tests of the core. It passes the same contract suites as ``SqliteLedger``
(``sender.testing.LedgerContract``, ``ReplayLogContract``, ``InboxContract``); nothing is
durable, and it is not registered as a ``daemon.ledger`` type.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sender.errors import AdapterClosed, LedgerError
from sender.model import BatchState, ChunkState, ObjectInfo, TriggerMessage, chunk_sort_key
from sender.ports import BatchRecord, ChunkRecord, InboxMessage, InboxOutcome, Resource, RouteStats
from sender_adapters.memory_diff import MemoryDiff
from sender_adapters.memory_limits import MemoryLimits
from sender_adapters.memory_outbox import MemoryOutbox
from sender_adapters.memory_shards import MemoryShards

__all__ = ["MemoryLedger"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class MemoryLedger(MemoryOutbox, MemoryShards, MemoryDiff, MemoryLimits, Resource):
    """The ``Ledger`` port in a few dicts: same API and semantics as ``SqliteLedger``
    (including ``record_replay``/``replays``, the inbox and diff sync's ``DiffStore``),
    nothing durable.

    Records going in and out are copies, as with a database: changing a returned record does
    not change the ledger. ``clock`` returns the current time (aware UTC); tests inject one to
    move time without sleeping.
    """

    schemes: ClassVar[tuple[str, ...]] = ("memory",)  # not registered: tests build it directly

    def __init__(self, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        self._batches: dict[str, BatchRecord] = {}
        self._order: dict[str, int] = {}  # creation sequence: breaks created_at ties
        self._chunks: dict[tuple[str, str, str], ChunkRecord] = {}
        self._replays: list[dict[str, Any]] = []
        # apart from batches: a lease may be taken before start_batch creates the batch
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._inbox: dict[str, InboxMessage] = {}  # insertion order is arrival order
        self._sequence = itertools.count(1)
        self._closed = False
        self._init_diff()
        self._init_outbox()
        self._init_limits()
        self._init_shards()

    @classmethod
    def from_url(
        cls, url: str = "memory://", *, clock: Callable[[], datetime] = _utcnow
    ) -> MemoryLedger:
        """A new, empty ledger whatever the URL (symmetry with ``SqliteLedger.from_url``)."""
        return cls(clock=clock)

    def __repr__(self) -> str:
        return f"MemoryLedger({len(self._batches)} batches)"

    def _now(self) -> datetime:
        return _utc(self._clock())

    async def _enter(self) -> None:
        # yield to the loop like a real store would, then act atomically (no await after this)
        await asyncio.sleep(0)
        if self._closed:
            raise AdapterClosed("ledger memory")

    def _out(self, record: BatchRecord) -> BatchRecord:
        copied = copy.deepcopy(record)
        copied.lease_owner, copied.lease_expires = self._leases.get(record.batch_id, (None, None))
        return copied

    def _require(self, batch_id: str) -> BatchRecord:
        try:
            return self._batches[batch_id]
        except KeyError:
            raise LedgerError(f"unknown batch {batch_id!r}") from None

    async def open(self) -> None:
        """Nothing to open; refuses a closed ledger like the real ones."""
        await self._enter()

    _on_enter = open  # async with opens the ledger

    async def aclose(self) -> None:
        self._closed = True

    async def start_batch(self, message: TriggerMessage) -> BatchRecord:
        await self._enter()
        now = self._now()
        body = message.model_dump(mode="json")
        record = self._batches.get(message.batch_id)
        if record is None:
            record = BatchRecord(
                batch_id=message.batch_id,
                dataset=message.dataset,
                uri=message.uri,
                state=BatchState.RUNNING,
                message=body,
                created_at=now,
                started_at=now,
                runs=1,
            )
            self._batches[message.batch_id] = record
            self._order[message.batch_id] = next(self._sequence)
        else:
            record.dataset = message.dataset
            record.uri = message.uri
            record.state = BatchState.RUNNING
            record.message = body
            record.started_at = now
            record.finished_at = None
            record.error = None
            record.runs += 1
        return self._out(record)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        await self._enter()
        record = self._batches.get(batch_id)
        return None if record is None else self._out(record)

    async def list_batches(
        self,
        *,
        dataset: str | None = None,
        state: BatchState | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[BatchRecord]:
        await self._enter()
        since = None if since is None else _utc(since)
        found = [
            record
            for record in self._batches.values()
            if (dataset is None or record.dataset == dataset)
            and (state is None or record.state == state)
            and (since is None or record.created_at >= since)
        ]
        found.sort(key=lambda r: (r.created_at, self._order[r.batch_id]), reverse=True)
        return [self._out(record) for record in found[: max(0, limit)]]

    async def set_objects(self, batch_id: str, objects: Sequence[ObjectInfo]) -> None:
        await self._enter()
        self._require(batch_id).objects = list(objects)

    async def finish_batch(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> None:
        await self._enter()
        record = self._require(batch_id)
        record.state = BatchState(state)
        record.routes = copy.deepcopy(routes)
        record.error = error
        record.finished_at = self._now()

    async def chunks(self, batch_id: str, route: str | None = None) -> list[ChunkRecord]:
        await self._enter()
        found = [
            c
            for (b, r, _), c in self._chunks.items()
            if b == batch_id and (route is None or r == route)
        ]
        found.sort(key=lambda c: (c.route, chunk_sort_key(c.chunk_id)))
        return copy.deepcopy(found)

    async def save_chunks(self, records: Sequence[ChunkRecord]) -> None:
        await self._enter()
        unknown = sorted({r.batch_id for r in records if r.batch_id not in self._batches})
        if unknown:  # all or nothing, like the transaction it stands for
            raise LedgerError(f"chunks of an unknown batch ({', '.join(unknown)})")
        now = self._now()
        for record in records:
            stored = copy.deepcopy(record)
            stored.state = ChunkState(stored.state)
            stored.updated_at = now
            self._chunks[(record.batch_id, record.route, record.chunk_id)] = stored

    async def acquire_lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        await self._enter()
        now = self._now()
        holder, expires = self._leases.get(batch_id, (owner, now))
        if holder != owner and expires > now:
            return False
        self._leases[batch_id] = (owner, now + timedelta(seconds=ttl_s))
        return True

    async def release_lease(self, batch_id: str, owner: str) -> None:
        await self._enter()
        if self._leases.get(batch_id, (None,))[0] == owner:
            del self._leases[batch_id]

    async def ping(self) -> None:
        await self._enter()

    # -- the inbox (http trigger) --------------------------------------------------------

    async def enqueue_message(self, message_id: str, body: bytes) -> bool:
        await self._enter()
        existing = self._inbox.get(message_id)
        if existing is not None and existing.state == "pending":
            return False
        self._inbox.pop(message_id, None)  # queued again: now the newest
        self._inbox[message_id] = InboxMessage(message_id, bytes(body), "pending", self._now())
        return True

    async def claim_messages(self, owner: str, limit: int, lease_s: float) -> list[InboxMessage]:
        await self._enter()
        now = self._now()
        claimed: list[InboxMessage] = []
        for message in self._inbox.values():
            if len(claimed) >= limit:
                break
            if message.state != "pending" or (
                message.lease_expires is not None and message.lease_expires > now
            ):
                continue
            message.owner = owner
            message.lease_expires = now + timedelta(seconds=lease_s)
            message.deliveries += 1
            claimed.append(copy.deepcopy(message))
        return claimed

    async def extend_message(self, message_id: str, owner: str, lease_s: float) -> bool:
        await self._enter()
        message = self._inbox.get(message_id)
        if message is None or message.state != "pending" or message.owner != owner:
            return False
        message.lease_expires = self._now() + timedelta(seconds=lease_s)
        return True

    async def settle_message(
        self, message_id: str, outcome: InboxOutcome, reason: str | None = None
    ) -> None:
        if outcome not in ("done", "rejected", "released"):
            raise ValueError(f"unknown inbox outcome {outcome!r}")
        await self._enter()
        message = self._inbox.get(message_id)
        if message is None:
            raise LedgerError(f"unknown inbox message {message_id!r}")
        if outcome == "released":
            if message.state == "pending":
                message.owner = message.lease_expires = None
            return
        message.state = outcome
        message.reason = reason
        message.settled_at = self._now()
        message.owner = message.lease_expires = None

    async def get_message(self, message_id: str) -> InboxMessage | None:
        await self._enter()
        message = self._inbox.get(message_id)
        return None if message is None else copy.deepcopy(message)

    async def record_replay(
        self, batch_id: str, who: str, selectors: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        await self._enter()
        self._require(batch_id)
        self._replays.append(
            {
                "id": len(self._replays) + 1,
                "batch_id": batch_id,
                "who": who,
                "at": self._now(),
                "selectors": copy.deepcopy(selectors),
                "outcome": copy.deepcopy(outcome),
            }
        )

    async def replays(self, batch_id: str) -> list[dict[str, Any]]:
        await self._enter()
        return copy.deepcopy([r for r in self._replays if r["batch_id"] == batch_id])
