"""The exception tree of integration-sender: every public exception lives here.

Every error the core raises or expects from an adapter derives from ``SenderError``::

    SenderError                     exit_code 1 unless a subclass says otherwise
    ├── ConfigError                 bad configuration; names the key path (exit code 2)
    ├── UsageError                  a command-line argument is wrong (exit code 2)
    ├── SelectionError              replay selectors name what is not there (exit code 2)
    ├── MessageError                an invalid trigger message (rejected, never retried)
    ├── SourceError                 a batch cannot be read: missing path, no _SUCCESS, corrupt
    │   │                           file, an object changed while it was read
    │   └── BadRecordPolicyFailed   ``on_bad_record = "fail"`` met a bad record
    ├── LedgerError                 the ledger cannot be read or written
    │   └── LedgerLost              the ledger file is gone or replaced although its marker
    │                               says it was in use: refused at open (exit code 2)
    ├── TriggerError                the trigger (queue, spool, broker) cannot be reached
    ├── AdapterClosed               an adapter was used after ``aclose()``
    ├── BatchBusy                   another process holds the batch's lease
    ├── ReplayRefused               a replay would not be safe (lease held, source changed)
    ├── DeadLetterUnavailable       every target and the dead-letter store failed a chunk
    ├── FinishFailed                a destination could not write its end-of-batch marker
    ├── DaemonUnreachable           no daemon answers at ``daemon.listen`` (``sender top``)
    └── DeliveryError               one chunk could not be delivered to one target
        ├── RetryableError          try again later (connection errors, timeouts, 429, 5xx):
        │   │                       ``status``, ``retry_after``, ``push_back`` are facts the
        │   │                       core decides back-off, pauses and metric labels from
        │   └── CircuitOpenError    the target's circuit is open: no attempt was made
        └── PermanentError          retrying cannot help (other 4xx, rejected payload)

Adapters translate vendor exceptions (aiohttp, botocore, google, aio-pika) into this tree at
their boundary and keep the original as ``__cause__``; vendor errors never reach the core.
``map_errors`` is that boundary: an adapter's ``describe`` turns a vendor error into the
``RetryableError`` / ``PermanentError`` it means (with the status and push-back the answer
carried), or just a reason and a retryable/permanent verdict. The core never reads an
error's message text: the message is for people, the fields are for code (STYLE.md #22).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

__all__ = [
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_USAGE",
    "AdapterClosed",
    "BadRecordPolicyFailed",
    "BatchBusy",
    "CircuitOpenError",
    "ConfigError",
    "DaemonUnreachable",
    "DeadLetterUnavailable",
    "DeliveryError",
    "FinishFailed",
    "LedgerError",
    "LedgerLost",
    "MessageError",
    "PermanentError",
    "ReplayRefused",
    "RetryableError",
    "SelectionError",
    "SenderError",
    "SourceError",
    "TriggerError",
    "UsageError",
    "describe_error",
    "first_error",
    "map_errors",
]

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # delivery incomplete, or the batch failed
EXIT_USAGE = 2  # usage or config error


class SenderError(Exception):
    """Root of every error integration-sender raises on purpose.

    ``exit_code`` is what the CLI exits with when this error ends a command.
    """

    exit_code: ClassVar[int] = EXIT_INCOMPLETE


class ConfigError(SenderError):
    """The configuration is invalid. ``str()`` lists every problem as ``key.path: reason``."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(SenderError):
    """A command-line argument is wrong."""

    exit_code = EXIT_USAGE


class SelectionError(SenderError):
    """The selectors of a replay name something that is not there (batch, route, chunk,
    target)."""

    exit_code = EXIT_USAGE


class MessageError(SenderError):
    """A trigger message is malformed or names something unknown; it is rejected, not retried."""


class SourceError(SenderError):
    """A batch cannot be read (missing object or bucket, no ``_SUCCESS``, corrupt file, an
    object that changed while it was read)."""


class BadRecordPolicyFailed(SourceError):
    """``on_bad_record = "fail"`` met a bad record."""


class LedgerError(SenderError):
    """The ledger cannot be reached, read or written."""


class LedgerLost(LedgerError):
    """The ledger is not the one the daemon used (its file vanished or was replaced while
    the daemon was down): opening an empty ledger would send recorded batches again, so it
    is refused until the file is restored or a fresh start is chosen on purpose."""

    exit_code = EXIT_USAGE


class TriggerError(SenderError):
    """The trigger's queue or broker cannot be reached."""


class AdapterClosed(SenderError):
    """An adapter (source, destination, trigger, ledger) was used after ``aclose()``."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is closed")
        self.what = what


class BatchBusy(SenderError):
    """Another process (a daemon replica, a replay) holds the batch's lease."""


