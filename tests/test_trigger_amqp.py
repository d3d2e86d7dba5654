"""The amqp trigger against the machine's RabbitMQ (127.0.0.1:5672), one queue per test: its
queues, the dead-letter queue, reconnecting, a daemon process stopped mid-batch, the on-prem
example config. What every trigger does is in test_contract_trigger.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from sender.config import load_config
from sender.daemon import open_trigger
from sender.model import TriggerMessage
from sender.testing.receiver import Receiver
from sender_adapters.amqp import AmqpTrigger
from tests.brokers import (
    AMQP_URL,
    DaemonProcess,
    TcpProxy,
    chunk_keys,
    churn_batch,
    running_daemon,
    sigterm_mid_batch_then_resume,
    take_one,
    watch_logs,
    write_daemon_config,
)


def amqp_trigger(queue: str, url: str = AMQP_URL) -> str:
    return f'type = "amqp"\nurl = "{url}"\nqueue = "{queue}"\nprefetch = 2'


@pytest.fixture
async def channel() -> AsyncIterator[AbstractChannel]:
    """A channel of our own on the broker, to publish and look into queues."""
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        yield await connection.channel()


async def publish_raw(channel: AbstractChannel, queue: str, body: bytes) -> None:
    await channel.default_exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
    )


async def ready(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in ``queue`` (unacked ones are not counted)."""
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def publish(queue: str, message: TriggerMessage, url: str = AMQP_URL) -> None:
    """What `sender trigger` does: declares the queue (and its dead-letter queue) if missing."""
    async with AmqpTrigger(
        "trigger", AmqpTrigger.Options(type="amqp", url=url, queue=queue)
    ) as trigger:
        await trigger.publish(message)


async def test_publish_declares_a_durable_queue_with_its_dead_letter_queue(
    tmp_path: Path, amqp_queue: str, channel: AbstractChannel
) -> None:
    await publish(amqp_queue, churn_batch(tmp_path, "b-1"))

    queue = await channel.declare_queue(amqp_queue, passive=True)
    assert queue.declaration_result.message_count == 1
    # the same declaration again is accepted only if durable with these arguments
    await channel.declare_queue(
        amqp_queue,
        durable=True,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{amqp_queue}.dead",
        },
    )
    await channel.declare_queue(f"{amqp_queue}.dead", passive=True)


async def test_a_rejected_message_goes_to_the_dead_letter_queue(
    tmp_path: Path, amqp_queue: str, channel: AbstractChannel
) -> None:
    await publish(amqp_queue, churn_batch(tmp_path, "b-1"))  # declares the queues
    await publish_raw(channel, amqp_queue, b"{not json")

    options = AmqpTrigger.Options(type="amqp", url=AMQP_URL, queue=amqp_queue)
    async with AmqpTrigger("trigger", options) as trigger:
        first = await take_one(trigger)
        await first.ack()
        poison = await take_one(trigger)
        await poison.reject("not JSON")

    assert poison.body == b"{not json"
    assert await ready(channel, amqp_queue) == 0
    assert await ready(channel, f"{amqp_queue}.dead") == 1


