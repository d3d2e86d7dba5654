"""The spool trigger (a directory of JSON files): its folders, and a real daemon process
stopped mid-batch. What every trigger does is in test_contract_trigger.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import orjson
from structlog.testing import capture_logs

from sender.config import load_config
from sender.daemon import open_trigger
from sender.model import TriggerMessage
from sender.testing.receiver import Receiver
from sender_adapters.spool import SpoolTrigger
from tests.brokers import (
    DaemonProcess,
    churn_batch,
    free_port,
    sigterm_mid_batch_then_resume,
    take_one,
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


def spool(tmp_path: Path) -> SpoolTrigger:
    """A spool on ``tmp_path/queue``, used directly (no daemon)."""
    return SpoolTrigger("trigger", SpoolTrigger.Options(type="spool", path=str(tmp_path / "queue")))


async def test_a_claimed_message_sits_in_processing_until_acked_then_in_done(
    tmp_path: Path,
) -> None:
    queue = tmp_path / "queue"
    async with spool(tmp_path) as trigger:
        await trigger.publish(churn_batch(tmp_path, "b-1"))
        envelope = await take_one(trigger)
        assert len(names(queue / "processing")) == 1
        assert names(queue) == names(queue / "done") == []

        await envelope.ack()

    assert names(queue / "done") == [envelope.message_id]
    assert names(queue / "processing") == names(queue) == []


async def test_a_rejected_message_is_kept_in_rejected_with_its_reason_beside_it(
    tmp_path: Path,
) -> None:
    rejected = tmp_path / "queue" / "rejected"
    async with spool(tmp_path) as trigger:
        await trigger.publish(churn_batch(tmp_path, "b-1"))
        envelope = await take_one(trigger)

        await envelope.reject("no route takes dataset 'churn'")

    assert names(rejected) == [envelope.message_id]
    reason = rejected / f"{envelope.message_id}.reason.txt"
    assert reason.read_text() == "no route takes dataset 'churn'\n"


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


async def test_a_fifo_or_a_directory_named_json_is_ignored_with_a_reason(
    tmp_path: Path,
) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    os.mkfifo(queue / "0-fifo.json")  # a reader opening it would block for good
    (queue / "1-folder.json").mkdir()
    with capture_logs() as logs:
        async with spool(tmp_path) as trigger:
            await trigger.publish(churn_batch(tmp_path, "b-1"))
            envelope = await take_one(trigger)  # the real message still comes through
            assert await trigger.pending() == 0
            await envelope.ack()

    assert names(queue / "done") == [envelope.message_id]
    ignored = sorted(line["file"] for line in logs if line["event"] == "spool.ignored")
    assert ignored == ["0-fifo.json", "1-folder.json"]
    assert all(
        line["reason"] == "not a regular file" for line in logs if line["event"] == "spool.ignored"
    )


async def test_a_message_over_1_mib_is_rejected_unread_with_its_reason(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / "0-huge.json").write_bytes(b'{"batch_id": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    async with spool(tmp_path) as trigger:
        await trigger.publish(churn_batch(tmp_path, "b-1"))
        envelope = await take_one(trigger)
        await envelope.ack()

    assert names(queue / "rejected") == ["0-huge.json"]
    reason = (queue / "rejected" / "0-huge.json.reason.txt").read_text()
    assert reason == "larger than 1024 KiB: not a trigger message\n"
    assert names(queue / "done") == [envelope.message_id]


async def test_a_daemon_with_a_fifo_and_a_poison_id_in_its_spool_stays_ready_and_stops_on_sigterm(
    tmp_path: Path, receiver: Receiver
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL, listen=listen)
    queue = tmp_path / "queue"
    queue.mkdir()
    os.mkfifo(queue / "0-fifo.json")
    good = churn_batch(tmp_path, "b-1")
    poison = good.model_dump(mode="json") | {"batch_id": "é" * 150}  # 300 bytes in UTF-8
    (queue / "1-poison.json").write_bytes(orjson.dumps(poison))
    (queue / "2-good.json").write_bytes(orjson.dumps(good.model_dump(mode="json")))

    daemon = await DaemonProcess(config).start()
    try:
        async with asyncio.timeout(60):
            await daemon.wait_for_event("batch.finished", batch_id="b-1", state="complete")
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{listen}/readyz") as answer,
            ):
                assert answer.status == 200, await answer.text()
        code, _ = await daemon.stop(within_s=30)
    finally:
        await daemon.kill()

    assert code == 0
    assert len(receiver.unique_records()) == 10
    assert names(queue / "rejected") == ["1-poison.json"]
    reason = (queue / "rejected" / "1-poison.json.reason.txt").read_text()
    assert "300 bytes in UTF-8, more than the 200" in reason
    assert (queue / "0-fifo.json").exists()  # left where it is, never opened
