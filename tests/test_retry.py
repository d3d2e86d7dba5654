"""The retry policy: attempts, budget, Retry-After, jitter; on a fake clock, never sleeping."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator

import pytest

from sender import retry
from sender.config import RetryConfig
from sender.errors import PermanentError, RetryableError
from sender.retry import Attempted, RetryEvent, RetryPolicy


class FakeTime:
    """A monotonic clock that only the fake sleep moves; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def policy(fake_time: FakeTime, *, seed: int = 1, **config: object) -> RetryPolicy:
    return RetryPolicy(
        RetryConfig.model_validate(config),
        sleep=fake_time.sleep,
        rng=random.Random(seed),
        clock=fake_time.clock,
    )


def failing(*errors: Exception, then: str = "ok") -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """A call that raises ``errors`` one by one, then returns ``then``; counts its calls."""
    pending = list(errors)
    calls: list[int] = []

    async def fn() -> str:
        calls.append(1)
        if pending:
            raise pending.pop(0)
        return then

    return fn, calls


@pytest.fixture
def testing_mode() -> Iterator[None]:
    retry.set_testing(True)
    yield
    retry.set_testing(False)


async def test_success_on_first_attempt_counts_one_attempt(fake_time: FakeTime) -> None:
    fn, _ = failing()
    done = await policy(fake_time).call(fn)
    assert done == Attempted("ok", 1)
    assert fake_time.sleeps == []


async def test_retryable_error_is_retried_until_it_succeeds(fake_time: FakeTime) -> None:
    fn, calls = failing(RetryableError("503"), RetryableError("503"))
    done = await policy(fake_time, attempts=5).call(fn)
    assert done.value == "ok"
    assert done.attempts == 3
    assert len(calls) == 3
    assert len(fake_time.sleeps) == 2


async def test_attempts_are_honoured_and_the_last_error_is_raised(fake_time: FakeTime) -> None:
    errors = [RetryableError(f"failure {i}") for i in range(1, 6)]
    fn, calls = failing(*errors)
    with pytest.raises(RetryableError, match="failure 3") as caught:
        await policy(fake_time, attempts=3).call(fn)
    assert caught.value is errors[2]
    assert caught.value.attempts == 3  # type: ignore[attr-defined]
    assert len(calls) == 3
    assert len(fake_time.sleeps) == 2  # no sleep after the last attempt


async def test_permanent_error_is_not_retried(fake_time: FakeTime) -> None:
    fn, calls = failing(PermanentError("HTTP 400: bad field", status=400))
    with pytest.raises(PermanentError, match="bad field") as caught:
        await policy(fake_time, attempts=5).call(fn)
    assert len(calls) == 1
    assert caught.value.attempts == 1  # type: ignore[attr-defined]
    assert fake_time.sleeps == []


async def test_permanent_error_after_retries_carries_the_attempt_count(
    fake_time: FakeTime,
) -> None:
    fn, _ = failing(RetryableError("503"), PermanentError("410 gone", status=410))
    with pytest.raises(PermanentError) as caught:
        await policy(fake_time, attempts=5).call(fn)
    assert caught.value.attempts == 2  # type: ignore[attr-defined]


async def test_other_exceptions_are_not_retried(fake_time: FakeTime) -> None:
    fn, calls = failing(KeyError("bug"))
    with pytest.raises(KeyError):
        await policy(fake_time, attempts=5).call(fn)
    assert len(calls) == 1


async def test_chunk_is_retried_after_retry_after_seconds(fake_time: FakeTime) -> None:
    fn, _ = failing(RetryableError("429", retry_after=7), RetryableError("503", retry_after=0))
    done = await policy(fake_time, attempts=5, max="1s").call(fn)
    # honoured exactly, even above max: the receiver knows best
    assert fake_time.sleeps == [7.0, 0.0]
    assert done.attempts == 3


async def test_budget_stops_before_a_wait_that_would_pass_it(fake_time: FakeTime) -> None:
    fn, calls = failing(
        RetryableError("slow down", retry_after=4),
        RetryableError("slow down", retry_after=4),
        RetryableError("slow down", retry_after=4),
    )
    with pytest.raises(RetryableError) as caught:
        await policy(fake_time, attempts=10, budget="10s").call(fn)
    # 0 → wait 4 → 4 → wait 4 → 8: another 4 would end at 12 > 10, so it gives up at 8
    assert fake_time.sleeps == [4.0, 4.0]
    assert len(calls) == 3
    assert caught.value.attempts == 3  # type: ignore[attr-defined]


