"""Issue 17's two halves together, for real: three ``sender run`` replicas, each under its own
host name (so leases expire as between pods), share one RabbitMQ queue, one PostgreSQL ledger
and one receiver whose destination has ``rate_limit = "20/s"``; one large batch (96 part
files) is sharded over them. One replica is killed (SIGKILL) mid-shard. The receiver sees
the limit across replicas in every window of one and two seconds, the kill and the takeover
included; every record arrives, only chunks in flight at the kill go twice (under their
original keys); the batch completes once; the queue is left empty.

``pytest -s`` prints the rates the receiver saw, in total and per replica.
"""

from __future__ import annotations

import asyncio
import collections
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from sender.model import BatchState, idempotency_key
from sender.shards import SHARD_STRIDE, shard_of
from sender.testing.receiver import ReceivedRequest, Receiver
from sender_adapters.postgres import PostgresLedger
from tests.batches import prediction
from tests.brokers import churn_batch
from tests.replicas import NAMES, connected, limited_replica, rates, replica_of
from tests.test_cli import sender
from tests.test_rate_window import most_in_window
from tests.test_scale_out import (
    first_event,
    publish,
    shared_ledger,  # noqa: F401 (a fixture)
)
from tests.test_shards_replicas import count, ready_messages

pytestmark = pytest.mark.slow

RATE = 20.0  # requests per second for the three replicas together
LEASE_S = 3.0
BATCH = "b-96"
PARTS = 96  # 5 records each: one chunk per part, six shards of 16
SHARDS = PARTS // 16

_DAEMON = f'lease = "{LEASE_S:g}s"\nshard_objects = 16\nnotify = ["events"]'
_EVENTS = """
[destinations.events]
type = "http"
url = "{receiver}/events"
retry = {{ attempts = 3, initial = "10ms", max = "50ms", budget = "5s" }}
"""


def data_requests(receiver: Receiver) -> list[ReceivedRequest]:
    return [r for r in receiver.accepted if r.path == "/scores"]


def expected_chunks() -> set[str]:
    return {str(k * SHARD_STRIDE + i) for k in range(SHARDS) for i in range(16)}


def mid_shard(receiver: Receiver) -> tuple[str, int] | None:
    """Thirty requests in, a replica and a shard it is half way through (4 to 12 of 16)."""
    requests = data_requests(receiver)
    if len(requests) < 30:
        return None
    sent = collections.Counter(
        (replica_of(r), shard_of(r.headers["X-Sender-Chunk"])) for r in requests
    )
    halfway = [(n, who) for who, n in sent.items() if 4 <= n <= 12]
    return max(halfway)[1] if halfway else None


