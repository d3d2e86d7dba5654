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
from sender.testing.receiver import Receiver
from sender_adapters.memory import MemoryDestination
from sender_adapters.postgres import PostgresLedger
from tests.brokers import DaemonProcess, TcpProxy, churn_batch, watch_logs
from tests.replicas import NAMES, connected, limited_replica, rates, replica_of
from tests.test_postgres_ledger import create_database, drop_database
from tests.test_rate_window import most_in_window
from tests.test_scale_out import (  # noqa: F401 (shared_ledger: a fixture)
    first_event,
    publish,
    shared_ledger,
)

pytestmark = pytest.mark.slow

RATE = 20.0  # the destination's rate_limit, requests per second, for all replicas together


@pytest.fixture
async def replicas(
    tmp_path: Path,
    receiver: Receiver,
    amqp_queue: str,
    shared_ledger: str,  # noqa: F811 (the fixture)
) -> AsyncIterator[list[DaemonProcess]]:
    """Three replicas on one queue and one ledger, connected to the broker."""
    processes = [
        limited_replica(
            tmp_path / name, ledger=shared_ledger, queue=amqp_queue, receiver=receiver, rate=RATE
        )
        for name in NAMES
    ]
    async with connected(processes):
        yield processes
        for process in processes:
            code, _ = await process.stop()
            assert code == 0, process.tail()


def named(replicas: list[DaemonProcess], name: str) -> DaemonProcess:
    (replica,) = (r for r in replicas if r.config.parent.name == name)
    return replica


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
    print("\n" + rates(requests))
    (told,) = (r for r in requests if r.status_returned == 429)
    before = [r for r in requests if r.received_at < told.received_at]
    print("before the 429: " + rates(before))
    # one limit for the three: no window of a second or two saw more than the limit +10%
    assert most_in_window(arrivals, 1.0) <= RATE * 1.1, rates(requests)
    assert most_in_window(arrivals, 2.0) <= 2 * RATE * 1.1, rates(requests)
    # and it is a rate, not a ceiling far below: the busiest two seconds came near it
    assert most_in_window(arrivals, 2.0) >= 2 * RATE * 0.75, rates(requests)
    senders = collections.Counter(replica_of(r) for r in requests)
    assert len(senders) == 3, senders  # each replica sent some

    # the 429 stopped every replica: after a second to spread the word, nothing arrived
    # until its three seconds were over
    quiet = [r for r in requests if told.received_at + 1.0 < r.received_at < told.received_at + 2.9]
    assert not quiet, [(r.received_at - told.received_at, replica_of(r)) for r in quiet]
    others = [r for r in replicas if r is not named(replicas, replica_of(told))]
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
