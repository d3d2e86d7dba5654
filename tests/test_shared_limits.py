"""Destination limits shared by replicas (``sender.shared_limits``), replicas being clients of
one memory ledger on a clock the tests move: the GCRA's leases keep every window within the
limit across replicas, a pause or an open circuit one replica is told of reaches the others,
and the client's poller is closed with it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sender.circuit import CircuitState
from sender.errors import RetryableError
from sender.shared_limits import HEADROOM, SharedBucket, SharedLimitsClient
from sender.targets import Target
from sender_adapters.memory import MemoryDestination, MemoryLedger
from tests.brokers import watch_logs
from tests.test_rate_window import most_in_window

EPOCH = datetime(2026, 12, 2, tzinfo=UTC)


class FakeClock:
    """Monotonic seconds for the replicas and the same instant as a datetime for the ledger."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return EPOCH + timedelta(seconds=self.now)

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def target(clock: FakeClock, name: str = "api", **options: Any) -> Target:
    settings = MemoryDestination.Options(**options)
    return Target(name, MemoryDestination(name, settings), settings, clock=clock, sleep=clock.sleep)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def ledger(clock: FakeClock) -> AsyncIterator[MemoryLedger]:
    async with MemoryLedger(clock=clock.utc) as opened:
        yield opened


def client(ledger: MemoryLedger, clock: FakeClock, owner: str) -> SharedLimitsClient:
    return SharedLimitsClient(ledger, owner, clock=clock, sleep=clock.sleep)


def within_limit(sends: Sequence[float], rate: float) -> None:
    for window in (1.0, 2.0, 5.0):
        most = most_in_window(sends, window)
        assert most <= rate * window * 1.1, (window, most)


