"""In-memory fakes of every port, for fast tests of the core (like dramatiq's stub broker).

They behave like the real adapters where the core can tell the difference: the ledger passes
the same contract suite as ``SqliteLedger`` (``sender.testing.LedgerContract``), the source
streams in bounded pieces and raises ``SourceError`` for a missing URI, the destination can be
told to fail, and the trigger redelivers a released message. Each also offers a few hooks
for tests (``received``, ``fail_with``, ``hold``, ``settled``, ``wait_*``), so a test awaits
what it expects instead of sleeping.

    source = MemorySource({"mem://lake/churn/part-0.jsonl": b'{"id": 1}\\n'})
    crm = MemoryDestination("crm", fail_with=[RetryableError("503")])
    trigger = MemoryTrigger()
    await trigger.publish(TriggerMessage(batch_id="b1", dataset="churn", uri="mem://lake/churn"))
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

from sender.config import DestinationOptions, SourceOptions, TriggerOptions
from sender.errors import AdapterClosed, LedgerError, PermanentError, SourceError, TriggerError
from sender.model import (
    BatchState,
    ChunkState,
    EncodedChunk,
    ObjectInfo,
    Receipt,
    TriggerMessage,
    chunk_sort_key,
)
from sender.ports import BatchRecord, ChunkRecord, InboxMessage, InboxOutcome, Resource, RouteStats

__all__ = [
    "MemoryDestination",
    "MemoryEnvelope",
    "MemoryLedger",
    "MemorySource",
    "MemoryTrigger",
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- ledger ------------------------------------------------------------------------------


class MemoryLedger(Resource):
    """The ``Ledger`` port in a few dicts: same API and semantics as ``SqliteLedger``
    (including ``record_replay``/``replays``), nothing durable.

    Records going in and out are copies, as with a database: changing a returned record does
    not change the ledger. ``clock`` returns the current time (aware UTC); tests inject one to
    move time without sleeping.
    """

    schemes: ClassVar[tuple[str, ...]] = ("memory",)  # not registered: tests build it directly

    def __init__(self, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        self._batches: dict[str, BatchRecord] = {}
        self._order: dict[str, int] = {}  # creation sequence: breaks created_at ties
        self._chunks: dict[tuple[str, str, str], ChunkRecord] = {}
        self._replays: list[dict[str, Any]] = []
        # apart from batches: a lease may be taken before start_batch creates the batch
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._inbox: dict[str, InboxMessage] = {}  # insertion order is arrival order
        self._sequence = itertools.count(1)
        self._closed = False

    @classmethod
    def from_url(
        cls, url: str = "memory://", *, clock: Callable[[], datetime] = _utcnow
    ) -> MemoryLedger:
        """A new, empty ledger whatever the URL (symmetry with ``SqliteLedger.from_url``)."""
        return cls(clock=clock)

    def __repr__(self) -> str:
        return f"MemoryLedger({len(self._batches)} batches)"

    def _now(self) -> datetime:
        return _utc(self._clock())

    async def _enter(self) -> None:
        # yield to the loop like a real store would, then act atomically (no await after this)
        await asyncio.sleep(0)
        if self._closed:
            raise AdapterClosed("ledger memory")

    def _out(self, record: BatchRecord) -> BatchRecord:
        copied = copy.deepcopy(record)
        copied.lease_owner, copied.lease_expires = self._leases.get(record.batch_id, (None, None))
        return copied

    def _require(self, batch_id: str) -> BatchRecord:
        try:
            return self._batches[batch_id]
        except KeyError:
            raise LedgerError(f"unknown batch {batch_id!r}") from None

    async def open(self) -> None:
        """Nothing to open; refuses a closed ledger like the real ones."""
        await self._enter()

    _on_enter = open  # async with opens the ledger

    async def aclose(self) -> None:
        self._closed = True

    async def start_batch(self, message: TriggerMessage) -> BatchRecord:
        await self._enter()
        now = self._now()
        body = message.model_dump(mode="json")
        record = self._batches.get(message.batch_id)
        if record is None:
            record = BatchRecord(
                batch_id=message.batch_id,
                dataset=message.dataset,
                uri=message.uri,
                state=BatchState.RUNNING,
                message=body,
                created_at=now,
                started_at=now,
                runs=1,
            )
            self._batches[message.batch_id] = record
            self._order[message.batch_id] = next(self._sequence)
        else:
            record.dataset = message.dataset
            record.uri = message.uri
            record.state = BatchState.RUNNING
            record.message = body
            record.started_at = now
            record.finished_at = None
            record.error = None
            record.runs += 1
        return self._out(record)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        await self._enter()
        record = self._batches.get(batch_id)
        return None if record is None else self._out(record)

    async def list_batches(
        self,
        *,
        dataset: str | None = None,
        state: BatchState | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[BatchRecord]:
        await self._enter()
        since = None if since is None else _utc(since)
        found = [
            record
            for record in self._batches.values()
            if (dataset is None or record.dataset == dataset)
            and (state is None or record.state == state)
            and (since is None or record.created_at >= since)
        ]
        found.sort(key=lambda r: (r.created_at, self._order[r.batch_id]), reverse=True)
        return [self._out(record) for record in found[: max(0, limit)]]

    async def set_objects(self, batch_id: str, objects: Sequence[ObjectInfo]) -> None:
        await self._enter()
        self._require(batch_id).objects = list(objects)

    async def finish_batch(
        self,
        batch_id: str,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> None:
        await self._enter()
        record = self._require(batch_id)
        record.state = BatchState(state)
        record.routes = copy.deepcopy(routes)
        record.error = error
        record.finished_at = self._now()

    async def chunks(self, batch_id: str, route: str | None = None) -> list[ChunkRecord]:
        await self._enter()
        found = [
            c
            for (b, r, _), c in self._chunks.items()
            if b == batch_id and (route is None or r == route)
        ]
        found.sort(key=lambda c: (c.route, chunk_sort_key(c.chunk_id)))
        return copy.deepcopy(found)

    async def save_chunks(self, records: Sequence[ChunkRecord]) -> None:
        await self._enter()
        unknown = sorted({r.batch_id for r in records if r.batch_id not in self._batches})
        if unknown:  # all or nothing, like the transaction it stands for
            raise LedgerError(f"chunks of an unknown batch ({', '.join(unknown)})")
        now = self._now()
        for record in records:
            stored = copy.deepcopy(record)
            stored.state = ChunkState(stored.state)
            stored.updated_at = now
            self._chunks[(record.batch_id, record.route, record.chunk_id)] = stored

    async def acquire_lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        await self._enter()
        now = self._now()
        holder, expires = self._leases.get(batch_id, (owner, now))
        if holder != owner and expires > now:
            return False
        self._leases[batch_id] = (owner, now + timedelta(seconds=ttl_s))
        return True

    async def release_lease(self, batch_id: str, owner: str) -> None:
        await self._enter()
        if self._leases.get(batch_id, (None,))[0] == owner:
            del self._leases[batch_id]

    async def ping(self) -> None:
        await self._enter()

    # -- the inbox (http trigger) --------------------------------------------------------

    async def enqueue_message(self, message_id: str, body: bytes) -> bool:
        await self._enter()
        existing = self._inbox.get(message_id)
        if existing is not None and existing.state == "pending":
            return False
        self._inbox.pop(message_id, None)  # queued again: now the newest
        self._inbox[message_id] = InboxMessage(message_id, bytes(body), "pending", self._now())
        return True

    async def claim_messages(self, owner: str, limit: int, lease_s: float) -> list[InboxMessage]:
        await self._enter()
        now = self._now()
        claimed: list[InboxMessage] = []
        for message in self._inbox.values():
            if len(claimed) >= limit:
                break
            if message.state != "pending" or (
                message.lease_expires is not None and message.lease_expires > now
            ):
                continue
            message.owner = owner
            message.lease_expires = now + timedelta(seconds=lease_s)
            message.deliveries += 1
            claimed.append(copy.deepcopy(message))
        return claimed

    async def extend_message(self, message_id: str, owner: str, lease_s: float) -> bool:
        await self._enter()
        message = self._inbox.get(message_id)
        if message is None or message.state != "pending" or message.owner != owner:
            return False
        message.lease_expires = self._now() + timedelta(seconds=lease_s)
        return True

    async def settle_message(
        self, message_id: str, outcome: InboxOutcome, reason: str | None = None
    ) -> None:
        if outcome not in ("done", "rejected", "released"):
            raise ValueError(f"unknown inbox outcome {outcome!r}")
        await self._enter()
        message = self._inbox.get(message_id)
        if message is None:
            raise LedgerError(f"unknown inbox message {message_id!r}")
        if outcome == "released":
            if message.state == "pending":
                message.owner = message.lease_expires = None
            return
        message.state = outcome
        message.reason = reason
        message.settled_at = self._now()
        message.owner = message.lease_expires = None

    async def get_message(self, message_id: str) -> InboxMessage | None:
        await self._enter()
        message = self._inbox.get(message_id)
        return None if message is None else copy.deepcopy(message)

    async def record_replay(
        self, batch_id: str, who: str, selectors: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        await self._enter()
        self._require(batch_id)
        self._replays.append(
            {
                "id": len(self._replays) + 1,
                "batch_id": batch_id,
                "who": who,
                "at": self._now(),
                "selectors": copy.deepcopy(selectors),
                "outcome": copy.deepcopy(outcome),
            }
        )

    async def replays(self, batch_id: str) -> list[dict[str, Any]]:
        await self._enter()
        return copy.deepcopy([r for r in self._replays if r["batch_id"] == batch_id])


# -- source ------------------------------------------------------------------------------


class MemorySource(Resource):
    """The ``Source`` port over ``objects``: a dict of URI → bytes (``"mem://b/p/part-0"``).

    ``list`` returns every object under a prefix (recursively, sorted by URI), or the one
    object a URI names; ``open`` streams pieces of at most ``read_size`` bytes. ``objects``
    may be changed between calls (to test a batch that changes under the sender).
    """

    class Options(SourceOptions):
        type: str = "memory"

    def __init__(
        self, objects: Mapping[str, bytes] | None = None, *, read_size: int = 64 * 1024
    ) -> None:
        if read_size < 1:
            raise ValueError("read_size must be >= 1")
        self.objects: dict[str, bytes] = dict(objects or {})
        self.read_size = read_size
        self.reads = 0  # pieces served by open() and read_range(), for tests
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise SourceError("source memory is closed")

    @staticmethod
    def _info(uri: str, data: bytes) -> ObjectInfo:
        return ObjectInfo(uri=uri, size=len(data), version=hashlib.sha256(data).hexdigest()[:16])

    def _data(self, obj: ObjectInfo) -> bytes:
        self._check()
        try:
            return self.objects[obj.uri]
        except KeyError:
            raise SourceError(f"no such object: {obj.uri}") from None

    async def list(self, uri: str) -> list[ObjectInfo]:
        self._check()
        if uri in self.objects:
            return [self._info(uri, self.objects[uri])]
        prefix = uri.rstrip("/") + "/"
        found = [self._info(u, d) for u, d in sorted(self.objects.items()) if u.startswith(prefix)]
        if not found:
            raise SourceError(f"nothing at {uri}")
        return found

    async def open(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
        data = self._data(obj)
        for start in range(0, len(data), self.read_size):
            self.reads += 1
            yield data[start : start + self.read_size]
            await asyncio.sleep(0)  # a real read would yield to the loop

    async def read_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise SourceError(f"bad range {start}+{length} of {obj.uri}")
        data = self._data(obj)
        self.reads += 1
        return data[start : start + length]

    async def aclose(self) -> None:
        self._closed = True

    async def _on_enter(self) -> None:
        self._check()  # refuses a closed source, like the real ones


# -- destination -------------------------------------------------------------------------

_ALL_FORMATS = frozenset({"ndjson", "json", "csv"})
_ALL_CODECS = frozenset({"none", "gzip", "zstd"})


class MemoryDestination(Resource):
    """The ``Destination`` port into a list: every delivered chunk lands in ``received``.

    Programmable failures, checked on every call in this order:

    - ``fail_with``: a queue; each call pops the first entry and raises it (``None`` entries
      mean "this call succeeds"), e.g. ``[RetryableError("503"), None, PermanentError("400")]``;
    - ``always_fail``: raised on every call while set (a destination that is down).

    ``hold``: when set to an ``asyncio.Event``, each call waits for it first (chunks in flight
    at shutdown). ``calls`` counts every call, ``in_flight`` the calls under way. A chunk in a
    format or codec the destination did not declare is refused with ``PermanentError``, which
    catches a core that ignores ``formats``/``codecs``.
    """

    class Options(DestinationOptions):
        type: str = "memory"
        compression: Literal["none", "gzip", "zstd"] = "none"

    def __init__(
        self,
        name: str,
        options: DestinationOptions | None = None,
        *,
        formats: Iterable[str] = _ALL_FORMATS,
        codecs: Iterable[str] = _ALL_CODECS,
        fail_with: Iterable[BaseException | None] = (),
        always_fail: BaseException | None = None,
    ) -> None:
        self.name = name
        self.formats = frozenset(formats)
        self.codecs = frozenset(codecs)
        self.options = options if options is not None else self.Options()
        self.received: list[EncodedChunk] = []
        self.fail_with: list[BaseException | None] = list(fail_with)
        self.always_fail = always_fail
        self.hold: asyncio.Event | None = None
        self.calls = 0
        self.in_flight = 0
        self._changed: asyncio.Condition | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryDestination({self.name!r}, received={len(self.received)})"

    def _condition(self) -> asyncio.Condition:
        # created on first use so that it binds to the running loop
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        if self._closed:
            raise RuntimeError(f"destination {self.name!r} is closed")
        self.calls += 1
        self.in_flight += 1
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.fail_with:
                error = self.fail_with.pop(0)
                if error is not None:
                    raise error
            elif self.always_fail is not None:
                raise self.always_fail
            if chunk.format not in self.formats or chunk.codec not in self.codecs:
                raise PermanentError(
                    f"{self.name} does not take {chunk.format}/{chunk.codec} chunks"
                )
            self.received.append(chunk)
        finally:
            self.in_flight -= 1
            async with self._condition():
                self._condition().notify_all()
        location = f"memory://{self.name}/{chunk.batch_id}/{chunk.route}/{chunk.chunk_id}"
        return Receipt(location=location)

    async def wait_received(self, count: int = 1) -> list[EncodedChunk]:
        """Wait until at least ``count`` chunks were delivered; return them all."""
        async with self._condition():
            await self._condition().wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    async def aclose(self) -> None:
        self._closed = True


# -- trigger -----------------------------------------------------------------------------


class MemoryEnvelope:
    """One message taken from a ``MemoryTrigger``; records how it was settled.

    ``outcome`` is None until settled, then ``"acked"``, ``"rejected:<reason>"`` or
    ``"released"``. Settling twice raises ``TriggerError`` (a broker would refuse it too).
    ``extensions`` lists the seconds of every ``extend()`` call; ``deliveries`` is 1, then
    one more each time the message comes back after a release.
    """

    def __init__(
        self, trigger: MemoryTrigger, body: bytes, message_id: str, deliveries: int = 1
    ) -> None:
        self.body = body
        self.message_id = message_id
        self.deliveries = deliveries
        self.outcome: str | None = None
        self.extensions: list[float] = []
        self._trigger = trigger

    def __repr__(self) -> str:
        return f"MemoryEnvelope({self.message_id!r}, outcome={self.outcome!r})"

    @property
    def extend_calls(self) -> int:
        return len(self.extensions)

    async def _settle(self, outcome: str) -> None:
        if self.outcome is not None:
            raise TriggerError(f"message {self.message_id} is already {self.outcome}")
        self.outcome = outcome
        await self._trigger._settled(self)

    async def ack(self) -> None:
        await self._settle("acked")

    async def reject(self, reason: str) -> None:
        await self._settle(f"rejected:{reason}")

    async def release(self) -> None:
        await self._settle("released")

    async def extend(self, seconds: float) -> None:
        if self.outcome is not None:
            raise TriggerError(f"message {self.message_id} is already {self.outcome}")
        self.extensions.append(seconds)


_CLOSED = object()


class MemoryTrigger(Resource):
    """The ``Trigger`` port on an ``asyncio.Queue``.

    ``publish()`` (or ``put()`` for raw bytes, e.g. an invalid message) enqueues;
    ``messages()`` yields ``MemoryEnvelope``\\ s until ``aclose()``. Every settled envelope is
    appended to ``settled``; a released one is queued again (``deliveries`` + 1) unless the
    trigger is closed. ``connected`` is True until closed, and may be set to False to play a
    lost broker (``/readyz``).
    """

    class Options(TriggerOptions):
        type: str = "memory"

    def __init__(self, options: TriggerOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()
        self.settled: list[MemoryEnvelope] = []
        self._queue: asyncio.Queue[MemoryEnvelope | object] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._connected = True
        self._closed = False
        self._changed: asyncio.Condition | None = None

    def __repr__(self) -> str:
        return f"MemoryTrigger(queued={self.queued}, settled={len(self.settled)})"

    @property
    def connected(self) -> bool:
        return self._connected and not self._closed

    @connected.setter
    def connected(self, value: bool) -> None:
        self._connected = value

    @property
    def queued(self) -> int:
        """Messages waiting to be taken."""
        # after aclose() exactly one close marker sits in the queue
        return max(0, self._queue.qsize() - (1 if self._closed else 0))

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def put(self, body: bytes | str, message_id: str | None = None) -> MemoryEnvelope:
        """Enqueue raw bytes as one message (no validation: tests of invalid messages)."""
        if self._closed:
            raise TriggerError("trigger memory is closed")
        data = body.encode() if isinstance(body, str) else body
        envelope = MemoryEnvelope(self, data, message_id or f"mem-{next(self._ids)}")
        self._queue.put_nowait(envelope)
        return envelope

    async def publish(self, message: TriggerMessage) -> None:
        self.put(message.to_json())

    async def messages(self) -> AsyncIterator[MemoryEnvelope]:
        while not self._closed:
            item = await self._queue.get()
            if item is _CLOSED:
                self._queue.put_nowait(_CLOSED)  # wake any other consumer too
                return
            assert isinstance(item, MemoryEnvelope)
            yield item

    async def _settled(self, envelope: MemoryEnvelope) -> None:
        self.settled.append(envelope)
        if envelope.outcome == "released" and not self._closed:
            again = MemoryEnvelope(
                self, envelope.body, envelope.message_id, envelope.deliveries + 1
            )
            self._queue.put_nowait(again)
        async with self._condition():
            self._condition().notify_all()

    async def wait_settled(self, count: int = 1) -> list[MemoryEnvelope]:
        """Wait until at least ``count`` messages were settled; return them all."""
        async with self._condition():
            await self._condition().wait_for(lambda: len(self.settled) >= count)
        return list(self.settled)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSED)
