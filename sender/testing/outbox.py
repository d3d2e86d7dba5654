"""The outbox's contract suite: ``OutboxContract``, what completion events (``sender.events``,
``sender.outbox``) rely on from a ledger's ``Outbox``. Subclass it with a ``ledger`` fixture
as for ``LedgerContract`` (see ``sender.testing.ledger``: the same ``clock`` and ``replica``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..errors import LedgerError
from ..model import BatchState
from ..ports import Outbox, OutboxEvent, RouteStats
from .ledger_suite import Clock, LedgerSuite, make_message
from .ledger_suite import aware as _aware

__all__ = ["OutboxContract"]

_ROUTES = {"to_crm": RouteStats(read=3, delivered=3, chunks=1)}


def _event(
    event_id: str = "e-1", destination: str = "events", batch_id: str = "b-1"
) -> OutboxEvent:
    return OutboxEvent(event_id, destination, batch_id, "sender.batch.completed", b'{"id": 1}')


@pytest.mark.asyncio
class OutboxContract(LedgerSuite):
    """Written with the batch's end, claimed by one owner at a time, kept until delivered."""

    async def _finished(self, ledger: Any, *events: OutboxEvent, batch_id: str = "b-1") -> None:
        await ledger.start_batch(make_message(batch_id))
        await ledger.finish_batch_with_events(
            batch_id, BatchState.COMPLETE, _ROUTES, None, events or (_event(batch_id=batch_id),)
        )

    async def test_ledger_implements_the_outbox(self, ledger: Any) -> None:
        assert isinstance(ledger, Outbox)

    async def test_the_batch_ends_and_its_event_waits_in_one_call(self, ledger: Any) -> None:
        await self._finished(ledger)

        record = await ledger.get_batch("b-1")
        assert record.state is BatchState.COMPLETE
        assert record.routes["to_crm"].delivered == 3
        (pending,) = await ledger.pending_events()
        assert (pending.event_id, pending.destination, pending.state) == (
            "e-1",
            "events",
            "pending",
        )
        assert pending.body == b'{"id": 1}'
        assert pending.type == "sender.batch.completed"
        assert pending.attempts == 0 and _aware(pending.created_at)

    async def test_an_unknown_batch_writes_no_event(self, ledger: Any) -> None:
        with pytest.raises(LedgerError):
            await ledger.finish_batch_with_events(
                "nope", BatchState.COMPLETE, {}, None, [_event(batch_id="nope")]
            )
        assert await ledger.pending_events() == []

    async def test_the_same_outcome_recorded_twice_is_one_event(self, ledger: Any) -> None:
        await self._finished(ledger)
        await ledger.finish_batch_with_events("b-1", BatchState.COMPLETE, _ROUTES, None, [_event()])

        assert len(await ledger.pending_events()) == 1

    async def test_one_event_per_destination(self, ledger: Any) -> None:
        await self._finished(ledger, _event(destination="a"), _event(destination="b"))

        claimed = await ledger.claim_events("daemon-a", 10, 60)
        assert sorted(e.destination for e in claimed) == ["a", "b"]

    async def test_a_claimed_event_is_held_by_one_owner(self, ledger: Any, replica: Any) -> None:
        await self._finished(ledger)

        (claimed,) = await ledger.claim_events("daemon-a", 10, 60)
        assert claimed.owner == "daemon-a" and _aware(claimed.lease_expires)
        assert await replica.claim_events("daemon-b", 10, 60) == []

    async def test_concurrent_claims_never_share_an_event(self, ledger: Any, replica: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        events = [_event(f"e-{i}") for i in range(20)]
        await ledger.finish_batch_with_events("b-1", BatchState.COMPLETE, _ROUTES, None, events)

        a, b = await asyncio.gather(
            ledger.claim_events("daemon-a", 15, 60), replica.claim_events("daemon-b", 15, 60)
        )
        ids = [e.event_id for e in a + b]
        assert len(ids) == len(set(ids)) == 20

    async def test_an_expired_claim_is_taken_again(self, ledger: Any, clock: Clock) -> None:
        await self._finished(ledger)
        await ledger.claim_events("daemon-a", 10, 60)

        clock.advance(61)
        (claimed,) = await ledger.claim_events("daemon-b", 10, 60)
        assert claimed.owner == "daemon-b"

    async def test_a_delivered_event_is_never_claimed_again(
        self, ledger: Any, clock: Clock
    ) -> None:
        await self._finished(ledger)
        await ledger.claim_events("daemon-a", 10, 60)

        await ledger.settle_event("e-1", "events")

        clock.advance(3600)
        assert await ledger.claim_events("daemon-a", 10, 60) == []
        assert await ledger.pending_events() == []
        event = await ledger.get_event("e-1", "events")
        assert event.state == "delivered" and _aware(event.delivered_at)

    async def test_a_failed_event_is_kept_and_due_after_its_backoff(
        self, ledger: Any, clock: Clock
    ) -> None:
        await self._finished(ledger)
        await ledger.claim_events("daemon-a", 10, 60)

        await ledger.settle_event("e-1", "events", error="503 from receiver", retry_in_s=30)

        (pending,) = await ledger.pending_events()
        assert pending.attempts == 1 and pending.last_error == "503 from receiver"
        assert pending.owner is None
        assert await ledger.claim_events("daemon-a", 10, 60) == []  # not due yet
        clock.advance(31)
        (claimed,) = await ledger.claim_events("daemon-a", 10, 60)
        assert claimed.attempts == 1

    async def test_settling_an_unknown_event_changes_nothing(self, ledger: Any) -> None:
        await ledger.settle_event("nope", "events")
        assert await ledger.get_event("nope", "events") is None
