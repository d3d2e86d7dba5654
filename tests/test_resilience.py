"""Circuit breaker, rate limit, pause, resizable limiter and AIMD: on a fake clock, never
sleeping; and the lease of a killed daemon. (The chaos suite, ``tests/chaos/``, runs the same
policies against real receivers.)"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sender.app import App
from sender.circuit import CircuitBreaker, CircuitState
from sender.concurrency import AIMDController, Limiter
from sender.config import AppConfig, CircuitConfig, DestinationOptions
from sender.errors import BatchBusy, CircuitOpenError, PermanentError, RetryableError
from sender.lease import _OWNER_TAG
from sender.metrics import Metrics
from sender.model import EncodedChunk, Receipt, TriggerMessage
from sender.ratelimit import Pause, RateLimiter, TokenBucket
from sender.targets import Target
from sender.testing.receiver import Receiver
from sender.units import parse_rate
from sender_adapters.memory import MemoryDestination
from tests.batches import write_batch


class FakeTime:
    """A monotonic clock that only ``sleep`` (or the test) moves; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


def breaker(time_: FakeTime, **config: Any) -> CircuitBreaker:
    return CircuitBreaker("api", CircuitConfig.model_validate(config), clock=time_.clock)


def chunk(chunk_id: str = "0", records: int = 1) -> EncodedChunk:
    return EncodedChunk(
        batch_id="b-1",
        dataset="churn",
        route="churn",
        chunk_id=chunk_id,
        records=records,
        format="ndjson",
        codec="none",
        payload=b'{"id": 1}\n' * records,
        raw_size=10 * records,
        idempotency_key=f"key-{chunk_id}",
    )


def target(time_: FakeTime, destination: MemoryDestination | Any, **options: Any) -> Target:
    options.setdefault("retry", {"attempts": 3, "initial": "1s", "max": "1s", "budget": "1m"})
    opts = DestinationOptions.model_validate({"type": "memory", **options})
    return Target("api", destination, opts, clock=time_.clock, sleep=time_.sleep)


# -- circuit breaker ---------------------------------------------------------------------------


def test_circuit_opens_after_consecutive_failed_deliveries(time_: FakeTime) -> None:
    circuit = breaker(time_, failures=3)
    for _ in range(2):
        circuit.record_failure()
    assert circuit.state is CircuitState.CLOSED and circuit.available()

    circuit.record_failure()

    assert circuit.state is CircuitState.OPEN and not circuit.available()
    with pytest.raises(CircuitOpenError) as refused:
        circuit.acquire()
    assert refused.value.retry_after == pytest.approx(60.0)


def test_a_delivery_that_succeeds_resets_the_consecutive_count(time_: FakeTime) -> None:
    circuit = breaker(time_, failures=3)
    for _ in range(5):
        circuit.record_failure()
        circuit.record_failure()
        circuit.record_success()
    assert circuit.state is CircuitState.CLOSED


def test_circuit_opens_on_a_failure_ratio_over_its_window(time_: FakeTime) -> None:
    circuit = breaker(time_, failures=100, ratio=0.5, window=10)
    circuit.record_failure()  # 1 of 1 failed, but one delivery is no sample
    for i in range(8):
        (circuit.record_success if i % 2 == 0 else circuit.record_failure)()
    assert circuit.state is CircuitState.CLOSED  # 5 of 9

    circuit.record_failure()  # 6 of 10
    assert circuit.state is CircuitState.OPEN


def test_an_open_circuit_lets_one_probe_through_after_reset(time_: FakeTime) -> None:
    circuit = breaker(time_, failures=1, reset="30s")
    circuit.record_failure()
    time_.now += 29.9
    assert circuit.state is CircuitState.OPEN

    time_.now += 0.1
    assert circuit.state is CircuitState.HALF_OPEN and circuit.available()
    assert circuit.acquire() is True  # the probe
    assert not circuit.available()
    with pytest.raises(CircuitOpenError, match="probing"):
        circuit.acquire()

    circuit.record_success(probe=True)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.acquire() is False  # an ordinary send again


def test_a_failed_probe_opens_the_circuit_for_another_reset(time_: FakeTime) -> None:
    circuit = breaker(time_, failures=1, reset="10s")
    circuit.record_failure()
    time_.now += 10
    assert circuit.acquire() is True

    circuit.record_failure(probe=True)

    assert circuit.state is CircuitState.OPEN
    assert circuit.retry_after() == pytest.approx(10.0)


