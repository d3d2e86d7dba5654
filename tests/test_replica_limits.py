"""Destination limits shared by replicas, for real: three ``sender run`` processes consume one
RabbitMQ queue, share one PostgreSQL ledger and send to one receiver on loopback that records
when each request arrived. The receiver sees the destination's ``rate_limit`` across all
three (never more than +10% in any window of one or two seconds), a ``Retry-After`` answered
to one replica stops all three, and an open circuit in one replica opens it in the others.
Losing the ledger (a TCP proxy cut in front of PostgreSQL) falls back to a local share of the
limit and comes back to the shared one.

Needs the machine's RabbitMQ and PostgreSQL, like tests/test_scale_out.py (whose fixtures
these tests use). ``pytest -s`` prints the rates the receiver saw.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from sender.errors import LedgerError
from sender.shared_limits import SharedLimitsClient
from sender.targets import Target
from sender.testing.receiver import ReceivedRequest, Receiver
from sender_adapters.memory import MemoryDestination
from sender_adapters.postgres import PostgresLedger
from tests.brokers import AMQP_URL, DaemonProcess, TcpProxy, churn_batch, free_port, watch_logs
from tests.test_postgres_ledger import create_database, drop_database
from tests.test_rate_window import most_in_window
from tests.test_scale_out import (  # noqa: F401 (shared_ledger: a fixture)
    _require_rabbitmq,
    first_event,
    publish,
    shared_ledger,
)

pytestmark = pytest.mark.slow

RATE = 20.0  # the destination's rate_limit, requests per second, for all replicas together

_CONFIG = """\
[daemon]
ledger = "{ledger}"
listen = "127.0.0.1:{port}"
max_batches = 2
shutdown_grace = "10s"
allow_uris = ["{lake}/"]

[trigger]
type = "amqp"
url = "{amqp}"
queue = "{queue}"
prefetch = 2

