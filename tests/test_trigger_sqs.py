"""The sqs trigger against moto's SQS server (aiobotocore over real HTTP)."""

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
    chunk_keys,
    churn_batch,
    running_daemon,
    sigterm_mid_batch_then_resume,
    watch_logs,
    write_daemon_config,
)


async def test_a_message_leads_to_a_delivered_batch_deleted_only_after_completion(
    tmp_path: Path, receiver: Receiver, sqs_queue: SqsQueue
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=sqs_queue.trigger())
    await sqs_queue.send(churn_batch(tmp_path, "b-1").to_json())
    receiver.slow(0.2)

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        await receiver.wait_for(lambda r: len(r.requests) >= 1)
        assert await sqs_queue.counts() == (0, 1)  # received, in flight, not deleted

        (settled,) = await daemon.wait_settled(1)
        assert await sqs_queue.counts() == (0, 0)

    assert (settled.batch_id, settled.verb, settled.ok) == ("b-1", "ack", True)
    assert {r.idempotency_key for r in receiver.accepted} == chunk_keys("b-1", 2)


async def test_a_poison_message_goes_to_the_dead_letter_queue_and_the_next_one_through(
    tmp_path: Path, receiver: Receiver, sqs_queue: SqsQueue
) -> None:
    await sqs_queue.set_max_receive_count(1)
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=sqs_queue.trigger())
    unknown = TriggerMessage(batch_id="b-x", dataset="nobody-routes-this", uri="/tmp/x")
    await sqs_queue.send("{not json")
    await sqs_queue.send(unknown.to_json())
    await sqs_queue.send(churn_batch(tmp_path, "b-good").to_json())

    with watch_logs() as logs:
        async with running_daemon(config) as daemon, asyncio.timeout(20):
            settled = await daemon.wait_settled(3)

    assert sorted((s.batch_id or "", s.verb) for s in settled) == [
        ("", "reject"),
        ("", "reject"),
        ("b-good", "ack"),
    ]
    reasons = sorted(e["reason"] for e in logs.find("trigger.rejected"))
    assert "no route takes dataset" in reasons[0] and "not JSON" in reasons[1]
    # rejected ones were made visible again: the redrive policy moves them on the next receive
    assert await sqs_queue.receive_once() == []
    assert sorted(await sqs_queue.dead_bodies()) == sorted(
        ["{not json", unknown.to_json().decode()]
    )
    assert {r.idempotency_key for r in receiver.accepted} == chunk_keys("b-good", 2)


async def test_on_invalid_delete_logs_the_message_and_deletes_it(
    tmp_path: Path, receiver: Receiver, sqs_queue: SqsQueue
) -> None:
    trigger = sqs_queue.trigger(on_invalid="delete")
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=trigger)
    await sqs_queue.send('{"batch_id": "b-1"}')

    with watch_logs() as logs:
        async with running_daemon(config) as daemon, asyncio.timeout(20):
            (settled,) = await daemon.wait_settled(1)

    assert settled.verb == "reject"
    (deleted,) = logs.find("trigger.deleted_invalid")
    assert deleted["body"] == '{"batch_id": "b-1"}'
    assert "dataset: Field required" in deleted["reason"]
    assert await sqs_queue.counts() == (0, 0)
    assert await sqs_queue.dead_bodies() == []


async def test_a_duplicate_message_sends_nothing_twice(
    tmp_path: Path, receiver: Receiver, sqs_queue: SqsQueue
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=sqs_queue.trigger())
    message = churn_batch(tmp_path, "b-dup", records=20, parts=4)
    await sqs_queue.send(message.to_json())
    await sqs_queue.send(message.to_json())  # the pipeline step ran twice
    receiver.slow(0.1)

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        await daemon.wait_settled(2)
        await sqs_queue.send(message.to_json())  # and once more, after the batch is complete
        settled = await daemon.wait_settled(3)
        assert await sqs_queue.counts() == (0, 0)

    assert [(s.batch_id, s.verb) for s in settled] == [("b-dup", "ack")] * 3
    keys = [r.idempotency_key for r in receiver.accepted]
    assert sorted(keys) == sorted(chunk_keys("b-dup", 4))  # each chunk exactly once


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


async def test_publish_sends_a_message_the_daemon_takes(
    tmp_path: Path, receiver: Receiver, sqs_queue: SqsQueue
) -> None:
    options = SqsTrigger.Options(
        type="sqs", queue_url=sqs_queue.url, endpoint_url=sqs_queue.endpoint, region="us-east-1"
    )
    async with SqsTrigger(options) as trigger:
        await trigger.publish(churn_batch(tmp_path, "b-pub"))
        assert await trigger.pending() == 1

    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=sqs_queue.trigger())
    async with running_daemon(config) as daemon, asyncio.timeout(20):
        (settled,) = await daemon.wait_settled(1)
    assert (settled.batch_id, settled.verb) == ("b-pub", "ack")


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
