"""Contract suites that every implementation of a port must pass, built-in or third-party.

One suite per port: ``SourceContract`` (``sender.testing.source``), ``DestinationContract``
(``sender.testing.destination``), ``TriggerContract`` (``sender.testing.trigger``) and
``LedgerContract``; each module's docstring says which fixtures its suite needs.

To check a ledger, subclass ``LedgerContract`` and define a ``ledger`` fixture yielding an
opened ledger (a fresh, empty one per test)::

    import pytest
    from sender.testing import LedgerContract
    from acme_ledger import AcmeLedger

    @pytest.fixture
    async def ledger():
        async with AcmeLedger("acme://test") as ledger:
            yield ledger

    class TestAcmeLedger(LedgerContract):
        pass

The tests need pytest-asyncio (the class carries ``pytest.mark.asyncio``; in strict mode
declare the fixture with ``pytest_asyncio.fixture``). Besides the ``Ledger`` port, a ledger is
expected to offer ``record_replay(batch_id, who, selectors, outcome)`` and
``replays(batch_id)``, the audit trail of ``sender replay``. Two tests wait 50 ms of real
time for a 10 ms lease to expire.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ..errors import AdapterClosed, LedgerError
from ..model import BatchState, ChunkState, ObjectInfo, TriggerMessage, idempotency_key
from ..ports import ChunkRecord, Ledger, RouteStats
from .destination import DestinationContract, make_encoded_chunk
from .source import SourceContract
from .trigger import TriggerContract

__all__ = [
    "DestinationContract",
    "LedgerContract",
    "SourceContract",
    "TriggerContract",
    "make_chunk",
    "make_encoded_chunk",
    "make_message",
]


def make_message(batch_id: str = "b-1", dataset: str = "churn", **extra: Any) -> TriggerMessage:
    """A valid trigger message for ``batch_id`` (``uri`` defaults to a local folder)."""
    fields: dict[str, Any] = {"uri": f"file:///lake/{dataset}/{batch_id}", **extra}
    return TriggerMessage(batch_id=batch_id, dataset=dataset, **fields)


def make_chunk(
    batch_id: str,
    chunk_id: str,
    *,
    route: str = "to_crm",
    state: ChunkState = ChunkState.PENDING,
    **extra: Any,
) -> ChunkRecord:
    """A chunk row with its real idempotency key; ``extra`` sets any other field."""
    return ChunkRecord(
        batch_id=batch_id,
        route=route,
        chunk_id=chunk_id,
        state=state,
        idempotency_key=idempotency_key(batch_id, route, chunk_id),
        **extra,
    )


def _aware(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


@pytest.mark.asyncio
class LedgerContract:
    """What the core relies on from any ``Ledger``. Needs a ``ledger`` fixture (see module)."""

    # -- batches -------------------------------------------------------------------------

    async def test_ledger_implements_the_port(self, ledger: Any) -> None:
        assert isinstance(ledger, Ledger)
        await ledger.ping()

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

    async def test_concurrent_saves_all_land(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))

        await asyncio.gather(*(ledger.save_chunks([make_chunk("b-1", str(i))]) for i in range(50)))

        assert [c.chunk_id for c in await ledger.chunks("b-1")] == [str(i) for i in range(50)]

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

    async def test_an_expired_lease_can_be_taken_over(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        assert await ledger.acquire_lease("b-1", "crashed-daemon", 0.01)

        await asyncio.sleep(0.05)  # real time must pass: the ledger judges expiry by its clock

        assert await ledger.acquire_lease("b-1", "daemon-b", 60)
        assert (await ledger.get_batch("b-1")).lease_owner == "daemon-b"

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

    # -- replays -------------------------------------------------------------------------

    async def test_replays_are_recorded_oldest_first(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.start_batch(make_message("b-2"))
        selectors = {"route": "to_crm", "states": ["dead_lettered"], "to": None, "dry_run": True}

        await ledger.record_replay("b-1", "alice", selectors, {"chunks": 3, "delivered": 0})
        await ledger.record_replay("b-1", "bob", {"route": None}, {"chunks": 1, "delivered": 1})
        await ledger.record_replay("b-2", "carol", {}, {})

        first, second = await ledger.replays("b-1")
        assert first["who"] == "alice"
        assert first["batch_id"] == "b-1"
        assert first["selectors"] == selectors
        assert first["outcome"] == {"chunks": 3, "delivered": 0}
        assert _aware(first["at"])
        assert second["who"] == "bob"
        assert second["id"] > first["id"]
        assert second["at"] >= first["at"]
        assert [r["who"] for r in await ledger.replays("b-2")] == ["carol"]
        assert await ledger.replays("unknown") == []

    async def test_replay_of_an_unknown_batch_is_an_error(self, ledger: Any) -> None:
        with pytest.raises(LedgerError):
            await ledger.record_replay("nope", "alice", {}, {})

    # -- the inbox (http trigger) --------------------------------------------------------

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

    async def test_an_expired_claim_is_taken_by_another_owner(self, ledger: Any) -> None:
        await ledger.enqueue_message("m-1", b"x")
        await ledger.claim_messages("crashed-daemon", 1, 0.01)

        await asyncio.sleep(0.05)  # real time must pass: the ledger judges expiry by its clock

        (taken,) = await ledger.claim_messages("daemon-b", 1, 60)
        assert (taken.owner, taken.deliveries) == ("daemon-b", 2)
        assert not await ledger.extend_message("m-1", "crashed-daemon", 60)

    async def test_settling_an_unknown_message_is_an_error(self, ledger: Any) -> None:
        with pytest.raises(LedgerError):
            await ledger.settle_message("unknown", "done")

    # -- lifecycle -----------------------------------------------------------------------

    async def test_close_is_idempotent_and_a_closed_ledger_refuses_work(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.aclose()
        await ledger.aclose()

        with pytest.raises(AdapterClosed):
            await ledger.get_batch("b-1")
        with pytest.raises(AdapterClosed):
            await ledger.save_chunks([make_chunk("b-1", "0")])
        with pytest.raises(AdapterClosed):
            await ledger.ping()
