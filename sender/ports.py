"""The ports: what the core needs from the outside world, and nothing more.

Adapters (``adapters/``) implement these Protocols and register under an entry-point group
(``sender.sources``, ``sender.triggers``, ``sender.destinations``, ``sender.ledgers``); the
composition root looks them up by ``type``. Every adapter is an async context manager whose
``aclose()`` is idempotent. Each adapter class declares ``Options``, the pydantic model of its
config section, so a third-party adapter validates its own keys with the same key-path errors
as the built-ins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, Self, runtime_checkable

from .model import BatchState, ChunkState, EncodedChunk, ObjectInfo, Receipt, TriggerMessage

__all__ = [
    "BatchFinisher",
    "BatchRecord",
    "BatchSummary",
    "Checkable",
    "ChunkRecord",
    "Destination",
    "Envelope",
    "InboxMessage",
    "InboxOutcome",
    "Ledger",
    "LedgerBound",
    "LocalFiles",
    "PendingCount",
    "Purgeable",
    "Resource",
    "RouteStats",
    "Source",
    "TokenAccepting",
    "Trigger",
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
    ledger and learns ``daemon.listen`` / ``daemon.token`` this way."""

    def bind(self, ledger: Any, daemon: Any) -> None: ...


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


@dataclass(slots=True)
class RouteStats:
    """A route's reconciliation: ``read == delivered + dead_lettered + rejected`` when done."""

    read: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    chunks: int = 0

    @property
    def reconciled(self) -> bool:
        return self.read == self.delivered + self.dead_lettered + self.rejected

    @classmethod
    def total(cls, stats: Iterable[RouteStats]) -> RouteStats:
        total = cls()
        for item in stats:
            total.read += item.read
            total.delivered += item.delivered
            total.dead_lettered += item.dead_lettered
            total.rejected += item.rejected
            total.chunks += item.chunks
        return total

    def to_dict(self) -> dict[str, int]:
        return {
            "read": self.read,
            "delivered": self.delivered,
            "dead_lettered": self.dead_lettered,
            "rejected": self.rejected,
            "chunks": self.chunks,
        }


@dataclass(slots=True)
class ChunkRecord:
    """The ledger's row for one chunk of one route of one batch."""

    batch_id: str
    route: str
    chunk_id: str
    state: ChunkState
    records: int = 0
    raw_size: int = 0
    kind: str = "data"  # "data", or "rejects" for bad input records
    idempotency_key: str = ""
    target: str | None = None  # who took it (a destination name, or the dead-letter store)
    attempts: int = 0
    last_error: str | None = None
    location: str | None = None  # URL, object or file where it now is
    checksum: str | None = None  # sha256 of the payload as first sent
    updated_at: datetime | None = None


@dataclass(slots=True)
class BatchRecord:
    """The ledger's row for one batch."""

    batch_id: str
    dataset: str
    uri: str
    state: BatchState
    message: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    runs: int = 0
    routes: dict[str, RouteStats] = field(default_factory=dict)
    objects: list[ObjectInfo] | None = None  # the source as first read (changes are refused)
    lease_owner: str | None = None
    lease_expires: datetime | None = None

    @property
    def totals(self) -> RouteStats:
        return RouteStats.total(self.routes.values())


@runtime_checkable
class Ledger(Protocol):
    """Durable state of batches and chunks. SQLite by default; PostgreSQL for replicas.

    Every method is one transaction. Raises ``LedgerError`` when the store is unreachable.
    """

    async def start_batch(self, message: TriggerMessage) -> BatchRecord:
        """Create the batch (state running), or mark an existing one running again (``runs``
        + 1, ``error`` cleared), keeping its chunks; return the record."""
        ...

    async def get_batch(self, batch_id: str) -> BatchRecord | None: ...

    async def list_batches(
        self,
        *,
        dataset: str | None = None,
        state: BatchState | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[BatchRecord]:
        """Most recent first (by ``created_at``)."""
        ...

    async def set_objects(self, batch_id: str, objects: Sequence[ObjectInfo]) -> None:
        """Record the source's objects as first read."""
        ...

    async def finish_batch(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> None: ...

    async def chunks(self, batch_id: str, route: str | None = None) -> list[ChunkRecord]:
        """The batch's chunks ordered by route, then chunk id in natural order."""
        ...

    async def save_chunks(self, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace these chunk rows (keyed by batch, route, chunk id) atomically."""
        ...

    async def acquire_lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the batch's lease for ``owner``; False while another owner holds an
        unexpired one. A replay and a daemon never send the same batch at once."""
        ...

    async def release_lease(self, batch_id: str, owner: str) -> None: ...

    async def record_replay(
        self, batch_id: str, who: str, selectors: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        """Append to the batch's audit trail of ``sender replay``: who (``user@host``), what
        was selected (routes, chunks, target, rate, dry run) and how it went (``outcome``,
        JSON-serialisable). ``LedgerError`` for an unknown batch."""
        ...

    async def replays(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's replays, oldest first, each ``{id, batch_id, who, at (datetime),
        selectors, outcome}``; ``[]`` for an unknown batch."""
        ...

    async def ping(self) -> None:
        """Raise ``LedgerError`` unless the store answers (``/readyz``)."""
        ...

    # -- the inbox: trigger messages accepted over HTTP (``type = "http"``) ---------------
    # A message POSTed to the control server is stored here before the 202, then claimed by
    # a daemon (any replica sharing the ledger), leased while its batch runs and settled when
    # it is done. Like a queue: at-least-once, a released or expired claim is taken again.

    async def enqueue_message(self, message_id: str, body: bytes) -> bool:
        """Store a message (state ``pending``), durable when this returns. False, changing
        nothing, when a message with this id is already pending (claimed or not); a settled
        one (``done``/``rejected``) is queued again with the new body, deliveries reset."""
        ...

    async def claim_messages(self, owner: str, limit: int, lease_s: float) -> list[InboxMessage]:
        """Take up to ``limit`` pending messages, oldest first, that nobody holds (or whose
        lease expired): lease each to ``owner`` for ``lease_s`` and count the delivery. Two
        owners never hold the same message at once."""
        ...

    async def extend_message(self, message_id: str, owner: str, lease_s: float) -> bool:
        """Renew ``owner``'s lease on a claimed message for ``lease_s`` from now; False when
        ``owner`` no longer holds it (settled, released, or expired and claimed by another)."""
        ...

    async def settle_message(
        self, message_id: str, outcome: InboxOutcome, reason: str | None = None
    ) -> None:
        """``done`` (its batch is complete) or ``rejected`` (invalid, with ``reason``): kept
        for the record, never claimed again. ``released``: back to pending, lease cleared, to
        be claimed again at once. ``LedgerError`` for an unknown id."""
        ...

    async def get_message(self, message_id: str) -> InboxMessage | None:
        """The inbox row, or None."""
        ...

    async def aclose(self) -> None: ...


InboxOutcome = Literal["done", "rejected", "released"]


@dataclass(slots=True)
class InboxMessage:
    """A trigger message in the ledger's inbox (the ``http`` trigger's durable queue)."""

    message_id: str
    body: bytes
    state: str  # "pending" (waiting or claimed), "done" or "rejected"
    received_at: datetime
    deliveries: int = 0  # times claimed
    owner: str | None = None  # who holds the claim while its lease runs
    lease_expires: datetime | None = None
    settled_at: datetime | None = None
    reason: str | None = None  # why it was rejected
