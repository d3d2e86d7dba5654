"""Destination limits shared by every replica: the client side of the ledger's
``SharedLimits`` (``sender.limit_ports``), wired by ``sender.app`` when the ledger has it
(PostgreSQL). With SQLite every replica keeps its own limits, as before.

What is shared, per destination name:

- the **rate limit** (``rate_limit``): one GCRA in the ledger. A replica does not ask per
  request: it takes a *lease* of tokens, ``LEASE_S`` seconds' worth (at least one request's
  cost), which is its own slice of the destination's timeline, and spends it paced from the
  slice's start, 5% under the limit (``HEADROOM``). Slices of different replicas never
  overlap, so every window of a second or more sees at most that (plus one request at its
  edge, and the jitter of the replicas' clocks and sends), from the first request on. A
  request that cannot be sent within its slice (its replica woke up late) takes a later one
  rather than spill into another replica's;
- a receiver's **pause** (``Retry-After``, ``RateLimit-Reset``): written to the ledger when one
  replica is told (only ever later), read by the others within ``POLL_S`` — or at once, on
  their next lease, which carries it;
- an **open circuit**: other replicas trip their breaker open until the opener's reset ends
  (``circuit.opened``, reason "opened by another replica"), then probe on their own.

Adaptive concurrency stays each replica's, but a pause another replica was told of counts as
push-back here too. A replica that loses the ledger (a call fails or takes over
``CALL_TIMEOUT_S``) falls back to a local token bucket of ``limit / live replicas`` (the
count of the last heartbeat: the ``replicas`` seen within ``LIVE_S``), and goes back to the
shared limit when the poller reaches the ledger again; each switch is logged once per
destination (``ratelimit.local_share`` with the share, ``ratelimit.shared``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .circuit import CircuitState
from .errors import AdapterClosed, LedgerError
from .limit_ports import DestinationLimits, SharedLimits
from .log import get_logger
from .ratelimit import Sleep, TokenBucket, burst_of
from .units import Rate

if TYPE_CHECKING:
    from .targets import Target

__all__ = [
    "CALL_TIMEOUT_S",
    "HEADROOM",
    "LEASE_S",
    "LIVE_S",
    "POLL_S",
    "SharedBucket",
    "SharedDestination",
    "SharedLimitsClient",
]

log = get_logger("sender.shared_limits")

_T = TypeVar("_T")

LEASE_S = 0.2  # seconds' worth of tokens one grant carries: a round trip per 0.2 s, not per request
POLL_S = 0.5  # how often a replica reads pauses and circuits (and says it is alive)
LIVE_S = 3.0  # a replica not seen for this long no longer counts for the fallback share
CALL_TIMEOUT_S = 1.0  # a ledger slower than this is as good as lost, for limits
LATE_S = 0.02  # a request woken this much after its slot (at most its own span) takes another
# The shared limit is paced this much under the configured one. Slices never overlap in
# the ledger's time, but each replica places its slices on its own clock (late by up to a
# round trip) and wakes up and sends a little late under load: the receiver sees arrivals
# bunched by that much. The +10% a window may see is meant for that; pacing at the limit
# itself would spend half of it on the request at a window's edge.
HEADROOM = 0.05
_SAME_S = 0.25  # a deadline read back within this of one we know is that one (clock skew)


class SharedLimitsClient:
    """The shared state of every destination of one process (``attach`` each ``Target``),
    kept fresh by a poller that runs while the client is entered.

    ``online`` is False while the ledger is lost; ``replicas`` is the last count of live
    replicas, ``owner`` included.
    """

    def __init__(
        self,
        ledger: SharedLimits,
        owner: str,
        *,
        poll_s: float = POLL_S,
        live_s: float = LIVE_S,
        timeout_s: float = CALL_TIMEOUT_S,
        clock: Callable[[], float] | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.ledger = ledger
        self.owner = owner
        self.poll_s = poll_s
        self.live_s = live_s
        self.timeout_s = timeout_s
        self.clock = clock or time.monotonic
        self.sleep = sleep or asyncio.sleep
        self.online = True
        self.replicas = 1
        self.error: str | None = None  # why the ledger was last lost
        self.destinations: dict[str, SharedDestination] = {}
        self._poller: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def attach(self, target: Target) -> SharedDestination:
        """Share ``target``'s limits from now on: its rate limiter takes leases, its pauses
        and circuit openings are written to the ledger and read back from it."""
        shared = SharedDestination(self, target)
        self.destinations[target.name] = shared
        target.shared = shared
        if target.rate_limiter is not None and shared.bucket is not None:
            target.rate_limiter.bucket = shared.bucket
        return shared

    async def __aenter__(self) -> SharedLimitsClient:
        await self.sync()  # a replica starts from the shared pauses and circuits
        self._poller = asyncio.create_task(self._poll(), name="shared-limits")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop polling, finish the writes under way, and leave (no longer counted live)."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=self.timeout_s)
            for task in set(self._writes):
                task.cancel()
            await asyncio.gather(*self._writes, return_exceptions=True)
        with contextlib.suppress(LedgerError, AdapterClosed, TimeoutError):
            await self.call(self.ledger.leave(self.owner))

    async def call(self, awaitable: Awaitable[_T]) -> _T:
        """A ledger call bounded by ``timeout_s`` (``TimeoutError`` past it)."""
        return await asyncio.wait_for(awaitable, self.timeout_s)

    async def sync(self) -> bool:
        """Say this replica is alive and read every destination's pause and circuit; False
        (and the fallback share) when the ledger does not answer."""
        try:
            live = await self.call(self.ledger.heartbeat(self.owner, self.live_s))
            states = await self.call(self.ledger.destination_limits(list(self.destinations)))
        except (LedgerError, TimeoutError) as exc:
            self.lost(exc)
            return False
        self.replicas = max(1, live)
        self.found()
        at = self.clock()
        for name, state in states.items():
            if name in self.destinations:
                self.destinations[name].apply(state, at)
        return True

    def lost(self, error: BaseException) -> None:
        """The ledger failed a call: every destination falls back to its local share."""
        self.error = str(error) or type(error).__name__
        if not self.online:
            return
        self.online = False
        for shared in self.destinations.values():
            shared.went_local()

    def found(self) -> None:
        """The ledger answers again: back to the shared limits."""
        if self.online:
            return
        self.online = True
        for shared in self.destinations.values():
            shared.went_shared()

    def write(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Write to the ledger in the background (the caller is a delivery: it must not wait
        on the ledger); a failure only means the ledger is lost."""
        task = asyncio.get_running_loop().create_task(self._write(make))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await self.call(make())
        except (LedgerError, TimeoutError) as exc:
            self.lost(exc)
        except AdapterClosed:
            pass  # shutting down

    async def _poll(self) -> None:
        while True:
            await self.sleep(self.poll_s)
            await self.sync()