[destinations.api]
type = "http"
url = "{receiver}/scores"
compression = "none"
concurrency = 4
rate_limit = "{rate:g}/s"
retry = {{ attempts = 3, initial = "10ms", max = "50ms", budget = "30s" }}
circuit = {{ failures = 3, reset = "30s" }}

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 5 }}
targets = ["api"]
dead_letter = "dead"
"""


@pytest.fixture
async def replicas(
    tmp_path: Path,
    receiver: Receiver,
    amqp_queue: str,
    shared_ledger: str,  # noqa: F811 (the fixture)
) -> AsyncIterator[list[DaemonProcess]]:
    """Three replicas on one queue and one ledger, connected to the broker."""
    await _require_rabbitmq()
    processes = []
    for name in ("replica-a", "replica-b", "replica-c"):
        folder = tmp_path / name
        folder.mkdir()
        config = folder / "sender.toml"
        config.write_text(
            _CONFIG.format(
                ledger=shared_ledger,
                port=free_port(),
                amqp=AMQP_URL,
                queue=amqp_queue,
                receiver=receiver.url,
                rate=RATE,
                lake=tmp_path / "lake",
            )
        )
        processes.append(DaemonProcess(config))
    try:
        for process in processes:
            await process.start()
        async with asyncio.timeout(60):
            for process in processes:
                await process.wait_for_event("amqp.connected")
        yield processes
        for process in processes:
            code, _ = await process.stop()
            assert code == 0, process.tail()
    finally:
        for process in processes:
            await process.kill()


def sender_of(replicas: list[DaemonProcess], request: ReceivedRequest) -> int:
    """Which replica sent the request: the one that started its batch."""
    batch_id = request.headers.get("X-Sender-Batch")
    (index,) = (i for i, r in enumerate(replicas) if r.find("batch.started", batch_id=batch_id))
    return index


def rates(replicas: list[DaemonProcess], requests: list[ReceivedRequest]) -> str:
    """Requests per second the receiver saw from each replica and in total (busy time)."""
    times = [r.received_at for r in requests]
    seconds = max(times) - min(times)
    counts = collections.Counter(sender_of(replicas, r) for r in requests)
    each = ", ".join(f"replica {i}: {counts[i] / seconds:.1f}/s" for i in range(len(replicas)))
    windows = f"busiest 1 s: {most_in_window(times, 1.0)}, 2 s: {most_in_window(times, 2.0)}"
    total = f"{len(requests)} requests in {seconds:.1f}s: {len(requests) / seconds:.1f}/s"
    return f"{total} ({each}); {windows}"


async def test_three_replicas_keep_one_rate_limit_and_one_pause(
    tmp_path: Path, receiver: Receiver, amqp_queue: str, replicas: list[DaemonProcess]
) -> None:
    # 12 batches of 16 chunks: about ten seconds of work at 20/s, six batches at a time
    batches = [churn_batch(tmp_path, f"b-{i}", records=80, parts=8) for i in range(12)]
    await publish(amqp_queue, batches)
    async with asyncio.timeout(60):
        await receiver.wait_for(lambda r: len(r.requests) >= 3 * RATE)  # three seconds in
    receiver.fail_next(1, status=429, retry_after=3)  # one replica is told to come back later
    async with asyncio.timeout(90):
        for message in batches:
            await first_event(replicas, "trigger.acked", batch_id=message.batch_id)

    requests = receiver.requests
    arrivals = [r.received_at for r in requests]
    print("\n" + rates(replicas, requests))
    (told,) = (r for r in requests if r.status_returned == 429)
    before = [r for r in requests if r.received_at < told.received_at]
    print("before the 429: " + rates(replicas, before))
    # one limit for the three: no window of a second or two saw more than the limit +10%
    assert most_in_window(arrivals, 1.0) <= RATE * 1.1, rates(replicas, requests)
    assert most_in_window(arrivals, 2.0) <= 2 * RATE * 1.1, rates(replicas, requests)
    # and it is a rate, not a ceiling far below: the busiest two seconds came near it
    assert most_in_window(arrivals, 2.0) >= 2 * RATE * 0.75, rates(replicas, requests)
    senders = collections.Counter(sender_of(replicas, r) for r in requests)
    assert len(senders) == 3, senders  # each replica sent some

    # the 429 stopped every replica: after a second to spread the word, nothing arrived
    # until its three seconds were over
    quiet = [r for r in requests if told.received_at + 1.0 < r.received_at < told.received_at + 2.9]
    assert not quiet, [(r.received_at - told.received_at, sender_of(replicas, r)) for r in quiet]
    others = [r for i, r in enumerate(replicas) if i != sender_of(replicas, told)]
    for other in others:
        assert other.find("ratelimit.pause", reason="paused by another replica"), other.tail()
    # every chunk arrived once, the 429'd one too
    keys = collections.Counter(r.idempotency_key for r in receiver.accepted)
    assert len(keys) == 12 * 16 and max(keys.values()) == 1


async def test_a_circuit_opened_in_one_replica_is_open_in_all(
    tmp_path: Path, receiver: Receiver, amqp_queue: str, replicas: list[DaemonProcess]
) -> None:
    # the receiver fails every request of one batch: the replica that sends it opens its
    # circuit after three failed deliveries
    receiver.fail_where(lambda request: request.headers.get("X-Sender-Batch") == "b-down")
    await publish(amqp_queue, [churn_batch(tmp_path, "b-down", records=40, parts=8)])
    async with asyncio.timeout(60):
        opener = await first_event(replicas, "circuit.opened", target="api")
        others = [r for r in replicas if r is not opener]
        for other in others:  # the others open theirs within a second or so
            await other.wait_for_event("circuit.opened", reason="opened by another replica")
    assert not opener.find("circuit.opened", reason="opened by another replica")

    # while it is open, no replica sends to the destination: new batches go to the dead
    # letters of whichever replica takes them
    seen = len(receiver.requests)
    after = [churn_batch(tmp_path, f"b-after-{i}", records=10, parts=2) for i in range(3)]
    await publish(amqp_queue, after)
    async with asyncio.timeout(60):
        for message in after:
            await first_event(replicas, "trigger.acked", batch_id=message.batch_id)
    sent = [r.headers.get("X-Sender-Batch") for r in receiver.requests[seen:]]
    assert not [b for b in sent if b != "b-down"], sent


# -- losing the ledger -------------------------------------------------------------------------


@pytest.fixture
async def database() -> AsyncIterator[str]:
    dsn = await create_database("sender_limits")
    try:
        yield dsn
    finally:
        await drop_database(dsn)


def _through(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


async def test_a_replica_that_loses_the_ledger_keeps_to_its_share_then_comes_back(
    database: str,
) -> None:
    parts = urlsplit(database)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    settings = MemoryDestination.Options(rate_limit="30/s")
    api = Target("api", MemoryDestination("api", settings), settings)
    try:
        async with PostgresLedger(database) as direct:
            for other in ("replica-b", "replica-c"):  # two other live replicas
                await direct.heartbeat(other, 60.0)
            async with PostgresLedger(_through(database, proxy.port)) as ledger:
                client = SharedLimitsClient(ledger, "replica-a", live_s=60.0, poll_s=0.1)
                shared = client.attach(api)
                assert shared.bucket is not None and api.rate_limiter is not None
                with watch_logs() as logs:
                    async with client:
                        assert client.replicas == 3
                        await api.rate_limiter.acquire()
                        assert shared.bucket.grants == 1 and api.stats()["limits"] == "shared"

                        await proxy.cut()  # the database is gone for this replica
                        async with asyncio.timeout(10):
                            for _ in range(10):  # past the lease it holds, to the next grant
                                await api.rate_limiter.acquire()
                        assert api.stats()["limits"] == "local_share"
                        (line,) = logs.find("ratelimit.local_share", target="api")
                        assert (line["share"], line["replicas"]) == ("10/s", 3)
                        assert shared.bucket.local is not None
                        assert shared.bucket.local.rate == pytest.approx(10.0)
                        with pytest.raises(LedgerError):
                            await ledger.ping()
                        await asyncio.sleep(0.5)  # polls fail meanwhile: logged once
                        assert len(logs.find("ratelimit.local_share")) == 1

                        await proxy.restore()
                        async with asyncio.timeout(20):
                            await logs.wait_for("ratelimit.shared", target="api")
                        await api.rate_limiter.acquire()
                        assert shared.bucket.grants == 2 and api.stats()["limits"] == "shared"
    finally:
        await proxy.aclose()
