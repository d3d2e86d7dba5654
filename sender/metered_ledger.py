"""A ledger wrapper that counts the ledger's failures, by operation, through a callback.

``metered(ledger, on_error=metrics.ledger_error)`` returns a wrapper that implements exactly
the ledger Protocols its inner ledger implements (``Ledger`` always; ``ReplayLog``,
``Inbox``, ``DiffStore``, ``Outbox``, ``SharedLimits`` and ``Shards`` when the inner one
has them), so ``isinstance`` checks at wiring see the truth: the wrapper's class is composed
of one mixin per ability the inner ledger has.
Every ``LedgerError`` a call raises calls ``on_error(operation)`` (the method's name) and is
raised again; results and other errors pass through untouched. The wrapper opens and closes
its inner ledger.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Self, TypeVar

from .errors import LedgerError
from .ledger_ports import (
    BatchRecord,
    ChunkRecord,
    DestinationLimits,
    DiffStore,
    Inbox,
    InboxMessage,
    InboxOutcome,
    Ledger,
    LimitGrant,
    Outbox,
    OutboxEvent,
    PlanRow,
    ReplayLog,
    RouteStats,
    SharedLimits,
)
from .model import BatchState, ObjectInfo, TriggerMessage
from .shard_ports import ShardEnd, ShardRecord, Shards

__all__ = ["MeteredLedger", "metered"]

_T = TypeVar("_T")

OnError = Callable[[str], None]


class _Counting:
    _on_error: OnError
    _replay_log: ReplayLog
    _inbox: Inbox
    _diff: DiffStore
    _outbox: Outbox
    _limits: SharedLimits
    _shards: Shards

    async def _count(self, operation: str, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except LedgerError:
            self._on_error(operation)
            raise


class MeteredLedger(_Counting):
    """The ``Ledger`` port around ``ledger``, counting its ``LedgerError``\\ s (see module).
    Build it with ``metered()``, which adds the inner ledger's optional ports."""

    def __init__(self, ledger: Ledger, *, on_error: OnError) -> None:
        self._ledger = ledger
        self._on_error = on_error
        if isinstance(ledger, ReplayLog):
            self._replay_log = ledger
        if isinstance(ledger, Inbox):
            self._inbox = ledger
        if isinstance(ledger, DiffStore):
            self._diff = ledger
        if isinstance(ledger, Outbox):
            self._outbox = ledger
        if isinstance(ledger, SharedLimits):
            self._limits = ledger
        if isinstance(ledger, Shards):
            self._shards = ledger

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._ledger!r})"

    async def __aenter__(self) -> Self:
        await self._ledger.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ledger.__aexit__(*exc)

    async def aclose(self) -> None:
        await self._ledger.aclose()

    async def start_batch(self, message: TriggerMessage) -> BatchRecord:
        return await self._count("start_batch", self._ledger.start_batch(message))

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        return await self._count("get_batch", self._ledger.get_batch(batch_id))

    async def list_batches(
        self,
        *,
        dataset: str | None = None,
        state: BatchState | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[BatchRecord]:
        call = self._ledger.list_batches(dataset=dataset, state=state, since=since, limit=limit)
        return await self._count("list_batches", call)

    async def set_objects(self, batch_id: str, objects: Sequence[ObjectInfo]) -> None:
        await self._count("set_objects", self._ledger.set_objects(batch_id, objects))

    async def finish_batch(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> None:
        call = self._ledger.finish_batch(batch_id, state, routes, error)
        await self._count("finish_batch", call)

    async def chunks(self, batch_id: str, route: str | None = None) -> list[ChunkRecord]:
        return await self._count("chunks", self._ledger.chunks(batch_id, route))

    async def save_chunks(self, records: Sequence[ChunkRecord]) -> None:
        await self._count("save_chunks", self._ledger.save_chunks(records))

    async def acquire_lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        return await self._count(
            "acquire_lease", self._ledger.acquire_lease(batch_id, owner, ttl_s)
        )

    async def release_lease(self, batch_id: str, owner: str) -> None:
        await self._count("release_lease", self._ledger.release_lease(batch_id, owner))

    async def ping(self) -> None:
        await self._count("ping", self._ledger.ping())


class _ReplayLogCalls(_Counting):
    async def record_replay(
        self, batch_id: str, who: str, selectors: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        call = self._replay_log.record_replay(batch_id, who, selectors, outcome)
        await self._count("record_replay", call)

    async def replays(self, batch_id: str) -> list[dict[str, Any]]:
        return await self._count("replays", self._replay_log.replays(batch_id))


class _InboxCalls(_Counting):
    async def enqueue_message(self, message_id: str, body: bytes) -> bool:
        return await self._count("enqueue_message", self._inbox.enqueue_message(message_id, body))

    async def claim_messages(self, owner: str, limit: int, lease_s: float) -> list[InboxMessage]:
        call = self._inbox.claim_messages(owner, limit, lease_s)
        return await self._count("claim_messages", call)

    async def extend_message(self, message_id: str, owner: str, lease_s: float) -> bool:
        call = self._inbox.extend_message(message_id, owner, lease_s)
        return await self._count("extend_message", call)

    async def settle_message(
        self, message_id: str, outcome: InboxOutcome, reason: str | None = None
    ) -> None:
        call = self._inbox.settle_message(message_id, outcome, reason)
        await self._count("settle_message", call)

    async def get_message(self, message_id: str) -> InboxMessage | None:
        return await self._count("get_message", self._inbox.get_message(message_id))


class _DiffStoreCalls(_Counting):
    async def baseline_page(
        self, dataset: str, route: str, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        call = self._diff.baseline_page(dataset, route, after, limit)
        return await self._count("baseline_page", call)

    async def start_plan(self, batch_id: str, route: str) -> None:
        await self._count("start_plan", self._diff.start_plan(batch_id, route))

    async def save_plan(self, batch_id: str, route: str, rows: Sequence[PlanRow]) -> None:
        await self._count("save_plan", self._diff.save_plan(batch_id, route, rows))

    async def finish_plan(self, batch_id: str, route: str) -> None:
        await self._count("finish_plan", self._diff.finish_plan(batch_id, route))

    async def has_plan(self, batch_id: str, route: str) -> bool:
        return await self._count("has_plan", self._diff.has_plan(batch_id, route))

    async def plan_page(
        self, batch_id: str, route: str, after_ordinal: int, limit: int
    ) -> list[PlanRow]:
        call = self._diff.plan_page(batch_id, route, after_ordinal, limit)
        return await self._count("plan_page", call)

    async def tombstone_page(
        self, batch_id: str, route: str, after_seq: int, limit: int
    ) -> list[PlanRow]:
        call = self._diff.tombstone_page(batch_id, route, after_seq, limit)
        return await self._count("tombstone_page", call)

    async def commit_baseline(
        self,
        dataset: str,
        route: str,
        batch_id: str,
        delivered: Sequence[tuple[int, int]],
        *,
        replace: bool = False,
    ) -> int:
        call = self._diff.commit_baseline(dataset, route, batch_id, delivered, replace=replace)
        return await self._count("commit_baseline", call)


class _OutboxCalls(_Counting):
    async def finish_batch_with_events(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None,
        events: Sequence[OutboxEvent],
    ) -> None:
        call = self._outbox.finish_batch_with_events(batch_id, state, routes, error, events)
        await self._count("finish_batch_with_events", call)

    async def claim_events(self, owner: str, limit: int, lease_s: float) -> list[OutboxEvent]:
        return await self._count("claim_events", self._outbox.claim_events(owner, limit, lease_s))

    async def settle_event(
        self,
        event_id: str,
        destination: str,
        *,
        error: str | None = None,
        retry_in_s: float = 0.0,
    ) -> None:
        call = self._outbox.settle_event(event_id, destination, error=error, retry_in_s=retry_in_s)
        await self._count("settle_event", call)

    async def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        return await self._count("pending_events", self._outbox.pending_events(limit))

    async def get_event(self, event_id: str, destination: str) -> OutboxEvent | None:
        return await self._count("get_event", self._outbox.get_event(event_id, destination))


class _SharedLimitsCalls(_Counting):
    async def take_tokens(self, destination: str, rate: float, tokens: float) -> LimitGrant:
        call = self._limits.take_tokens(destination, rate, tokens)
        return await self._count("take_tokens", call)

    async def pause_destination(self, destination: str, seconds: float) -> None:
        call = self._limits.pause_destination(destination, seconds)
        await self._count("pause_destination", call)

    async def open_circuit(self, destination: str, seconds: float) -> None:
        await self._count("open_circuit", self._limits.open_circuit(destination, seconds))

    async def destination_limits(self, destinations: Sequence[str]) -> dict[str, DestinationLimits]:
        call = self._limits.destination_limits(destinations)
        return await self._count("destination_limits", call)

    async def heartbeat(self, owner: str, live_s: float) -> int:
        return await self._count("heartbeat", self._limits.heartbeat(owner, live_s))

    async def leave(self, owner: str) -> None:
        await self._count("leave", self._limits.leave(owner))


class _ShardsCalls(_Counting):
    async def plan_shards(
        self, batch_id: str, sizes: Sequence[int], *, replace: bool = False
    ) -> list[ShardRecord]:
        call = self._shards.plan_shards(batch_id, sizes, replace=replace)
        return await self._count("plan_shards", call)

    async def shards(self, batch_id: str) -> list[ShardRecord]:
        return await self._count("shards", self._shards.shards(batch_id))

    async def set_shards_published(self, batch_id: str) -> None:
        await self._count("set_shards_published", self._shards.set_shards_published(batch_id))

    async def start_shard(self, batch_id: str, shard: int, owner: str | None = None) -> ShardRecord:
        return await self._count("start_shard", self._shards.start_shard(batch_id, shard, owner))

    async def finish_shard(
        self,
        batch_id: str,
        shard: int,
        state: ShardEnd,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> bool:
        call = self._shards.finish_shard(batch_id, shard, state, routes, error)
        return await self._count("finish_shard", call)


# each optional ability of a ledger, and the mixin that passes its calls through
_ABILITIES: tuple[tuple[type, type[_Counting]], ...] = (
    (ReplayLog, _ReplayLogCalls),
    (Inbox, _InboxCalls),
    (DiffStore, _DiffStoreCalls),
    (Outbox, _OutboxCalls),
    (SharedLimits, _SharedLimitsCalls),
    (Shards, _ShardsCalls),
)


@functools.cache
def _wrapper(abilities: tuple[bool, ...]) -> type[MeteredLedger]:
    """The wrapper class with exactly these abilities (one class per combination)."""
    mixins = tuple(calls for (_, calls), has in zip(_ABILITIES, abilities, strict=True) if has)
    return type("MeteredLedger", (MeteredLedger, *mixins), {}) if mixins else MeteredLedger


def metered(ledger: Ledger, *, on_error: OnError) -> MeteredLedger:
    """``ledger`` wrapped so that each ``LedgerError`` calls ``on_error(operation)``; the
    wrapper has an optional ability (``ReplayLog``, ``Inbox``, ``DiffStore``, ``Outbox``,
    ``SharedLimits``, ``Shards``) exactly when ``ledger`` does."""
    abilities = tuple(isinstance(ledger, port) for port, _ in _ABILITIES)
    return _wrapper(abilities)(ledger, on_error=on_error)