async def test_retry_after_longer_than_the_budget_is_not_waited_for(fake_time: FakeTime) -> None:
    fn, calls = failing(RetryableError("maintenance", retry_after=3600))
    with pytest.raises(RetryableError, match="maintenance"):
        await policy(fake_time, attempts=5, budget="10m").call(fn)
    assert fake_time.sleeps == []
    assert len(calls) == 1


async def test_time_spent_in_attempts_counts_against_the_budget(fake_time: FakeTime) -> None:
    async def slow_failure() -> str:
        fake_time.now += 6  # the attempt itself takes 6 s
        raise RetryableError("timeout after 6s", retry_after=1)

    with pytest.raises(RetryableError):
        await policy(fake_time, attempts=10, budget="10s").call(slow_failure)
    # attempt 1 ends at 6, wait 1 → 7, attempt 2 ends at 13: no more waiting
    assert fake_time.sleeps == [1.0]


async def test_backoff_is_full_jitter_bounded_by_the_exponential_cap(fake_time: FakeTime) -> None:
    errors = [RetryableError("503") for _ in range(9)]
    fn, _ = failing(*errors)
    await policy(fake_time, seed=42, attempts=10, initial="1s", max="8s", budget="1h").call(fn)
    caps = [min(8.0, 1.0 * 2 ** (n - 1)) for n in range(1, 10)]
    assert len(fake_time.sleeps) == 9
    for wait, cap in zip(fake_time.sleeps, caps, strict=True):
        assert 0.0 <= wait <= cap
    # jitter, not a fixed schedule: the waits are not simply the caps
    assert fake_time.sleeps != caps


async def test_the_same_seed_gives_the_same_waits() -> None:
    def run() -> RetryPolicy:
        return RetryPolicy(RetryConfig(), rng=random.Random(7))

    assert [run().backoff(n) for n in range(1, 8)] == [run().backoff(n) for n in range(1, 8)]


def test_backoff_cap_survives_huge_attempt_numbers() -> None:
    waits = RetryPolicy(RetryConfig.model_validate({"max": "5s"})).backoff(10_000)
    assert 0.0 <= waits <= 5.0


async def test_on_retry_sees_each_failed_attempt_and_its_wait(fake_time: FakeTime) -> None:
    events: list[RetryEvent] = []
    fn, _ = failing(RetryableError("HTTP 503"), RetryableError("HTTP 429", retry_after=2))
    await policy(fake_time, attempts=5).call(fn, on_retry=events.append)
    assert [(e.attempt, e.error) for e in events] == [(1, "HTTP 503"), (2, "HTTP 429")]
    assert [e.wait_s for e in events] == fake_time.sleeps
    assert events[1].wait_s == 2.0


async def test_a_failing_on_retry_hook_does_not_break_delivery(fake_time: FakeTime) -> None:
    def broken_hook(event: RetryEvent) -> None:
        raise RuntimeError("metrics backend down")

    fn, _ = failing(RetryableError("503"))
    done = await policy(fake_time, attempts=3).call(fn, on_retry=broken_hook)
    assert done == Attempted("ok", 2)


@pytest.mark.usefixtures("testing_mode")
async def test_testing_mode_makes_every_wait_zero(fake_time: FakeTime) -> None:
    fn, _ = failing(RetryableError("503"), RetryableError("429", retry_after=30))
    done = await policy(fake_time, attempts=5, initial="10s").call(fn)
    assert done.attempts == 3
    assert fake_time.sleeps == [0.0, 0.0]


@pytest.mark.usefixtures("testing_mode")
async def test_testing_mode_still_honours_attempts() -> None:
    fn, calls = failing(*[RetryableError("503") for _ in range(5)])
    # real asyncio.sleep: testing mode makes it sleep(0)
    with pytest.raises(RetryableError):
        await RetryPolicy(RetryConfig(attempts=2)).call(fn)
    assert len(calls) == 2


def test_testing_mode_is_off_by_default() -> None:
    assert retry.is_testing() is False