async def test_three_replicas_together_keep_every_window_within_the_limit(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    rate = 20.0
    buckets: list[SharedBucket] = []
    for owner in ("a", "b", "c"):
        shared = client(ledger, clock, owner).attach(target(clock, rate_limit="20/s"))
        assert shared.bucket is not None
        buckets.append(shared.bucket)
    # each replica sends as fast as its bucket lets it, one request at a time; a discrete
    # event simulation: the replica whose request is due first goes next
    free_at = [clock.now] * 3
    sends: list[list[float]] = [[], [], []]
    while sum(map(len, sends)) < 200:
        replica = min(range(3), key=lambda r: free_at[r])
        clock.now = max(clock.now, free_at[replica])
        at = await buckets[replica].reserve(1.0)
        sends[replica].append(at)
        free_at[replica] = at

    every = sorted(at for replica in sends for at in replica)
    within_limit(every, rate)
    # and the limit is a rate, not a ceiling far below it: 200 requests in about 10 s
    assert every[-1] - every[0] < 200 / rate * 1.1
    assert all(len(replica) > 40 for replica in sends), [len(r) for r in sends]
    # one grant per 0.2 s of tokens, not one per request
    assert sum(b.grants for b in buckets) <= 200 / (rate * 0.2) + 3


async def test_a_destination_limited_per_record_grants_a_chunk_at_least(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    shared = client(ledger, clock, "a").attach(target(clock, rate_limit="1000 records/s"))
    assert shared.bucket is not None

    # a chunk of 500 records is more than a lease (0.2 s: 190 records): a slice of its own
    first = await shared.bucket.reserve(500.0)
    second = await shared.bucket.reserve(500.0)
    assert first == pytest.approx(clock.now)
    assert second == pytest.approx(clock.now + 500 / (1000 * (1 - HEADROOM)))


async def test_a_request_that_wakes_too_late_takes_a_later_slot(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    shared = client(ledger, clock, "a").attach(target(clock, rate_limit="10/s"))
    assert shared.bucket is not None
    other = client(ledger, clock, "b").attach(target(clock, rate_limit="10/s"))
    assert other.bucket is not None
    await shared.bucket.reserve(1.0)  # a's slice: two requests, the next 0.21 s
    due = await other.bucket.reserve(1.0)  # b's slice after it
    assert due == pytest.approx(clock.now + 2 / (10 * (1 - HEADROOM)))

    async def oversleep(seconds: float) -> None:  # an event loop that lags 0.5 s
        clock.now += seconds + 0.5

    other.client.sleep = oversleep
    await other.bucket.acquire(1.0)
    # woken half a second past its slot: it did not send in a slot that was not its own
    assert other.bucket.grants == 2


async def test_a_replicas_own_requests_keep_their_pace_though_its_round_trips_vary(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    round_trips = iter([0.05, 0.0])

    class Slow(SharedLimitsClient):  # a ledger that answers late, then at once
        async def call(self, awaitable: Any) -> Any:
            answer = await awaitable
            clock.now += next(round_trips)
            return answer

    shared = Slow(ledger, "a", clock=clock, sleep=clock.sleep).attach(
        target(clock, rate_limit="10/s")
    )
    assert shared.bucket is not None
    sends = [await shared.bucket.reserve(1.0), await shared.bucket.reserve(1.0)]
    clock.now = sends[-1] + 0.07  # the ledger sees the lease over; here it went late
    sends.append(await shared.bucket.reserve(1.0))

    gaps = [later - earlier for earlier, later in itertools.pairwise(sends)]
    assert min(gaps) >= 1 / (10 * (1 - HEADROOM)) - 1e-9, gaps


async def test_a_pause_one_replica_is_told_of_stops_the_others(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    told, other = client(ledger, clock, "a"), client(ledger, clock, "b")
    api = target(clock, concurrency="adaptive", max_concurrency=8)
    elsewhere = target(clock, concurrency="adaptive", max_concurrency=8)
    told.attach(api)
    other.attach(elsewhere)
    elsewhere.limiter.resize(8)

    with watch_logs() as logs:
        api._pushed_back(RetryableError("429", status=429, retry_after=3.0), {})
        await asyncio.gather(*told._writes)
        await other.sync()

    assert elsewhere.pause.remaining() == pytest.approx(3.0, abs=0.01)
    assert logs.find("ratelimit.pause", target="api", reason="paused by another replica")
    assert elsewhere.limiter.limit == 4  # adaptive concurrency backed off as if told itself
    # reading its own pause back does not count it twice
    await told.sync()
    assert api.pause.pauses == 1


async def test_a_new_replica_starts_from_the_shared_pause(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    await ledger.pause_destination("api", 10.0)
    api = target(clock)
    replica = client(ledger, clock, "late")
    replica.attach(api)

    async with replica:
        assert api.pause.remaining() == pytest.approx(10.0)


async def test_an_open_circuit_in_one_replica_opens_it_in_the_others(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    opener, other = client(ledger, clock, "a"), client(ledger, clock, "b")
    circuit = {"failures": 2, "reset": "30s"}
    api, elsewhere = target(clock, circuit=circuit), target(clock, circuit=circuit)
    opener.attach(api)
    other.attach(elsewhere)

    with watch_logs() as logs:
        api.circuit.record_failure(error="503")
        api.circuit.record_failure(error="503")
        await asyncio.gather(*opener._writes)
        clock.now += 10
        await other.sync()
        await opener.sync()

    assert elsewhere.circuit.state is CircuitState.OPEN
    assert elsewhere.circuit.retry_after() == pytest.approx(20.0)
    (opened,) = logs.find("circuit.opened", reason="opened by another replica")
    assert opened["target"] == "api"
    assert api.circuit.transitions["opened"] == 1  # its own opening read back: nothing new
    assert elsewhere.stats()["limits"] == "shared"

    clock.now += 21  # then each replica probes on its own
    assert elsewhere.circuit.state is CircuitState.HALF_OPEN
    assert elsewhere.circuit.acquire() is True
    elsewhere.circuit.record_success(probe=True)
    await other.sync()  # the opening it followed is over: it stays closed
    assert elsewhere.circuit.state is CircuitState.CLOSED


async def test_closing_the_client_stops_its_poller_and_leaves(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    replica = SharedLimitsClient(ledger, "a", poll_s=0.01)
    replica.attach(target(clock))

    async with replica:
        await asyncio.sleep(0.05)
        assert await ledger.heartbeat("b", 60.0) == 2
        poller = replica._poller
        assert poller is not None and not poller.done()

    assert poller.done()
    assert await ledger.heartbeat("b", 60.0) == 1  # "a" left
