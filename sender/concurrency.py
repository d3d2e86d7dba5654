"""Concurrency of one destination: a resizable limiter, and the AIMD controller that sizes it
when ``concurrency = "adaptive"``.

``Limiter`` is a FIFO semaphore whose size can change while requests are in flight: growing
wakes waiters at once; shrinking lets the requests in flight finish and grants no new slot
until fewer than the new limit are in use.

``AIMDController`` works like Vector's adaptive request concurrency (ARC). Responses are
gathered in windows about one round-trip long; at the end of each window:

- *push-back* in the window (``429``, ``503``, a timeout, or any answer with ``Retry-After``
  or ``RateLimit-Reset``) → the limit is multiplied by ``backoff`` (0.5);
- else the window's mean RTT rose *well above* its moving average (more than
  ``deviation_scale`` mean deviations, and at least ``tolerance`` of the average) → multiplied
  by ``decrease`` (0.9): the receiver is queueing;
- else, if the limit was actually reached during the window (demand was there) → +1, up to
  ``ceiling`` (``max_concurrency``).

The RTT average is an EWMA (``alpha`` 0.4) of the windows' means, its deviation an EWMA of the
absolute differences. Unlike ARC, a ``Retry-After`` is also honoured: the destination pauses
(``sender.ratelimit.Pause``) and the controller backs off. Other failures (a 500, a reset
connection) say nothing about load: they are left out of the RTT figures and change nothing.
Push-back cuts at once rather than at the end of the window, but at most once per round trip:
answers to requests sent before a cut still reflect the old limit.

The clock is injectable; ``observe`` never sleeps, so tests drive it on a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable

from .log import get_logger

__all__ = ["AIMDController", "Limiter"]

log = get_logger("sender.concurrency")


class Limiter:
    """A resizable FIFO semaphore: at most ``limit`` slots in use at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.peak = 0  # the most slots in use at once since the last ``take_peak``

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    def resize(self, limit: int) -> None:
        """Change the limit now; waiters are woken if there is room."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._wake()

    def take_peak(self) -> int:
        """The peak use since the last call, then restart counting from the use now."""
        peak, self.peak = self.peak, self._in_use
        return peak

    async def acquire(self) -> None:
        if self._in_use < self._limit and not self._waiters:
            self._grant()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def release(self) -> None:
        if self._in_use <= 0:
            raise RuntimeError("release() without acquire()")
        self._in_use -= 1
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def _grant(self) -> None:
        self._in_use += 1
        self.peak = max(self.peak, self._in_use)

    def _wake(self) -> None:
        while self._waiters and self._in_use < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._grant()
                waiter.set_result(None)


class AIMDController:
    """Sizes a ``Limiter`` from response times and push-back (see the module docstring).

    ``on_change(old, new, reason)`` is called after every change; if it raises, the error is
    logged and ignored. ``changes`` counts the changes by direction ("up", "down").
    """

    def __init__(
        self,
        limiter: Limiter,
        *,
        ceiling: int,
        target: str = "",
        floor: int = 1,
        decrease: float = 0.9,
        backoff: float = 0.5,
        alpha: float = 0.4,
        deviation_scale: float = 2.5,
        tolerance: float = 0.1,
        min_window_s: float = 0.001,
        clock: Callable[[], float] | None = None,
        on_change: Callable[[int, int, str], None] | None = None,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError("need 1 <= floor <= ceiling")
        if not (0 < decrease < 1 and 0 < backoff < 1 and 0 < alpha <= 1):
            raise ValueError("decrease, backoff must be in (0, 1) and alpha in (0, 1]")
        self.limiter = limiter
        self.ceiling = ceiling
        self.floor = floor
        self.target = target
        self.decrease = decrease
        self.backoff = backoff
        self.alpha = alpha
        self.deviation_scale = deviation_scale
        self.tolerance = tolerance
        self.min_window_s = min_window_s
        self._clock = clock or time.monotonic
        self._on_change = on_change
        self.rtt_mean: float | None = None  # EWMA of the windows' mean RTT, seconds
        self.rtt_deviation = 0.0
        self._window_end: float | None = None
        self._rtt_sum = 0.0
        self._rtt_count = 0
        self._pushed_back = False
        self._last_cut: float | None = None
        self.changes: collections.Counter[str] = collections.Counter()
        limiter.resize(max(floor, min(ceiling, limiter.limit)))

    @property
    def limit(self) -> int:
        return self.limiter.limit

    def observe(self, rtt_s: float | None, *, pushed_back: bool = False) -> None:
        """One response: its round-trip time (None when it says nothing about load, e.g. a
        reset connection) and whether the receiver pushed back."""
        now = self._clock()
        if self._window_end is None:
            self._window_end = now + self._window_length()
            self.limiter.take_peak()
        if pushed_back:
            self._pushed_back = True
        elif rtt_s is not None:
            self._rtt_sum += rtt_s
            self._rtt_count += 1
        # push-back is acted on at once rather than at the end of the window: the requests
        # already sent would otherwise keep hitting a receiver that said stop
        if (pushed_back and self._may_cut(now)) or now >= self._window_end:
            self._adjust(now)

    def _window_length(self) -> float:
        return max(self.min_window_s, self.rtt_mean or 0.0)

    def _may_cut(self, now: float) -> bool:
        # answers to requests sent before the last cut still reflect the old limit: one cut
        # per round trip, as TCP does
        return self._last_cut is None or now - self._last_cut >= self._window_length()

    def _adjust(self, now: float) -> None:
        current = self._rtt_sum / self._rtt_count if self._rtt_count else None
        peak = self.limiter.take_peak()
        limit = self.limiter.limit
        new, reason = limit, ""
        rising = current is not None and self.rtt_mean is not None and current > self._threshold()
        if self._pushed_back or rising:
            if self._may_cut(now):
                factor = self.backoff if self._pushed_back else self.decrease
                new = math.floor(limit * factor)
                reason = "push-back" if self._pushed_back else "rtt rising"
                self._last_cut = now
        elif current is not None and peak >= limit:
            # grow only when the limit was what held requests back, and RTT stayed level
            new, reason = limit + 1, "growing"
        if current is not None:
            if self.rtt_mean is None:
                self.rtt_mean, self.rtt_deviation = current, current / 2
            else:
                self.rtt_deviation += self.alpha * (
                    abs(current - self.rtt_mean) - self.rtt_deviation
                )
                self.rtt_mean += self.alpha * (current - self.rtt_mean)
        self._rtt_sum, self._rtt_count, self._pushed_back = 0.0, 0, False
        self._window_end = now + self._window_length()
        self._set(max(self.floor, min(self.ceiling, new)), reason, current)

    def _threshold(self) -> float:
        assert self.rtt_mean is not None
        slack = max(self.deviation_scale * self.rtt_deviation, self.tolerance * self.rtt_mean)
        return self.rtt_mean + slack

    def _set(self, new: int, reason: str, rtt: float | None) -> None:
        old = self.limiter.limit
        if new == old:
            return
        self.limiter.resize(new)
        self.changes["up" if new > old else "down"] += 1
        fields = dict(
            target=self.target,
            limit=new,
            previous=old,
            reason=reason,
            rtt_ms=None if rtt is None else round(rtt * 1000, 2),
            rtt_avg_ms=None if self.rtt_mean is None else round(self.rtt_mean * 1000, 2),
        )
        # growing happens every round trip: only cuts are worth an info line
        (log.info if new < old else log.debug)("concurrency.changed", **fields)
        if self._on_change is not None:
            try:
                self._on_change(old, new, reason)
            except Exception:
                log.warning("concurrency.hook_failed", target=self.target, exc_info=True)
