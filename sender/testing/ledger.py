"""The ledger's contract suite, ``LedgerContract`` (batch and chunk state, leases), and what
every ledger suite shares; ``ReplayLogContract`` is in ``sender.testing.replay_log`` and
``InboxContract`` in ``sender.testing.inbox``. A ledger runs the suite of every port it
implements.

Subclass them and define a ``ledger`` fixture yielding an opened ledger (a fresh, empty one
per test) whose clock is the suite's ``clock`` fixture, so that the tests move time instead
of sleeping::

    import pytest
    from sender.testing import InboxContract, LedgerContract, ReplayLogContract
    from acme_ledger import AcmeLedger

    class TestAcmeLedger(LedgerContract, ReplayLogContract, InboxContract):
        @pytest.fixture
        async def ledger(self, clock):
            async with AcmeLedger("acme://test", clock=clock) as ledger:
                yield ledger

A shared ledger (several replicas on one store) also overrides ``replica``: a second opened
handle on the same store, with the same clock; by default it is ``ledger`` itself. The tests
need pytest-asyncio (the classes carry ``pytest.mark.asyncio``; in strict mode declare the
fixtures with ``pytest_asyncio.fixture``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ..errors import AdapterClosed, LedgerError
from ..model import BatchState, ChunkState, ObjectInfo
from ..ports import Ledger, RouteStats
from .ledger_suite import Clock, LedgerSuite, make_chunk, make_message
from .ledger_suite import aware as _aware

__all__ = ["Clock", "LedgerContract", "make_chunk", "make_message"]


@pytest.mark.asyncio
class LedgerContract(LedgerSuite):
    """What the core relies on from any ``Ledger``. Needs a ``ledger`` fixture (see module)."""

    # -- batches -------------------------------------------------------------------------

    async def test_ledger_implements_the_port(self, ledger: Any) -> None:
        assert isinstance(ledger, Ledger)
        await ledger.ping()

    async def test_what_one_handle_writes_another_reads(self, ledger: Any, replica: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.save_chunks([make_chunk("b-1", "0", state=ChunkState.DELIVERED)])

        seen = await replica.get_batch("b-1")

        assert seen is not None and seen.runs == 1
        assert [c.state for c in await replica.chunks("b-1")] == [ChunkState.DELIVERED]

    async def test_start_batch_creates_a_running_batch(self, ledger: Any) -> None:
        message = make_message("b-1", expected_records=10, routes=["to_crm"])
        before = datetime.now(UTC)

        record = await ledger.start_batch(message)

        assert record.batch_id == "b-1"
        assert record.dataset == "churn"
        assert record.uri == message.uri
        assert record.state == BatchState.RUNNING
        assert record.message == message.model_dump(mode="json")
        assert record.runs == 1
        assert record.error is None
        assert record.finished_at is None
        assert record.objects is None
        assert record.routes == {}
        assert _aware(record.created_at) and _aware(record.started_at)
        assert before - timedelta(seconds=5) <= record.created_at <= datetime.now(UTC)
        assert await ledger.get_batch("b-1") == record

    async def test_every_time_stamped_is_the_ledgers_clock(self, ledger: Any, clock: Clock) -> None:
        clock.advance(86_400)  # a day ahead of real time: only the ledger's clock says that
        before = clock()

        started = await ledger.start_batch(make_message("b-1"))
        assert await ledger.acquire_lease("b-1", "daemon-a", 30)
        await ledger.save_chunks([make_chunk("b-1", "0")])
        await ledger.finish_batch("b-1", BatchState.COMPLETE, {})

        after = clock()
        record = await ledger.get_batch("b-1")
        (chunk,) = await ledger.chunks("b-1")
        for stamp in (started.created_at, started.started_at, record.finished_at, chunk.updated_at):
            assert before <= stamp <= after
        lease = timedelta(seconds=30)
        assert before + lease <= record.lease_expires <= after + lease

    async def test_get_batch_of_an_unknown_batch_is_none(self, ledger: Any) -> None:
        assert await ledger.get_batch("nope") is None

    async def test_finish_batch_stores_state_routes_and_error(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        routes = {
            "to_crm": RouteStats(read=10, delivered=7, dead_lettered=2, rejected=1, chunks=3),
            "to_lake": RouteStats(read=10, delivered=10, chunks=1),
        }

        await ledger.finish_batch("b-1", BatchState.INCOMPLETE, routes, error="crm down")

        record = await ledger.get_batch("b-1")
        assert record.state == BatchState.INCOMPLETE
        assert record.routes == routes
        assert record.routes["to_crm"].reconciled
        assert record.totals.read == 20
        assert record.error == "crm down"
        assert _aware(record.finished_at)
        assert record.finished_at >= record.started_at

    async def test_set_objects_round_trips(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        objects = [
            ObjectInfo("file:///lake/churn/b-1/part-00000.jsonl", 1234, "v1"),
            ObjectInfo("file:///lake/churn/b-1/part-00001.jsonl", 0, ""),
        ]

        await ledger.set_objects("b-1", objects)

        assert (await ledger.get_batch("b-1")).objects == objects

    async def test_restart_keeps_chunks_and_created_at_and_bumps_runs(self, ledger: Any) -> None:
        first = await ledger.start_batch(make_message("b-1"))
        await ledger.set_objects("b-1", [ObjectInfo("file:///lake/x", 1, "v")])
        await ledger.save_chunks([make_chunk("b-1", "0", state=ChunkState.DELIVERED)])
        await ledger.finish_batch("b-1", BatchState.INCOMPLETE, {}, error="shutdown")

        again = await ledger.start_batch(make_message("b-1", uri="file:///lake/moved"))

        assert again.runs == 2
        assert again.state == BatchState.RUNNING
        assert again.error is None
        assert again.finished_at is None
        assert again.created_at == first.created_at
        assert again.started_at >= first.started_at
        assert again.uri == "file:///lake/moved"
        assert again.message["uri"] == "file:///lake/moved"
        assert again.objects == [ObjectInfo("file:///lake/x", 1, "v")]
        assert [c.chunk_id for c in await ledger.chunks("b-1")] == ["0"]

    async def test_finishing_an_unknown_batch_is_an_error(self, ledger: Any) -> None:
        with pytest.raises(LedgerError):
            await ledger.finish_batch("nope", BatchState.COMPLETE, {})
        with pytest.raises(LedgerError):
            await ledger.set_objects("nope", [])

    async def test_returned_records_are_copies(self, ledger: Any) -> None:
        record = await ledger.start_batch(make_message("b-1"))
        record.routes["x"] = RouteStats(read=1)
        record.message["uri"] = "changed"
        await ledger.save_chunks([make_chunk("b-1", "0")])
        (chunk,) = await ledger.chunks("b-1")
        chunk.state = ChunkState.DELIVERED

        stored = await ledger.get_batch("b-1")
        assert stored.routes == {}
        assert stored.message["uri"] != "changed"
        assert (await ledger.chunks("b-1"))[0].state == ChunkState.PENDING

    # -- listing -------------------------------------------------------------------------

    async def test_list_batches_is_most_recent_first_and_limited(self, ledger: Any) -> None:
        for batch_id in ("b-1", "b-2", "b-3"):
            await ledger.start_batch(make_message(batch_id))

        assert [b.batch_id for b in await ledger.list_batches()] == ["b-3", "b-2", "b-1"]
        assert [b.batch_id for b in await ledger.list_batches(limit=2)] == ["b-3", "b-2"]

    async def test_list_batches_order_is_by_creation_not_by_restart(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.start_batch(make_message("b-2"))
        await ledger.start_batch(make_message("b-1"))  # a resume does not make it newer

        assert [b.batch_id for b in await ledger.list_batches()] == ["b-2", "b-1"]

    async def test_list_batches_filters_by_dataset_state_and_since(self, ledger: Any) -> None:
        a = await ledger.start_batch(make_message("a", dataset="churn"))
        b = await ledger.start_batch(make_message("b", dataset="upsell"))
        c = await ledger.start_batch(make_message("c", dataset="churn"))
        await ledger.finish_batch("c", BatchState.COMPLETE, {})

        by_dataset = await ledger.list_batches(dataset="churn")
        assert [r.batch_id for r in by_dataset] == ["c", "a"]
        by_state = await ledger.list_batches(state=BatchState.RUNNING)
        assert [r.batch_id for r in by_state] == ["b", "a"]
        both = await ledger.list_batches(dataset="churn", state=BatchState.COMPLETE)
        assert [r.batch_id for r in both] == ["c"]

        since = b.created_at
        recent = await ledger.list_batches(since=since)
        assert [r.batch_id for r in recent] == [
            r.batch_id for r in (c, b, a) if r.created_at >= since
        ]
        assert "b" in [r.batch_id for r in recent]
        assert await ledger.list_batches(since=datetime.now(UTC) + timedelta(hours=1)) == []
        long_ago = datetime.now(UTC) - timedelta(days=1)
        assert len(await ledger.list_batches(since=long_ago)) == 3
        assert await ledger.list_batches(dataset="nope") == []

    # -- chunks --------------------------------------------------------------------------

    async def test_chunk_rows_round_trip_every_field(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        full = make_chunk(
            "b-1",
            "3",
            state=ChunkState.DEAD_LETTERED,
            records=5000,
            raw_size=4_194_304,
            kind="rejects",
            target="dead",
            attempts=6,
            last_error="HTTP 503 from crm_api",
            location="file:///var/dead-letter/b-1/to_crm/3.ndjson.gz",
            checksum="ab" * 32,
        )
        bare = make_chunk("b-1", "4")
        before = datetime.now(UTC) - timedelta(seconds=5)

        await ledger.save_chunks([full, bare])

        got_full, got_bare = await ledger.chunks("b-1")
        assert _aware(got_full.updated_at) and got_full.updated_at >= before
        got_full.updated_at = got_bare.updated_at = None
        assert got_full == full
        assert got_bare == bare

    async def test_save_chunks_upserts_by_batch_route_and_chunk_id(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.save_chunks([make_chunk("b-1", "0"), make_chunk("b-1", "1")])

        delivered = make_chunk("b-1", "0", state=ChunkState.DELIVERED, target="crm_api", attempts=2)
        await ledger.save_chunks([delivered, make_chunk("b-1", "0", route="to_lake")])

        rows = {(c.route, c.chunk_id): c for c in await ledger.chunks("b-1")}
        assert set(rows) == {("to_crm", "0"), ("to_crm", "1"), ("to_lake", "0")}
        assert rows["to_crm", "0"].state == ChunkState.DELIVERED
        assert rows["to_crm", "0"].target == "crm_api"
        assert rows["to_crm", "0"].attempts == 2
        assert rows["to_crm", "1"].state == ChunkState.PENDING

    async def test_chunks_are_ordered_by_route_then_natural_chunk_id(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        ids = ["10", "8", "7.1", "2", "7", "7.0", "7.1.0", "1", "0"]
        await ledger.save_chunks(
            [make_chunk("b-1", i, route="z_route") for i in ids]
            + [make_chunk("b-1", i, route="a_route") for i in ("11", "9")]
        )

        order = [(c.route, c.chunk_id) for c in await ledger.chunks("b-1")]

        assert order == [("a_route", "9"), ("a_route", "11")] + [
            ("z_route", i) for i in ("0", "1", "2", "7", "7.0", "7.1", "7.1.0", "8", "10")
        ]

    async def test_chunks_can_be_read_for_one_route(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.start_batch(make_message("b-2"))
        await ledger.save_chunks(
            [
                make_chunk("b-1", "0", route="to_crm"),
                make_chunk("b-1", "0", route="to_lake"),
                make_chunk("b-2", "0", route="to_crm"),
            ]
        )

        only = await ledger.chunks("b-1", route="to_lake")

        assert [(c.batch_id, c.route) for c in only] == [("b-1", "to_lake")]
        assert len(await ledger.chunks("b-1")) == 2
        assert await ledger.chunks("unknown") == []

    async def test_save_chunks_of_an_unknown_batch_writes_nothing(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))

        with pytest.raises(LedgerError):
            await ledger.save_chunks([make_chunk("b-1", "0"), make_chunk("nope", "0")])

        assert await ledger.chunks("b-1") == []
        await ledger.save_chunks([])  # nothing to do is fine

    async def test_concurrent_saves_through_two_handles_all_land(
        self, ledger: Any, replica: Any
    ) -> None:
        await ledger.start_batch(make_message("b-1"))

        await asyncio.gather(
            *(
                (ledger if i % 2 else replica).save_chunks([make_chunk("b-1", str(i))])
                for i in range(50)
            )
        )

        assert [c.chunk_id for c in await replica.chunks("b-1")] == [str(i) for i in range(50)]

    # -- leases --------------------------------------------------------------------------

    async def test_lease_is_exclusive_until_released(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))

        assert await ledger.acquire_lease("b-1", "daemon-a", 60)
        assert not await ledger.acquire_lease("b-1", "replay-b", 60)

        record = await ledger.get_batch("b-1")
        assert record.lease_owner == "daemon-a"
        assert _aware(record.lease_expires)
        assert record.lease_expires > datetime.now(UTC) + timedelta(seconds=30)

        await ledger.release_lease("b-1", "daemon-a")
        assert (await ledger.get_batch("b-1")).lease_owner is None
        assert await ledger.acquire_lease("b-1", "replay-b", 60)

    async def test_the_same_owner_renews_its_lease(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        assert await ledger.acquire_lease("b-1", "daemon-a", 1)
        first = (await ledger.get_batch("b-1")).lease_expires

        assert await ledger.acquire_lease("b-1", "daemon-a", 600)

        assert (await ledger.get_batch("b-1")).lease_expires > first

    async def test_an_expired_lease_can_be_taken_over(self, ledger: Any, clock: Clock) -> None:
        await ledger.start_batch(make_message("b-1"))
        assert await ledger.acquire_lease("b-1", "crashed-daemon", 30)

        clock.advance(29)
        assert not await ledger.acquire_lease("b-1", "daemon-b", 60)
        clock.advance(2)  # the crashed daemon never renewed: its lease ran out

        assert await ledger.acquire_lease("b-1", "daemon-b", 60)
        record = await ledger.get_batch("b-1")
        assert record.lease_owner == "daemon-b"
        assert record.lease_expires > clock() + timedelta(seconds=55)

    async def test_release_by_another_owner_does_nothing(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        assert await ledger.acquire_lease("b-1", "daemon-a", 60)

        await ledger.release_lease("b-1", "replay-b")
        await ledger.release_lease("unknown-batch", "daemon-a")

        assert (await ledger.get_batch("b-1")).lease_owner == "daemon-a"
        assert not await ledger.acquire_lease("b-1", "replay-b", 60)

    async def test_restart_and_finish_keep_the_lease(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        assert await ledger.acquire_lease("b-1", "daemon-a", 60)

        await ledger.finish_batch("b-1", BatchState.COMPLETE, {})
        await ledger.start_batch(make_message("b-1"))

        assert (await ledger.get_batch("b-1")).lease_owner == "daemon-a"

    async def test_a_lease_can_be_taken_before_the_batch_exists(self, ledger: Any) -> None:
        # the engine leases a batch first, then start_batch creates it
        assert await ledger.acquire_lease("b-1", "daemon-a", 60)
        assert not await ledger.acquire_lease("b-1", "replay-b", 60)

        await ledger.start_batch(make_message("b-1"))

        assert (await ledger.get_batch("b-1")).lease_owner == "daemon-a"
        await ledger.release_lease("b-1", "daemon-a")
        assert await ledger.acquire_lease("b-1", "replay-b", 60)

    async def test_concurrent_lease_requests_have_one_winner(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))

        wins = await asyncio.gather(
            *(ledger.acquire_lease("b-1", f"owner-{i}", 60) for i in range(20))
        )

        assert wins.count(True) == 1

    async def test_two_handles_racing_for_leases_have_exactly_one_winner(
        self, ledger: Any, replica: Any
    ) -> None:
        batch_ids = [f"race-{i}" for i in range(10)]
        for batch_id in batch_ids[::2]:  # half exist already, half are leased before start
            await ledger.start_batch(make_message(batch_id))

        results = await asyncio.gather(
            *(
                handle.acquire_lease(batch_id, owner, 60)
                for batch_id in batch_ids
                for handle, owner in ((ledger, "replica-a"), (replica, "replica-b"))
            )
        )

        for i, batch_id in enumerate(batch_ids):
            won_a, won_b = results[2 * i], results[2 * i + 1]
            assert won_a != won_b, batch_id
            await ledger.start_batch(make_message(batch_id))
            holder = "replica-a" if won_a else "replica-b"
            assert (await replica.get_batch(batch_id)).lease_owner == holder

    # -- lifecycle -----------------------------------------------------------------------

    async def test_close_is_idempotent_and_a_closed_ledger_raises_adapter_closed(
        self, ledger: Any
    ) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.aclose()
        await ledger.aclose()

        with pytest.raises(AdapterClosed):
            await ledger.get_batch("b-1")
        with pytest.raises(AdapterClosed):
            await ledger.save_chunks([make_chunk("b-1", "0")])
        with pytest.raises(AdapterClosed):
            await ledger.acquire_lease("b-1", "daemon-a", 60)
        with pytest.raises(AdapterClosed):
            await ledger.ping()
