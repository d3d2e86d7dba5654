"""``BatchCompleteTrigger.run()`` driven directly against a real daemon's control server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, write_batch

from integration_sender_airflow.hooks import IntegrationSenderHook
from integration_sender_airflow.triggers import BatchCompleteTrigger


def post(daemon: Daemon, batch_id: str, uri: Path | str, dataset: str = "churn") -> None:
    message = {"batch_id": batch_id, "dataset": dataset, "uri": str(uri)}
    IntegrationSenderHook().post_batch({**message, "format": None, "routes": None})


async def first_event(trigger: BatchCompleteTrigger) -> dict[str, Any]:
    events = trigger.run()
    async with asyncio.timeout(30):
        event = await anext(events)
    await events.aclose()
    payload: dict[str, Any] = event.payload
    return payload


def waiting_for(batch_id: str, **kwargs: Any) -> BatchCompleteTrigger:
    return BatchCompleteTrigger(batch_id=batch_id, poll_interval=0.05, **kwargs)


async def test_fires_once_the_batch_is_complete_with_its_reconciliation(
    daemon: Daemon, tmp_path: Path
) -> None:
    post(daemon, "b-done", write_batch(tmp_path / "lake" / "b-done", 250))

    event = await first_event(waiting_for("b-done"))

    assert event["status"] == "settled"
    batch = event["batch"]
    assert (batch["batch_id"], batch["state"], batch["reconciled"]) == ("b-done", "complete", True)
    # the daemon may report more counts (unchanged, tombstones): those are passed on too
    assert (
        batch["records"].items()
        >= {
            "read": 250,
            "delivered": 250,
            "dead_lettered": 0,
            "rejected": 0,
            "chunks": 3,
        }.items()
    )
    assert batch["routes"]["churn"]["delivered"] == 250
    assert batch["dead_letters"] == []


async def test_a_failed_batch_fires_with_the_daemons_reason(daemon: Daemon, tmp_path: Path) -> None:
    post(daemon, "b-missing", tmp_path / "lake" / "not-written")

    event = await first_event(waiting_for("b-missing"))

    assert event["status"] == "settled"
    assert event["batch"]["state"] == "failed"
    assert "no such file or directory" in event["batch"]["error"]


async def test_dead_letters_come_with_their_locations(
    daemon_receiver_down: Daemon, tmp_path: Path
) -> None:
    post(daemon_receiver_down, "b-dead", write_batch(tmp_path / "lake" / "b-dead", 150))

    event = await first_event(waiting_for("b-dead"))

    batch = event["batch"]
    assert (batch["state"], batch["delivered"], batch["dead_lettered"]) == ("complete", 0, 150)
    assert batch["dead_letter_chunks"] == 2
    locations = [Path(dead["location"]) for dead in batch["dead_letters"]]
    assert all(dead["error"].startswith("crm_down: ") for dead in batch["dead_letters"])
    assert await asyncio.to_thread(lambda: all(p.is_file() for p in locations))


async def test_an_unknown_batch_is_waited_for_during_the_grace_then_reported(
    daemon: Daemon,
) -> None:
    started = time.monotonic()

    event = await first_event(waiting_for("b-never-sent", not_found_grace=0.5))

    assert event["status"] == "not_found"
    assert event["batch_id"] == "b-never-sent"
    assert time.monotonic() - started >= 0.5


async def test_a_batch_that_arrives_within_the_grace_is_followed_to_the_end(
    daemon: Daemon, tmp_path: Path
) -> None:
    events = waiting_for("b-late", not_found_grace=30).run()
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.3)  # several polls answered 404 before the trigger is posted
    assert not first.done()

    await asyncio.to_thread(post, daemon, "b-late", write_batch(tmp_path / "lake" / "b-late", 10))
    async with asyncio.timeout(30):
        event = await first
    await events.aclose()

    assert (event.payload["status"], event.payload["batch"]["delivered"]) == ("settled", 10)


async def test_a_wrong_token_fires_an_error_at_once(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_INTEGRATION_SENDER_DEFAULT", daemon.connection("wrong"))

    event = await first_event(waiting_for("b-any", not_found_grace=None))

    assert event["status"] == "error"
    assert event["token_rejected"] is True
    assert "HTTP 401" in event["message"]
    assert "integration_sender_default" in event["message"]


async def test_an_unreachable_server_is_polled_until_the_deadline(own_daemon: Daemon) -> None:
    own_daemon.process.terminate()
    own_daemon.process.wait(timeout=30)

    event = await first_event(waiting_for("b-any", deadline=time.time() + 0.5))

    assert event["status"] == "timeout"
    assert event["state"] is None  # never seen


def test_serializes_to_what_rebuilds_it() -> None:
    trigger = BatchCompleteTrigger(
        batch_id="b1", sender_conn_id="c", poll_interval=5, not_found_grace=None, deadline=1e9
    )

    path, kwargs = trigger.serialize()

    assert path == "integration_sender_airflow.triggers.BatchCompleteTrigger"
    assert BatchCompleteTrigger(**kwargs).serialize() == (path, kwargs)
    assert kwargs == {
        "batch_id": "b1",
        "sender_conn_id": "c",
        "poll_interval": 5.0,
        "not_found_grace": None,
        "deadline": 1e9,
    }
