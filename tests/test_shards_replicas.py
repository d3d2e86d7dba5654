"""Sharded batches across replicas, for real: three ``sender run`` processes share one
RabbitMQ queue and one PostgreSQL ledger. A 48-file batch is planned in three shards of 16
files; the shard messages go on the same queue, so the replicas that are free take them,
and the batch completes once (one ``batch.finished``, one completion event). One replica
killed (SIGKILL) mid-shard: the broker redelivers its shard message, a survivor takes the
shard's lease over and re-sends only the chunk that was in flight, under its original key.

Needs the machine's RabbitMQ and PostgreSQL (see tests/test_scale_out.py, whose fixtures
these are).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import orjson
import pytest

from sender.model import BatchState, idempotency_key
from sender.shards import SHARD_STRIDE, shard_of
from sender.testing.receiver import ReceivedRequest, Receiver
from sender_adapters.postgres import PostgresLedger
from tests.brokers import AMQP_URL, DaemonProcess, churn_batch
from tests.test_scale_out import (
    _require_rabbitmq,
    first_event,
    publish,
    replica_config,
    shared_ledger,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.slow

BATCH = "b-48"
SHARDS = [16, 16, 16]  # 48 part files, 5 records each: one chunk per part


def expected_chunks() -> set[str]:
    return {str(k * SHARD_STRIDE + i) for k, size in enumerate(SHARDS) for i in range(size)}


def data_requests(receiver: Receiver) -> list[ReceivedRequest]:
    return [
        r
        for r in receiver.accepted
        if r.headers.get("X-Sender-Batch") == BATCH and r.headers.get("X-Sender-Route") == "churn"
    ]


@asynccontextmanager
async def three_replicas(
    tmp_path: Path, receiver: Receiver, queue: str, ledger: str, daemon_extra: str = ""
) -> AsyncIterator[list[DaemonProcess]]:
    await _require_rabbitmq()
    replicas = [
        DaemonProcess(
            replica_config(
                tmp_path / name,
                ledger=ledger,
                queue=queue,
                receiver=receiver,
                daemon_extra=daemon_extra,
            )
        )
        for name in ("replica-a", "replica-b", "replica-c")
    ]
    try:
        for replica in replicas:
            await replica.start()
        async with asyncio.timeout(60):
            for replica in replicas:
                await replica.wait_for_event("amqp.connected")
        yield replicas
    finally:
        for replica in replicas:
            await replica.kill()


async def ready_messages(queue: str) -> int:
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


def count(replicas: list[DaemonProcess], event: str, **fields: object) -> int:
    return sum(len(r.find(event, **fields)) for r in replicas)


async def test_three_replicas_share_a_48_file_batch_and_complete_it_once(
    tmp_path: Path,
    receiver: Receiver,
    amqp_queue: str,
    shared_ledger: str,  # noqa: F811
) -> None:
    notify = 'notify = ["events"]'
    async with three_replicas(tmp_path, receiver, amqp_queue, shared_ledger, notify) as replicas:
        receiver.slow(0.1)  # a shard takes a second or two: long enough for others to start
        message = churn_batch(tmp_path, BATCH, records=240, parts=48)
        await publish(amqp_queue, [message])
        async with asyncio.timeout(80):
            finisher = await first_event(replicas, "batch.finished", batch_id=BATCH)
            await receiver.wait_for(
                lambda r: any(x.headers.get("X-Sender-Route") == "_events" for x in r.accepted)
            )
            # the receiver has the event a moment before the outbox records it delivered:
            # stopped in between, the event is kept and sent again later (at least once)
            async with PostgresLedger(shared_ledger) as ledger:
                for _ in range(800):  # within the 80 s above
                    if not await ledger.pending_events():
                        break
                    await asyncio.sleep(0.1)
        receiver.slow(0)
        for replica in replicas:
            code, _ = await replica.stop()
            assert code == 0, replica.tail()

    assert finisher.find("batch.finished", batch_id=BATCH)[0]["state"] == "complete"
    assert count(replicas, "batch.finished", batch_id=BATCH) == 1
    workers = [r for r in replicas if r.find("batch.started", batch_id=BATCH)]
    assert len(workers) >= 2, "one replica did every shard"
    # every record once, by id; every chunk once, under its key
    requests = data_requests(receiver)
    assert {r.headers["X-Sender-Chunk"] for r in requests} == expected_chunks()
    keys = collections.Counter(r.idempotency_key for r in requests)
    assert max(keys.values()) == 1, "a chunk was delivered twice"
    ids = collections.Counter(rec["id"] for r in requests for rec in r.records)
    assert len(ids) == 240 and set(ids.values()) == {1}
    # one completion event, telling the whole batch
    events = {
        r.idempotency_key: orjson.loads(r.body)
        for r in receiver.accepted
        if r.headers.get("X-Sender-Route") == "_events"
    }
    assert len(events) == 1
    (event,) = events.values()
    assert event["type"] == "sender.batch.completed"
    assert event["data"]["routes"]["churn"]["delivered"] == 240
    # the parent and its three shard messages acked: nothing is left on the queue
    assert count(replicas, "trigger.sharded", batch_id=BATCH, published=3) == 1
    # trigger.acked once, when the batch is complete; the other shards' acks are shard.acked
    assert count(replicas, "trigger.acked", batch_id=BATCH) == 1
    acked = [
        e["shard"]
        for r in replicas
        for name in ("trigger.acked", "shard.acked")
        for e in r.find(name, batch_id=BATCH)
    ]
    assert sorted(acked) == [0, 1, 2]
    assert await ready_messages(amqp_queue) == 0

    async with PostgresLedger(shared_ledger) as ledger:
        record = await ledger.get_batch(BATCH)
        plan = await ledger.shards(BATCH)
        events_kept = await ledger.pending_events()
    assert record is not None and record.state is BatchState.COMPLETE
    route = record.routes["churn"]
    assert (route.read, route.delivered, route.chunks) == (240, 240, 48) and route.reconciled
    assert [s.state for s in plan] == ["complete"] * 3
    assert events_kept == []  # delivered


async def test_a_replica_killed_mid_shard_loses_nothing_and_resends_only_its_chunk_in_flight(
    tmp_path: Path,
    receiver: Receiver,
    amqp_queue: str,
    shared_ledger: str,  # noqa: F811
) -> None:
    async with three_replicas(tmp_path, receiver, amqp_queue, shared_ledger) as replicas:
        receiver.slow(0.3)
        await publish(amqp_queue, [churn_batch(tmp_path, BATCH, records=240, parts=48)])
        async with asyncio.timeout(40):
            holder = await first_event(replicas, "batch.started", batch_id=BATCH)
            shard = holder.find("batch.started", batch_id=BATCH)[0]["shard"]
            await receiver.wait_for(
                lambda r: (
                    sum(shard_of(x.headers["X-Sender-Chunk"]) == shard for x in data_requests(r))
                    >= 3
                )
            )
        await holder.kill()  # SIGKILL: its leases are left to expire, its messages come back
        async with PostgresLedger(shared_ledger) as ledger:
            recorded = {c.idempotency_key for c in await ledger.chunks(BATCH) if c.state.terminal}
        receiver.slow(0)
        survivors = [r for r in replicas if r is not holder]
        async with asyncio.timeout(60):
            await first_event(survivors, "batch.finished", batch_id=BATCH)
        for replica in survivors:
            code, _ = await replica.stop()
            assert code == 0, replica.tail()

    # the killed replica's shard was taken over by a survivor
    assert any(r.find("batch.started", batch_id=BATCH, shard=shard) for r in survivors)
    # once the dead replica's lease expired, or at once as it ran on this host
    assert any(
        r.find("batch.deferred", batch_id=BATCH)
        or r.find("lease.stale", batch_id=BATCH, shard=shard)
        for r in survivors
    )
    assert count(replicas, "batch.finished", batch_id=BATCH) == 1
    requests = data_requests(receiver)
    assert {r.headers["X-Sender-Chunk"] for r in requests} == expected_chunks()
    for request in requests:  # a re-sent chunk carries the key it was first sent with
        chunk = request.headers["X-Sender-Chunk"]
        assert request.idempotency_key == idempotency_key(BATCH, "churn", chunk)
    keys = collections.Counter(r.idempotency_key for r in requests)
    twice = {key for key, n in keys.items() if n > 1}
    assert recorded, "the killed replica got nowhere"
    # only chunks in flight at the kill (sent, not recorded) went again: the api
    # destination's concurrency is 1, and the dead replica ran at most max_batches shards
    assert twice.isdisjoint(recorded)
    assert len(twice) <= 2
    ids = {rec["id"] for r in requests for rec in r.records}
    assert len(ids) == 240
    assert await ready_messages(amqp_queue) == 0

    async with PostgresLedger(shared_ledger) as ledger:
        record = await ledger.get_batch(BATCH)
    assert record is not None and record.state is BatchState.COMPLETE
    assert record.routes["churn"].delivered == 240 and record.routes["churn"].reconciled
