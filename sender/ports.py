"""The ports: what the core needs from the outside world, and nothing more.

Adapters (``adapters/``) implement these Protocols and register under an entry-point group
(``sender.sources``, ``sender.triggers``, ``sender.destinations``, ``sender.ledgers``); the
composition root looks them up by ``type``. Every adapter is an async context manager whose
``aclose()`` is idempotent. Each adapter class declares ``Options``, the pydantic model of its
config section, so a third-party adapter validates its own keys with the same key-path errors
as the built-ins.

One construction convention (``AdapterFactory``): a source, trigger or destination class is
called ``cls(name, options)`` with its section's name and its validated ``Options``; a ledger
class is ``cls.from_url(url)`` (``LedgerType``). Optional abilities are the small
``runtime_checkable`` Protocols below, checked with ``isinstance`` once, where adapters are
wired.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, Self, TypeVar, runtime_checkable

# the ledger's ports live in their own module (three Protocols and their rows)
from .ledger_ports import (
    BatchRecord,
    ChunkRecord,
    DestinationLimits,
    DiffStore,
    Inbox,
    InboxMessage,
    InboxOutcome,
    Ledger,
    LedgerType,
    LimitGrant,
    Outbox,
    OutboxEvent,
    PlanRow,
    ReplayLog,
    RouteStats,
    SharedLimits,
    replays_of,
)
from .model import EncodedChunk, ObjectInfo, Receipt, TriggerMessage
from .options import DaemonConfig, DestinationOptions, Options, SourceOptions, TriggerOptions
from .shard_ports import ShardRecord, Shards

__all__ = [
    "AdapterFactory",
    "BatchFinisher",
    "BatchRecord",
    "BatchSummary",
    "Checkable",
    "ChunkRecord",
    "Destination",
    "DestinationFactory",
    "DestinationLimits",
    "DiffStore",
    "Envelope",
    "Inbox",
    "InboxMessage",
    "InboxOutcome",
    "Ledger",
    "LedgerBound",
    "LedgerType",
    "LimitGrant",
    "LocalFiles",
    "LocalQueue",
    "Outbox",
    "OutboxEvent",
    "PendingCount",
    "PlanRow",
    "Purgeable",
    "ReplayLog",
    "Resource",
    "RouteStats",
    "ServesSchemes",
    "ShardRecord",
    "Shards",
    "SharedLimits",
    "Source",
    "SourceFactory",
    "TokenAccepting",
    "Trigger",
    "TriggerFactory",
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

    Its class declares ``schemes``, the URI schemes it serves (``ServesSchemes``): a batch URI
    goes to the source of its scheme. Raises ``SourceError`` for a missing path, bucket or
    object, or denied access.
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

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


@runtime_checkable
class Destination(Protocol):
    """Takes one encoded, compressed chunk (an HTTP API, a bucket, a queue, a folder).

    ``deliver`` returns a ``Receipt`` or raises ``RetryableError`` (with ``retry_after`` when the
    receiver said when to come back) or ``PermanentError``; the destination alone decides which,
    because only it knows what its receiver's answers mean. ``formats`` and ``codecs`` are
    class attributes: a section configured with a ``format`` or ``compression`` its class does
    not declare is a config error.
    """

    name: str
    formats: frozenset[str]  # encodings it accepts: "ndjson", "json", "csv"
    codecs: frozenset[str]  # compressions it accepts: "none", "gzip", "zstd"

    async def deliver(self, chunk: EncodedChunk) -> Receipt: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


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
    True when something was deleted, False (deleting nothing) when ``location`` is not a dead
    letter this store holds. ``holds(location)`` says whether it still holds one there.
    ``sender dead-letters --purge`` goes through it (a dead-letter store without it is a
    config error there); ``sender dead-letters`` and ``sender status`` ask ``holds``."""

    async def holds(self, location: str) -> bool: ...

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
    def ledger_problem(cls, ledger: LedgerType, name: str) -> str | None: ...

    def bind(self, ledger: Ledger | None, daemon: DaemonConfig) -> None: ...


@runtime_checkable
class TokenAccepting(Protocol):
    """Optional for a trigger: a bearer token ``POST /v1/batches`` also accepts (besides
    ``daemon.token``; either one will do), e.g. a Pub/Sub push subscription's."""

    @property
    def accept_token(self) -> str | None: ...


@runtime_checkable
class LocalQueue(Protocol):
    """A trigger whose messages come from this machine only (the spool directory): they may
    name any URI the daemon can read, like ``sender send``. Messages of every other trigger
    (HTTP, SQS, RabbitMQ) are held to ``daemon.allow_uris`` or its default."""

    local_queue: Literal[True]


@runtime_checkable
class PendingCount(Protocol):
    """Optional for a trigger: messages waiting, so ``sender run --burst`` knows when the
    queue is empty (``--burst`` with a trigger without it is a config error)."""

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

    Optional abilities: ``LedgerBound`` (``bind``), ``TokenAccepting`` (``accept_token``) and
    ``PendingCount`` (``pending``, which ``sender run --burst`` needs).
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

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


# -- construction ------------------------------------------------------------------------

PortT = TypeVar("PortT", covariant=True)
OptionsT = TypeVar("OptionsT", bound=Options)


class AdapterFactory(Protocol[PortT, OptionsT]):
    """How the core builds a source, trigger or destination: ``cls(name, options)``, where
    ``name`` is its section's name (``destinations.NAME``; ``trigger`` for the trigger) and
    ``options`` its section validated by ``cls.Options``. What the registry hands out; a
    ledger class is built by ``from_url`` instead (``LedgerType``)."""

    Options: type[OptionsT]

    def __call__(self, name: str, options: OptionsT, /) -> PortT: ...


@runtime_checkable
class ServesSchemes(Protocol):
    """An adapter class that serves URIs of ``schemes`` (``""`` for a plain path): every
    source (a batch URI goes to the source of its scheme), every ledger (``daemon.ledger``),
    and a destination that can keep chunks in a folder (``file``), configured by its ``path``
    option: routes without a ``dead_letter`` share one such folder, ``var/dead-letter``."""

    schemes: Collection[str]


class SourceFactory(AdapterFactory[Source, SourceOptions], Protocol):
    """A source class: ``cls(name, options)``, and the URI schemes it serves."""

    schemes: Collection[str]


class DestinationFactory(AdapterFactory[Destination, DestinationOptions], Protocol):
    """A destination class: ``cls(name, options)``, and the encodings and compressions it
    takes (checked against its section's ``format`` and ``compression`` when loaded)."""

    formats: frozenset[str]
    codecs: frozenset[str]


TriggerFactory = AdapterFactory[Trigger, TriggerOptions]
