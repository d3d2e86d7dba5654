"""A target is a destination as the core uses it: the adapter, plus the policies that wrap
every delivery to it, shared by all batches:

- a **circuit breaker** (``sender.circuit``): after ``circuit.failures`` failed deliveries the
  target is skipped until a probe succeeds;
- a **rate limit** (``rate_limit``, ``sender.ratelimit``): a token bucket per request or per
  record, and a shared pause when the receiver answers with ``Retry-After``;
- **concurrency**: a fixed number of requests in flight, or ``"adaptive"`` (AIMD up to
  ``max_concurrency``, ``sender.concurrency``);
- the **retry policy** (``sender.retry``);
- **shared limits**: with a ledger that has ``SharedLimits`` (PostgreSQL) the rate limit, a
  receiver's pause and an open circuit are one state for every replica
  (``sender.shared_limits``, attached at wiring as ``Target.shared``);
- **gone**: a ``PermanentError`` with ``gone`` (HTTP 410) disables the target for the rest of
  the process (``destination.gone``, ``sender_destination_gone_total``, ``stats()["gone"]``):
  every later send fails at once, so chunks go on to the fallback or the dead-letter store.

One attempt goes: wait out a pause → take a concurrency slot → take rate-limit tokens →
(paused meanwhile? wait again) → send. Waiting for a slot or for tokens is queueing, not
trying: it uses up no attempt and is not counted in the retry ``budget``. Waiting out a
receiver's pause is counted (the receiver asked for it, like a ``Retry-After`` backoff), and a
pause that would run past the budget fails the delivery at once, so that the chunk moves on to
the next target instead of queueing behind a receiver that said "come back in an hour".

Encoding is per target (each destination has its own format and codec), and a chunk's
encodings are cached so a fallback with the same format and codec reuses the bytes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .circuit import CircuitBreaker, CircuitState
from .concurrency import AIMDController, Limiter
from .config import DestinationOptions
from .errors import CircuitOpenError, DeliveryError, PermanentError, RetryableError
from .live import AttemptLog
from .log import get_logger
from .metrics import Metrics
from .model import EncodedChunk, Receipt
from .ports import Destination
from .ratelimit import Pause, RateLimiter
from .retry import RetryEvent, RetryPolicy, is_testing

if TYPE_CHECKING:
    from .shared_limits import SharedDestination

__all__ = ["Delivered", "Target"]

log = get_logger("sender.targets")


def _answered(error: RetryableError, seconds: float) -> float | None:
    """``seconds`` when the receiver answered (a status), None for no answer at all."""
    return seconds if error.status is not None else None


@dataclass(frozen=True, slots=True)
class Delivered:
    receipt: Receipt
    attempts: int


class _Abort(Exception):
    """Ends a retry loop from inside an attempt (the retry policy retries every
    ``RetryableError``); carries the error the send ends with."""

    def __init__(self, error: DeliveryError, *, failed: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.failed = failed  # counts as a failed delivery for the circuit breaker


class Target:
    """One configured destination with its shared circuit breaker, rate limit, concurrency
    limit and retry policy.

    ``clock`` (monotonic seconds) and ``sleep`` are injectable for tests. ``concurrency`` is
    the fixed limit, or the ceiling when adaptive; ``limiter.limit`` is the limit now.
    ``metrics`` (built at wiring) is told of every attempt, retry, wait and state change;
    without it nothing is measured.
    """

    def __init__(
        self,
        name: str,
        destination: Destination,
        options: DestinationOptions,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.destination = destination
        self.options = options
        self.format: str = options.format
        self.codec: str = options.compression
        self.level: int | None = options.compression_level
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        # the limits shared with other replicas (sender.shared_limits), set at wiring
        self.shared: SharedDestination | None = None
        self.adaptive = options.concurrency == "adaptive"
        self.concurrency = options.max_in_flight
        # adaptive starts at one request and earns more, as ARC does
        self.limiter = Limiter(1 if self.adaptive else self.concurrency)
        self.aimd: AIMDController | None = (
            AIMDController(
                self.limiter,
                ceiling=self.concurrency,
                target=name,
                clock=self._clock,
                on_change=lambda old, new, reason: self._concurrency_changed(new),
            )
            if self.adaptive
            else None
        )
        self.circuit = CircuitBreaker(
            name, options.circuit, clock=self._clock, on_change=self._circuit_changed
        )
        self._concurrency_changed(self.limiter.limit)
        self._circuit_changed(name, CircuitState.CLOSED, CircuitState.CLOSED)
        self.rate_limiter: RateLimiter | None = (
            RateLimiter(options.rate_limit, clock=self._clock, sleep=self._sleep)
            if options.rate_limit is not None
            else None
        )
        self.pause = Pause(clock=self._clock, sleep=self._sleep)
        self.retry = RetryPolicy(options.retry, sleep=sleep, clock=clock)
        self._rng = random.Random()  # one per target: seeding one per send costs a urandom
        self.attempts = AttemptLog()  # latency, retries and the last error, for status pages
        # why the receiver said it is gone for good (HTTP 410): from then on, for the rest of
        # the process's life, every send fails at once and chunks move on to the fallback
        self.gone: str | None = None

    @property
    def encoding(self) -> tuple[str, str, int | None]:
        return self.format, self.codec, self.level

    def available(self) -> bool:
        """False while the circuit is open (or half-open with its probe out): skip me."""
        return self.circuit.available()

    def stats(self) -> dict[str, Any]:
        """What the policies did so far, for status pages and tests."""
        return {
            "circuit": self.circuit.state.value,
            "circuit_transitions": dict(self.circuit.transitions),
            "concurrency": self.limiter.limit,
            "in_flight": self.limiter.in_use,
            "concurrency_changes": dict(self.aimd.changes) if self.aimd else {},
            "ratelimit_waits": self.rate_limiter.waits if self.rate_limiter else 0,
            "ratelimit_waited_s": round(self.rate_limiter.waited_s, 3)
            if self.rate_limiter
            else 0.0,
            "pauses": self.pause.pauses,
            # "shared" by every replica, "local_share" while the ledger is lost, or "local"
            "limits": "local" if self.shared is None else self.shared.mode,
            "circuit_retry_after_s": round(self.circuit.retry_after(), 3),
            "gone": self.gone,
            **self.attempts.stats(),
        }

    async def send(self, chunk: EncodedChunk, /, **log_fields: Any) -> Delivered:
        """Deliver with retries; raise the final ``DeliveryError`` (with ``.attempts``).

        Raises ``CircuitOpenError`` (``attempts`` 0) at once when the circuit refuses, and
        ends a retry loop early when the circuit opens under it.
        """
        return await self._send(chunk, True, log_fields)

    async def send_ignoring_circuit(self, chunk: EncodedChunk, /, **log_fields: Any) -> Delivered:
        """``send`` that the circuit never refuses nor cuts short: for the dead-letter store,
        which has nothing to skip to and must be used again as soon as it is back. Its
        outcome still counts for the circuit."""
        return await self._send(chunk, False, log_fields)

    async def _send(
        self, chunk: EncodedChunk, circuit: bool, log_fields: dict[str, Any]
    ) -> Delivered:
        self._refuse_if_gone()
        probe = self.circuit.acquire() if circuit else False
        if probe:
            log.info("circuit.probe", target=self.name, **log_fields)
        clock = self._clock
        budget_s = self.options.retry.budget_s
        queued = 0.0  # seconds spent waiting for slots and tokens: not part of the budget
        attempts = 0

        def budget_clock() -> float:
            return clock() - queued

        started = budget_clock()

        async def attempt() -> Receipt:
            nonlocal queued, attempts
            if attempts and circuit and self.circuit.refuses_retry(probe):
                raise _Abort(
                    CircuitOpenError(
                        f"circuit opened while retrying ({self.name})",
                        retry_after=self.circuit.retry_after() or None,
                    ),
                    failed=False,
                )
            await self._wait_pause(budget_s - (budget_clock() - started), log_fields)
            waiting = clock()
            async with self.limiter.slot():
                while True:
                    await self._take_tokens(chunk.records, log_fields)
                    queued += clock() - waiting
                    # a receiver may have paused us while we queued; tokens taken before a
                    # pause are not spent after it, or every waiting chunk would go at once
                    paused = await self._wait_pause(
                        budget_s - (budget_clock() - started), log_fields
                    )
                    if not paused or self.rate_limiter is None:
                        break
                    waiting = clock()
                self._refuse_if_gone()  # or said it is gone while we queued or backed off
                attempts += 1
                sent = clock()
                try:
                    receipt = await self._deliver(chunk)
                except RetryableError as exc:
                    self.attempts.failed(str(exc), _answered(exc, clock() - sent))
                    self._pushed_back(exc, log_fields)
                    if probe:  # a probe gets one attempt: the circuit decides, not retries
                        raise _Abort(exc, failed=True) from None
                    raise
                except PermanentError as exc:
                    self.attempts.failed(str(exc), clock() - sent)
                    self._observe(clock() - sent, pushed_back=False)
                    if exc.gone:
                        self._disable(exc, log_fields)
                    raise
                self._observe(clock() - sent, pushed_back=False)
                self.attempts.answered(clock() - sent)
                return receipt

        def on_retry(event: RetryEvent) -> None:
            if self.metrics is not None:
                self.metrics.retry(self.name)
            self.attempts.retried()
            log.info(
                "chunk.retry",
                target=self.name,
                attempt=event.attempt,
                error=event.error,
                wait_s=round(event.wait_s, 3),
                **log_fields,
            )

        policy = RetryPolicy(
            self.options.retry, sleep=self._sleep, clock=budget_clock, rng=self._rng
        )
        try:
            result = await policy.call(attempt, on_retry=on_retry)
        except _Abort as abort:
            error = abort.error
            error.attempts = attempts
            if abort.failed:
                self.circuit.record_failure(probe, error=str(error))
            else:
                self.circuit.release(probe)
            raise error from None
        except PermanentError:
            self.circuit.record_success(probe)  # the endpoint answers; the payload was refused
            raise
        except DeliveryError as exc:
            self.circuit.record_failure(probe, error=str(exc))
            raise
        except BaseException:
            self.circuit.release(probe)
            raise
        self.circuit.record_success(probe)
        return Delivered(result.value, result.attempts)

    def _refuse_if_gone(self) -> None:
        if self.gone is not None:
            raise PermanentError(
                f"{self.name} is disabled until restart: it answered {self.gone}",
                status=410,
                gone=True,
            )

    def _disable(self, error: PermanentError, log_fields: dict[str, Any]) -> None:
        if self.gone is not None:  # chunks in flight at the time get their 410s too
            return
        self.gone = error.reason
        log.error("destination.gone", target=self.name, error=error.reason, **log_fields)
        if self.metrics is not None:
            self.metrics.destination_gone(self.name)

    async def _deliver(self, chunk: EncodedChunk) -> Receipt:
        if self.metrics is None:
            return await self.destination.deliver(chunk)
        return await self.metrics.timed_delivery(self.name, self.destination.deliver(chunk))

    def _circuit_changed(self, name: str, old: CircuitState, new: CircuitState) -> None:
        if self.metrics is not None:
            self.metrics.breaker_state(name, new.value)
        if self.shared is not None:
            self.shared.circuit_changed(old, new)

    def _concurrency_changed(self, limit: int) -> None:
        if self.metrics is not None:
            self.metrics.concurrency(self.name, limit)

    async def _take_tokens(self, records: int, log_fields: dict[str, Any]) -> None:
        if self.rate_limiter is None:
            return
        waited = await self.rate_limiter.acquire(records)
        if waited > 0:
            if self.metrics is not None:
                self.metrics.rate_limit_wait(self.name, waited)
            log.debug(
                "ratelimit.wait",
                target=self.name,
                wait_s=round(waited, 3),
                rate=str(self.rate_limiter.rate),
                **log_fields,
            )

    async def _wait_pause(self, budget_left_s: float, log_fields: dict[str, Any]) -> float:
        """Wait out the receiver's pause; the seconds waited (0 when not paused)."""
        remaining = self.pause.remaining()
        if remaining <= 0 or is_testing():
            return 0.0
        if remaining >= budget_left_s:
            raise _Abort(
                RetryableError(
                    f"{self.name} is paused for {remaining:.1f}s by its receiver "
                    "(Retry-After), past the retry budget",
                    retry_after=remaining,
                ),
                failed=True,
            )
        log.debug(
            "ratelimit.paused_wait", target=self.name, wait_s=round(remaining, 3), **log_fields
        )
        return await self.pause.wait()

    def _pushed_back(self, error: RetryableError, log_fields: dict[str, Any]) -> None:
        if error.retry_after and self.pause.extend(error.retry_after):
            log.info(
                "ratelimit.pause",
                target=self.name,
                pause_s=round(error.retry_after, 3),
                error=str(error),
                **log_fields,
            )
            if self.shared is not None:  # every replica stops, not just this one
                self.shared.paused(error.retry_after)
        # a failed request's round trip (a reset, a timeout, a quick 500) is no measure of
        # the receiver's latency: only its push-back counts (a field the destination sets:
        # 429, 503, a timeout, any answer that said when to come back)
        self._observe(None, pushed_back=error.push_back)

    def _observe(self, rtt_s: float | None, *, pushed_back: bool) -> None:
        if self.aimd is not None:
            self.aimd.observe(rtt_s, pushed_back=pushed_back)

    async def aclose(self) -> None:
        await self.destination.aclose()
