"""The in-memory fakes behave as documented, so core tests built on them mean something."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from sender.config import DestinationOptions
from sender.errors import AdapterClosed, PermanentError, RetryableError, SourceError, TriggerError
from sender.model import EncodedChunk, ObjectInfo, TriggerMessage, parse_trigger_message
from sender.ports import Destination, Envelope, Source, Trigger
from sender_adapters.memory import MemoryDestination, MemoryEnvelope, MemorySource, MemoryTrigger


def chunk(chunk_id: str = "0", *, fmt: str = "ndjson", codec: str = "none") -> EncodedChunk:
    return EncodedChunk(
        batch_id="b-1",
        dataset="churn",
        route="to_crm",
        chunk_id=chunk_id,
        records=1,
        format=fmt,
        codec=codec,
        payload=b'{"id":1}\n',
        raw_size=9,
        idempotency_key="k",
    )


# -- MemorySource --------------------------------------------------------------------------

OBJECTS = {
    "mem://lake/churn/b-1/part-00001.jsonl": b"b" * 10,
    "mem://lake/churn/b-1/part-00000.jsonl": b"a" * 10,
    "mem://lake/churn/b-1/_SUCCESS": b"",
    "mem://lake/churn/b-1/nested/part-00002.jsonl": b"c",
    "mem://lake/churn/b-10/part-00000.jsonl": b"other batch",
}


async def test_source_lists_everything_under_a_prefix_sorted() -> None:
    source = MemorySource(OBJECTS)
    assert isinstance(source, Source)

    listed = await source.list("mem://lake/churn/b-1/")

    assert [o.name for o in listed] == [
        "_SUCCESS",
        "part-00002.jsonl",
        "part-00000.jsonl",
        "part-00001.jsonl",
    ]
    assert [o.uri for o in listed] == sorted(o.uri for o in listed)
    assert await source.list("mem://lake/churn/b-1") == listed  # trailing slash or not
    assert listed[2] == ObjectInfo(
        "mem://lake/churn/b-1/part-00000.jsonl",
        10,
        hashlib.sha256(b"a" * 10).hexdigest()[:16],
    )


async def test_source_lists_the_one_object_a_uri_names() -> None:
    source = MemorySource(OBJECTS)

    (one,) = await source.list("mem://lake/churn/b-10/part-00000.jsonl")

    assert one.size == len(b"other batch")


async def test_source_raises_source_error_when_nothing_is_there() -> None:
    source = MemorySource(OBJECTS)

    with pytest.raises(SourceError, match="nothing at"):
        await source.list("mem://lake/upsell/")
    with pytest.raises(SourceError):
        async for _ in source.open(ObjectInfo("mem://lake/gone", 1)):
            pass


async def test_source_streams_in_pieces_of_at_most_read_size() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    source = MemorySource({"mem://b/p/part-0": data}, read_size=4096)
    (obj,) = await source.list("mem://b/p")

    pieces = [piece async for piece in source.open(obj)]

    assert [len(p) for p in pieces] == [4096, 4096, 2048]
    assert b"".join(pieces) == data
    assert await source.read_range(obj, 10_000, 1_000) == data[10_000:]
    assert await source.read_range(obj, 5, 3) == data[5:8]


async def test_a_changed_object_gets_a_new_version() -> None:
    source = MemorySource({"mem://b/p/part-0": b"v1"})
    (before,) = await source.list("mem://b/p")

    source.objects["mem://b/p/part-0"] = b"v2"

    (after,) = await source.list("mem://b/p")
    assert after.version != before.version


async def test_a_closed_source_refuses_work() -> None:
    source = MemorySource(OBJECTS)
    await source.aclose()
    await source.aclose()

    with pytest.raises(AdapterClosed, match="source memory is closed"):
        await source.list("mem://lake/churn/b-1")
    with pytest.raises(AdapterClosed):
        await source.read_range(ObjectInfo("mem://lake/churn/b-1/part-00000.jsonl", 10), 0, 1)
    with pytest.raises(AdapterClosed):
        async with source:
            pass


# -- MemoryDestination ---------------------------------------------------------------------


async def test_destination_records_what_it_receives() -> None:
    crm = MemoryDestination("crm")
    assert isinstance(crm, Destination)

    receipt = await crm.deliver(chunk("7"))

    assert receipt.location == "memory://crm/b-1/to_crm/7"
    assert [c.chunk_id for c in crm.received] == ["7"]
    assert crm.calls == 1


async def test_destination_raises_queued_failures_in_order() -> None:
    crm = MemoryDestination(
        "crm", fail_with=[RetryableError("503", retry_after=2.0), None, PermanentError("400")]
    )

    with pytest.raises(RetryableError) as first:
        await crm.deliver(chunk("0"))
    await crm.deliver(chunk("1"))  # None: this call succeeds
    with pytest.raises(PermanentError):
        await crm.deliver(chunk("2"))
    await crm.deliver(chunk("3"))

    assert first.value.retry_after == 2.0
    assert [c.chunk_id for c in crm.received] == ["1", "3"]
    assert crm.calls == 4


async def test_destination_that_always_fails_until_it_is_fixed() -> None:
    crm = MemoryDestination("crm", always_fail=RetryableError("connection refused"))

    for _ in range(3):
        with pytest.raises(RetryableError):
            await crm.deliver(chunk())
    crm.always_fail = None
    await crm.deliver(chunk())

    assert len(crm.received) == 1


async def test_destination_refuses_formats_and_codecs_it_did_not_declare() -> None:
    csv_only = MemoryDestination("bucket", formats={"csv"}, codecs={"gzip"})

    with pytest.raises(PermanentError, match="ndjson/none"):
        await csv_only.deliver(chunk(fmt="ndjson", codec="none"))
    await csv_only.deliver(chunk(fmt="csv", codec="gzip"))

    assert csv_only.formats == frozenset({"csv"})
    assert len(csv_only.received) == 1


async def test_destination_hold_keeps_deliveries_in_flight() -> None:
    crm = MemoryDestination("crm")
    crm.hold = asyncio.Event()

    tasks = [asyncio.create_task(crm.deliver(chunk(str(i)))) for i in range(3)]
    await asyncio.sleep(0)  # let them start
    assert crm.in_flight == 3
    assert crm.received == []

    crm.hold.set()
    received = await crm.wait_received(3)

    assert sorted(c.chunk_id for c in received) == ["0", "1", "2"]
    await asyncio.gather(*tasks)
    assert crm.in_flight == 0


async def test_destination_options_default_to_no_compression() -> None:
    options = MemoryDestination.Options(type="memory")

    assert isinstance(options, DestinationOptions)
    assert options.compression == "none"
    assert MemoryDestination("crm").options.compression == "none"


async def test_a_closed_destination_refuses_work() -> None:
    crm = MemoryDestination("crm")
    await crm.aclose()
    await crm.aclose()

    with pytest.raises(AdapterClosed, match="destination 'crm' is closed"):
        await crm.deliver(chunk())
    assert crm.calls == 0


# -- MemoryTrigger -------------------------------------------------------------------------


async def take(trigger: MemoryTrigger, count: int) -> list[MemoryEnvelope]:
    taken: list[MemoryEnvelope] = []
    async for envelope in trigger.messages():
        taken.append(envelope)
        if len(taken) == count:
            break
    return taken


async def test_trigger_yields_published_messages_in_order() -> None:
    trigger = MemoryTrigger()
    assert isinstance(trigger, Trigger)
    message = TriggerMessage(batch_id="b-1", dataset="churn", uri="mem://lake/churn/b-1")

    await trigger.publish(message)
    trigger.put(b"not json")

    first, second = await take(trigger, 2)
    assert isinstance(first, Envelope)
    assert parse_trigger_message(first.body) == message
    assert second.body == b"not json"
    assert first.message_id != second.message_id


async def test_trigger_records_how_each_message_was_settled() -> None:
    trigger = MemoryTrigger()
    for body in (b"a", b"b", b"c"):
        trigger.put(body)
    acked, rejected, released = await take(trigger, 3)

    await acked.extend(300)
    await acked.extend(300)
    await acked.ack()
    await rejected.reject("not JSON")
    await released.release()

    assert [e.outcome for e in await trigger.wait_settled(3)] == [
        "acked",
        "rejected:not JSON",
        "released",
    ]
    assert acked.extend_calls == 2
    assert acked.extensions == [300, 300]
    with pytest.raises(TriggerError, match="already acked"):
        await acked.ack()


async def test_a_released_message_is_delivered_again() -> None:
    trigger = MemoryTrigger()
    trigger.put(b"batch", message_id="m-1")
    (first,) = await take(trigger, 1)

    await first.release()

    (again,) = await take(trigger, 1)
    assert (again.message_id, again.body, again.deliveries) == ("m-1", b"batch", 2)
    assert again.outcome is None


async def test_closing_the_trigger_ends_messages() -> None:
    trigger = MemoryTrigger()
    trigger.put(b"one")
    consumer = asyncio.create_task(take(trigger, 5))
    await asyncio.sleep(0)  # the consumer takes "one" and waits for more
    assert trigger.connected

    await trigger.aclose()
    await trigger.aclose()

    assert [e.body for e in await consumer] == [b"one"]  # the running stream just ends
    assert not trigger.connected
    with pytest.raises(AdapterClosed, match="trigger memory is closed"):
        await anext(aiter(trigger.messages()))
    with pytest.raises(AdapterClosed):
        await trigger.publish(TriggerMessage(batch_id="b", dataset="d", uri="mem://x"))
    with pytest.raises(AdapterClosed):
        trigger.put(b"late")


async def test_connected_can_be_switched_off_to_play_a_lost_broker() -> None:
    trigger = MemoryTrigger()

    trigger.connected = False
    assert not trigger.connected
    trigger.connected = True
    assert trigger.connected
    assert trigger.queued == 0
