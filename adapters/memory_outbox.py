"""The outbox in memory: the ``Outbox`` port as a mixin of ``MemoryLedger``, for fast tests
of the core (same semantics as the SQL ledgers, nothing durable)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime, timedelta

from sender.model import BatchState
from sender.ports import OutboxEvent, RouteStats

__all__ = ["MemoryOutbox"]


class MemoryOutbox:
    """Events in a dict in arrival order; ``MemoryLedger`` calls ``_init_outbox`` and
    provides ``_enter``, ``_now`` and ``finish_batch``."""

    _outbox: dict[tuple[str, str], OutboxEvent]

    def _init_outbox(self) -> None:
        self._outbox = {}

    async def _enter(self) -> None:  # pragma: no cover - MemoryLedger's own is used
        raise NotImplementedError

    def _now(self) -> datetime:  # pragma: no cover - MemoryLedger's own is used
        raise NotImplementedError

    async def finish_batch(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> None:  # pragma: no cover - MemoryLedger's own is used
        raise NotImplementedError

    async def finish_batch_with_events(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None,
        events: Sequence[OutboxEvent],
    ) -> None:
        # no await between the two: nothing else sees the batch finished without its events
        await self.finish_batch(batch_id, state, routes, error)
        now = self._now()
        for event in events:
            key = (event.event_id, event.destination)
            if key not in self._outbox:
                self._outbox[key] = OutboxEvent(
                    event.event_id,
                    event.destination,
                    event.batch_id,
                    event.type,
                    bytes(event.body),
                    created_at=now,
                    next_attempt_at=now,
                )

    async def claim_events(self, owner: str, limit: int, lease_s: float) -> list[OutboxEvent]:
        await self._enter()
        now = self._now()
        claimed = []
        for event in self._outbox.values():
            if len(claimed) >= limit:
                break
            due = event.next_attempt_at is None or event.next_attempt_at <= now
            free = event.lease_expires is None or event.lease_expires <= now
            if event.state == "pending" and due and free:
                event.owner, event.lease_expires = owner, now + timedelta(seconds=lease_s)
                claimed.append(copy.copy(event))
        return claimed

    async def settle_event(
        self,
        event_id: str,
        destination: str,
        *,
        error: str | None = None,
        retry_in_s: float = 0.0,
    ) -> None:
        await self._enter()
        event = self._outbox.get((event_id, destination))
        if event is None:
            return
        now = self._now()
        event.owner = event.lease_expires = None
        if error is None:
            event.state, event.delivered_at = "delivered", now
        elif event.state == "pending":
            event.attempts += 1
            event.last_error = error
            event.next_attempt_at = now + timedelta(seconds=max(0.0, retry_in_s))

    async def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        await self._enter()
        pending = [copy.copy(e) for e in self._outbox.values() if e.state == "pending"]
        return pending[:limit]

    async def get_event(self, event_id: str, destination: str) -> OutboxEvent | None:
        await self._enter()
        event = self._outbox.get((event_id, destination))
        return None if event is None else copy.copy(event)
