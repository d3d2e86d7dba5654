"""Scale-out, for real: two ``sender run`` processes consume one RabbitMQ queue and share one
PostgreSQL ledger. Batches are spread over both and every chunk is delivered once; when one
replica is killed (SIGKILL) mid-batch, the broker redelivers its message and the other replica
finishes the batch once the dead replica's lease has expired (here, on one host, the engine may
also see at once that the lease's owner process is gone). The lease expiry itself, across
ledger clients, is tested deterministically in tests/test_postgres_ledger.py.

Needs the machine's RabbitMQ (``$SENDER_TEST_AMQP_URL``, default guest@127.0.0.1:5672) and
PostgreSQL (see tests/test_postgres_ledger.py); a fresh queue and database are made per test
and dropped after.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sender.model import BatchState, TriggerMessage
from sender.testing.receiver import Receiver
from sender_adapters.postgres import PostgresLedger
from tests.brokers import AMQP_URL, DaemonProcess, chunk_keys, churn_batch, free_port
from tests.test_postgres_ledger import create_database, drop_database

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("sender_adapters.amqp") is None,
        reason="the amqp trigger is missing",
    ),
    pytest.mark.slow,
]

LEASE_S = 2.0

_CONFIG = """\
[daemon]
ledger = "{ledger}"
listen = "127.0.0.1:{port}"
max_batches = 2
shutdown_grace = "10s"
lease = "{lease}s"
allow_uris = ["{lake}/"]  # the replicas share one lake, beside their folders
{daemon_extra}

[trigger]
type = "amqp"
url = "{amqp}"
queue = "{queue}"
prefetch = 2

[destinations.api]
type = "http"
url = "{receiver}/scores"
compression = "gzip"
concurrency = 1
retry = {{ attempts = 3, initial = "10ms", max = "50ms", budget = "5s" }}

[destinations.dead]
type = "local"
path = "dead"

[destinations.events]
type = "http"
url = "{receiver}/events"
retry = {{ attempts = 3, initial = "10ms", max = "50ms", budget = "5s" }}

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 5 }}
targets = ["api"]
dead_letter = "dead"
"""


@pytest.fixture
async def shared_ledger() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for the replicas to share; its URL."""
    dsn = await create_database("sender_scale")
    try:
        yield dsn
    finally:
        await drop_database(dsn)


async def _require_rabbitmq() -> None:
    import aio_pika

    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no RabbitMQ at {AMQP_URL}: {exc}")
    await connection.close()


