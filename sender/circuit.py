"""The circuit breaker of one destination, shared by every batch that uses it.

A dead endpoint must not clog everything: once it has failed often enough, chunks skip it and
go straight to the next target (or the dead-letter store) without spending their retries on it,
and one probe at a time finds out when it is back::

    CLOSED ──(failures consecutive failed deliveries, or a failure ratio over window)──► OPEN
    OPEN ──(reset seconds later)──► HALF_OPEN ──(the probe succeeds)──► CLOSED
                                     └──(the probe fails)──► OPEN (the reset starts again)

What counts is a **delivery**: one ``Target.send`` that ended in a ``RetryableError`` after its
retries is one failure; one that ended delivered is a success. A single failed attempt that a
retry fixes is not an outage, and counting deliveries keeps ``circuit.failures`` independent of
``retry.attempts``. A ``PermanentError`` (400, 422) counts as a *success* here: the endpoint is
up and answering, it only refused that payload — poison-record splitting makes many of those on
purpose and must not trip the breaker. Sends still in their retry loop when the circuit opens
stop retrying at once (``refuses_retry``) and move on to the next target.

In HALF_OPEN exactly one send is let through (``acquire`` returns True for it) and it gets a
single attempt; every other send is refused until the probe has settled.

Another replica sharing the ledger may ``trip`` the circuit open from outside (``circuit.opened``
with the reason "opened by another replica"); half-open probing stays each replica's own.

State changes are logged (``circuit.opened``, ``circuit.half_open``, ``circuit.closed``, with
the target) and counted in ``CircuitBreaker.transitions``. The clock is injectable, so tests
move time instead of sleeping.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from enum import StrEnum

from .config import CircuitConfig
from .errors import CircuitOpenError
from .log import get_logger

__all__ = ["CircuitBreaker", "CircuitOpenError", "CircuitState"]

log = get_logger("sender.circuit")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts a destination's delivery outcomes and decides whether to send to it at all.

    ``clock`` is a monotonic ``clock() -> seconds``; ``on_change(target, old, new)`` is called on
    every state change (after the log line); if it raises, the error is logged and ignored.
    """

    def __init__(
        self,
        target: str,
        config: CircuitConfig,
        *,
        clock: Callable[[], float] | None = None,
        on_change: Callable[[str, CircuitState, CircuitState], None] | None = None,
    ) -> None:
        self.target = target
        self.config = config
        self._clock = clock or time.monotonic
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._window: deque[bool] = deque(maxlen=config.window)  # True = failed
        self._opened_at = 0.0
        self._probing = False
        self.transitions: Counter[str] = Counter()  # "opened", "half_open", "closed"

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The state now (an open circuit whose ``reset`` has passed is half-open)."""
        self._refresh()
        return self._state

    def available(self) -> bool:
        """Whether a send would be let through now (closed, or half-open with no probe out).
        Does not take the probe: ``acquire`` does."""
        state = self.state
        return state is CircuitState.CLOSED or (
            state is CircuitState.HALF_OPEN and not self._probing
        )

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when not open)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.reset_s - self._clock())

    def refuses_retry(self, probe: bool) -> bool:
        """Whether a send that is already retrying should stop: the circuit opened under it.
        The probe itself is never refused."""
        return not probe and self.state is not CircuitState.CLOSED

    # -- a send's life -----------------------------------------------------------------------

    def acquire(self) -> bool:
        """Before a send: True if this send is the half-open probe, False for an ordinary send
        through a closed circuit. Raises ``CircuitOpenError`` when the circuit refuses."""
        state = self.state
        if state is CircuitState.CLOSED:
            return False
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        wait = self.retry_after()
        reason = "circuit open" if state is CircuitState.OPEN else "circuit half-open, probing"
        raise CircuitOpenError(f"{reason} ({self.target})", retry_after=wait or None)

    def record_success(self, probe: bool = False) -> None:
        """A delivery ended well (or was refused permanently: the endpoint answers)."""
        if probe:
            self._probing = False
            self._set(CircuitState.CLOSED, reason="probe succeeded")
            return
        if self._state is not CircuitState.CLOSED:
            return  # a send that started before the circuit opened: only the probe decides
        self._consecutive = 0
        self._window.append(False)

    def record_failure(self, probe: bool = False, *, error: str | None = None) -> None:
        """A delivery failed after its retries (or the probe's one attempt failed)."""
        if probe:
            self._probing = False
            self._open(reason="probe failed", error=error)
            return
        if self._state is not CircuitState.CLOSED:
            return
        self._consecutive += 1
        self._window.append(True)
        if self._consecutive >= self.config.failures:
            self._open(reason=f"{self._consecutive} consecutive failed deliveries", error=error)
            return
        ratio = self.config.ratio
        if ratio is not None and len(self._window) == self._window.maxlen:
            failed = sum(self._window) / len(self._window)
            if failed >= ratio:
                self._open(
                    reason=f"{failed:.0%} of the last {len(self._window)} deliveries failed",
                    error=error,
                )

    def trip(self, open_for_s: float, *, reason: str) -> bool:
        """Open the circuit from outside for ``open_for_s`` seconds (then half-open, probing
        as usual): another replica found the destination down. An open circuit is only held
        open longer, never shortened. True if it changed anything."""
        if open_for_s <= 0:
            return False
        opened_at = self._clock() + open_for_s - self.config.reset_s
        if self.state is CircuitState.OPEN:
            if opened_at <= self._opened_at:
                return False
            self._opened_at = opened_at
            return True
        self._opened_at = opened_at
        self._set(CircuitState.OPEN, reason=reason)
        return True

    def release(self, probe: bool) -> None:
        """A send ended without an outcome (cancelled, closed): let another probe through."""
        if probe:
            self._probing = False

    # -- internals -------------------------------------------------------------------------

    def _refresh(self) -> None:
        if (
            self._state is CircuitState.OPEN
            and self._clock() >= self._opened_at + self.config.reset_s
        ):
            self._set(CircuitState.HALF_OPEN, reason="reset elapsed")

    def _open(self, *, reason: str, error: str | None) -> None:
        self._opened_at = self._clock()
        self._set(CircuitState.OPEN, reason=reason, error=error)

    def _set(self, new: CircuitState, *, reason: str, error: str | None = None) -> None:
        old = self._state
        self._state = new
        self._consecutive = 0
        self._window.clear()
        if old is new:
            return
        name = {"open": "opened", "half_open": "half_open", "closed": "closed"}[new.value]
        self.transitions[name] += 1
        fields: dict[str, object] = {"target": self.target, "previous": old.value}
        if new is CircuitState.OPEN:
            fields["reset_s"] = self.config.reset_s
            if error:
                fields["error"] = error
        (log.warning if new is CircuitState.OPEN else log.info)(
            f"circuit.{name}", reason=reason, **fields
        )
        if self._on_change is not None:
            try:
                self._on_change(self.target, old, new)
            except Exception:
                log.warning("circuit.hook_failed", target=self.target, exc_info=True)
