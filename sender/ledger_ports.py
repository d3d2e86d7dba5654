"""The ledger's ports, split by job so that a ledger implements only what it offers:

- ``Ledger``: batch and chunk state, the source's objects, leases (every ledger);
- ``ReplayLog``: the audit trail of ``sender replay`` (``sender status`` shows it);
- ``Inbox``: the durable queue of the ``http`` trigger (messages POSTed to the daemon);
- ``DiffStore``: diff sync's baseline per route and each batch's frozen plan (``sender.diff``);
- ``Outbox``: completion events written with the batch's end, delivered later (``sender.events``);
- ``SharedLimits``: destination limits one state for every replica (``sender.limit_ports``).

A ledger class registers under the ``sender.ledgers`` entry-point group and declares the URL
schemes it serves (``LedgerType``); ``daemon.ledger``'s scheme picks it. Re-exported by
``sender.ports``; the contract suites are in ``sender.testing``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, Self, runtime_checkable

from .limit_ports import DestinationLimits, LimitGrant, SharedLimits
from .model import BatchState, ChunkState, ObjectInfo, TriggerMessage

__all__ = [
    "BatchRecord",
    "ChunkRecord",
    "DestinationLimits",
    "DiffStore",
    "Inbox",
    "InboxMessage",
    "InboxOutcome",
    "Ledger",
    "LedgerType",
    "LimitGrant",
    "Outbox",
    "OutboxEvent",
    "PlanKind",
    "PlanRow",
    "ReplayLog",
    "RouteStats",
    "SharedLimits",
    "replays_of",
]


@dataclass(slots=True)
class RouteStats:
    """A route's reconciliation: ``read == delivered + dead_lettered + rejected + unchanged``
    when done. ``unchanged`` counts records a diff-synced route did not send because the
    receiver has them already; ``tombstones`` the deletions it delivered (``_deleted``
    records, not read from the batch, so outside the equation), ``tombstones_dead_lettered``
    those that went to the dead-letter store."""

    read: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    unchanged: int = 0
    chunks: int = 0
    tombstones: int = 0
    tombstones_dead_lettered: int = 0

    @property
    def reconciled(self) -> bool:
        settled = self.delivered + self.dead_lettered + self.rejected + self.unchanged
        return self.read == settled

    @classmethod
    def total(cls, stats: Iterable[RouteStats]) -> RouteStats:
        total = cls()
        for item in stats:
            for name in cls.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(item, name))
        return total

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


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

    Every method is one transaction. Raises ``LedgerError`` when the store is unreachable,
    ``AdapterClosed`` once ``aclose()`` was called (``aclose`` itself is idempotent).
    """

    async def __aenter__(self) -> Self:
        """Open the store (and migrate its schema)."""
        ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def aclose(self) -> None: ...

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

    async def ping(self) -> None:
        """Raise ``LedgerError`` unless the store answers (``/readyz``)."""
        ...


@runtime_checkable
class ReplayLog(Protocol):
    """Optional for a ledger: the audit trail of ``sender replay``. Without it a replay
    still runs, and nothing records who ran it."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def aclose(self) -> None: ...

    async def record_replay(
        self, batch_id: str, who: str, selectors: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        """Append to the batch's audit trail: who (``user@host``), what was selected (routes,
        chunks, target, rate, dry run) and how it went (``outcome``, JSON-serialisable).
        ``LedgerError`` for an unknown batch."""
        ...

    async def replays(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's replays, oldest first, each ``{id, batch_id, who, at (datetime),
        selectors, outcome}``; ``[]`` for an unknown batch."""
        ...


@runtime_checkable
class Inbox(Protocol):
    """Optional for a ledger: the ``http`` trigger's durable queue.

    A message POSTed to the control server is stored here before the 202, then claimed by a
    daemon (any replica sharing the ledger), leased while its batch runs and settled when it
    is done. Like a queue: at-least-once, a released or expired claim is taken again.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def aclose(self) -> None: ...

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


PlanKind = Literal["send", "duplicate", "bad", "delete"]


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One row of a route's frozen plan for a batch.

    ``send``: the record at ``ordinal`` is sent as the ``seq``-th record of the route (its
    ``key`` and ``hash`` enter the baseline once delivered). ``duplicate`` and ``bad``: the
    record at ``ordinal`` is rejected with ``reason``. ``delete``: a tombstone for ``key``,
    sent as the ``seq``-th record, after every data record."""

    kind: PlanKind
    ordinal: int | None
    seq: int | None = None
    key: bytes | None = None
    hash: bytes | None = None
    reason: str | None = None


