"""The http trigger: POST /v1/batches on the daemon's control server, over real HTTP (stored
before the 202, refused at the door, the token, Pub/Sub push, publishing from outside the
daemon, a daemon process stopped mid-batch). What every trigger does, the inbox included, is
in test_contract_trigger.py."""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from sender.config import load_config
from sender.daemon import Daemon, open_trigger
from sender.model import TriggerMessage
from sender.testing.receiver import Receiver
from sender_adapters.http_trigger import HttpTrigger
from sender_adapters.sqlite import SqliteLedger
from tests.brokers import (
    DaemonProcess,
    chunk_keys,
    churn_batch,
    free_port,
    running_daemon,
    sigterm_mid_batch_then_resume,
    write_daemon_config,
)

TOKEN = "trigger-token-for-tests"
HTTP = f'type = "http"\ntoken = "{TOKEN}"\npoll = "100ms"'
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def url(daemon: Daemon, path: str = "/v1/batches") -> str:
    assert daemon.control is not None
    return f"http://127.0.0.1:{daemon.control.port}{path}"


async def post(
    daemon: Daemon, body: bytes, headers: dict[str, str] | None = None, query: str = ""
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url(daemon) + query, data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_a_posted_message_is_stored_before_202_and_acked_only_after_completion(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=HTTP)
    message = churn_batch(tmp_path, "b-1")
    receiver.slow(0.2)

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        status, answer = await post(daemon, message.to_json(), AUTH)
        assert (status, answer) == (202, {"accepted": "b-1"})
        stored = await daemon.app.ledger.get_message("b-1")
        assert stored is not None and stored.body == message.to_json()

        await receiver.wait_for(lambda r: len(r.requests) >= 1)
        claimed = await daemon.app.ledger.get_message("b-1")
        assert claimed is not None
        assert (claimed.state, claimed.deliveries) == ("pending", 1)  # held, not yet settled
        assert claimed.owner is not None

        (settled,) = await daemon.wait_settled(1)
        done = await daemon.app.ledger.get_message("b-1")

    assert (settled.batch_id, settled.verb) == ("b-1", "ack")
    assert done is not None and done.state == "done"
    assert {r.idempotency_key for r in receiver.accepted} == chunk_keys("b-1", 2)


async def test_a_poison_message_is_rejected_and_the_next_good_one_goes_through(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=HTTP)
    unknown = TriggerMessage(batch_id="b-x", dataset="nobody-routes-this", uri="/tmp/x")

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        # refused at the door, with the reason, and never stored
        status, answer = await post(daemon, b"{not json", AUTH)
        assert status == 400 and "not JSON" in answer["error"]
        status, answer = await post(daemon, unknown.to_json(), AUTH)
        assert status == 400 and "no route takes dataset" in answer["error"]
        assert await daemon.app.ledger.get_message("b-x") is None
        # one that got into the inbox anyway (an older replica's config) is rejected there
        await daemon.app.ledger.enqueue_message("stale", b'{"batch_id": "b-y"}')
        status, _ = await post(daemon, churn_batch(tmp_path, "b-good").to_json(), AUTH)
        assert status == 202

        settled = await daemon.wait_settled(2)
        stale = await daemon.app.ledger.get_message("stale")

    assert sorted((s.message_id, s.verb) for s in settled) == [
        ("b-good", "ack"),
        ("stale", "reject"),
    ]
    assert stale is not None and stale.state == "rejected"
    assert stale.reason is not None and "dataset: Field required" in stale.reason
    assert {r.idempotency_key for r in receiver.accepted} == chunk_keys("b-good", 2)


async def test_posting_needs_the_token_which_a_pubsub_push_may_pass_in_the_query(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=HTTP)
    message = churn_batch(tmp_path, "b-push")
    push = orjson.dumps(
        {
            "message": {
                "data": base64.b64encode(message.to_json()).decode(),
                "attributes": {"origin": "airflow"},
                "messageId": "136969346945",
            },
            "subscription": "projects/p/subscriptions/sender-push",
        }
    )

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        assert (await post(daemon, message.to_json()))[0] == 401
        assert (await post(daemon, message.to_json(), {"Authorization": "Bearer nope"}))[0] == 401
        assert (await post(daemon, push, query="?token=nope"))[0] == 401

        status, answer = await post(daemon, push, query=f"?token={TOKEN}")
        (settled,) = await daemon.wait_settled(1)

    assert (status, answer) == (202, {"accepted": "b-push"})
    assert (settled.batch_id, settled.verb) == ("b-push", "ack")
    assert {r.idempotency_key for r in receiver.accepted} == chunk_keys("b-push", 2)


async def test_publish_outside_the_daemon_posts_to_its_control_server(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=HTTP)

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        options = HttpTrigger.Options(type="http", url=url(daemon), token=TOKEN)
        async with HttpTrigger(
            "trigger", options
        ) as trigger:  # not bound: what `sender trigger` uses
            await trigger.publish(churn_batch(tmp_path, "b-cli"))
        (settled,) = await daemon.wait_settled(1)

    assert (settled.batch_id, settled.verb) == ("b-cli", "ack")


async def test_publish_from_the_config_posts_to_daemon_listen_with_the_daemon_token(
    tmp_path: Path, receiver: Receiver
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    config = write_daemon_config(
        tmp_path, receiver=receiver.url, trigger='type = "http"', listen=listen
    )
    config.write_text(
        config.read_text().replace("[daemon]\n", '[daemon]\ntoken = "daemon-token"\n')
    )

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        trigger = open_trigger(load_config(config))  # what `sender trigger` should use
        try:
            await trigger.publish(churn_batch(tmp_path, "b-cli"))
        finally:
            await trigger.aclose()
        (settled,) = await daemon.wait_settled(1)

    assert (settled.batch_id, settled.verb) == ("b-cli", "ack")


async def test_sigterm_mid_batch_exits_0_and_the_restart_sends_only_what_is_left(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def publish_with_the_cli(message: TriggerMessage, daemon: DaemonProcess) -> None:
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sender.cli",
            "trigger",
            message.uri,
            "--dataset",
            message.dataset,
            "--batch-id",
            message.batch_id,
            "-c",
            str(tmp_path / "sender.toml"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await cli.communicate()
        assert cli.returncode == 0, output.decode()

    async def inbox_row() -> tuple[str, str | None, int]:
        async with SqliteLedger(tmp_path / "ledger.db") as ledger:
            row = await ledger.get_message("b-term")
        assert row is not None
        return row.state, row.owner, row.deliveries

    async def given_back() -> None:
        assert await inbox_row() == ("pending", None, 1)  # released: claimable at once

    async def acked() -> None:
        state, _, deliveries = await inbox_row()
        assert (state, deliveries) == ("done", 2)

    await sigterm_mid_batch_then_resume(
        tmp_path,
        receiver,
        # `sender trigger` runs outside the daemon: it POSTs to the control server's URL
        trigger=lambda listen: f'{HTTP}\nurl = "http://{listen}/v1/batches"',
        publish=publish_with_the_cli,
        given_back=given_back,
        acked=acked,
    )
