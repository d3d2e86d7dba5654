"""The ports: what the core needs from the outside world, and nothing more.

Adapters (``adapters/``) implement these Protocols and register under an entry-point group
(``sender.sources``, ``sender.triggers``, ``sender.destinations``, ``sender.ledgers``); the
composition root looks them up by ``type``. Every adapter is an async context manager whose
``aclose()`` is idempotent. Each adapter class declares ``Options``, the pydantic model of its
config section, so a third-party adapter validates its own keys with the same key-path errors
as the built-ins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

# the ledger's ports live in their own module (three Protocols and their rows)
from .ledger_ports import (
    BatchRecord,
    ChunkRecord,
    DiffStore,
    Inbox,
    InboxMessage,
    InboxOutcome,
    Ledger,
    LedgerType,
    PlanRow,
    ReplayLog,
    RouteStats,
    replays_of,
)
from .model import EncodedChunk, ObjectInfo, Receipt, TriggerMessage

__all__ = [
    "BatchFinisher",
    "BatchRecord",
    "BatchSummary",
    "Checkable",
    "ChunkRecord",
    "Destination",
    "DiffStore",
    "Envelope",
    "Inbox",
    "InboxMessage",
    "InboxOutcome",
    "Ledger",
    "LedgerBound",
    "LedgerType",
    "LocalFiles",
    "PendingCount",
    "PlanRow",
    "Purgeable",
    "ReplayLog",
    "Resource",
    "RouteStats",
    "Source",
    "TokenAccepting",
    "Trigger",
    "replays_of",
]


class Resource:
    """What makes an adapter an async context manager (STYLE.md #11): ``async with`` awaits
    ``_on_enter()`` (nothing by default; a ledger opens and migrates there) and, on the way
    out, the adapter's own idempotent ``aclose()``. (Not ``open``: that is a Source's verb.)"""

    async def _on_enter(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        await self._on_enter()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@runtime_checkable
class Source(Protocol):
    """Reads the objects of a batch from storage (local disk, S3, GCS).

    Raises ``SourceError`` for a missing path, bucket or object, or denied access.
    """

    async def list(self, uri: str) -> list[ObjectInfo]:
        """Every object under ``uri`` (recursively), sorted by URI; ``[that object]`` when
        ``uri`` names one object. Markers and hidden files are included: the core applies the
        Spark layout rules (``_SUCCESS``, ``.crc``, ``_committed_*``)."""
        ...

    def open(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
        """Stream the object's bytes in bounded pieces, never holding it whole."""
        ...

    async def read_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end): random access for Parquet."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Destination(Protocol):
    """Takes one encoded, compressed chunk (an HTTP API, a bucket, a queue, a folder).

    ``deliver`` returns a ``Receipt`` or raises ``RetryableError`` (with ``retry_after`` when the
    receiver said when to come back) or ``PermanentError``; the destination alone decides which,
    because only it knows what its receiver's answers mean.
    """

    name: str
    formats: frozenset[str]  # encodings it accepts: "ndjson", "json", "csv"
    codecs: frozenset[str]  # compressions it accepts: "none", "gzip", "zstd"

    async def deliver(self, chunk: EncodedChunk) -> Receipt: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What a destination that cares (a bucket drop) learns once a route's chunks are all
    terminal: every chunk it holds, so it can write a manifest and a completion marker."""

    batch_id: str
    dataset: str
    route: str
    chunks: Sequence[ChunkRecord]
    complete: bool  # every chunk of the route was delivered to this destination


@runtime_checkable
class BatchFinisher(Protocol):
    """Optional for a destination: told once a route's chunks are all terminal, so that a
    bucket drop can write its manifest and completion marker. Raise ``DeliveryError`` to
    keep the batch incomplete (it is finished again on the next run)."""

    async def finish_batch(self, summary: BatchSummary) -> None: ...


@runtime_checkable
class Checkable(Protocol):
    """Optional for a destination: ``check()`` raises ``DeliveryError`` unless the
    destination can take chunks now (a dead-letter folder is writable); ``/readyz`` asks it
    of every dead-letter store."""

    async def check(self) -> None: ...


@runtime_checkable
class Purgeable(Protocol):
    """Optional for a destination used as a dead-letter store: ``purge(location)`` deletes
    one stored dead letter (and its metadata) by the location its ``deliver`` returned;
    True when something was deleted. ``sender dead-letters --purge`` goes through it."""

    async def purge(self, location: str) -> bool: ...


@runtime_checkable
class LocalFiles(Protocol):
    """Optional for a source: the object is a file on this machine at ``local_path(obj)``,
    so readers may open it directly (memory-mapped Parquet) instead of streaming it."""

    def local_path(self, obj: ObjectInfo) -> str: ...


@runtime_checkable
class LedgerBound(Protocol):
    """Optional for a trigger: ``bind(ledger, daemon)`` is called once, right after
    construction, where triggers are wired. Inside the daemon ``ledger`` is the app's opened
    ledger; in ``sender trigger`` it is None. The ``http`` trigger keeps its inbox in the
    ledger and learns ``daemon.listen`` / ``daemon.token`` this way.

    ``ledger_problem(ledger, name)`` is asked by ``sender config check`` before anything
    opens, with the class of the configured ledger and its registered type: why that ledger
    cannot serve this trigger (the ``http`` one needs an ``Inbox``), or None."""

    @classmethod
    def ledger_problem(cls, ledger: type, name: str) -> str | None: ...

    def bind(self, ledger: Ledger | None, daemon: Any) -> None: ...


@runtime_checkable
class TokenAccepting(Protocol):
    """Optional for a trigger: a bearer token ``POST /v1/batches`` also accepts (besides
    ``daemon.token``; either one will do), e.g. a Pub/Sub push subscription's."""

    @property
    def accept_token(self) -> str | None: ...


