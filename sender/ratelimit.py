"""Rate limits of one destination, shared by every batch: a token bucket, and the pause a
receiver asks for with ``Retry-After``.

``rate_limit = "20/s"`` costs one token per request; ``"5000 records/s"`` costs one token per
record of the chunk. The bucket holds a twentieth of a second's worth of tokens (at least one),
not a whole second's: a bucket that holds a second's worth lets that second through at once and
then the rate, so a receiver counting per second sees up to twice the limit (measured: 46/s over
the first two seconds with ``30/s``). Holding ``max(1, rate/20)`` keeps every window of a second
or more within the limit plus 10% from the first request on (``burst + rate * T``, with
``burst <= rate/10`` once the rate is 10/s or more). It is a *reservation* bucket: a caller
takes its tokens at once, going into debt if needed, and sleeps until the debt is paid. That
keeps callers in arrival order (nobody starves behind a stream of small requests) and lets a
chunk bigger than the bucket through at the average rate instead of never.

``Pause`` is the destination's "come back later": a ``429``/``503`` with ``Retry-After`` (or
``RateLimit-Reset``) stops *every* request to that destination until then, not just the one
that was told.

Clocks and sleeps are injectable so tests move time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .units import Rate

__all__ = ["BURST_S", "Bucket", "Pause", "RateLimiter", "TokenBucket", "burst_of"]

Sleep = Callable[[float], Awaitable[Any]]

BURST_S = 0.05  # seconds' worth of tokens a limiter saves up: well under the 10% slack


def burst_of(per_second: float) -> float:
    """The bucket size of a limit of ``per_second``: ``BURST_S`` worth, at least one token."""
    return max(1.0, per_second * BURST_S)


class Bucket(Protocol):
    """What ``RateLimiter`` spends tokens from: a ``TokenBucket`` of this process, or the
    limit shared by every replica (``sender.shared_limits.SharedBucket``)."""

    async def acquire(self, cost: float = 1.0) -> float:
        """Wait for ``cost`` tokens; return the seconds waited."""
        ...


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._tokens = burst
        self._last = self._clock()

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while callers are waiting)."""
        self._refill()
        return self._tokens

    def reserve(self, cost: float = 1.0) -> float:
        """Take ``cost`` tokens now and return how long to wait before using them (0 if they
        were there). Never fails: a big cost is paid off at the bucket's rate."""
        self._refill()
        self._tokens -= cost
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def refund(self, cost: float) -> None:
        """Give back tokens a caller reserved but did not use (it was cancelled)."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + cost)

    async def acquire(self, cost: float = 1.0) -> float:
        """Wait for ``cost`` tokens; return the seconds waited."""
        delay = self.reserve(cost)
        if delay > 0:
            try:
                await self._sleep(delay)
            except asyncio.CancelledError:
                self.refund(cost)
                raise
        return delay

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)


class RateLimiter:
    """A destination's ``rate_limit``: a ``TokenBucket`` priced per request or per record.

    Counts what it did: ``waits`` (how many acquisitions had to wait) and ``waited_s``.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.rate = rate
        per_second = rate.per_second
        self.bucket: Bucket = TokenBucket(
            per_second, burst_of(per_second), clock=clock, sleep=sleep
        )
        self.waits = 0
        self.waited_s = 0.0

    def cost(self, records: int) -> float:
        """Tokens one request carrying ``records`` records costs."""
        return float(max(1, records)) if self.rate.unit == "records" else 1.0

    async def acquire(self, records: int = 1) -> float:
        """Wait until a request of ``records`` records may go; return the seconds waited."""
        waited = await self.bucket.acquire(self.cost(records))
        if waited > 0:
            self.waits += 1
            self.waited_s += waited
        return waited


class Pause:
    """The destination's "paused until": set by a receiver's ``Retry-After``, awaited by
    every request.

    ``extend(seconds)`` only ever moves the end later; ``remaining()`` is the time left.
    """

    def __init__(
        self, *, clock: Callable[[], float] | None = None, sleep: Sleep | None = None
    ) -> None:
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._until = 0.0
        self.pauses = 0  # how many times a receiver paused (or lengthened a pause)

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def extend(self, seconds: float) -> bool:
        """Pause for ``seconds`` from now unless already paused longer; True if it changed."""
        until = self._clock() + max(0.0, seconds)
        if until <= self._until:
            return False
        self._until = until
        self.pauses += 1
        return True

    async def wait(self) -> float:
        """Sleep until the pause is over (it may be extended meanwhile); the seconds slept."""
        slept = 0.0
        while (left := self.remaining()) > 0:
            await self._sleep(left)
            slept += left
        return slept