def test_a_cancelled_probe_lets_the_next_send_probe(time_: FakeTime) -> None:
    circuit = breaker(time_, failures=1, reset="1s")
    circuit.record_failure()
    time_.now += 1
    assert circuit.acquire() is True

    circuit.release(probe=True)

    assert circuit.state is CircuitState.HALF_OPEN and circuit.acquire() is True


def test_outcomes_of_sends_started_before_the_circuit_opened_do_not_close_it(
    time_: FakeTime,
) -> None:
    circuit = breaker(time_, failures=2)
    circuit.record_failure()
    circuit.record_failure()
    circuit.record_success()  # a slow send that began while closed
    assert circuit.state is CircuitState.OPEN
    assert circuit.refuses_retry(probe=False) and not circuit.refuses_retry(probe=True)


def test_circuit_state_changes_are_logged_and_counted(time_: FakeTime) -> None:
    changes: list[tuple[str, str]] = []
    circuit = CircuitBreaker(
        "api",
        CircuitConfig(failures=1, reset="1s"),  # type: ignore[call-arg]
        clock=time_.clock,
        on_change=lambda name, old, new: changes.append((old.value, new.value)),
    )
    with capture_logs() as logs:
        circuit.record_failure(error="HTTP 503")
        time_.now += 1
        assert circuit.acquire()
        circuit.record_success(probe=True)

    events = [(e["event"], e["target"]) for e in logs if e["event"].startswith("circuit.")]
    assert events == [
        ("circuit.opened", "api"),
        ("circuit.half_open", "api"),
        ("circuit.closed", "api"),
    ]
    assert dict(circuit.transitions) == {"opened": 1, "half_open": 1, "closed": 1}
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


# -- token bucket, rate limiter, pause ---------------------------------------------------------


async def test_token_bucket_allows_a_burst_then_paces_at_its_rate(time_: FakeTime) -> None:
    bucket = TokenBucket(10.0, 10.0, clock=time_.clock, sleep=time_.sleep)

    waits = [await bucket.acquire() for _ in range(15)]

    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([0.1] * 5)
    assert time_.now == pytest.approx(0.5)


def test_token_bucket_serves_callers_in_arrival_order(time_: FakeTime) -> None:
    bucket = TokenBucket(1.0, 1.0, clock=time_.clock, sleep=time_.sleep)
    delays = [bucket.reserve() for _ in range(4)]
    assert delays == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_records_per_second_costs_one_token_per_record(time_: FakeTime) -> None:
    limiter = RateLimiter(parse_rate("1000 records/s"), clock=time_.clock, sleep=time_.sleep)
    assert limiter.cost(250) == 250
    # a chunk bigger than the bucket (50 records: 1/20 s) still goes, at the average rate
    assert limiter.bucket.reserve(limiter.cost(2500)) == pytest.approx(2.45)
    assert RateLimiter(parse_rate("20/s")).cost(5000) == 1