@runtime_checkable
class PendingCount(Protocol):
    """Optional for a trigger: messages waiting, so ``sender run --burst`` knows when the
    queue is empty."""

    async def pending(self) -> int: ...


@runtime_checkable
class Envelope(Protocol):
    """One trigger message as taken from its queue, with the verbs to settle it."""

    body: bytes
    message_id: str

    async def ack(self) -> None:
        """The batch is complete in the ledger: remove the message for good."""
        ...

    async def reject(self, reason: str) -> None:
        """An invalid message or a failed batch: to the broker's dead-letter, never retried."""
        ...

    async def release(self) -> None:
        """Give the message back for redelivery (shutdown with the batch unfinished)."""
        ...

    async def extend(self, seconds: float) -> None:
        """Keep the lease on the message while a long batch runs."""
        ...


@runtime_checkable
class Trigger(Protocol):
    """Where the daemon takes trigger messages from (spool directory, HTTP, SQS, AMQP).

    Optional hooks the core looks for with ``getattr``:

    - ``bind(ledger: Ledger | None, daemon: DaemonConfig) -> None``: called once, right after
      construction, by ``sender.daemon.open_trigger``; inside the daemon ``ledger`` is the
      app's opened ledger, in ``sender trigger`` it is None. The ``http`` trigger keeps its
      inbox in the ledger and learns ``daemon.listen``/``daemon.token`` this way.
    - ``accept_token: str | None``: a bearer token ``POST /v1/batches`` also accepts (besides
      ``daemon.token``; either one will do).
    - ``async pending() -> int``: messages waiting, so ``sender run --burst`` knows when the
      queue is empty.
    """

    def messages(self) -> AsyncIterator[Envelope]:
        """Yield messages until closed; reconnect on broker loss with backoff."""
        ...

    @property
    def connected(self) -> bool:
        """True while the trigger can take messages (``/readyz``)."""
        ...

    async def publish(self, message: TriggerMessage) -> None:
        """Put a message on the queue, as a pipeline step does (``sender trigger``)."""
        ...

    async def aclose(self) -> None: ...
