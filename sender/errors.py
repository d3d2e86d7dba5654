"""The exception tree of integration-sender.

Every error the core raises or expects from an adapter derives from ``SenderError``::

    SenderError
    ├── ConfigError            bad configuration; names the key path (exit code 2)
    ├── MessageError           an invalid trigger message (rejected, never retried)
    ├── SourceError            a batch cannot be read: missing path, no _SUCCESS, corrupt file
    ├── LedgerError            the ledger cannot be read or written
    ├── TriggerError           the trigger (queue, spool, broker) cannot be reached
    └── DeliveryError          one chunk could not be delivered to one target
        ├── RetryableError     try again later (connection errors, timeouts, 429, 5xx);
        │                      carries an optional ``retry_after`` in seconds
        └── PermanentError     retrying cannot help (other 4xx, rejected payload)

Adapters translate vendor exceptions (aiohttp, botocore, google, aio-pika) into this tree at
their boundary and keep the original as ``__cause__``; vendor errors never reach the core.
``map_errors`` is that boundary for the adapters whose SDK errors only need a reason and a
retryable/permanent verdict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

__all__ = [
    "ConfigError",
    "DeliveryError",
    "LedgerError",
    "MessageError",
    "PermanentError",
    "RetryableError",
    "SenderError",
    "SourceError",
    "TriggerError",
    "map_errors",
]


class SenderError(Exception):
    """Root of every error integration-sender raises on purpose."""


class ConfigError(SenderError):
    """The configuration is invalid. ``str()`` lists every problem as ``key.path: reason``."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class MessageError(SenderError):
    """A trigger message is malformed or names something unknown; it is rejected, not retried."""


class SourceError(SenderError):
    """A batch cannot be read (missing object or bucket, no ``_SUCCESS``, corrupt file)."""


class LedgerError(SenderError):
    """The ledger cannot be reached, read or written."""


class TriggerError(SenderError):
    """The trigger's queue or broker cannot be reached."""


class DeliveryError(SenderError):
    """A chunk could not be delivered to a target. ``attempts`` is set by the retry policy
    to the number of attempts made before giving up."""

    attempts: int | None = None


class RetryableError(DeliveryError):
    """A transient failure: the same request may succeed later.

    ``retry_after`` (seconds) is the receiver's own word on when to come back
    (``Retry-After``, ``RateLimit-Reset``); the retry policy honours it.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


# answers that refuse the payload itself (bad or too large), not the request as a whole:
# halving the chunk can isolate the records at fault
_PAYLOAD_STATUSES = frozenset({400, 413, 422})


class PermanentError(DeliveryError):
    """The receiver refused the chunk for good (a 4xx other than 408/425/429).

    ``payload`` says whether the refusal is about the chunk's content (400, 413, 422, a
    message over a queue's size cap), so that splitting the chunk can isolate the records at
    fault; a missing queue or bucket, 401/403/404 are about the destination, and splitting
    would only multiply the failures. By default it follows ``status``.
    """

    def __init__(
        self, reason: str, *, status: int | None = None, payload: bool | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.payload = status in _PAYLOAD_STATUSES if payload is None else payload


@contextlib.contextmanager
def map_errors(
    catch: tuple[type[BaseException], ...],
    describe: Callable[[BaseException], tuple[str, bool]],
    *,
    to: Literal["delivery", "source"] = "delivery",
) -> Iterator[None]:
    """Translate the vendor errors in ``catch`` raised inside the block (STYLE.md #7).

    ``describe(exc)`` gives a readable reason and whether a later attempt may succeed. With
    ``to="delivery"`` the block raises ``RetryableError(reason)`` or
    ``PermanentError(reason)`` accordingly; with ``to="source"`` it raises
    ``SourceError(reason)`` (a source does not retry, so the verdict is dropped). The vendor
    error is kept as ``__cause__``; errors outside ``catch`` pass through untouched::

        with map_errors((ClientError, OSError), lambda exc: describe(exc, uri)):
            await client.put_object(...)
    """
    try:
        yield
    except catch as exc:
        reason, retryable = describe(exc)
        if to == "source":
            raise SourceError(reason) from exc
        raise (RetryableError(reason) if retryable else PermanentError(reason)) from exc