def replica_config(
    folder: Path, *, ledger: str, queue: str, receiver: Receiver, daemon_extra: str = ""
) -> Path:
    """``folder/sender.toml`` of one replica; ``daemon_extra``: more ``[daemon]`` lines."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sender.toml"
    path.write_text(
        _CONFIG.format(
            ledger=ledger,
            port=free_port(),
            lease=f"{LEASE_S:g}",
            amqp=AMQP_URL,
            queue=queue,
            receiver=receiver.url,
            lake=folder.parent / "lake",
            daemon_extra=daemon_extra,
        )
    )
    return path


async def publish(queue: str, messages: list[TriggerMessage]) -> None:
    """Put trigger messages on the queue the way ``sender trigger`` does."""
    from sender_adapters.amqp import AmqpTrigger

    trigger = AmqpTrigger("trigger", AmqpTrigger.Options(type="amqp", url=AMQP_URL, queue=queue))
    try:
        for message in messages:
            await trigger.publish(message)
    finally:
        await trigger.aclose()


async def first_event(replicas: list[DaemonProcess], event: str, **fields: str) -> DaemonProcess:
    """The replica that logs ``event`` (with ``fields``) first."""
    waits = {asyncio.ensure_future(r.wait_for_event(event, **fields)): r for r in replicas}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a replica that died first fails the test here
        return waits[next(iter(done))]
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def accepted_keys(receiver: Receiver, batch_id: str) -> list[str]:
    return [
        r.idempotency_key or ""
        for r in receiver.accepted
        if r.headers.get("X-Sender-Batch") == batch_id
    ]


async def test_two_replicas_share_batches_and_survive_a_killed_one(
    tmp_path: Path, receiver: Receiver, amqp_queue: str, shared_ledger: str
) -> None:
    await _require_rabbitmq()
    replicas = [
        DaemonProcess(
            replica_config(
                tmp_path / name, ledger=shared_ledger, queue=amqp_queue, receiver=receiver
            )
        )
        for name in ("replica-a", "replica-b")
    ]
    try:
        for replica in replicas:
            await replica.start()
        async with asyncio.timeout(60):
            for replica in replicas:
                await replica.wait_for_event("amqp.connected")

        # -- several batches: spread over both replicas, every chunk delivered once ----------
        batches = [churn_batch(tmp_path, f"b-{i}", records=20, parts=4) for i in range(6)]
        await publish(amqp_queue, batches)
        async with asyncio.timeout(90):
            takers = [
                await first_event(replicas, "trigger.acked", batch_id=b.batch_id) for b in batches
            ]

        assert {id(t) for t in takers} == {id(r) for r in replicas}, "one replica did it all"
        for message in batches:
            keys = accepted_keys(receiver, message.batch_id)
            assert sorted(keys) == sorted(chunk_keys(message.batch_id, 4)), message.batch_id
        counts = collections.Counter(r.idempotency_key for r in receiver.accepted)
        assert max(counts.values()) == 1, "a chunk was delivered twice"

        # -- one replica killed mid-batch: the other takes over after the lease expires ------
        receiver.slow(0.5)  # keep the batch in flight: one chunk at a time, half a second each
        doomed_batch = churn_batch(tmp_path, "b-kill", records=40, parts=8)
        await publish(amqp_queue, [doomed_batch])
        async with asyncio.timeout(30):
            holder = await first_event(replicas, "batch.started", batch_id="b-kill")
            await receiver.wait_for(lambda r: len(accepted_keys(r, "b-kill")) >= 3)
        survivor = next(r for r in replicas if r is not holder)
        await holder.kill()  # SIGKILL: no drain, no release, the lease left to expire
        # what the dead replica had recorded: its lease keeps the survivor out for a while yet
        async with PostgresLedger(shared_ledger) as ledger:
            recorded = {
                c.idempotency_key for c in await ledger.chunks("b-kill") if c.state.terminal
            }
        receiver.slow(0)

        async with asyncio.timeout(60):
            await survivor.wait_for_event("trigger.acked", batch_id="b-kill")

        # the broker redelivered at once; the survivor got the batch once the dead replica's
        # lease expired (it was deferred until then) or, as both replicas share this host,
        # once it saw that the lease's owner process no longer exists
        deferred = survivor.find("batch.deferred", batch_id="b-kill")
        stale = survivor.find("lease.stale", batch_id="b-kill")
        assert deferred or stale, survivor.tail()
        keys = accepted_keys(receiver, "b-kill")
        assert set(keys) == chunk_keys("b-kill", 8)
        assert recorded  # it got part-way
        twice = {key for key, n in collections.Counter(keys).items() if n > 1}
        # at-least-once: only a chunk in flight at the crash (sent, not yet recorded) is sent
        # again; the target's concurrency is 1, so at most one
        assert twice.isdisjoint(recorded)
        assert len(twice) <= 1

        async with PostgresLedger(shared_ledger) as ledger:
            record = await ledger.get_batch("b-kill")
            finished = await asyncio.gather(*(ledger.get_batch(b.batch_id) for b in batches))
        assert record is not None and record.state is BatchState.COMPLETE
        assert record.runs >= 2  # started by the dead replica, resumed by the survivor
        assert record.totals.delivered == 40
        assert all(b is not None and b.state is BatchState.COMPLETE for b in finished)

        code, _ = await survivor.stop()
        assert code == 0, survivor.tail()
    finally:
        for replica in replicas:
            await replica.kill()
