"""Queue destinations: chunks as SQS messages (moto's server on loopback, through aiobotocore)
and as RabbitMQ messages (the machine's broker, through aio-pika), end to end through the app.
Messages are read back from the real queues and decoded."""

from __future__ import annotations

import base64
import gzip
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from botocore.exceptions import ClientError

from sender.app import App
from sender.config import AppConfig
from sender.engine import BatchOutcome
from sender.errors import DeliveryError, PermanentError, RetryableError
from sender.model import BatchState, EncodedChunk, TriggerMessage, idempotency_key
from sender_adapters.amqp_sink import AmqpDestination
from sender_adapters.sqs_sink import SqsDestination, message_request, sqs_error
from tests.batches import write_batch
from tests.brokers import AMQP_URL, SqsQueue

FAST_RETRY = '{ attempts = 2, initial = "5ms", max = "10ms", budget = "5s" }'


def config_text(destination: str, *, chunk: str = "{ records = 10 }") -> str:
    """A route ``churn`` to the destination ``queue`` (TOML lines), dead letters in ``dead``."""
    return f"""\
[daemon]
ledger = "ledger.db"

[destinations.queue]
{destination}
retry = {FAST_RETRY}

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {chunk}
targets = ["queue"]
dead_letter = "dead"
"""


async def run(config: AppConfig, tmp_path: Path, records: int, batch_id: str) -> BatchOutcome:
    uri = write_batch(tmp_path / "lake" / batch_id, records, parts=2)
    async with App(config) as app:
        return await app.engine.run_batch(
            TriggerMessage(batch_id=batch_id, dataset="churn", uri=str(uri))
        )


def expected_ids(n: int) -> list[str]:
    return [f"cust-{i:08d}" for i in range(n)]


def decode(body: bytes, encoding: str | None) -> list[str]:
    data = gzip.decompress(body) if encoding == "gzip" else body
    return [orjson.loads(line)["id"] for line in data.splitlines()]


def dead_letters(tmp_path: Path, batch_id: str) -> list[dict[str, Any]]:
    folder = tmp_path / "dead" / "churn" / batch_id / "churn"
    return [orjson.loads(p.read_bytes()) for p in sorted(folder.glob("*.meta.json"))]


def chunk(
    codec: str = "gzip", payload: bytes = b'{"id":1}\n', batch_id: str = "b-1"
) -> EncodedChunk:
    return EncodedChunk(
        batch_id=batch_id,
        dataset="churn",
        route="churn",
        chunk_id="0",
        records=1,
        format="ndjson",
        codec=codec,
        payload=gzip.compress(payload) if codec == "gzip" else payload,
        raw_size=len(payload),
        idempotency_key=idempotency_key(batch_id, "churn", "0"),
    )


# -- SQS ------------------------------------------------------------------------------------


def sqs_toml(queue: SqsQueue, url: str | None = None, **options: str) -> str:
    lines = {
        "type": "sqs",
        "queue_url": url or queue.url,
        "endpoint_url": queue.endpoint,
        "region": "us-east-1",
        **options,
    }
    return "\n".join(f'{key} = "{value}"' for key, value in lines.items())


