"""The shards' contract suite: ``ShardsContract``, what sharded batches (``sender.shards``)
rely on from a ledger's ``Shards``. Subclass it with a ``ledger`` fixture as for
``LedgerContract`` (see ``sender.testing.ledger``: the same ``clock`` and ``replica``; for
a shared ledger the replica is a second handle on the same store).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..errors import LedgerError
from ..ports import RouteStats, Shards
from ..shard_ports import shard_lease_key
from .ledger_suite import Clock, LedgerSuite, make_message
from .ledger_suite import aware as _aware

__all__ = ["ShardsContract"]

_DONE = {"to_crm": RouteStats(read=10, delivered=9, rejected=1, chunks=2)}


@pytest.mark.asyncio
class ShardsContract(LedgerSuite):
    """A plan recorded once, each shard's end kept, the last shard's completion told once."""

    async def _planned(self, ledger: Any, sizes: list[int], batch_id: str = "b-1") -> Any:
        await ledger.start_batch(make_message(batch_id))
        return await ledger.plan_shards(batch_id, sizes)

    async def test_ledger_implements_shards(self, ledger: Any) -> None:
        assert isinstance(ledger, Shards)

    async def test_a_plan_cuts_consecutive_objects(self, ledger: Any) -> None:
        plan = await self._planned(ledger, [16, 16, 5])

        assert [(s.shard, s.first_object, s.objects) for s in plan] == [
            (0, 0, 16),
            (1, 16, 16),
            (2, 32, 5),
        ]
        assert all(s.state == "pending" and s.runs == 0 and not s.published for s in plan)
        assert await ledger.shards("b-1") == plan

    async def test_a_plan_is_recorded_once(self, ledger: Any, replica: Any) -> None:
        await self._planned(ledger, [2, 2])

        again = await replica.plan_shards("b-1", [1, 1, 1, 1])

        assert [s.objects for s in again] == [2, 2]

    async def test_a_rerun_replaces_the_plan(self, ledger: Any) -> None:
        await self._planned(ledger, [2, 2])
        await ledger.finish_shard("b-1", 0, "complete", _DONE)

        plan = await ledger.plan_shards("b-1", [3, 3, 3], replace=True)

        assert [(s.objects, s.state) for s in plan] == [(3, "pending")] * 3

    async def test_a_batch_without_a_plan_has_no_shards(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        assert await ledger.shards("b-1") == []
        assert await ledger.shards("nope") == []

    async def test_an_unknown_batch_cannot_be_planned(self, ledger: Any) -> None:
        with pytest.raises(LedgerError):
            await ledger.plan_shards("nope", [1])

    async def test_published_is_recorded_for_the_plan(self, ledger: Any) -> None:
        await self._planned(ledger, [1, 1])
        await ledger.set_shards_published("b-1")
        assert all(s.published for s in await ledger.shards("b-1"))

    async def test_a_start_counts_the_runs_and_retries_a_failed_shard(self, ledger: Any) -> None:
        await self._planned(ledger, [1, 1])
        first = await ledger.start_shard("b-1", 1)
        assert first.runs == 1 and _aware(first.started_at)
        assert not await ledger.finish_shard("b-1", 1, "failed", {}, "unreadable")
        (_, failed) = await ledger.shards("b-1")
        assert (failed.state, failed.error) == ("failed", "unreadable")

        again = await ledger.start_shard("b-1", 1)

        assert (again.runs, again.state, again.error) == (2, "pending", None)

    async def test_the_replica_that_last_ran_a_shard_is_kept_after_its_end(
        self, ledger: Any
    ) -> None:
        await self._planned(ledger, [1, 1])
        await ledger.start_shard("b-1", 1, "host-a:1:1.x")
        await ledger.start_shard("b-1", 1, "host-b:2:2.y")  # taken over

        await ledger.finish_shard("b-1", 1, "complete", {})

        (untouched, ran) = await ledger.shards("b-1")
        assert (untouched.sent_by, ran.sent_by) == (None, "host-b:2:2.y")

    async def test_a_shard_run_again_is_a_run_of_the_batch(self, ledger: Any) -> None:
        await self._planned(ledger, [1, 1])
        await ledger.start_shard("b-1", 0)
        await ledger.start_shard("b-1", 1)
        assert (await ledger.get_batch("b-1")).runs == 1  # first runs: the batch's own

        await ledger.start_shard("b-1", 1)  # taken over after a crash

        assert (await ledger.get_batch("b-1")).runs == 2

    async def test_an_unknown_shard_is_an_error(self, ledger: Any) -> None:
        await self._planned(ledger, [1, 1])
        with pytest.raises(LedgerError):
            await ledger.start_shard("b-1", 2)
        with pytest.raises(LedgerError):
            await ledger.finish_shard("b-1", 5, "complete", _DONE)

    async def test_a_finished_shard_keeps_its_reconciliation(self, ledger: Any) -> None:
        await self._planned(ledger, [1, 1])
        await ledger.finish_shard("b-1", 0, "complete", _DONE)

        (done, pending) = await ledger.shards("b-1")

        assert done.state == "complete" and _aware(done.finished_at)
        assert done.routes["to_crm"].rejected == 1 and done.routes["to_crm"].delivered == 9
        assert pending.state == "pending"

    async def test_only_the_last_shard_completes_the_batch(self, ledger: Any) -> None:
        await self._planned(ledger, [1, 1, 1])
        assert not await ledger.finish_shard("b-1", 2, "complete", _DONE)
        assert not await ledger.finish_shard("b-1", 0, "complete", _DONE)
        assert await ledger.finish_shard("b-1", 1, "complete", _DONE)
        # told once: completing a complete shard again (a redelivered message) is not last
        assert not await ledger.finish_shard("b-1", 1, "complete", _DONE)

    async def test_a_failed_shard_keeps_the_batch_from_completing(self, ledger: Any) -> None:
        await self._planned(ledger, [1, 1])
        await ledger.finish_shard("b-1", 0, "failed", {}, "bad record")
        assert not await ledger.finish_shard("b-1", 1, "complete", _DONE)

    async def test_two_replicas_finishing_the_last_shards_at_once_tell_one(
        self, ledger: Any, replica: Any
    ) -> None:
        for batch in range(5):
            batch_id = f"b-{batch}"
            await self._planned(ledger, [1, 1], batch_id)
            told = await asyncio.gather(
                ledger.finish_shard(batch_id, 0, "complete", _DONE),
                replica.finish_shard(batch_id, 1, "complete", _DONE),
            )
            assert sorted(told) == [False, True], batch_id

    async def test_a_shard_shows_who_holds_its_lease(self, ledger: Any, clock: Clock) -> None:
        await self._planned(ledger, [1, 1])
        assert await ledger.acquire_lease(shard_lease_key("b-1", 1), "host:1:a", 30)

        (free, held) = await ledger.shards("b-1")

        assert free.owner is None
        assert held.owner == "host:1:a" and _aware(held.lease_expires)
        # a shard's lease is not the batch's
        record = await ledger.get_batch("b-1")
        assert record.lease_owner is None