async def test_a_broker_gone_mid_batch_is_not_ready_then_reconnected_and_nothing_is_lost(
    tmp_path: Path, receiver: Receiver, amqp_queue: str, channel: AbstractChannel
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    config = write_daemon_config(
        tmp_path, receiver=receiver.url, trigger=amqp_trigger(amqp_queue, url)
    )
    await publish(amqp_queue, churn_batch(tmp_path, "b-1", records=20, parts=4))
    receiver.slow(0.2)

    try:
        with watch_logs() as logs:
            async with running_daemon(config) as daemon, asyncio.timeout(30):
                await receiver.wait_for(lambda r: len(r.requests) >= 1)
                assert await daemon.readiness() == []

                await proxy.cut()  # the broker goes away with our delivery unacked
                await logs.wait_for("amqp.connection_lost")
                assert any("not connected" in p for p in await daemon.readiness())

                mark = len(logs.events)
                await proxy.restore()
                await logs.wait_for("amqp.connected", after=mark)
                # the broker redelivered the unacked message: it joins the running batch,
                # and is acked when the batch completes (the first copy's ack has no channel)
                settled = await daemon.wait_settled(2)
                assert await daemon.readiness() == []
    finally:
        await proxy.aclose()

    assert [(s.batch_id, s.verb, s.ok) for s in settled] == [
        ("b-1", "ack", False),
        ("b-1", "ack", True),
    ]
    assert await ready(channel, amqp_queue) == 0
    keys = [r.idempotency_key for r in receiver.accepted]
    assert sorted(keys) == sorted(chunk_keys("b-1", 4))


async def test_sigterm_mid_batch_exits_0_and_the_restart_sends_only_what_is_left(
    tmp_path: Path, receiver: Receiver, amqp_queue: str, channel: AbstractChannel
) -> None:
    async def publish_message(message: TriggerMessage, daemon: DaemonProcess) -> None:
        await publish(amqp_queue, message)

    async def given_back() -> None:
        assert await ready(channel, amqp_queue) == 1  # requeued

    async def acked() -> None:
        assert await ready(channel, amqp_queue) == 0

    await sigterm_mid_batch_then_resume(
        tmp_path,
        receiver,
        trigger=amqp_trigger(amqp_queue),
        publish=publish_message,
        given_back=given_back,
        acked=acked,
    )


ONPREM = Path(__file__).resolve().parents[1] / "config" / "onprem.toml"


def test_the_onprem_example_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_PASSWORD", "amqp-password-from-env")
    monkeypatch.setenv("SCORES_API_TOKEN", "scores-token-from-env")
    monkeypatch.setenv("SENDER_CONTROL_TOKEN", "control-token-from-env")

    config = load_config(ONPREM)

    assert config.trigger.type == "amqp"
    assert config.trigger.options.queue == "sender.batches"
    assert config.daemon.ledger == "postgresql://sender@127.0.0.1:5432/sender"
    assert config.sources["nfs"].type == "local"
    assert config.routes["churn_to_scores"].targets == ["scores_api", "scores_dropbox"]
    assert "amqp-password-from-env" not in repr(config)


async def test_the_onprem_example_delivers_a_batch_with_only_site_values_changed(
    tmp_path: Path, receiver: Receiver, amqp_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCORES_API_TOKEN", "scores-token")
    monkeypatch.setenv("SENDER_CONTROL_TOKEN", "control-token")
    site = {
        # the PostgreSQL ledger is tested on its own; here the same config on SQLite
        '"postgresql://sender@127.0.0.1:5432/sender"': f'"{tmp_path / "ledger.db"}"',
        "sender:${AMQP_PASSWORD}@": "guest:guest@",
        '"sender.batches"': f'"{amqp_queue}"',
        '"0.0.0.0:8080"': '"127.0.0.1:0"',
        "https://scores.internal.example/api/v1/scores": f"{receiver.url}/scores",
        "/mnt/shared/scores-inbox": str(tmp_path / "inbox"),
        "/var/lib/sender/dead-letter": str(tmp_path / "dead"),
    }
    text = ONPREM.read_text()
    for ours, theirs in site.items():
        assert ours in text
        text = text.replace(ours, theirs)
    (tmp_path / "sender.toml").write_text(text)
    config = load_config(tmp_path / "sender.toml")
    trigger = open_trigger(config)  # what `sender trigger` does
    try:
        await trigger.publish(churn_batch(tmp_path, "churn-2026-11-24"))
    finally:
        await trigger.aclose()

    async with running_daemon(tmp_path / "sender.toml") as daemon, asyncio.timeout(20):
        (settled,) = await daemon.wait_settled(1)

    assert (settled.batch_id, settled.verb) == ("churn-2026-11-24", "ack")
    records = receiver.unique_records()
    assert len(records) == 10
    assert set(records[0]) == {"customer_id", "churn_score", "model"}
    assert receiver.accepted[0].headers["Authorization"] == "Bearer scores-token"