async def receive_all(queue: SqsQueue, url: str | None = None) -> list[dict[str, Any]]:
    """Every message in the queue (until a receive comes back empty), deleted as read."""
    found: list[dict[str, Any]] = []
    while True:
        reply = await queue.client.receive_message(
            QueueUrl=url or queue.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        messages = reply.get("Messages", [])
        if not messages:
            return found
        found += messages
        await queue.client.delete_message_batch(
            QueueUrl=url or queue.url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )


def attributes(message: dict[str, Any]) -> dict[str, str]:
    return {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}


def sqs_payload(message: dict[str, Any]) -> bytes:
    body: str = message["Body"]
    if attributes(message).get("transfer-encoding") == "base64":
        return base64.b64decode(body)
    return body.encode()


async def test_every_record_reaches_the_sqs_queue_once_with_its_attributes(
    tmp_path: Path, sqs_queue: SqsQueue, write_config: Callable[[str], AppConfig]
) -> None:
    config = write_config(config_text(sqs_toml(sqs_queue)))

    outcome = await run(config, tmp_path, 25, "b-sqs")

    assert outcome.ok and outcome.routes["churn"].delivered == 25
    messages = await receive_all(sqs_queue)
    assert len(messages) == 3
    by_chunk = {attributes(m)["chunk"]: m for m in messages}
    assert sorted(by_chunk) == ["0", "1", "2"]
    seen: list[str] = []
    for chunk_id, message in sorted(by_chunk.items()):
        attrs = attributes(message)
        assert attrs == {
            "content-type": "application/x-ndjson",
            "content-encoding": "gzip",
            "transfer-encoding": "base64",
            "idempotency-key": idempotency_key("b-sqs", "churn", chunk_id),
            "batch": "b-sqs",
            "dataset": "churn",
            "route": "churn",
            "chunk": chunk_id,
            "records": str(10 if chunk_id != "2" else 5),
        }
        assert message["MessageAttributes"]["records"]["DataType"] == "Number"
        seen += decode(sqs_payload(message), attrs["content-encoding"])
    assert seen == expected_ids(25)  # every record once, in order
    async with App(config) as app:
        rows = await app.ledger.chunks("b-sqs")
    ids = {m["MessageId"] for m in messages}
    assert {row.location for row in rows} == {f"{sqs_queue.url}#{i}" for i in ids}


async def test_a_chunk_over_the_sqs_cap_is_split_until_the_pieces_fit(
    tmp_path: Path, sqs_queue: SqsQueue, write_config: Callable[[str], AppConfig]
) -> None:
    # ~190 bytes a record, uncompressed: one chunk of 2000 is ~370 KiB, over 256 KiB
    config = write_config(
        config_text(
            sqs_toml(sqs_queue, compression="none"), chunk='{ records = 5000, bytes = "4MiB" }'
        )
    )

    outcome = await run(config, tmp_path, 2000, "b-big")

    assert outcome.state is BatchState.COMPLETE and outcome.ok
    assert outcome.routes["churn"].delivered == 2000
    messages = await receive_all(sqs_queue)
    assert sorted(attributes(m)["chunk"] for m in messages) == ["0.0", "0.1"]
    assert all("transfer-encoding" not in attributes(m) for m in messages)  # plain text
    assert all(len(m["Body"].encode()) < 256 * 1024 for m in messages)
    pieces = sorted(messages, key=lambda m: attributes(m)["chunk"])
    seen = [i for m in pieces for i in decode(sqs_payload(m), None)]
    assert seen == expected_ids(2000)
    keys = {attributes(m)["idempotency-key"] for m in messages}
    assert keys == {idempotency_key("b-big", "churn", c) for c in ("0.0", "0.1")}


async def test_the_cap_error_says_how_big_the_chunk_is_and_what_to_change(
    sqs_queue: SqsQueue,
) -> None:
    big = chunk("none", b"x" * (300 * 1024))
    options = SqsDestination.Options.model_validate(
        {"queue_url": sqs_queue.url, "endpoint_url": sqs_queue.endpoint, "region": "us-east-1"}
    )
    async with SqsDestination("queue", options) as destination:
        with pytest.raises(PermanentError) as caught:
            await destination.deliver(big)
    assert "chunk 0 is 300 KiB on the wire, SQS takes 256 KiB: lower the route's chunk.bytes" in (
        str(caught.value)
    )


async def test_a_missing_sqs_queue_dead_letters_the_chunk_with_the_reason(
    tmp_path: Path, sqs_queue: SqsQueue, write_config: Callable[[str], AppConfig]
) -> None:
    gone = sqs_queue.url + "-gone"
    config = write_config(config_text(sqs_toml(sqs_queue, gone), chunk="{ records = 1 }"))

    outcome = await run(config, tmp_path, 2, "b-gone")

    assert outcome.state is BatchState.COMPLETE
    assert outcome.routes["churn"].dead_lettered == 2
    metas = dead_letters(tmp_path, "b-gone")
    assert [m["chunk"] for m in metas] == ["0", "1"]
    for meta in metas:
        assert f"queue: {gone}: no such queue" in meta["error"]
        assert meta["attempts"] == 1  # permanent: not retried


async def test_a_fifo_queue_gets_the_batch_as_group_and_the_key_as_deduplication_id(
    sqs_queue: SqsQueue,
) -> None:
    created = await sqs_queue.client.create_queue(
        QueueName=f"sender-test-{uuid.uuid4().hex[:10]}.fifo",
        Attributes={"FifoQueue": "true"},
    )
    url = created["QueueUrl"]
    options = SqsDestination.Options.model_validate(
        {"queue_url": url, "endpoint_url": sqs_queue.endpoint, "region": "us-east-1"}
    )
    try:
        async with SqsDestination("queue", options) as destination:
            first = await destination.deliver(chunk())
            await destination.deliver(chunk())  # a resend within the window is dropped
        messages = await receive_all(sqs_queue, url)
    finally:
        await sqs_queue.client.delete_queue(QueueUrl=url)
    assert len(messages) == 1
    system = messages[0]["Attributes"]
    assert system["MessageGroupId"] == "b-1"
    assert system["MessageDeduplicationId"] == idempotency_key("b-1", "churn", "0")
    assert first.location == f"{url}#{messages[0]['MessageId']}"


def test_a_batch_id_sqs_refuses_as_group_id_gets_a_stable_stand_in() -> None:
    params, _ = message_request(chunk(batch_id="scores 2026 ü"), "https://q/x.fifo")
    again, _ = message_request(chunk(batch_id="scores 2026 ü"), "https://q/x.fifo")
    assert params["MessageGroupId"].startswith("batch-")
    assert params["MessageGroupId"] == again["MessageGroupId"]


def test_uncompressed_text_travels_as_is_and_control_characters_as_base64() -> None:
    plain, _ = message_request(chunk("none", b'{"id":1}\n'), "https://q/x")
    assert plain["MessageBody"] == '{"id":1}\n'
    assert "transfer-encoding" not in plain["MessageAttributes"]
    assert "content-encoding" not in plain["MessageAttributes"]
    odd, _ = message_request(chunk("none", b"id\n\x01raw\n"), "https://q/x")
    assert base64.b64decode(odd["MessageBody"]) == b"id\n\x01raw\n"


@pytest.mark.parametrize(
    ("code", "status", "kind", "push_back", "words"),
    [
        ("ThrottlingException", 400, RetryableError, True, "ThrottlingException"),
        ("KMS.ThrottlingException", 400, RetryableError, True, "KMS.ThrottlingException"),
        ("InternalError", 500, RetryableError, False, "InternalError"),
        ("AWS.SimpleQueueService.NonExistentQueue", 400, PermanentError, False, "no such queue"),
        ("AccessDenied", 403, PermanentError, False, "access denied"),
        ("InvalidClientTokenId", 403, PermanentError, False, "credentials were refused"),
    ],
)
def test_sqs_answers_become_errors_with_their_status(
    code: str, status: int, kind: type[DeliveryError], push_back: bool, words: str
) -> None:
    error = sqs_error(
        ClientError(
            {
                "Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "SendMessage",
        ),
        "https://q/x",
    )

    assert type(error) is kind and words in error.reason
    assert error.status == status
    if isinstance(error, RetryableError):
        assert error.push_back is push_back  # throttling (a 400 on SQS) says "send less"
    else:
        assert isinstance(error, PermanentError) and error.payload is False


def test_a_message_sqs_refuses_for_its_content_is_about_the_payload() -> None:
    error = sqs_error(
        ClientError(
            {
                "Error": {"Code": "InvalidMessageContents", "Message": "invalid characters"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            },
            "SendMessage",
        ),
        "https://q/x",
    )
    assert isinstance(error, PermanentError) and error.payload is True  # halving isolates it


async def test_an_unreachable_sqs_endpoint_is_retryable(closed_port_url: str) -> None:
    endpoint = closed_port_url.rsplit("/", 1)[0]
    options = SqsDestination.Options.model_validate(
        {"queue_url": f"{endpoint}/123456789012/q", "endpoint_url": endpoint, "region": "us-east-1"}
    )
    destination = SqsDestination("queue", options)
    with pytest.raises(RetryableError, match="connection error") as caught:
        await destination.deliver(chunk())
    assert caught.value.status is None and caught.value.push_back is False
    await destination.aclose()
    await destination.aclose()  # idempotent


# -- RabbitMQ -------------------------------------------------------------------------------


def amqp_toml(routing_key: str, declare: str | None = None) -> str:
    lines = [f'type = "amqp"\nurl = "{AMQP_URL}"\nrouting_key = "{routing_key}"']
    if declare:
        lines.append(f'declare_queue = "{declare}"')
    return "\n".join(lines)


async def read_queue(name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    found = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(message)
    return found


async def test_every_record_reaches_the_rabbitmq_queue_once_with_its_headers(
    tmp_path: Path, amqp_queue: str, write_config: Callable[[str], AppConfig]
) -> None:
    config = write_config(config_text(amqp_toml(amqp_queue, declare=amqp_queue)))

    outcome = await run(config, tmp_path, 25, "b-amqp")

    assert outcome.ok and outcome.routes["churn"].delivered == 25
    # concurrent publishes (concurrency 4): the chunks may arrive in any order
    messages = sorted(await read_queue(amqp_queue), key=lambda m: str(m.headers["chunk"]))
    assert [m.headers["chunk"] for m in messages] == ["0", "1", "2"]
    seen: list[str] = []
    for message in messages:
        chunk_id = str(message.headers["chunk"])
        assert message.message_id == idempotency_key("b-amqp", "churn", chunk_id)
        assert message.content_type == "application/x-ndjson"
        assert message.content_encoding == "gzip"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.headers == {
            "batch": "b-amqp",
            "dataset": "churn",
            "route": "churn",
            "chunk": chunk_id,
            "records": 10 if chunk_id != "2" else 5,
        }
        seen += decode(message.body, message.content_encoding)
    assert seen == expected_ids(25)


async def test_an_unroutable_chunk_is_dead_lettered_with_the_reason(
    tmp_path: Path, amqp_queue: str, write_config: Callable[[str], AppConfig]
) -> None:
    # nothing is bound to this routing key: the broker returns the (mandatory) message
    config = write_config(config_text(amqp_toml(amqp_queue), chunk="{ records = 1 }"))

    outcome = await run(config, tmp_path, 2, "b-lost")

    assert outcome.state is BatchState.COMPLETE
    assert outcome.routes["churn"].dead_lettered == 2
    metas = dead_letters(tmp_path, "b-lost")
    assert [m["chunk"] for m in metas] == ["0", "1"]
    for meta in metas:
        assert (
            "unroutable: no queue is bound to (default exchange) with routing key"
            in (meta["error"])
        )
        assert amqp_queue in meta["error"] and meta["attempts"] == 1


async def test_a_missing_exchange_is_permanent_and_the_next_chunk_still_goes_out(
    amqp_queue: str,
) -> None:
    missing = AmqpDestination.Options.model_validate(
        {"url": AMQP_URL, "exchange": f"{amqp_queue}-nope", "routing_key": amqp_queue}
    )
    async with AmqpDestination("queue", missing) as destination:
        with pytest.raises(PermanentError, match="NOT_FOUND") as caught:
            await destination.deliver(chunk())
        with pytest.raises(PermanentError, match="NOT_FOUND"):
            await destination.deliver(chunk())  # on a fresh channel, same answer

    assert caught.value.status == 404  # the broker's reply code
    assert caught.value.payload is False  # about the exchange: splitting would not help


async def test_an_unroutable_chunk_carries_the_no_route_reply_code(amqp_queue: str) -> None:
    options = AmqpDestination.Options.model_validate({"url": AMQP_URL, "routing_key": amqp_queue})
    async with AmqpDestination("queue", options) as destination:
        with pytest.raises(PermanentError, match="unroutable") as caught:
            await destination.deliver(chunk())

    assert caught.value.status == 312 and caught.value.payload is False


async def test_a_full_queue_refusing_the_chunk_is_push_back(amqp_queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
        await channel.declare_queue(amqp_queue, arguments=arguments)
    options = AmqpDestination.Options.model_validate({"url": AMQP_URL, "routing_key": amqp_queue})
    async with AmqpDestination("queue", options) as destination:
        await destination.deliver(chunk())  # the one message the queue takes
        with pytest.raises(RetryableError, match="refused") as caught:
            await destination.deliver(chunk())

    assert caught.value.push_back is True  # the broker asks for less, not just later


async def test_an_unreachable_broker_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = AmqpDestination.Options.model_validate(
        {
            "url": f"amqp://guest:guest@127.0.0.1:{port}/",
            "routing_key": "q",
            "connect_timeout": "2s",
        }
    )
    destination = AmqpDestination("queue", options)
    with pytest.raises(RetryableError) as caught:
        await destination.deliver(chunk())
    assert caught.value.status is None and caught.value.push_back is False
    await destination.aclose()
    await destination.aclose()  # idempotent
    assert "guest:***@" in repr(destination)
