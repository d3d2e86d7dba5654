"""In-memory fakes of every port, for fast tests of the core (like dramatiq's stub broker).

They behave like the real adapters where the core can tell the difference, and pass the same
contract suites (``sender.testing``): the source streams in bounded pieces and raises
``SourceError`` for a missing URI, the destination can be told to fail, and the trigger
redelivers a released message; each raises ``AdapterClosed`` once closed. Each also offers a
few hooks for tests (``received``, ``fail_with``, ``hold``, ``settled``, ``wait_*``), so a
test awaits what it expects instead of sleeping. The ledger is ``memory_ledger.MemoryLedger``
(also importable from here).

    source = MemorySource({"mem://lake/churn/part-0.jsonl": b'{"id": 1}\\n'})
    crm = MemoryDestination("crm", fail_with=[RetryableError("503")])
    trigger = MemoryTrigger()
    await trigger.publish(TriggerMessage(batch_id="b1", dataset="churn", uri="mem://lake/churn"))
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Literal

from sender.config import DestinationOptions, SourceOptions, TriggerOptions
from sender.errors import AdapterClosed, PermanentError, SourceError, TriggerError
from sender.model import EncodedChunk, ObjectInfo, Receipt, TriggerMessage
from sender.ports import Resource
from sender_adapters.memory_ledger import MemoryLedger

__all__ = [
    "MemoryDestination",
    "MemoryEnvelope",
    "MemoryLedger",
    "MemorySource",
    "MemoryTrigger",
]


# -- source ------------------------------------------------------------------------------


class MemorySource(Resource):
    """The ``Source`` port over ``objects``: a dict of URI → bytes (``"mem://b/p/part-0"``).

    ``list`` returns every object under a prefix (recursively, sorted by URI), or the one
    object a URI names; ``open`` streams pieces of at most ``read_size`` bytes. ``objects``
    may be changed between calls (to test a batch that changes under the sender).
    """

    schemes = frozenset({"mem"})  # not registered: tests build it directly

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
            raise AdapterClosed("source memory")

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
            raise AdapterClosed(f"destination {self.name!r}")
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
        if self._trigger._closed:  # like a broker connection that went with the trigger
            raise AdapterClosed("trigger memory")
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
            raise AdapterClosed("trigger memory")
        data = body.encode() if isinstance(body, str) else body
        envelope = MemoryEnvelope(self, data, message_id or f"mem-{next(self._ids)}")
        self._queue.put_nowait(envelope)
        return envelope

    async def publish(self, message: TriggerMessage) -> None:
        self.put(message.to_json())

    async def messages(self) -> AsyncIterator[MemoryEnvelope]:
        if self._closed:
            raise AdapterClosed("trigger memory")
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
