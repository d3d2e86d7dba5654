"""When waiting for a batch is over: one observation at a time, for every waiting loop.

The deferrable trigger (async, in the triggerer) and the operator's ``deferrable=False`` path
(sync, in the worker) poll the same way; only how they fetch and sleep differs. ``BatchWatch``
turns each observation into *keep waiting* (None) or the event that ends the wait:

- the batch is ``complete`` or ``failed`` → a *settled* event with the reconciliation;
- no such batch (404) for longer than ``not_found_grace_s`` → *not_found*;
- the token is refused → *error* at once (polling again cannot fix it);
- the server is unreachable or answers 5xx → keep waiting (a daemon restarts; a deploy
  rolls), logged, until the deadline;
- past ``deadline`` (UNIX time, so a triggerer restart does not extend it) → *timeout*.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ControlServerError, IntegrationSenderError
from .outcome import error_event, is_settled, not_found_event, settled_event, timeout_event

__all__ = ["BatchWatch", "transient"]

log = logging.getLogger(__name__)


def transient(exc: IntegrationSenderError) -> bool:
    """An unreachable control server or a 5xx: worth polling again. Anything else (a refused
    token, a broken connection setting, an answer that is not the contract) is not."""
    return type(exc) is ControlServerError and (exc.status is None or exc.status >= 500)


class BatchWatch:
    """The wait for one batch. ``clock`` is ``time.time`` unless a test injects one."""

    def __init__(
        self,
        batch_id: str,
        *,
        not_found_grace_s: float | None,
        deadline: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.batch_id = batch_id
        self.not_found_grace_s = not_found_grace_s
        self.deadline = deadline
        self._clock = clock
        self.started = clock()
        self.state: str | None = None  # the last state seen, for the timeout's message

    def waited_s(self) -> float:
        return round(self._clock() - self.started, 3)

    def seen(self, batch: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A ``GET /v1/batches/{id}`` answer (None for 404)."""
        if batch is None:
            grace = self.not_found_grace_s
            if grace is not None and self.waited_s() >= grace:
                return not_found_event(self.batch_id, self.waited_s())
            return self.expired()
        self.state = str(batch.get("state"))
        if is_settled(batch):
            return settled_event(batch)
        return self.expired()

    def failed(self, exc: IntegrationSenderError) -> dict[str, Any] | None:
        """The request failed: a transient server problem waits, anything else ends it."""
        if transient(exc):
            log.warning("batch %s: %s; polling again", self.batch_id, exc)
            return self.expired()
        return error_event(self.batch_id, exc)

    def expired(self) -> dict[str, Any] | None:
        if self.deadline is not None and self._clock() >= self.deadline:
            return timeout_event(self.batch_id, self.state, self.waited_s())
        return None

    def pause_s(self, poll_interval_s: float) -> float:
        """How long to sleep before the next poll: never past the deadline."""
        if self.deadline is None:
            return poll_interval_s
        return max(0.0, min(poll_interval_s, self.deadline - self._clock()))
