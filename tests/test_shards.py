"""Sharded batches in one daemon (``sender.shards``): a batch of more than ``shard_objects``
objects is planned in shards, one message each on the daemon's own queue, delivered side by
side up to ``max_batches``, and completed once. Several replicas: tests/test_scale_out.py."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from sender.config import AppConfig
from sender.errors import MessageError, SourceError
from sender.model import BatchState, ChunkState, idempotency_key
from sender.routing import RouteRun
from sender.shards import SHARD_STRIDE, shard_of, shard_sizes
from sender.testing import make_chunk
from sender.testing.receiver import Receiver
from sender_adapters.sqlite import SqliteLedger
from tests.brokers import churn_batch, running_daemon, watch_logs, write_daemon_config

SPOOL = 'type = "spool"\npath = "queue"\npoll_s = "50ms"'


def test_a_plan_cuts_consecutive_objects_and_the_last_shard_takes_the_rest() -> None:
    assert shard_sizes(48, 16) == [16, 16, 16]
    assert shard_sizes(40, 16) == [16, 16, 8]
    assert shard_sizes(16, 16) == []  # not bigger than one shard: sent whole
    assert shard_sizes(500, 0) == []  # sharding off


def test_a_chunk_id_says_its_shard() -> None:
    assert shard_of("7") == 0
    assert shard_of(str(2 * SHARD_STRIDE + 3)) == 2
    assert shard_of(f"{SHARD_STRIDE + 3}.0.1") == 1  # a piece of a split chunk
    assert shard_of(f"r{3 * SHARD_STRIDE}") == 3  # a rejects file
    assert shard_of("nonsense") == -1


def shard_chunk_ids(sizes: list[int]) -> set[str]:
    """One chunk per part file (5 records of 5 a chunk), numbered from each shard's base."""
    return {str(k * SHARD_STRIDE + i) for k, size in enumerate(sizes) for i in range(size)}


async def spool_daemon_config(
    tmp_path: Path, receiver: Receiver, max_batches: int, trigger: str = SPOOL
) -> Path:
    config = write_daemon_config(
        tmp_path / "daemon", receiver=receiver.url, trigger=trigger, max_batches=max_batches
    )
    # the batches are written beside the daemon's folder; a remote trigger may name them
    lake = f'allow_uris = ["{tmp_path / "lake"}/"]'
    config.write_text(config.read_text().replace("[daemon]\n", f"[daemon]\n{lake}\n", 1))
    return config


# the http trigger's inbox keeps each shard message under its own id (not the batch's)
@pytest.mark.parametrize("trigger", [SPOOL, 'type = "http"\npoll = "100ms"'], ids=["spool", "http"])
async def test_one_daemon_delivers_the_shards_side_by_side_and_completes_once(
    tmp_path: Path, receiver: Receiver, trigger: str
) -> None:
    config = await spool_daemon_config(tmp_path, receiver, max_batches=3, trigger=trigger)
    message = churn_batch(tmp_path, "b-big", records=200, parts=40)
    receiver.slow(0.05)  # keep shards in flight long enough to overlap
    with watch_logs() as logs:
        async with running_daemon(config) as daemon:
            await daemon.accept(message)
            async with asyncio.timeout(60):
                await logs.wait_for("batch.finished", batch_id="b-big")
                # parent + 3 shards, all acked
                await daemon.wait_settled(4)
            settled = list(daemon.settled)
            # sender replay cuts a shard's chunk again exactly as it was sent
            record = await daemon.app.ledger.get_batch("b-big")
            assert record is not None and record.objects is not None
            wanted = [str(SHARD_STRIDE + 3), str(2 * SHARD_STRIDE + 7)]
            recut = [
                raw
                async for raw in daemon.engine.recreate_chunks(
                    message, "churn", record.objects, wanted
                )
            ]

    assert [s.verb for s in settled] == ["ack"] * 4
    events = logs.events
    finished = [e for e in events if e["event"] == "batch.finished"]
    assert len(finished) == 1 and finished[0]["state"] == "complete"
    assert finished[0]["read"] == finished[0]["delivered"] == 200
    # up to max_batches at once: a second shard started before the first one finished
    order = [
        e["event"]
        for e in events
        if e["event"] in ("batch.started", "shard.finished") and e.get("shard") is not None
    ]
    assert order[:2] == ["batch.started", "batch.started"], order
    # the parent only planned: batch.started is logged by the shards that send

    chunks = {r.headers["X-Sender-Chunk"] for r in receiver.accepted}
    assert chunks == shard_chunk_ids([16, 16, 8])
    ids = collections.Counter(rec["id"] for rec in receiver.unique_records())
    assert len(ids) == 200 and set(ids.values()) == {1}
    for request in receiver.accepted:  # keys as a whole batch gives them, by chunk id
        chunk = request.headers["X-Sender-Chunk"]
        assert request.idempotency_key == idempotency_key("b-big", "churn", chunk)

    sent = {r.headers["X-Sender-Chunk"]: r.records for r in receiver.accepted}
    assert [raw.chunk_id for raw in recut] == wanted
    for raw in recut:
        assert [orjson.loads(line) for line in raw.lines] == sent[raw.chunk_id]

    async with SqliteLedger(tmp_path / "daemon" / "ledger.db") as ledger:
        record = await ledger.get_batch("b-big")
        plan = await ledger.shards("b-big")
    assert record is not None and record.state is BatchState.COMPLETE
    route = record.routes["churn"]
    assert (route.read, route.delivered, route.chunks) == (200, 200, 40) and route.reconciled
    assert [(s.first_object, s.objects, s.state) for s in plan] == [
        (0, 16, "complete"),
        (16, 16, "complete"),
        (32, 8, "complete"),
    ]
    assert all(s.published for s in plan)