async def test_a_cancelled_wait_gives_its_tokens_back(time_: FakeTime) -> None:
    bucket = TokenBucket(1.0, 1.0, clock=time_.clock)  # real sleep: the wait never ends
    bucket.reserve()
    waiter = asyncio.create_task(bucket.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bucket.tokens == pytest.approx(0.0)


async def test_a_pause_only_moves_later_and_is_waited_out(time_: FakeTime) -> None:
    pause = Pause(clock=time_.clock, sleep=time_.sleep)
    assert pause.extend(5)
    assert not pause.extend(2)
    assert pause.remaining() == 5

    assert await pause.wait() == 5
    assert pause.remaining() == 0 and pause.pauses == 1


# -- the resizable limiter ---------------------------------------------------------------------


async def test_limiter_grants_up_to_its_limit_and_growing_wakes_waiters() -> None:
    limiter = Limiter(2)
    await limiter.acquire()
    await limiter.acquire()
    third = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert not third.done() and limiter.waiting == 1

    limiter.resize(3)
    await third
    assert limiter.in_use == 3 and limiter.peak == 3


async def test_a_shrunk_limiter_lets_work_finish_and_grants_below_the_new_limit() -> None:
    limiter = Limiter(4)
    for _ in range(4):
        await limiter.acquire()
    limiter.resize(2)
    waiter = asyncio.create_task(limiter.acquire())
    limiter.release()
    limiter.release()
    await asyncio.sleep(0)
    assert not waiter.done()  # 2 in use, limit 2

    limiter.release()
    await waiter
    assert limiter.in_use == 2


async def test_limiter_is_first_come_first_served() -> None:
    limiter = Limiter(1)
    await limiter.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await limiter.acquire()
        order.append(i)
        limiter.release()

    tasks = [asyncio.create_task(take(i)) for i in range(5)]
    await asyncio.sleep(0)
    limiter.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    limiter = Limiter(1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release()
    assert limiter.in_use == 0
    async with limiter.slot():
        assert limiter.in_use == 1


# -- AIMD ----------------------------------------------------------------------------------


def aimd(time_: FakeTime, *, limit: int = 1, ceiling: int = 16) -> AIMDController:
    return AIMDController(Limiter(limit), ceiling=ceiling, clock=time_.clock)


async def saturate(controller: AIMDController) -> None:
    """Use every slot, so that the window sees the limit reached."""
    limiter = controller.limiter
    taken = limiter.limit - limiter.in_use
    for _ in range(taken):
        await limiter.acquire()
    for _ in range(taken):
        limiter.release()


async def test_aimd_grows_by_one_per_round_trip_while_rtt_stays_level(time_: FakeTime) -> None:
    controller = aimd(time_)
    for _ in range(10):
        await saturate(controller)
        controller.observe(0.05)
        time_.now += 0.05
    assert controller.limit >= 8
    assert controller.changes["down"] == 0


async def test_aimd_does_not_grow_when_the_limit_was_not_reached(time_: FakeTime) -> None:
    controller = aimd(time_, limit=4)
    for _ in range(20):
        controller.observe(0.05)  # nothing in flight: demand is below the limit
        time_.now += 0.05
    assert controller.limit == 4


async def test_aimd_halves_at_once_on_push_back_but_once_per_round_trip(
    time_: FakeTime,
) -> None:
    controller = aimd(time_, limit=12)
    controller.observe(0.05)
    time_.now += 0.06
    controller.observe(0.05)  # the RTT average is known now

    with capture_logs() as logs:
        controller.observe(None, pushed_back=True)
        controller.observe(None, pushed_back=True)  # the same burst of 429s

    assert controller.limit == 6
    assert [e["reason"] for e in logs if e["event"] == "concurrency.changed"] == ["push-back"]
    time_.now += 0.06
    controller.observe(None, pushed_back=True)
    assert controller.limit == 3


async def test_aimd_cuts_when_rtt_rises_well_above_its_average(time_: FakeTime) -> None:
    controller = aimd(time_, limit=10)
    for _ in range(5):
        controller.observe(0.050)
        time_.now += 0.05
    assert controller.limit == 10

    controller.observe(0.200)  # queueing at the receiver
    time_.now += 0.05
    controller.observe(0.200)

    assert controller.limit == 9


async def test_aimd_stays_between_floor_and_ceiling(time_: FakeTime) -> None:
    controller = aimd(time_, limit=1, ceiling=3)
    for _ in range(20):
        await saturate(controller)
        controller.observe(0.01)
        time_.now += 0.01
    assert controller.limit == 3
    for _ in range(10):
        time_.now += 1
        controller.observe(None, pushed_back=True)
    assert controller.limit == 1


# -- a third-party destination: its own words, the facts in the fields -------------------------


class _PartnerApi:
    """A destination as a team outside writes it: messages in its own words (no "HTTP 429",
    no "timeout"), the status and push-back in the error's fields."""

    formats = frozenset({"ndjson"})
    codecs = frozenset({"none"})

    def __init__(self, errors: list[RetryableError]) -> None:
        self.name = "partner"
        self.errors = errors
        self.calls = 0

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Receipt("partner://accepted", status=202)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(
    "refusal",
    [
        RetryableError("Bitte langsamer senden", status=429),
        RetryableError("the partner gateway gave up waiting", push_back=True),
        RetryableError("quota reached, come back later", retry_after=0.5),
    ],
    ids=["status-429", "push-back", "retry-after"],
)
async def test_a_third_party_push_back_cuts_adaptive_concurrency_and_is_labelled(
    time_: FakeTime, refusal: RetryableError
) -> None:
    metrics = Metrics(CollectorRegistry())
    partner = _PartnerApi([refusal])
    options = DestinationOptions.model_validate(
        {
            "type": "memory",
            "concurrency": "adaptive",
            "max_concurrency": 16,
            "retry": {"attempts": 2, "initial": "1s", "max": "1s", "budget": "1m"},
        }
    )
    api = Target("partner", partner, options, clock=time_.clock, sleep=time_.sleep, metrics=metrics)
    api.limiter.resize(8)  # as if it had earned 8 in flight

    delivered = await api.send(chunk())

    assert delivered.attempts == 2 and partner.calls == 2
    assert api.limiter.limit == 4  # halved at once, as for an "HTTP 429" of our own
    assert metrics.registry.get_sample_value("sender_concurrency_limit", {"target": "partner"}) == 4
    classes = {
        c: metrics.registry.get_sample_value(
            "sender_requests_total", {"target": "partner", "status_class": c}
        )
        for c in ("2xx", "4xx", "error")
    }
    expected_refusal = "4xx" if refusal.status == 429 else "error"
    assert classes["2xx"] == 1 and classes[expected_refusal] == 1


async def test_a_failure_worded_like_a_429_is_no_push_back_without_the_fields(
    time_: FakeTime,
) -> None:
    partner = _PartnerApi([RetryableError("HTTP 429: too many requests")])  # words, no status
    options = DestinationOptions.model_validate(
        {
            "type": "memory",
            "concurrency": "adaptive",
            "max_concurrency": 16,
            "retry": {"attempts": 2},
        }
    )
    api = Target("partner", partner, options, clock=time_.clock, sleep=time_.sleep)
    api.limiter.resize(8)

    await api.send(chunk())

    assert api.limiter.limit == 8


# -- the target: policies around a destination --------------------------------------------------


async def test_waiting_for_a_token_uses_no_attempt_and_no_budget(time_: FakeTime) -> None:
    destination = MemoryDestination("api", fail_with=[RetryableError("HTTP 500")])
    api = target(
        time_,
        destination,
        rate_limit="1/s",
        retry={"attempts": 2, "initial": "1s", "max": "1s", "budget": "5s"},
    )
    assert api.rate_limiter is not None
    api.rate_limiter.bucket.reserve(20)  # other batches took the next 20 seconds

    delivered = await api.send(chunk())

    assert delivered.attempts == 2  # the retry was not eaten by 20 s of queueing
    assert destination.calls == 2
    assert time_.now >= 20


async def test_retry_after_pauses_the_destination_for_every_chunk(time_: FakeTime) -> None:
    destination = MemoryDestination(
        "api", fail_with=[RetryableError("HTTP 429: slow down", retry_after=30)]
    )
    api = target(time_, destination, retry={"attempts": 1})
    with pytest.raises(RetryableError):
        await api.send(chunk("0"))
    assert api.pause.remaining() == 30

    await api.send(chunk("1"))  # another chunk, never told anything itself

    assert time_.sleeps == [30]
    assert [c.chunk_id for c in destination.received] == ["1"]


async def test_a_pause_past_the_retry_budget_fails_at_once(time_: FakeTime) -> None:
    destination = MemoryDestination("api")
    api = target(time_, destination, retry={"attempts": 3, "budget": "1m"})
    api.pause.extend(3600)

    with pytest.raises(RetryableError, match="paused for 3600"):
        await api.send(chunk())

    assert destination.calls == 0 and time_.sleeps == []


async def test_an_open_circuit_refuses_without_calling_the_destination(
    time_: FakeTime,
) -> None:
    destination = MemoryDestination("api", always_fail=RetryableError("HTTP 503"))
    api = target(time_, destination, retry={"attempts": 1}, circuit={"failures": 2})
    for i in range(2):
        with pytest.raises(RetryableError):
            await api.send(chunk(str(i)))
    assert not api.available()

    with pytest.raises(CircuitOpenError) as refused:
        await api.send(chunk("2"))

    assert refused.value.attempts is None or refused.value.attempts == 0
    assert destination.calls == 2


async def test_the_half_open_probe_gets_one_attempt(time_: FakeTime) -> None:
    destination = MemoryDestination("api", always_fail=RetryableError("HTTP 503"))
    api = target(time_, destination, retry={"attempts": 5}, circuit={"failures": 1, "reset": "10s"})
    with pytest.raises(RetryableError):
        await api.send(chunk("0"))
    calls = destination.calls
    time_.now += 10

    with pytest.raises(RetryableError) as failed:
        await api.send(chunk("1"))

    assert destination.calls == calls + 1 and failed.value.attempts == 1
    assert api.circuit.state is CircuitState.OPEN

    destination.always_fail = None
    time_.now += 10
    assert (await api.send(chunk("2"))).attempts == 1
    assert api.circuit.state is CircuitState.CLOSED


async def test_permanent_refusals_keep_the_circuit_closed(time_: FakeTime) -> None:
    destination = MemoryDestination("api", always_fail=PermanentError("HTTP 422", status=422))
    api = target(time_, destination, circuit={"failures": 1})
    for i in range(5):
        with pytest.raises(PermanentError):
            await api.send(chunk(str(i)))
    assert api.circuit.state is CircuitState.CLOSED


class _OpensTheCircuit:
    """A destination whose failure is the one that tips the shared circuit open."""

    formats = frozenset({"ndjson"})
    codecs = frozenset({"none"})

    def __init__(self) -> None:
        self.name = "api"
        self.calls = 0
        self.target: Target | None = None

    async def deliver(self, chunk: EncodedChunk) -> Any:
        self.calls += 1
        assert self.target is not None
        for _ in range(self.target.options.circuit.failures):
            self.target.circuit.record_failure()  # other batches failing meanwhile
        raise RetryableError("HTTP 503")

    async def aclose(self) -> None:
        return None


async def test_a_send_stops_retrying_once_the_circuit_opens(time_: FakeTime) -> None:
    destination = _OpensTheCircuit()
    api = target(time_, destination, retry={"attempts": 5})
    destination.target = api

    with pytest.raises(CircuitOpenError) as stopped:
        await api.send(chunk())

    assert destination.calls == 1 and stopped.value.attempts == 1


async def test_an_adaptive_target_starts_at_one_and_stays_under_its_ceiling(
    time_: FakeTime,
) -> None:
    api = target(time_, MemoryDestination("api"), concurrency="adaptive", max_concurrency=4)
    assert api.limiter.limit == 1 and api.concurrency == 4
    fixed = target(time_, MemoryDestination("api"), concurrency=6)
    assert fixed.limiter.limit == 6 and fixed.aimd is None


async def test_the_dead_letter_store_is_never_refused_by_its_circuit(time_: FakeTime) -> None:
    destination = MemoryDestination("dead", fail_with=[RetryableError("disk full")] * 2)
    store = target(time_, destination, retry={"attempts": 1}, circuit={"failures": 1})
    with pytest.raises(RetryableError):
        await store.send(chunk("0"))
    assert not store.available()
    with pytest.raises(RetryableError, match="disk full"):  # tried, not refused
        await store.send_ignoring_circuit(chunk("1"))

    await store.send_ignoring_circuit(chunk("2"))  # the disk is back: used at once

    assert [c.chunk_id for c in destination.received] == ["2"]


# -- crash-safe resume: the lease of a killed daemon ---------------------------------------------


async def _dead_pid() -> int:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await process.wait()  # reaped: the pid names no process now
    return process.pid


@pytest.mark.parametrize("holder_alive", [False, True])
async def test_a_lease_held_by_a_killed_daemon_of_this_host_is_taken_over(
    tmp_path: Path,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
    holder_alive: bool,
) -> None:
    batch = write_batch(tmp_path / "batch", 100, parts=1)
    config = write_config(
        f"""
        [daemon]
        ledger = "ledger.db"
        [destinations.api]
        type = "http"
        url = "{receiver.url}/scores"
        [routes.churn]
        datasets = ["churn"]
        targets = ["api"]
        """
    )
    message = TriggerMessage(batch_id="b-1", dataset="churn", uri=str(batch))
    pid = os.getppid() if holder_alive else await _dead_pid()
    async with App(config) as app:
        await app.ledger.start_batch(message)  # the killed daemon had started it...
        owner = f"{socket.gethostname()}:{pid}:{_OWNER_TAG}"  # as default_owner() writes it
        assert await app.ledger.acquire_lease("b-1", owner, 600)
        if holder_alive:  # ...a live one is left alone
            with pytest.raises(BatchBusy):
                await app.engine.run_batch(message)
            return
        outcome = await app.engine.run_batch(message)
    assert outcome.ok and len(receiver.unique_records()) == 100