class ReplayRefused(SenderError):
    """The replay would not be safe: a daemon holds the batch, or its source changed."""


class DeadLetterUnavailable(SenderError):
    """Every target and the dead-letter store failed for a chunk: the batch must stop."""


class DaemonUnreachable(SenderError):
    """No daemon answers on the control server's address (``sender top``): exit code 1, as
    for any run that could not do its job; the message names the address tried."""


class FinishFailed(SenderError):
    """A destination could not write its end-of-batch marker (manifest, _SUCCESS)."""


class DeliveryError(SenderError):
    """A chunk could not be delivered to a target. ``attempts`` is set by the retry policy
    to the number of attempts made before giving up; ``status`` is the receiver's status
    (HTTP status, broker reply code) when it gave one."""

    attempts: int | None = None
    status: int | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# answers that say "you are sending too much": back off harder, not just later
_PUSH_BACK_STATUSES = frozenset({429, 503})


class RetryableError(DeliveryError):
    """A transient failure: the same request may succeed later.

    - ``status``: the HTTP status (or broker status) of the answer, None when there was no
      answer (connection refused or reset, timeout).
    - ``retry_after`` (seconds): the receiver's own word on when to come back
      (``Retry-After``, ``RateLimit-Reset``); the retry policy honours it.
    - ``push_back``: the receiver said "you are sending too much" (429, 503, a timeout, or
      any answer with a ``retry_after``): adaptive concurrency cuts its limit and, with a
      ``retry_after``, every sender to it pauses. A 500 or a reset connection says nothing
      about load. By default it follows ``status`` and ``retry_after``.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        push_back: bool | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after
        if push_back is None:
            push_back = retry_after is not None or status in _PUSH_BACK_STATUSES
        self.push_back = push_back


class CircuitOpenError(RetryableError):
    """The target's circuit is open: the chunk was not sent (no attempt was made).
    ``retry_after`` is the time left before a probe will be let through."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason, retry_after=retry_after, push_back=False)


# answers that refuse the payload itself (bad or too large), not the request as a whole:
# halving the chunk can isolate the records at fault
_PAYLOAD_STATUSES = frozenset({400, 413, 422})


class PermanentError(DeliveryError):
    """The receiver refused the chunk for good (a 4xx other than 408/425/429).

    ``payload`` says whether the refusal is about the chunk's content (400, 413, 422, a
    message over a queue's size cap), so that splitting the chunk can isolate the records at
    fault; a missing queue or bucket, 401/403/404 are about the destination, and splitting
    would only multiply the failures. By default it follows ``status``. ``gone`` says the
    destination itself is gone for good (HTTP 410): it is disabled for the daemon's life.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        payload: bool | None = None,
        gone: bool = False,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.payload = status in _PAYLOAD_STATUSES if payload is None else payload
        self.gone = gone


@contextlib.contextmanager
def map_errors(
    catch: tuple[type[BaseException], ...],
    describe: Callable[[BaseException], DeliveryError | tuple[str, bool]],
    *,
    to: Literal["delivery", "source"] = "delivery",
) -> Iterator[None]:
    """Translate the vendor errors in ``catch`` raised inside the block (STYLE.md #7).

    ``describe(exc)`` gives the ``RetryableError`` or ``PermanentError`` the vendor error
    means, with the facts the answer carried (``status``, ``push_back``, ``payload``), or
    just a readable reason and whether a later attempt may succeed (then the block raises a
    ``RetryableError(reason)`` or ``PermanentError(reason)`` without them). With
    ``to="source"`` it raises ``SourceError(reason)`` instead (a source does not retry, so
    the verdict is dropped). The vendor error is kept as ``__cause__``; errors outside
    ``catch`` pass through untouched::

        with map_errors((ClientError, OSError), lambda exc: describe(exc, uri)):
            await client.put_object(...)
    """
    try:
        yield
    except catch as exc:
        described = describe(exc)
        if isinstance(described, DeliveryError):
            error = described
        else:
            reason, retryable = described
            error = RetryableError(reason) if retryable else PermanentError(reason)
        if to == "source":
            raise SourceError(error.reason) from exc
        raise error from exc


def describe_error(exc: BaseException) -> str:
    """An unexpected error as the ledger and the log show it: a ``SenderError`` says what
    happened in its own words; anything else (a bug) is named by its type too."""
    if isinstance(exc, SenderError) and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def first_error(
    group: BaseExceptionGroup[BaseException], *prefer: type[BaseException]
) -> BaseException:
    """The error that explains a failed task group: the first leaf of the first kind in
    ``prefer`` (the order says what explains a failure best), else the first leaf."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in prefer:
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0] if leaves else group