async def test_three_limited_replicas_share_a_sharded_batch_and_survive_a_killed_one(
    tmp_path: Path,
    receiver: Receiver,
    amqp_queue: str,
    shared_ledger: str,  # noqa: F811
) -> None:
    processes = [
        limited_replica(
            tmp_path / name,
            ledger=shared_ledger,
            queue=amqp_queue,
            receiver=receiver,
            rate=RATE,
            daemon_extra=_DAEMON,
            extra=_EVENTS.format(receiver=receiver.url),
            own_host=True,
        )
        for name in NAMES
    ]
    async with connected(processes) as replicas:
        await publish(amqp_queue, [churn_batch(tmp_path, BATCH, records=5 * PARTS, parts=PARTS)])
        async with asyncio.timeout(60):  # mid-shard, with all three sending for a while
            await receiver.wait_for(lambda r: mid_shard(r) is not None)
        name, shard = mid_shard(receiver) or ("?", -1)
        (holder,) = (r for r in replicas if r.config.parent.name == name)
        await holder.kill()  # SIGKILL: its leases are left to expire, its messages come back
        killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
        running = {e["shard"] for e in holder.find("batch.started", batch_id=BATCH)} - {
            e["shard"] for e in holder.find("shard.finished", batch_id=BATCH)
        }
        async with PostgresLedger(shared_ledger) as ledger:
            recorded = {c.chunk_id for c in await ledger.chunks(BATCH) if c.state.terminal}
            plan = {s.shard: s for s in await ledger.shards(BATCH)}
        # the dead replica still holds its shard's lease (it expires within LEASE_S)
        assert (plan[shard].owner or "").startswith(f"{name}:"), (name, shard, plan)
        survivors = [r for r in replicas if r is not holder]
        async with asyncio.timeout(90):
            finisher = await first_event(survivors, "batch.finished", batch_id=BATCH)
            await receiver.wait_for(lambda r: any(x.path == "/events" for x in r.accepted))
        code, out, err = await sender("status", BATCH, "--json", "-c", str(finisher.config))
        for replica in survivors:
            stopped, _ = await replica.stop()
            assert stopped == 0, replica.tail()
    assert code == 0, err

    requests = data_requests(receiver)
    after = [r for r in requests if r.received_at > killed_at]
    first = min(r.received_at for r in requests)
    print(f"\nall: {rates(requests)}\nafter the kill (+{killed_at - first:.2f}s): {rates(after)}")
    # one limit for the three, the kill and the takeover included
    arrivals = [r.received_at for r in receiver.requests if r.path == "/scores"]
    assert most_in_window(arrivals, 1.0) <= RATE * 1.1, rates(requests)
    assert most_in_window(arrivals, 2.0) <= 2 * RATE * 1.1, rates(requests)
    assert len(collections.Counter(replica_of(r) for r in requests)) == 3, rates(requests)

    # the killed replica's shard was taken over, after its lease expired (other hosts)
    (taken,) = [e for r in survivors for e in r.find("batch.started", batch_id=BATCH, shard=shard)]
    waited = (datetime.fromisoformat(taken["timestamp"]) - killed_wall).total_seconds()
    assert 1.0 <= waited <= LEASE_S + 30, waited  # not at once: the lease had to run out
    assert not [e for r in survivors for e in r.find("lease.stale")]
    print(f"shard {shard} taken over {waited:.1f}s after the kill (lease {LEASE_S:g}s)")
    # every chunk and every record arrived, each chunk under its one key
    assert {r.headers["X-Sender-Chunk"] for r in requests} == expected_chunks()
    for request in requests:
        chunk = request.headers["X-Sender-Chunk"]
        assert request.idempotency_key == idempotency_key(BATCH, "churn", chunk)
    ids = {rec["id"] for r in requests for rec in r.records}
    assert ids == {prediction(i)["id"] for i in range(5 * PARTS)}
    # only chunks in flight at the kill went twice: sent by the killed replica, in a shard
    # it was running, not recorded as settled, and sent again by a survivor after the kill
    sent = collections.defaultdict(list)
    for request in requests:
        sent[request.headers["X-Sender-Chunk"]].append(request)
    twice = {chunk: got for chunk, got in sent.items() if len(got) > 1}
    for chunk, got in twice.items():
        assert chunk not in recorded and shard_of(chunk) in running, (chunk, running)
        assert [replica_of(r) for r in got[:1]] == [name], [replica_of(r) for r in got]
        assert all(r.received_at > killed_at and replica_of(r) != name for r in got[1:])
    assert len(twice) <= 2 * 4  # max_batches shards x the destination's concurrency

    # the batch completed once: one batch.finished, one completion event
    assert count(replicas, "batch.finished", batch_id=BATCH) == 1
    events = [orjson.loads(r.body) for r in receiver.accepted if r.path == "/events"]
    assert [e["type"] for e in {r["id"]: r for r in events}.values()] == ["sender.batch.completed"]
    assert events[0]["data"]["routes"]["churn"]["delivered"] == 5 * PARTS
    # sender status: complete, reconciled, the shards with who ran them
    status = orjson.loads(out)
    assert status["state"] == "complete"
    assert len(status["shards"]) == SHARDS
    assert {s["state"] for s in status["shards"]} == {"complete"}
    assert status["reconciled"] and status["records"]["delivered"] == 5 * PARTS
    runs = {s["shard"]: s["runs"] for s in status["shards"]}
    assert runs[shard] >= 2, runs  # started by the killed replica, run again by a survivor
    assert status["runs"] >= 2  # the batch too: resumed after the kill
    # who delivered each shard, after every lease is gone: the retaken one, a survivor
    owners = {s["shard"]: (s["owner"] or "").split(":")[0] for s in status["shards"]}
    assert set(owners.values()) <= {r.config.parent.name for r in replicas}, owners
    assert len(set(owners.values())) >= 2 and owners[shard] != name, owners
    assert await ready_messages(amqp_queue) == 0

    async with PostgresLedger(shared_ledger) as ledger:
        record = await ledger.get_batch(BATCH)
    assert record is not None and record.state is BatchState.COMPLETE
    route = record.routes["churn"]
    assert (route.read, route.delivered, route.chunks) == (5 * PARTS, 5 * PARTS, PARTS)
    assert route.reconciled
