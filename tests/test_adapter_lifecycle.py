"""Every built-in source, destination and trigger after ``aclose()``: closing twice is fine,
and any later use raises ``AdapterClosed`` (never a vendor error, a ``RuntimeError``, or
silence), whether the adapter had connected yet or not.

Each port's part is self-contained (its cases, its fixture, its tests) so that it can move
into that port's contract suite as it is. Adapters run against real servers on loopback:
moto (S3, SQS), fake-gcs-server, the machine's RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sender.errors import AdapterClosed
from sender.model import ObjectInfo, TriggerMessage
from sender_adapters.amqp import AmqpTrigger
from sender_adapters.amqp_sink import AmqpDestination
from sender_adapters.gcs import GcsDestination, GcsSource
from sender_adapters.local import LocalDestination, LocalSource
from sender_adapters.s3 import S3Destination, S3Source
from sender_adapters.spool import SpoolTrigger
from sender_adapters.sqs import SqsTrigger
from sender_adapters.sqs_sink import SqsDestination
from tests.brokers import AMQP_URL
from tests.cloud import (
    GcsBucket,
    GcsServer,
    MotoServer,
    S3Bucket,
    bucket_name,
    make_chunk,
    summary_of,
)

# what each case yields: the adapter (not used yet) and, for a source, a batch URI to list
Opened = tuple[Any, str]
Factory = Callable[[pytest.FixtureRequest], contextlib.AbstractAsyncContextManager[Opened]]


def build(cls: Any, name: str | None = None, **options: Any) -> Any:
    """The one place that knows how an adapter is constructed: a destination takes its name."""
    opts = cls.Options(**options)
    return cls(opts) if name is None else cls(name, opts)


def _unique(request: pytest.FixtureRequest) -> str:
    return bucket_name(request.node.nodeid)


async def _delete_amqp_queues(*names: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()


def _sqs_queue(server: MotoServer, name: str) -> tuple[Any, str]:
    import boto3

    client = boto3.client("sqs", endpoint_url=server.endpoint_url, region_name="us-east-1")
    return client, client.create_queue(QueueName=name)["QueueUrl"]


@dataclass(frozen=True)
class Case:
    kind: str
    open: Factory

    def __repr__(self) -> str:
        return self.kind


# -- sources --------------------------------------------------------------------------------


def _one_file_batch(folder: Path) -> str:
    folder.mkdir()
    (folder / "part-0.json").write_bytes(b'{"v": 1}\n')
    return str(folder)


@contextlib.asynccontextmanager
async def _local_source(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    yield build(LocalSource), _one_file_batch(request.getfixturevalue("tmp_path") / "batch")


@contextlib.asynccontextmanager
async def _s3_source(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    server: MotoServer = request.getfixturevalue("moto_server")
    bucket = S3Bucket(server, _unique(request))
    bucket.put("batch/part-0.json", b'{"v": 1}\n')
    yield build(S3Source, endpoint_url=server.endpoint_url), bucket.uri("batch/")


@contextlib.asynccontextmanager
async def _gcs_source(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    server: GcsServer = request.getfixturevalue("gcs_server")
    bucket = GcsBucket(server, _unique(request))
    bucket.put("batch/part-0.json", b'{"v": 1}\n')
    yield build(GcsSource, endpoint=server.url), bucket.uri("batch/")


SOURCES = [Case("local", _local_source), Case("s3", _s3_source), Case("gcs", _gcs_source)]


@pytest.fixture(params=SOURCES, ids=repr)
async def source_case(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    case: Case = request.param
    async with case.open(request) as opened:
        yield opened


@pytest.mark.parametrize("used", [True, False], ids=["after-use", "never-used"])
async def test_a_closed_source_refuses_every_verb(source_case: Opened, used: bool) -> None:
    source, uri = source_case
    if used:
        (obj,) = await source.list(uri)
        assert await source.read_range(obj, 0, 4) == b'{"v"'
    else:
        obj = ObjectInfo(uri.rstrip("/") + "/part-0.json", 9)

    await source.aclose()
    await source.aclose()  # idempotent

    with pytest.raises(AdapterClosed, match="closed"):
        await source.list(uri)
    with pytest.raises(AdapterClosed):
        await anext(aiter(source.open(obj)))
    with pytest.raises(AdapterClosed):
        await source.read_range(obj, 0, 4)  # not even from the read-ahead cache


# -- destinations ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _local_destination(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    root: Path = request.getfixturevalue("tmp_path") / "out"
    yield build(LocalDestination, "files", type="local", path=str(root)), ""


@contextlib.asynccontextmanager
async def _s3_destination(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    server: MotoServer = request.getfixturevalue("moto_server")
    bucket = S3Bucket(server, _unique(request))
    yield build(S3Destination, "drop", bucket=bucket.name, endpoint_url=server.endpoint_url), ""


@contextlib.asynccontextmanager
async def _gcs_destination(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    server: GcsServer = request.getfixturevalue("gcs_server")
    bucket = GcsBucket(server, _unique(request))
    yield build(GcsDestination, "drop", bucket=bucket.name, endpoint=server.url), ""


@contextlib.asynccontextmanager
async def _sqs_destination(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    server: MotoServer = request.getfixturevalue("moto_server")
    client, url = _sqs_queue(server, f"sender-test-{uuid.uuid4().hex[:10]}")
    try:
        yield build(SqsDestination, "queue", queue_url=url, endpoint_url=server.endpoint_url), ""
    finally:
        client.delete_queue(QueueUrl=url)


@contextlib.asynccontextmanager
async def _amqp_destination(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    name = f"sender-test-{uuid.uuid4().hex[:10]}"
    options = dict(url=AMQP_URL, routing_key=name, declare_queue=name)
    try:
        yield build(AmqpDestination, "bus", **options), ""
    finally:
        await _delete_amqp_queues(name)


DESTINATIONS = [
    Case("local", _local_destination),
    Case("s3", _s3_destination),
    Case("gcs", _gcs_destination),
    Case("sqs", _sqs_destination),
    Case("amqp", _amqp_destination),
]
BUCKET_DROPS = [case for case in DESTINATIONS if case.kind in ("s3", "gcs")]


@pytest.fixture(params=DESTINATIONS, ids=repr)
async def destination(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    case: Case = request.param
    async with case.open(request) as (adapter, _):
        yield adapter


@pytest.mark.parametrize("used", [True, False], ids=["after-use", "never-used"])
async def test_a_closed_destination_refuses_chunks(destination: Any, used: bool) -> None:
    if used:
        receipt = await destination.deliver(make_chunk("0", 3))
        assert receipt.location

    await destination.aclose()
    await destination.aclose()  # idempotent

    with pytest.raises(AdapterClosed, match="closed"):
        await destination.deliver(make_chunk("1", 3))


@pytest.mark.parametrize("destination", BUCKET_DROPS, indirect=True, ids=repr)
async def test_a_closed_bucket_drop_writes_no_manifest(destination: Any) -> None:
    chunk = make_chunk("0", 3)
    receipt = await destination.deliver(chunk)
    await destination.aclose()

    with pytest.raises(AdapterClosed):
        await destination.finish_batch(summary_of([chunk], [receipt.location], True))


async def test_a_closed_local_destination_is_not_ready(tmp_path: Path) -> None:
    destination = build(LocalDestination, "files", type="local", path=str(tmp_path))
    await destination.check()
    await destination.aclose()

    with pytest.raises(AdapterClosed):
        await destination.check()


# -- triggers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _spool_trigger(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    root: Path = request.getfixturevalue("tmp_path") / "queue"
    yield build(SpoolTrigger, path=str(root), poll_s=0.01), ""


@contextlib.asynccontextmanager
async def _sqs_trigger(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    server: MotoServer = request.getfixturevalue("moto_server")
    client, url = _sqs_queue(server, f"sender-test-{uuid.uuid4().hex[:10]}")
    options = dict(queue_url=url, endpoint_url=server.endpoint_url, region="us-east-1")
    try:
        yield build(SqsTrigger, **options, wait="1s"), ""
    finally:
        client.delete_queue(QueueUrl=url)


@contextlib.asynccontextmanager
async def _amqp_trigger(request: pytest.FixtureRequest) -> AsyncIterator[Opened]:
    name = f"sender-test-{uuid.uuid4().hex[:10]}"
    try:
        yield build(AmqpTrigger, url=AMQP_URL, queue=name), ""
    finally:
        await _delete_amqp_queues(name, f"{name}.dead")


TRIGGERS = [Case("spool", _spool_trigger), Case("sqs", _sqs_trigger), Case("amqp", _amqp_trigger)]


@pytest.fixture(params=TRIGGERS, ids=repr)
async def trigger(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    case: Case = request.param
    async with case.open(request) as (adapter, _):
        try:
            yield adapter
        finally:
            await adapter.aclose()


MESSAGE = TriggerMessage(batch_id="b-1", dataset="churn", uri="/data/churn/b-1")


async def test_a_closed_trigger_refuses_every_verb(trigger: Any) -> None:
    await trigger.publish(MESSAGE)
    stream = aiter(trigger.messages())
    async with asyncio.timeout(30):
        envelope = await anext(stream)

    await trigger.aclose()
    await trigger.aclose()  # idempotent

    with pytest.raises(StopAsyncIteration):  # the stream that was running ends
        await anext(stream)
    with pytest.raises(AdapterClosed, match="closed"):
        await anext(aiter(trigger.messages()))
    with pytest.raises(AdapterClosed):
        await trigger.publish(MESSAGE)
    with pytest.raises(AdapterClosed):
        await trigger.pending()
    for settle in (envelope.ack, envelope.release, lambda: envelope.reject("late")):
        with pytest.raises(AdapterClosed):
            await settle()


async def test_closing_a_trigger_ends_a_stream_waiting_for_messages(trigger: Any) -> None:
    stream = aiter(trigger.messages())
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # one turn of the loop: the stream is inside, waiting

    await trigger.aclose()

    async with asyncio.timeout(30):
        with pytest.raises(StopAsyncIteration):
            await waiting


async def test_a_trigger_closed_before_first_use_refuses_it(trigger: Any) -> None:
    await trigger.aclose()

    with pytest.raises(AdapterClosed):
        await anext(aiter(trigger.messages()))
    with pytest.raises(AdapterClosed):
        await trigger.publish(MESSAGE)