class SharedDestination:
    """One destination's shared state, as its ``Target`` sees it (``Target.shared``)."""

    def __init__(self, client: SharedLimitsClient, target: Target) -> None:
        self.client = client
        self.target = target
        self.name = target.name
        limiter = target.rate_limiter
        self.bucket = None if limiter is None else SharedBucket(self, limiter.rate)
        self._tripping = False
        self._open_until = -math.inf  # (local clock) the end of the latest opening we know

    @property
    def mode(self) -> str:
        """``shared``, or ``local_share`` while the ledger is lost."""
        return "shared" if self.client.online else "local_share"

    def paused(self, seconds: float) -> None:
        """This replica was told to pause: tell the others."""
        self.client.write(lambda: self.client.ledger.pause_destination(self.name, seconds))

    def circuit_changed(self, old: CircuitState, new: CircuitState) -> None:
        """This replica's circuit opened (not by ``apply``): hold it open for the others."""
        if new is not CircuitState.OPEN or self._tripping:
            return
        reset_s = self.target.circuit.config.reset_s
        self._open_until = self.client.clock() + reset_s
        self.client.write(lambda: self.client.ledger.open_circuit(self.name, reset_s))

    def apply(self, state: DestinationLimits, at: float) -> None:
        """What the ledger said at ``at`` (local clock): take on a pause or an opening that
        another replica wrote, ignoring what this replica knows already."""
        target = self.target
        if state.paused_for_s > target.pause.remaining() + _SAME_S:
            target.pause.extend(state.paused_for_s)
            log.info(
                "ratelimit.pause",
                target=self.name,
                pause_s=round(state.paused_for_s, 3),
                reason="paused by another replica",
            )
            if target.aimd is not None:  # as if this replica had been told itself
                target.aimd.observe(None, pushed_back=True)
        open_until = at + state.circuit_open_for_s
        if state.circuit_open_for_s > 0 and open_until > self._open_until + _SAME_S:
            self._open_until = open_until
            self._tripping = True
            try:
                target.circuit.trip(state.circuit_open_for_s, reason="opened by another replica")
            finally:
                self._tripping = False

    def went_local(self) -> None:
        if self.bucket is None:
            return
        share = self.bucket.go_local(self.client.replicas)
        unit = " records" if share.unit == "records" else ""
        log.warning(
            "ratelimit.local_share",
            target=self.name,
            share=f"{share.per_second:.3g}{unit}/s",
            replicas=self.client.replicas,
            error=self.client.error,
        )

    def went_shared(self) -> None:
        if self.bucket is None:
            return
        self.bucket.go_shared()
        log.info("ratelimit.shared", target=self.name, rate=str(self.bucket.rate))