@runtime_checkable
class DiffStore(Protocol):
    """What a ledger offers for diff sync (SQLite and PostgreSQL alike): the baseline per
    dataset and route, and each batch's frozen plan. Keys and hashes are bytes."""

    async def baseline_page(
        self, dataset: str, route: str, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(key, hash)`` pairs of the baseline with keys after ``after``,
        in key order (bytewise)."""
        ...

    async def start_plan(self, batch_id: str, route: str) -> None:
        """Forget any unfinished plan of the batch for the route (a crash while planning)."""
        ...

    async def save_plan(self, batch_id: str, route: str, rows: Sequence[PlanRow]) -> None:
        """Append rows to the batch's plan for the route (called in ordinal order, then the
        tombstones in seq order; a plan is written once, before anything is sent)."""
        ...

    async def finish_plan(self, batch_id: str, route: str) -> None:
        """The plan is whole: from now on ``has_plan`` is True and it never changes."""
        ...

    async def has_plan(self, batch_id: str, route: str) -> bool:
        """Whether a finished plan exists (an unfinished one does not count)."""
        ...

    async def plan_page(
        self, batch_id: str, route: str, after_ordinal: int, limit: int
    ) -> list[PlanRow]:
        """``send``/``duplicate``/``bad`` rows with ordinals after ``after_ordinal``, in
        ordinal order."""
        ...

    async def tombstone_page(
        self, batch_id: str, route: str, after_seq: int, limit: int
    ) -> list[PlanRow]:
        """``delete`` rows with seqs after ``after_seq``, in seq order."""
        ...

    async def commit_baseline(
        self,
        dataset: str,
        route: str,
        batch_id: str,
        delivered: Sequence[tuple[int, int]],
        *,
        replace: bool = False,
    ) -> int:
        """Move the plan's rows whose seq lies in one of the ``[start, end)`` ranges into the
        baseline (a ``send`` row sets its key's hash, a ``delete`` row removes the key), in
        one transaction; with ``replace`` (a full refresh) the baseline is first emptied.
        Returns the rows moved."""
        ...


class LedgerType(Protocol):
    """What the registry needs of a ledger class (the class object itself matches this)."""

    # the URL schemes of ``daemon.ledger`` it serves; "" is a plain path (no ``scheme://``)
    schemes: tuple[str, ...]

    def from_url(self, url: str) -> Ledger:
        """A ledger for ``url``, not yet opened (use it as an async context manager)."""
        ...


async def replays_of(ledger: Ledger, batch_id: str) -> list[dict[str, Any]]:
    """The batch's replays (``ReplayLog.replays``); ``[]`` from a ledger that keeps none."""
    return await ledger.replays(batch_id) if isinstance(ledger, ReplayLog) else []


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


@dataclass(slots=True)
class OutboxEvent:
    """A completion event waiting in the ledger's outbox for one destination.

    ``body`` is the whole CloudEvent (JSON), built when the batch ended; ``event_id`` is its
    ``id``, the same for every delivery of one outcome. ``(event_id, destination)`` is the
    row's key. ``state`` is ``pending`` until delivered (``delivered``)."""

    event_id: str
    destination: str
    batch_id: str
    type: str
    body: bytes
    state: str = "pending"
    created_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    owner: str | None = None
    lease_expires: datetime | None = None


@runtime_checkable
class Outbox(Protocol):
    """Optional for a ledger: the outbox of completion events (``[daemon] notify``).

    An event is written in the transaction that finishes its batch, so a batch never ends
    without its event, nor an event exists for an end that was not recorded; then it is
    claimed (leased, like the inbox: two owners never hold the same event at once) and
    settled, delivered or failed with the time of its next attempt. At least once.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def aclose(self) -> None: ...

    async def finish_batch_with_events(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None,
        events: Sequence[OutboxEvent],
    ) -> None:
        """``Ledger.finish_batch`` and the events (pending, due now) in one transaction. An
        event whose ``(event_id, destination)`` is already there is left as it is (the same
        outcome recorded twice is one event)."""
        ...

    async def claim_events(self, owner: str, limit: int, lease_s: float) -> list[OutboxEvent]:
        """Lease up to ``limit`` pending events that are due (``next_attempt_at`` passed) and
        free (no lease, or an expired one) to ``owner`` for ``lease_s``, oldest first."""
        ...

    async def settle_event(
        self,
        event_id: str,
        destination: str,
        *,
        error: str | None = None,
        retry_in_s: float = 0.0,
    ) -> None:
        """Without ``error``: delivered, never claimed again. With one: still pending,
        ``attempts`` + 1, ``last_error`` kept, due again ``retry_in_s`` from now, lease
        cleared. Unknown events are ignored (nothing to settle)."""
        ...

    async def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        """Events not delivered yet, oldest first (``sender status``, ``/readyz``)."""
        ...

    async def get_event(self, event_id: str, destination: str) -> OutboxEvent | None: ...