async def test_a_shard_of_an_unknown_batch_or_beyond_the_plan_is_rejected_and_the_daemon_goes_on(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await spool_daemon_config(tmp_path, receiver, max_batches=2)
    planned = churn_batch(tmp_path, "b-planned", records=10, parts=2)
    async with SqliteLedger(tmp_path / "daemon" / "ledger.db") as ledger:
        await ledger.start_batch(planned)
        await ledger.plan_shards("b-planned", [1, 1])
    small = churn_batch(tmp_path, "b-small", records=10, parts=2)
    with watch_logs() as logs:
        async with running_daemon(config) as daemon:
            await daemon.accept(churn_batch(tmp_path, "b-nope").model_copy(update={"shard": 0}))
            await daemon.wait_settled(1)
            await daemon.accept(planned.model_copy(update={"shard": 7}))
            await daemon.wait_settled(2)
            await daemon.accept(small)  # still taking messages
            async with asyncio.timeout(30):
                settled = await daemon.wait_settled(3)

    assert [(s.batch_id, s.verb) for s in settled] == [
        ("b-nope", "reject"),
        ("b-planned", "reject"),
        ("b-small", "ack"),
    ]
    reasons = [e["reason"] for e in logs.events if e["event"] == "trigger.rejected"]
    assert reasons == [
        "shard 0 of batch b-nope: no such batch in the ledger",
        "shard 7 of batch b-planned: the batch has 2 shards (0 to 1)",
    ]
    assert {r.headers["X-Sender-Batch"] for r in receiver.accepted} == {"b-small"}


async def test_a_sharded_batch_is_not_sent_whole_outside_the_daemon(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await spool_daemon_config(tmp_path, receiver, max_batches=1)
    planned = churn_batch(tmp_path, "b-planned", records=10, parts=2)
    async with SqliteLedger(tmp_path / "daemon" / "ledger.db") as ledger:
        await ledger.start_batch(planned)
        await ledger.plan_shards("b-planned", [1, 1])
    async with running_daemon(config) as daemon:
        with pytest.raises(MessageError, match="b-planned is sharded"):
            await daemon.engine.run_batch(planned)  # as sender send runs it
    assert receiver.accepted == []


async def test_with_sharding_off_a_big_batch_is_sent_whole(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await spool_daemon_config(tmp_path, receiver, max_batches=1)
    text = config.read_text().replace("[daemon]\n", "[daemon]\nshard_objects = 0\n", 1)
    config.write_text(text)
    async with running_daemon(config) as daemon:
        await daemon.accept(churn_batch(tmp_path, "b-big", records=100, parts=20))
        async with asyncio.timeout(30):
            (settled,) = await daemon.wait_settled(1)
    assert settled.verb == "ack"
    assert {r.headers["X-Sender-Chunk"] for r in receiver.accepted} == {str(i) for i in range(20)}


async def test_status_shows_the_shards_their_owners_and_progress(
    tmp_path: Path, receiver: Receiver
) -> None:
    from tests.test_cli import sender

    config = await spool_daemon_config(tmp_path, receiver, max_batches=2)
    planned = churn_batch(tmp_path, "b-planned", records=10, parts=2)
    async with SqliteLedger(tmp_path / "daemon" / "ledger.db") as ledger:
        await ledger.start_batch(planned)
        await ledger.plan_shards("b-planned", [1, 1])
        await ledger.start_shard("b-planned", 1)
        await ledger.acquire_lease("b-planned/1", "host-b:7:1.abc", 600)
        await ledger.save_chunks(
            [
                make_chunk(
                    "b-planned",
                    str(SHARD_STRIDE),
                    route="churn",
                    state=ChunkState.DELIVERED,
                    records=5,
                )
            ]
        )

    code, out, _ = await sender("status", "b-planned", "--json", "-c", str(config))
    assert code == 0
    shards = orjson.loads(out)["shards"]
    assert [(s["shard"], s["state"], s["owner"]) for s in shards] == [
        (0, "pending", None),
        (1, "pending", "host-b:7:1.abc"),
    ]
    assert shards[1]["progress"] == {"chunks": 1, "settled": 1, "delivered": 5}
    assert shards[1]["runs"] == 1

    code, out, _ = await sender("status", "b-planned", "-c", str(config))
    assert code == 0
    assert "shards (2)" in out
    row = next(line for line in out.splitlines() if "host-b:7:1.abc" in line)
    assert "running" in row and "1/1" in row


async def test_a_shard_that_fails_fails_the_batch_once_and_its_message_is_rejected(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await spool_daemon_config(tmp_path, receiver, max_batches=1)
    text = config.read_text().replace(
        'dead_letter = "dead"', 'dead_letter = "dead"\non_bad_record = "fail"'
    )
    config.write_text(text)
    message = churn_batch(tmp_path, "b-bad", records=200, parts=40)
    # a bad line in shard 2 (objects 32 to 39)
    with (tmp_path / "lake" / "b-bad" / "part-00035-c000.json").open("ab") as part:
        part.write(b"not json\n")
    with watch_logs() as logs:
        async with running_daemon(config) as daemon:
            await daemon.accept(message)
            async with asyncio.timeout(60):
                settled = await daemon.wait_settled(4)

    verbs = {s.message_id: s.verb for s in settled}
    assert len(verbs) == 4 and "reject" in verbs.values()
    finished = [e for e in logs.events if e["event"] == "batch.finished"]
    assert [e["state"] for e in finished] == ["failed"]
    assert finished[0]["error"].startswith("shard 2: bad record at ")
    async with SqliteLedger(tmp_path / "daemon" / "ledger.db") as ledger:
        record = await ledger.get_batch("b-bad")
        plan = await ledger.shards("b-bad")
    assert record is not None and record.state is BatchState.FAILED
    assert plan[2].state == "failed" and "part-00035" in (plan[2].error or "")


def test_a_shard_that_would_cut_into_the_next_shards_numbers_fails(
    write_config: Callable[[str], AppConfig],
) -> None:
    config = write_config(
        """
        [destinations.dead]
        type = "local"
        path = "dead"

        [routes.churn]
        datasets = ["churn"]
        chunk = { records = 1 }
        targets = ["dead"]
        """
    )
    base = 3 * SHARD_STRIDE
    run = RouteRun("churn", config.routes["churn"], [], cast(Any, None), {}, base=base)
    run.ceiling = base + 2  # as if a shard held two chunks' worth of ids

    cut = run.feed_tombstones([b"{}", b"{}"]) + run.feed_tombstones([b"{}"])
    assert [raw.chunk_id for raw in cut] == [str(base), str(base + 1)]
    with pytest.raises(SourceError, match="a shard cut more than 2 chunks"):
        run.feed_tombstones([b"{}"])


async def test_a_parent_delivered_again_after_planning_publishes_its_shards_once_more(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await spool_daemon_config(tmp_path, receiver, max_batches=2)
    message = churn_batch(tmp_path, "b-again", records=200, parts=40)
    # a replica planned the batch and died before its shard messages were all published
    async with SqliteLedger(tmp_path / "daemon" / "ledger.db") as ledger:
        await ledger.start_batch(message)
        await ledger.plan_shards("b-again", [16, 16, 8])
    with watch_logs() as logs:
        async with running_daemon(config) as daemon:
            await daemon.accept(message)  # the broker's redelivery of the parent
            async with asyncio.timeout(60):
                await logs.wait_for("batch.finished", batch_id="b-again")
                await daemon.wait_settled(4)
            sent = len(receiver.accepted)
            # a shard message delivered again once complete, and the parent again: acked,
            # nothing sent
            await daemon.accept(message.model_copy(update={"shard": 1}))
            await daemon.accept(message)
            async with asyncio.timeout(30):
                settled = await daemon.wait_settled(6)

    assert [s.verb for s in settled] == ["ack"] * 6
    assert len(receiver.accepted) == sent == 40
    assert {r.headers["X-Sender-Chunk"] for r in receiver.accepted} == shard_chunk_ids([16, 16, 8])
    (sharded,) = logs.find("trigger.sharded", batch_id="b-again")
    assert sharded["published"] == 3
    assert len(logs.find("batch.finished", batch_id="b-again")) == 1
