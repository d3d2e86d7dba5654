"""Why a task talking to integration-sender failed, as exceptions that carry the facts.

::

    IntegrationSenderError (AirflowException)    itself: a connection that cannot work
                                                 (no host, a schema other than http/https)
    ├── ControlServerError(url, status)          unreachable, 5xx, an answer we cannot read
    │   └── TokenRejected                        401/403: wrong or missing bearer token
    ├── TriggerRejected(batch_id, reason)        400: the daemon refused the trigger message
    ├── BatchFailed(batch_id, batch)             the batch ended ``failed``
    ├── DeadLettersFound(batch_id, batch)        complete, but records were dead-lettered
    │                                            (only with ``fail_on_dead_letters``)
    ├── BatchNotFound(batch_id, waited_s)        still unknown to the daemon after the grace
    └── BatchTimeout(batch_id, state, waited_s)  not settled within the task's ``timeout``

``TokenRejected`` and ``TriggerRejected`` also derive from ``AirflowFailException``: an Airflow
retry with the same token or the same message cannot succeed, so the task fails at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

__all__ = [
    "BatchFailed",
    "BatchNotFound",
    "BatchTimeout",
    "ControlServerError",
    "DeadLettersFound",
    "IntegrationSenderError",
    "TokenRejected",
    "TriggerRejected",
]


class IntegrationSenderError(AirflowException):
    """Root of the provider's errors."""


class ControlServerError(IntegrationSenderError):
    """The control server could not be reached or gave an answer that is not the contract."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TokenRejected(ControlServerError, AirflowFailException):
    """The control server refused the connection's token (HTTP 401 or 403)."""


class TriggerRejected(IntegrationSenderError, AirflowFailException):
    """``POST /v1/batches`` answered 400: the trigger message is invalid; ``reason`` says why."""

    def __init__(self, batch_id: str, reason: str) -> None:
        super().__init__(f"integration-sender rejected the trigger for batch {batch_id}: {reason}")
        self.batch_id = batch_id
        self.reason = reason


class _BatchOutcomeError(IntegrationSenderError):
    def __init__(self, message: str, *, batch_id: str, batch: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.batch = dict(batch)


class BatchFailed(_BatchOutcomeError):
    """The batch ended in state ``failed`` (unreadable input, ``on_bad_record = "fail"``)."""


class DeadLettersFound(_BatchOutcomeError):
    """The batch is complete but records went to the dead-letter store."""


class BatchNotFound(IntegrationSenderError):
    """The daemon still did not know the batch when the not-found grace ran out."""

    def __init__(self, batch_id: str, waited_s: float) -> None:
        super().__init__(
            f"integration-sender has no batch {batch_id} after waiting {waited_s:.0f}s: "
            "the trigger message never reached the daemon (wrong queue, dataset with no "
            "route, or the daemon is down), or it is queued behind other batches longer "
            "than not_found_grace"
        )
        self.batch_id = batch_id
        self.waited_s = waited_s


class BatchTimeout(IntegrationSenderError):
    """The batch was not complete or failed within the task's ``timeout``."""

    def __init__(self, batch_id: str, state: str | None, waited_s: float) -> None:
        seen = f"last seen {state}" if state else "never seen by the daemon"
        super().__init__(
            f"integration-sender batch {batch_id} did not settle within {waited_s:.0f}s ({seen})"
        )
        self.batch_id = batch_id
        self.state = state
        self.waited_s = waited_s
