"""The inbox's contract suite: ``InboxContract``, what the ``http`` trigger relies on from a
ledger's ``Inbox`` (its durable queue). Subclass it with a ``ledger`` fixture as for
``LedgerContract`` (see ``sender.testing.ledger``: the same ``clock`` and ``replica``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..errors import AdapterClosed, LedgerError
from ..ports import Inbox
from .ledger_suite import Clock, LedgerSuite
from .ledger_suite import aware as _aware

__all__ = ["InboxContract"]


@pytest.mark.asyncio
class InboxContract(LedgerSuite):
    """At-least-once, one holder at a time: see the ``Inbox`` Protocol."""

    async def test_ledger_implements_the_inbox(self, ledger: Any) -> None:
        assert isinstance(ledger, Inbox)

    async def test_an_enqueued_message_is_claimed_once_with_its_body(self, ledger: Any) -> None:
        assert await ledger.enqueue_message("m-1", b'{"batch_id": "b-1"}')

        (claimed,) = await ledger.claim_messages("daemon-a", 10, 60)

        assert claimed.message_id == "m-1"
        assert claimed.body == b'{"batch_id": "b-1"}'
        assert claimed.state == "pending"
        assert claimed.deliveries == 1
        assert claimed.owner == "daemon-a"
        assert _aware(claimed.received_at) and _aware(claimed.lease_expires)
        assert await ledger.claim_messages("daemon-b", 10, 60) == []

    async def test_a_duplicate_of_a_pending_message_is_not_queued(self, ledger: Any) -> None:
        assert await ledger.enqueue_message("m-1", b"first")
        assert not await ledger.enqueue_message("m-1", b"second")
        await ledger.claim_messages("daemon-a", 1, 60)
        assert not await ledger.enqueue_message("m-1", b"third")  # claimed is still pending

        assert (await ledger.get_message("m-1")).body == b"first"

    async def test_messages_are_claimed_oldest_first_up_to_the_limit(self, ledger: Any) -> None:
        for i in range(3):
            await ledger.enqueue_message(f"m-{i}", b"x")

        first = await ledger.claim_messages("daemon-a", 2, 60)
        rest = await ledger.claim_messages("daemon-b", 2, 60)

        assert [m.message_id for m in first] == ["m-0", "m-1"]
        assert [m.message_id for m in rest] == ["m-2"]

    async def test_a_released_message_is_claimed_again(self, ledger: Any) -> None:
        await ledger.enqueue_message("m-1", b"x")
        await ledger.claim_messages("daemon-a", 1, 60)

        await ledger.settle_message("m-1", "released")

        (again,) = await ledger.claim_messages("daemon-b", 1, 60)
        assert again.deliveries == 2
        assert again.owner == "daemon-b"
        assert not await ledger.extend_message("m-1", "daemon-a", 60)

    async def test_settled_messages_are_kept_and_never_claimed(self, ledger: Any) -> None:
        await ledger.enqueue_message("ok", b"x")
        await ledger.enqueue_message("bad", b"y")
        await ledger.claim_messages("daemon-a", 2, 60)

        await ledger.settle_message("ok", "done")
        await ledger.settle_message("bad", "rejected", "not JSON")

        assert await ledger.claim_messages("daemon-a", 10, 0) == []
        done, rejected = await ledger.get_message("ok"), await ledger.get_message("bad")
        assert (done.state, done.owner, done.reason) == ("done", None, None)
        assert (rejected.state, rejected.reason) == ("rejected", "not JSON")
        assert _aware(rejected.settled_at)
        assert await ledger.get_message("unknown") is None

    async def test_a_settled_message_can_be_queued_again(self, ledger: Any) -> None:
        await ledger.enqueue_message("m-1", b"old")
        await ledger.claim_messages("daemon-a", 1, 60)
        await ledger.settle_message("m-1", "done")

        assert await ledger.enqueue_message("m-1", b"new")

        (claimed,) = await ledger.claim_messages("daemon-a", 1, 60)
        assert (claimed.body, claimed.deliveries, claimed.settled_at) == (b"new", 1, None)

    async def test_only_the_owner_extends_a_claim(self, ledger: Any) -> None:
        await ledger.enqueue_message("m-1", b"x")
        (claimed,) = await ledger.claim_messages("daemon-a", 1, 1)

        assert await ledger.extend_message("m-1", "daemon-a", 600)
        assert not await ledger.extend_message("m-1", "daemon-b", 600)
        assert not await ledger.extend_message("unknown", "daemon-a", 600)

        extended = await ledger.get_message("m-1")
        assert extended.lease_expires > claimed.lease_expires

    async def test_an_expired_claim_is_taken_by_another_owner(
        self, ledger: Any, clock: Clock
    ) -> None:
        await ledger.enqueue_message("m-1", b"x")
        await ledger.claim_messages("crashed-daemon", 1, 30)
        clock.advance(29)
        assert await ledger.claim_messages("daemon-b", 1, 60) == []

        clock.advance(2)  # the crashed daemon never extended its claim

        (taken,) = await ledger.claim_messages("daemon-b", 1, 60)
        assert (taken.owner, taken.deliveries) == ("daemon-b", 2)
        assert not await ledger.extend_message("m-1", "crashed-daemon", 60)

    async def test_settling_an_unknown_message_is_an_error(self, ledger: Any) -> None:
        with pytest.raises(LedgerError):
            await ledger.settle_message("unknown", "done")

    async def test_concurrent_claims_never_share_a_message(self, ledger: Any, replica: Any) -> None:
        for i in range(20):
            await ledger.enqueue_message(f"m-{i:02d}", b"{}")

        rounds = await asyncio.gather(
            *(
                handle.claim_messages(owner, 3, 60)
                for _ in range(5)
                for handle, owner in ((ledger, "replica-a"), (replica, "replica-b"))
            )
        )

        claimed = [m.message_id for batch in rounds for m in batch]
        assert len(claimed) == len(set(claimed)) == 20

    async def test_an_unknown_outcome_is_refused(self, ledger: Any) -> None:
        await ledger.enqueue_message("m-1", b"x")

        with pytest.raises(ValueError, match="unknown inbox outcome"):
            await ledger.settle_message("m-1", "lost")

        assert (await ledger.get_message("m-1")).state == "pending"

    async def test_a_closed_inbox_raises_adapter_closed(self, ledger: Any) -> None:
        await ledger.enqueue_message("m-1", b"x")
        await ledger.aclose()
        await ledger.aclose()

        with pytest.raises(AdapterClosed):
            await ledger.enqueue_message("m-2", b"y")
        with pytest.raises(AdapterClosed):
            await ledger.claim_messages("daemon-a", 1, 60)
        with pytest.raises(AdapterClosed):
            await ledger.get_message("m-1")
