"""Every built-in destination passes the destination contract (``sender.testing``), each
against its real receiver on loopback: a folder, an aiohttp receiver, moto (S3, SQS),
fake-gcs-server, the machine's RabbitMQ, and the in-memory fake."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from sender.errors import RetryableError
from sender.testing import DestinationContract
from sender.testing.receiver import Receiver
from sender_adapters.amqp_sink import AmqpDestination
from sender_adapters.gcs import GcsDestination
from sender_adapters.http import HttpDestination
from sender_adapters.local import LocalDestination
from sender_adapters.memory import MemoryDestination
from sender_adapters.s3 import S3Destination
from sender_adapters.sqs_sink import SqsDestination
from tests.brokers import AMQP_URL, SqsQueue
from tests.cloud import GcsBucket, GcsServer, MotoServer, S3Bucket, bucket_name

Arrived = Callable[[], Any]


# -- local ------------------------------------------------------------------------------


class TestLocalDestination(DestinationContract):
    @pytest.fixture
    async def destination(self, tmp_path: Path) -> AsyncIterator[LocalDestination]:
        options = LocalDestination.Options(type="local", path=str(tmp_path / "out"))
        async with LocalDestination("folder", options) as destination:
            yield destination

    @pytest.fixture
    def arrived(self, tmp_path: Path) -> Arrived:
        def payloads() -> list[bytes]:
            files = sorted((tmp_path / "out").rglob("*"))
            return [p.read_bytes() for p in files if p.is_file() and "meta" not in p.name]

        return payloads

    @pytest.fixture
    async def broken_destination(self, tmp_path: Path) -> AsyncIterator[LocalDestination]:
        (tmp_path / "a-file").write_text("not a folder")
        options = LocalDestination.Options(type="local", path=str(tmp_path / "a-file"))
        async with LocalDestination("folder", options) as destination:
            yield destination


# -- http -------------------------------------------------------------------------------


class TestHttpDestination(DestinationContract):
    resend_arrives_again = True  # the receiver drops the copy by its Idempotency-Key

    @pytest.fixture
    async def destination(self, receiver: Receiver) -> AsyncIterator[HttpDestination]:
        options = HttpDestination.Options(type="http", url=f"{receiver.url}/scores")
        async with HttpDestination("api", options) as destination:
            yield destination

    @pytest.fixture
    def arrived(self, receiver: Receiver) -> Arrived:
        return lambda: [r.body_raw for r in receiver.accepted]

    @pytest.fixture
    async def broken_destination(self, closed_port_url: str) -> AsyncIterator[HttpDestination]:
        options = HttpDestination.Options(type="http", url=closed_port_url)
        async with HttpDestination("api", options) as destination:
            yield destination


# -- buckets ------------------------------------------------------------------------------


class TestS3Destination(DestinationContract):
    @pytest.fixture
    def bucket(self, moto_server: MotoServer, request: pytest.FixtureRequest) -> S3Bucket:
        return S3Bucket(moto_server, bucket_name(request.node.nodeid))

    @pytest.fixture
    async def destination(self, bucket: S3Bucket) -> AsyncIterator[S3Destination]:
        options = S3Destination.Options(type="s3", bucket=bucket.name, endpoint_url=bucket.endpoint)
        async with S3Destination("drop", options) as destination:
            yield destination

    @pytest.fixture
    def arrived(self, bucket: S3Bucket) -> Arrived:
        return lambda: [bucket.get(key) for key in bucket.keys(prefix="") if "meta" not in key]

    @pytest.fixture
    async def broken_destination(self, moto_server: MotoServer) -> AsyncIterator[S3Destination]:
        options = S3Destination.Options(
            type="s3", bucket="no-such-drop", endpoint_url=moto_server.endpoint_url
        )
        async with S3Destination("drop", options) as destination:
            yield destination


class TestGcsDestination(DestinationContract):
    @pytest.fixture
    def bucket(self, gcs_server: GcsServer, request: pytest.FixtureRequest) -> GcsBucket:
        return GcsBucket(gcs_server, bucket_name(request.node.nodeid))

    @pytest.fixture
    async def destination(self, bucket: GcsBucket) -> AsyncIterator[GcsDestination]:
        options = GcsDestination.Options(type="gcs", bucket=bucket.name, endpoint=bucket.endpoint)
        async with GcsDestination("drop", options) as destination:
            yield destination

    @pytest.fixture
    def arrived(self, bucket: GcsBucket) -> Arrived:
        return lambda: [bucket.get(key) for key in bucket.keys(prefix="") if "meta" not in key]

    @pytest.fixture
    async def broken_destination(self, gcs_server: GcsServer) -> AsyncIterator[GcsDestination]:
        options = GcsDestination.Options(type="gcs", bucket="no-such-drop", endpoint=gcs_server.url)
        async with GcsDestination("drop", options) as destination:
            yield destination


# -- queues -------------------------------------------------------------------------------


class TestSqsDestination(DestinationContract):
    resend_arrives_again = True  # a standard queue: the consumer drops it by idempotency-key

    @pytest.fixture
    async def destination(self, sqs_queue: SqsQueue) -> AsyncIterator[SqsDestination]:
        options = SqsDestination.Options(
            type="sqs", queue_url=sqs_queue.url, endpoint_url=sqs_queue.endpoint, region="us-east-1"
        )
        async with SqsDestination("queue", options) as destination:
            yield destination

    @pytest.fixture
    def arrived(self, sqs_queue: SqsQueue) -> Arrived:
        taken: list[bytes] = []

        async def payloads() -> list[bytes]:
            while True:  # deleted as read: kept here for the next call
                reply = await sqs_queue.client.receive_message(
                    QueueUrl=sqs_queue.url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=0,
                    VisibilityTimeout=60,
                    MessageAttributeNames=["All"],
                )
                messages = reply.get("Messages", [])
                if not messages:
                    return list(taken)
                for message in messages:
                    attributes = message.get("MessageAttributes", {})
                    encoding = attributes.get("transfer-encoding", {}).get("StringValue")
                    body: str = message["Body"]
                    taken.append(base64.b64decode(body) if encoding == "base64" else body.encode())
                    await sqs_queue.client.delete_message(
                        QueueUrl=sqs_queue.url, ReceiptHandle=message["ReceiptHandle"]
                    )

        return payloads

    @pytest.fixture
    async def broken_destination(self, sqs_queue: SqsQueue) -> AsyncIterator[SqsDestination]:
        options = SqsDestination.Options(
            type="sqs",
            queue_url=sqs_queue.url + "-gone",
            endpoint_url=sqs_queue.endpoint,
            region="us-east-1",
        )
        async with SqsDestination("queue", options) as destination:
            yield destination


class TestAmqpDestination(DestinationContract):
    resend_arrives_again = True  # a queue: the consumer drops the copy by its message id

    @pytest.fixture
    async def destination(self, amqp_queue: str) -> AsyncIterator[AmqpDestination]:
        options = AmqpDestination.Options(
            type="amqp", url=AMQP_URL, routing_key=amqp_queue, declare_queue=amqp_queue
        )
        async with AmqpDestination("queue", options) as destination:
            yield destination

    @pytest.fixture
    def arrived(self, amqp_queue: str) -> Arrived:
        taken: list[bytes] = []

        async def payloads() -> list[bytes]:
            connection = await aio_pika.connect(AMQP_URL, timeout=10)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(amqp_queue, durable=True)
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    taken.append(message.body)
            return list(taken)

        return payloads

    @pytest.fixture
    async def broken_destination(self) -> AsyncIterator[AmqpDestination]:
        options = AmqpDestination.Options(
            type="amqp",
            url=AMQP_URL,
            exchange=f"sender-test-no-such-exchange-{uuid.uuid4().hex[:8]}",
            routing_key="nowhere",
        )
        async with AmqpDestination("queue", options) as destination:
            yield destination


# -- the in-memory fake -------------------------------------------------------------------


class TestMemoryDestination(DestinationContract):
    resend_arrives_again = True  # it keeps every call, as a test wants to see them

    @pytest.fixture
    async def destination(self) -> AsyncIterator[MemoryDestination]:
        async with MemoryDestination("memory") as destination:
            yield destination

    @pytest.fixture
    def arrived(self, destination: MemoryDestination) -> Arrived:
        return lambda: [chunk.payload for chunk in destination.received]

    @pytest.fixture
    async def broken_destination(self) -> AsyncIterator[MemoryDestination]:
        down = RetryableError("memory: down", status=503)
        async with MemoryDestination("memory", always_fail=down) as destination:
            yield destination
