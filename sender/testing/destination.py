"""The contract every ``Destination`` must pass, built-in or third-party.

Subclass ``DestinationContract`` in a test module and provide three fixtures:

- ``destination``: an opened destination (``async with``), a fresh one per test, whose
  receiver starts empty. The suite closes it itself in the test about ``aclose``; it must
  tolerate being closed again afterwards.
- ``arrived``: a function ``arrived() -> list[bytes]`` (plain or ``async``): the payloads
  the receiver holds now, one entry per chunk it took, each exactly the bytes of the chunk's
  ``payload`` (still compressed). A destination that stores a chunk otherwise (base64 in a
  queue message, one file per chunk) turns it back into the payload here.
- ``broken_destination``: an opened destination of the same type that cannot deliver (its
  endpoint refuses connections, its bucket, queue or folder is missing or not writable).

::

    import pytest
    from sender.testing import DestinationContract
    from acme_destination import AcmeDestination

    @pytest.fixture
    async def destination(acme_server):
        options = AcmeDestination.Options(type="acme", url=acme_server.url)
        async with AcmeDestination("acme", options) as destination:
            yield destination

    @pytest.fixture
    def arrived(acme_server):
        return lambda: [message.body for message in acme_server.messages]

    @pytest.fixture
    async def broken_destination():
        options = AcmeDestination.Options(type="acme", url="http://127.0.0.1:9/")
        async with AcmeDestination("acme", options) as destination:
            yield destination

    class TestAcmeDestination(DestinationContract):
        resend_arrives_again = True  # a queue: the receiver drops the copy by its key

Class attribute ``resend_arrives_again``: False (the default) when a chunk sent twice is
stored once (an object or a file named by its idempotency key), True when the receiver gets
it twice with the same idempotency key (an HTTP API, a queue). The suite needs
pytest-asyncio (the class carries ``pytest.mark.asyncio``).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import orjson
import pytest

from ..codecs import compress, encode
from ..errors import AdapterClosed, DeliveryError, PermanentError, RetryableError
from ..model import ChunkState, EncodedChunk, Receipt, idempotency_key
from ..ports import BatchFinisher, BatchSummary, Checkable, ChunkRecord, Destination

__all__ = ["DestinationContract", "make_encoded_chunk"]

FORMATS = frozenset({"ndjson", "json", "csv"})
CODECS = frozenset({"none", "gzip", "zstd"})


def make_encoded_chunk(
    chunk_id: str = "0",
    *,
    batch_id: str = "b-contract",
    route: str = "to_crm",
    records: int = 3,
    format: str = "ndjson",
    codec: str = "gzip",
    first_id: int = 0,
) -> EncodedChunk:
    """Chunk ``chunk_id`` of ``records`` small prediction records, encoded and compressed
    the way the engine would, with its real idempotency key."""
    lines = [
        orjson.dumps({"customer_id": f"c-{first_id + i}", "score": (first_id + i) / 100})
        for i in range(records)
    ]
    data = encode(lines, format)
    return EncodedChunk(
        batch_id=batch_id,
        dataset="churn",
        route=route,
        chunk_id=chunk_id,
        records=records,
        format=format,
        codec=codec,
        payload=compress(data, codec),
        raw_size=len(data),
        idempotency_key=idempotency_key(batch_id, route, chunk_id),
    )


async def _arrived(arrived: Any) -> list[bytes]:
    payloads = arrived()
    if inspect.isawaitable(payloads):
        payloads = await payloads
    return [bytes(p) for p in payloads]


def _a_format(destination: Any) -> tuple[str, str]:
    """A format and codec the destination declared (ndjson/gzip when it takes them)."""
    fmt = "ndjson" if "ndjson" in destination.formats else sorted(destination.formats)[0]
    codec = "gzip" if "gzip" in destination.codecs else sorted(destination.codecs)[0]
    return fmt, codec


@pytest.mark.asyncio
class DestinationContract:
    """What the core relies on from any ``Destination``. Needs ``destination``, ``arrived``
    and ``broken_destination`` (see module)."""

    resend_arrives_again: bool = False

    async def test_destination_implements_the_port(self, destination: Any) -> None:
        assert isinstance(destination, Destination)
        assert isinstance(destination.name, str) and destination.name
        assert destination.formats and destination.formats <= FORMATS
        assert destination.codecs and destination.codecs <= CODECS

    async def test_deliver_returns_a_receipt_and_the_payload_arrives(
        self, destination: Any, arrived: Any
    ) -> None:
        fmt, codec = _a_format(destination)
        chunk = make_encoded_chunk(format=fmt, codec=codec)

        receipt = await destination.deliver(chunk)

        assert isinstance(receipt, Receipt)
        assert isinstance(receipt.location, str) and receipt.location
        assert await _arrived(arrived) == [chunk.payload]

    async def test_every_chunk_of_a_batch_arrives(self, destination: Any, arrived: Any) -> None:
        fmt, codec = _a_format(destination)
        chunks = [
            make_encoded_chunk(str(i), format=fmt, codec=codec, first_id=10 * i) for i in range(4)
        ]

        receipts = await asyncio.gather(*(destination.deliver(c) for c in chunks))

        assert all(isinstance(r, Receipt) for r in receipts)
        assert sorted(await _arrived(arrived)) == sorted(c.payload for c in chunks)

    async def test_the_same_chunk_twice_is_accepted(self, destination: Any, arrived: Any) -> None:
        fmt, codec = _a_format(destination)
        chunk = make_encoded_chunk(format=fmt, codec=codec)
        again = make_encoded_chunk(format=fmt, codec=codec)  # a resend: same key, same bytes

        first = await destination.deliver(chunk)
        second = await destination.deliver(again)

        assert isinstance(first, Receipt) and isinstance(second, Receipt)
        copies = 2 if self.resend_arrives_again else 1
        assert await _arrived(arrived) == [chunk.payload] * copies

    async def test_every_declared_format_and_codec_is_delivered(
        self, destination: Any, arrived: Any
    ) -> None:
        chunks = [
            make_encoded_chunk(f"{i}", format=fmt, codec=codec, first_id=10 * i)
            for i, (fmt, codec) in enumerate(
                (fmt, codec)
                for fmt in sorted(destination.formats)
                for codec in sorted(destination.codecs)
            )
        ]

        for chunk in chunks:
            assert isinstance(await destination.deliver(chunk), Receipt)

        assert sorted(await _arrived(arrived)) == sorted(c.payload for c in chunks)

    async def test_a_failure_is_retryable_or_permanent_never_a_vendor_exception(
        self, broken_destination: Any
    ) -> None:
        fmt, codec = _a_format(broken_destination)

        with pytest.raises(DeliveryError) as failed:
            await broken_destination.deliver(make_encoded_chunk(format=fmt, codec=codec))

        assert isinstance(failed.value, RetryableError | PermanentError)
        assert str(failed.value)  # a reason people can read

    async def test_aclose_is_idempotent_and_a_closed_destination_raises_adapter_closed(
        self, destination: Any, arrived: Any
    ) -> None:
        fmt, codec = _a_format(destination)
        first = make_encoded_chunk("0", format=fmt, codec=codec)
        receipt = await destination.deliver(first)

        await destination.aclose()
        await destination.aclose()

        with pytest.raises(AdapterClosed, match="closed"):
            await destination.deliver(make_encoded_chunk("1", format=fmt, codec=codec))
        if isinstance(destination, BatchFinisher):  # no manifest from a closed drop
            with pytest.raises(AdapterClosed):
                await destination.finish_batch(_summary(first, receipt))
        if isinstance(destination, Checkable):  # not ready once closed
            with pytest.raises(AdapterClosed):
                await destination.check()
        assert len(await _arrived(arrived)) == 1

    async def test_a_destination_closed_before_first_use_raises_adapter_closed(
        self, destination: Any
    ) -> None:
        fmt, codec = _a_format(destination)

        await destination.aclose()

        with pytest.raises(AdapterClosed):
            await destination.deliver(make_encoded_chunk(format=fmt, codec=codec))


def _summary(chunk: EncodedChunk, receipt: Receipt) -> BatchSummary:
    """What the engine tells a ``BatchFinisher`` once ``chunk`` was its route's only one."""
    record = ChunkRecord(
        chunk.batch_id,
        chunk.route,
        chunk.chunk_id,
        ChunkState.DELIVERED,
        records=chunk.records,
        raw_size=chunk.raw_size,
        idempotency_key=chunk.idempotency_key,
        location=receipt.location,
        checksum=chunk.checksum,
    )
    return BatchSummary(chunk.batch_id, chunk.dataset, chunk.route, [record], complete=True)
