"""The retry policy of one target: attempts, a time budget, backoff with jitter, ``Retry-After``.

Policy is data (``sender.config.RetryConfig``); this module turns it into behaviour::

    policy = RetryPolicy(destination_options.retry)
    done = await policy.call(lambda: destination.deliver(chunk), on_retry=log_retry)
    done.value      # the Receipt
    done.attempts   # how many tries it took (1 = first time)

Rules, in the order they apply after a failed attempt:

- Only ``RetryableError`` is retried. ``PermanentError`` and anything else propagate at once.
- The wait before attempt *n + 1* is the error's ``retry_after`` when the receiver gave one
  (honoured exactly, even above ``max_s``: the receiver knows best), otherwise full-jitter
  exponential backoff: ``uniform(0, min(max_s, initial_s * 2 ** (n - 1)))``.
- Stop after ``attempts`` attempts, or *before* a wait that would end past ``budget_s``
  (counted from the start of the call, attempts included): the policy never sleeps to retry
  after its budget is spent.
- When it stops, the last error is re-raised unchanged (``reraise``), with ``attempts`` set.

Every error that leaves ``call`` (``RetryableError`` after the last attempt, ``PermanentError``
at once) carries an ``attempts`` attribute: the number of attempts made, so the ledger can
record it. ``set_testing(True)`` makes every wait zero for test suites (like stamina's).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base

from .config import RetryConfig
from .errors import DeliveryError, RetryableError
from .log import get_logger

__all__ = ["Attempted", "RetryEvent", "RetryPolicy", "is_testing", "set_testing"]

T = TypeVar("T")

log = get_logger("sender.retry")

_testing = False


def set_testing(enabled: bool) -> None:
    """Make every wait zero (``True``) or real again (``False``): for tests that must not
    sleep. Attempts and the budget still apply; only the sleeping goes."""
    global _testing
    _testing = enabled


def is_testing() -> bool:
    """Whether ``set_testing(True)`` is in force."""
    return _testing


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Passed to ``on_retry`` before each wait: attempt ``attempt`` (1-based) failed with
    ``error`` and the next one starts after ``wait_s`` seconds."""

    attempt: int
    error: str
    wait_s: float


@dataclass(frozen=True, slots=True)
class Attempted(Generic[T]):
    """A successful call's result and the number of attempts it took (1 = first time)."""

    value: T
    attempts: int


class _StopBeforeBudget(stop_base):
    """tenacity's ``stop_before_delay`` on an injectable clock: stop when the upcoming wait
    would end at or past the budget. (tenacity's own reads ``time.monotonic`` directly, which a
    test with a fake sleep cannot move.)"""

    def __init__(self, budget_s: float, clock: Callable[[], float]) -> None:
        self.budget_s = budget_s
        self.clock = clock
        self.start = clock()

    def __call__(self, retry_state: RetryCallState) -> bool:
        elapsed = self.clock() - self.start
        return elapsed + retry_state.upcoming_sleep >= self.budget_s


class RetryPolicy:
    """Retries a coroutine function under a ``RetryConfig`` (see the module docstring).

    ``sleep`` (an async ``sleep(seconds)``), ``rng`` (a ``random.Random``) and ``clock`` (a
    monotonic ``clock() -> seconds``) are injectable so tests control time and jitter; in a
    test, a fake sleep should advance the fake clock. One policy may serve many concurrent
    calls: each call keeps its own state.
    """

    def __init__(
        self,
        config: RetryConfig,
        *,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._clock = clock or time.monotonic

    def backoff(self, attempt: int) -> float:
        """The jittered wait after failed attempt ``attempt`` (1-based) when the receiver did
        not say when to come back: ``uniform(0, min(max_s, initial_s * 2 ** (attempt - 1)))``."""
        # the exponent is capped so a huge attempt count cannot overflow a float
        ceiling = min(self.config.max_s, self.config.initial_s * 2.0 ** min(attempt - 1, 64))
        return self._rng.uniform(0.0, ceiling)

    def _wait(self, retry_state: RetryCallState) -> float:
        if _testing:
            return 0.0
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        # only a RetryableError is retried; its retry_after is the receiver's word
        if isinstance(error, RetryableError) and error.retry_after is not None:
            return max(0.0, float(error.retry_after))
        return self.backoff(retry_state.attempt_number)

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> Attempted[T]:
        """Await ``fn()`` until it succeeds or the policy gives up.

        Returns ``Attempted(value, attempts)``. Raises the last ``RetryableError`` when attempts
        or the budget run out, a ``PermanentError`` (or any other exception) at once; a
        ``DeliveryError`` raised here has ``attempts`` set. ``on_retry`` is called before each
        wait; if it raises, the error is logged and ignored (monitoring never breaks delivery).
        """

        def before_sleep(retry_state: RetryCallState) -> None:
            if on_retry is None:
                return
            outcome = retry_state.outcome
            error = outcome.exception() if outcome is not None else None
            event = RetryEvent(
                attempt=retry_state.attempt_number,
                error=str(error),
                wait_s=retry_state.upcoming_sleep,
            )
            try:
                on_retry(event)
            except Exception:
                log.warning("retry.hook_failed", exc_info=True)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.attempts)
            | _StopBeforeBudget(self.config.budget_s, self._clock),
            wait=self._wait,
            retry=retry_if_exception_type(RetryableError),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    value = await fn()
        except DeliveryError as exc:
            exc.attempts = attempts
            raise
        return Attempted(value, attempts)
