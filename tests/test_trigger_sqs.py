"""The sqs trigger against moto's SQS server (aiobotocore over real HTTP): the redrive
policy, the visibility heartbeat, reconnecting, a daemon process stopped mid-batch. What
every trigger does is in test_contract_trigger.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from sender.model import TriggerMessage
from sender.testing.receiver import Receiver
from sender_adapters.sqs import SqsTrigger
from tests.brokers import (
    DaemonProcess,
    SqsQueue,
    TcpProxy,
    churn_batch,
    running_daemon,
    sigterm_mid_batch_then_resume,
    take_one,
    watch_logs,
    write_daemon_config,
)


def sqs_trigger(queue: SqsQueue, **options: str) -> SqsTrigger:
    """A trigger on ``queue``, used directly (no daemon)."""
    settings = {"queue_url": queue.url, "endpoint_url": queue.endpoint, "region": "us-east-1"}
    return SqsTrigger(
        "trigger", SqsTrigger.Options.model_validate({"type": "sqs", **settings, **options})
    )


async def test_a_rejected_message_reaches_the_dead_letter_queue_by_the_redrive_policy(
    sqs_queue: SqsQueue,
) -> None:
    await sqs_queue.set_max_receive_count(1)
    await sqs_queue.send("{not json")

    async with sqs_trigger(sqs_queue, wait="1s") as trigger:
        envelope = await take_one(trigger)
        await envelope.reject("not JSON")

    # made visible again at once: the redrive policy moves it on the next receive
    assert await sqs_queue.receive_once() == []
    assert await sqs_queue.dead_bodies() == ["{not json"]


async def test_on_invalid_delete_logs_the_message_and_deletes_it(sqs_queue: SqsQueue) -> None:
    await sqs_queue.send('{"batch_id": "b-1"}')

    with watch_logs() as logs:
        async with sqs_trigger(sqs_queue, wait="1s", on_invalid="delete") as trigger:
            envelope = await take_one(trigger)
            await envelope.reject("dataset: Field required")

    (deleted,) = logs.find("trigger.deleted_invalid")
    assert deleted["body"] == '{"batch_id": "b-1"}'
    assert deleted["reason"] == "dataset: Field required"
    assert await sqs_queue.counts() == (0, 0)
    assert await sqs_queue.dead_bodies() == []


async def test_the_lease_is_extended_while_a_batch_outlasts_the_visibility_timeout(
    tmp_path: Path, receiver: Receiver, sqs_queue: SqsQueue
) -> None:
    trigger = sqs_queue.trigger(visibility="2s")
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=trigger, lease="2s")
    await sqs_queue.send(churn_batch(tmp_path, "b-long", records=25, parts=5).to_json())
    receiver.slow(0.6)  # five chunks one after the other: about 3 s, longer than 2 s

    with watch_logs() as logs:
        async with running_daemon(config) as daemon, asyncio.timeout(20):
            (settled,) = await daemon.wait_settled(1)

    assert (settled.batch_id, settled.verb) == ("b-long", "ack")
    assert logs.find("trigger.duplicate_in_flight") == []  # never visible to a receive again
    assert await sqs_queue.counts() == (0, 0)


async def test_sqs_going_away_is_not_ready_then_reconnected(
    tmp_path: Path, receiver: Receiver, sqs_queue: SqsQueue
) -> None:
    endpoint = urlsplit(sqs_queue.endpoint)
    proxy = TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
    await proxy.start()
    trigger = sqs_queue.trigger(endpoint=f"http://127.0.0.1:{proxy.port}")
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=trigger)

    try:
        with watch_logs() as logs:
            # a long poll cut mid-flight ends only at the client's read timeout (wait + 15 s),
            # then the reconnect backoff runs: 30 s left no room on a loaded machine
            async with running_daemon(config) as daemon, asyncio.timeout(60):
                await logs.wait_for("sqs.connected")
                assert await daemon.readiness() == []

                await proxy.cut()
                await logs.wait_for("sqs.unavailable")
                assert any("not connected" in p for p in await daemon.readiness())

                await sqs_queue.send(churn_batch(tmp_path, "b-after").to_json())
                await proxy.restore()
                (settled,) = await daemon.wait_settled(1)
                assert await daemon.readiness() == []
    finally:
        await proxy.aclose()
    assert (settled.batch_id, settled.verb) == ("b-after", "ack")


async def test_sigterm_mid_batch_exits_0_and_the_restart_sends_only_what_is_left(
    tmp_path: Path, receiver: Receiver, sqs_queue: SqsQueue
) -> None:
    async def publish(message: TriggerMessage, daemon: DaemonProcess) -> None:
        await sqs_queue.send(message.to_json())

    async def given_back() -> None:
        assert await sqs_queue.counts() == (1, 0)  # visible again at once, not in 30 s

    async def acked() -> None:
        assert await sqs_queue.counts() == (0, 0)

    await sigterm_mid_batch_then_resume(
        tmp_path,
        receiver,
        trigger=sqs_queue.trigger(),
        publish=publish,
        given_back=given_back,
        acked=acked,
    )