class SharedBucket:
    """A destination's rate limit spent from leases of the shared GCRA (see module), or from
    a local bucket of its share while the ledger is lost. Stands in for ``TokenBucket`` in
    ``RateLimiter`` (``acquire(cost) -> seconds waited``)."""

    def __init__(self, shared: SharedDestination, rate: Rate) -> None:
        self.shared = shared
        self.rate = rate
        # paced HEADROOM under the limit: room for the jitter of the replicas' wake-ups and of
        # the network, which the receiver counts too (see HEADROOM)
        self.per_second = rate.per_second * (1 - HEADROOM)
        self.client = shared.client
        self._lock = asyncio.Lock()  # one grant at a time; callers served in arrival order
        self._end = -math.inf  # (local clock) the end of the current lease's slice
        self._cursor = -math.inf  # where the next request's tokens start in it
        self.local: TokenBucket | None = None  # the fallback share, while the ledger is lost
        self.grants = 0

    def go_local(self, replicas: int) -> Rate:
        """Fall back to ``rate / replicas``; the share."""
        share = Rate(self.rate.amount / max(1, replicas), self.rate.per_s, self.rate.unit)
        per_second = share.per_second
        self.local = TokenBucket(
            per_second, burst_of(per_second), clock=self.client.clock, sleep=self.client.sleep
        )
        return share

    def go_shared(self) -> None:
        self.local = None
        self._end = self._cursor = -math.inf  # the lease taken before is long past

    async def reserve(self, cost: float) -> float:
        """Take ``cost`` tokens: the local time at which the request may go."""
        async with self._lock:
            clock = self.client.clock
            if self.local is None:
                try:
                    return await self._from_lease(cost)
                except (LedgerError, TimeoutError) as exc:
                    self.client.lost(exc)
            assert self.local is not None
            return clock() + self.local.reserve(cost)

    async def _from_lease(self, cost: float) -> float:
        clock = self.client.clock
        span = cost / self.per_second
        at = max(self._cursor, clock())
        if at + span > self._end + 1e-9:  # not in this lease: take the next one
            # whole requests of this cost: a fraction of one left at a lease's end is wasted
            tokens = cost * max(1, math.ceil(self.per_second * LEASE_S / cost - 1e-9))
            grant = await self.client.call(
                self.client.ledger.take_tokens(self.shared.name, self.per_second, tokens)
            )
            self.grants += 1
            # the reply's time, not the request's: a slice placed late, never early; and never
            # before this replica's last request, whose slice was placed late too (by up to a
            # round trip): the ledger may see that one over while here it has yet to go
            arrived = clock()
            at = max(arrived + grant.start_in_s, self._cursor)
            self._end = at + tokens / self.per_second
            self.shared.apply(grant.limits, arrived)
        self._cursor = at + span
        return at

    async def acquire(self, cost: float = 1.0) -> float:
        """Wait for ``cost`` tokens; the seconds waited."""
        clock = self.client.clock
        waited = 0.0
        # woken later than this, the request would be sending on another request's tokens
        late_s = min(LATE_S, cost / self.per_second)
        while True:
            at = await self.reserve(cost)
            delay = at - clock()
            if delay > 0:
                await self.client.sleep(delay)
                waited += delay
            if self.local is not None or clock() - at <= late_s:
                return waited
