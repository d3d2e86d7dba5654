"""The spool trigger (a directory of JSON files) driving the daemon, end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sender.config import load_config
from sender.daemon import open_trigger
from sender.model import TriggerMessage
from sender.testing.receiver import Receiver
from tests.brokers import (
    DaemonProcess,
    chunk_keys,
    churn_batch,
    running_daemon,
    sigterm_mid_batch_then_resume,
    write_daemon_config,
)

SPOOL = 'type = "spool"\npath = "queue"\npoll_s = "50ms"'


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.json"))


async def publish(config: Path, message: TriggerMessage) -> None:
    trigger = open_trigger(load_config(config))
    try:
        await trigger.publish(message)
    finally:
        await trigger.aclose()


async def test_a_message_leads_to_a_delivered_batch_acked_only_after_completion(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    await publish(config, churn_batch(tmp_path, "b-1"))
    queue = tmp_path / "queue"
    receiver.slow(0.2)

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        await receiver.wait_for(lambda r: len(r.requests) >= 1)
        assert len(names(queue / "processing")) == 1  # claimed, not yet acked
        assert names(queue / "done") == []

        (settled,) = await daemon.wait_settled(1)

    assert (settled.batch_id, settled.verb, settled.ok) == ("b-1", "ack", True)
    assert len(names(queue / "done")) == 1
    assert names(queue / "processing") == names(queue) == []
    assert {r.idempotency_key for r in receiver.accepted} == chunk_keys("b-1", 2)


async def test_a_poison_message_is_rejected_and_the_next_good_one_goes_through(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / "0-garbage.json").write_text("{not json")
    unknown = TriggerMessage(batch_id="b-x", dataset="nobody-routes-this", uri="/tmp/x")
    (queue / "1-unknown.json").write_bytes(unknown.to_json())
    await publish(config, churn_batch(tmp_path, "b-good"))

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        settled = await daemon.wait_settled(3)

    verbs = sorted((s.batch_id or "", s.verb) for s in settled)
    assert verbs == [("", "reject"), ("", "reject"), ("b-good", "ack")]
    rejected = queue / "rejected"
    assert names(rejected) == ["0-garbage.json", "1-unknown.json"]
    assert "not JSON" in (rejected / "0-garbage.json.reason.txt").read_text()
    assert "no route takes dataset" in (rejected / "1-unknown.json.reason.txt").read_text()
    assert {r.idempotency_key for r in receiver.accepted} == chunk_keys("b-good", 2)


async def test_a_duplicate_message_sends_nothing_twice(tmp_path: Path, receiver: Receiver) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    message = churn_batch(tmp_path, "b-dup", records=20, parts=4)
    await publish(config, message)
    await publish(config, message)  # the pipeline step ran twice
    receiver.slow(0.1)

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        await daemon.wait_settled(2)
        await publish(config, message)  # and once more, after the batch is complete
        settled = await daemon.wait_settled(3)

    assert [(s.batch_id, s.verb) for s in settled] == [("b-dup", "ack")] * 3
    keys = [r.idempotency_key for r in receiver.accepted]
    assert sorted(keys) == sorted(chunk_keys("b-dup", 4))  # each chunk exactly once
    assert len(names(tmp_path / "queue" / "done")) == 3


async def test_sigterm_mid_batch_exits_0_and_the_restart_sends_only_what_is_left(
    tmp_path: Path, receiver: Receiver
) -> None:
    queue = tmp_path / "queue"

    async def publish_file(message: TriggerMessage, daemon: DaemonProcess) -> None:
        await publish(tmp_path / "sender.toml", message)

    async def given_back() -> None:
        assert len(names(queue)) == 1  # back in the queue, not left in processing/
        assert names(queue / "processing") == []

    async def acked() -> None:
        assert names(queue) == []
        assert len(names(queue / "done")) == 1

    await sigterm_mid_batch_then_resume(
        tmp_path,
        receiver,
        trigger=SPOOL,
        publish=publish_file,
        given_back=given_back,
        acked=acked,
    )
