"""``SendBatchOperator`` against a real daemon: the worker-side wait (``deferrable=False``),
the errors that fail a task, and what it defers with."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from conftest import Daemon, write_batch

from integration_sender_airflow.errors import (
    BatchFailed,
    BatchNotFound,
    BatchTimeout,
    ControlServerError,
    DeadLettersFound,
    TokenRejected,
    TriggerRejected,
)
from integration_sender_airflow.hooks import IntegrationSenderHook
from integration_sender_airflow.operators import SendBatchOperator, wait_in_worker
from integration_sender_airflow.triggers import BatchCompleteTrigger
from integration_sender_airflow.watch import BatchWatch


def send(batch_id: str, uri: Path | str, **kwargs: Any) -> SendBatchOperator:
    kwargs.setdefault("dataset", "churn")
    kwargs.setdefault("deferrable", False)
    kwargs.setdefault("poll_interval", 0.05)
    return SendBatchOperator(task_id=f"send_{batch_id}", batch_id=batch_id, uri=str(uri), **kwargs)


def test_in_the_worker_it_returns_the_reconciliation(daemon: Daemon, tmp_path: Path) -> None:
    result = send("b-ok", write_batch(tmp_path / "b-ok", 250)).execute({})

    assert (result["batch_id"], result["state"]) == ("b-ok", "complete")
    assert (result["read"], result["delivered"], result["dead_lettered"]) == (250, 250, 0)
    assert list(result["routes"]) == ["churn"]
    churn = result["routes"]["churn"]
    assert (churn["read"], churn["delivered"], churn["dead_lettered"], churn["chunks"]) == (
        250,
        250,
        0,
        3,
    )
    assert daemon.delivered_records("b-ok") == 250


def test_a_retry_of_the_task_sends_nothing_twice(daemon: Daemon, tmp_path: Path) -> None:
    batch = write_batch(tmp_path / "b-retry", 120)
    first = send("b-retry", batch).execute({})

    again = send("b-retry", batch).execute({})  # an Airflow retry posts the same batch id

    assert again["records"] == first["records"]
    assert daemon.delivered_records("b-retry") == 120


def test_dead_letters_are_reported_and_pass_without_fail_on_dead_letters(
    daemon_receiver_down: Daemon, tmp_path: Path
) -> None:
    result = send("b-dl-pass", write_batch(tmp_path / "b", 150)).execute({})

    assert (result["delivered"], result["dead_lettered"], result["dead_letter_chunks"]) == (
        0,
        150,
        2,
    )


def test_dead_letters_fail_the_task_naming_the_counts_with_fail_on_dead_letters(
    daemon_receiver_down: Daemon, tmp_path: Path
) -> None:
    operator = send("b-dl-fail", write_batch(tmp_path / "b", 150), fail_on_dead_letters=True)

    with pytest.raises(DeadLettersFound) as failed:
        operator.execute({})

    message = str(failed.value)
    assert "150 records were dead-lettered in 2 chunks" in message
    assert "route churn: 150" in message
    assert "read 150, delivered 0, dead-lettered 150, rejected 0" in message
    assert str(daemon_receiver_down.folder / "dead") in message  # where on-call looks
    assert failed.value.batch["dead_lettered"] == 150


def test_a_failed_batch_fails_the_task_with_the_daemons_reason(
    daemon: Daemon, tmp_path: Path
) -> None:
    with pytest.raises(BatchFailed, match=r"batch b-gone failed: .*no such file or directory"):
        send("b-gone", tmp_path / "never-written").execute({})


def test_a_wrong_token_fails_at_once_and_says_which_connection(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_INTEGRATION_SENDER_DEFAULT", daemon.connection("wrong"))

    with pytest.raises(TokenRejected) as refused:
        send("b-tok", write_batch(tmp_path / "b-tok", 10)).execute({})

    assert isinstance(refused.value, AirflowFailException)  # no Airflow retry: it cannot help
    assert refused.value.status == 401
    assert "integration_sender_default" in str(refused.value)
    assert "password" in str(refused.value)


def test_no_token_is_refused_too(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_INTEGRATION_SENDER_DEFAULT", daemon.connection(None))

    with pytest.raises(TokenRejected, match="sent no token"):
        send("b-tok", write_batch(tmp_path / "b-tok", 10)).execute({})


def test_an_invalid_trigger_message_fails_with_the_daemons_reason(
    daemon: Daemon, tmp_path: Path
) -> None:
    operator = send("b-bad", write_batch(tmp_path / "b", 10), dataset="no_route")

    with pytest.raises(TriggerRejected) as rejected:
        operator.execute({})

    assert isinstance(rejected.value, AirflowFailException)  # the same message fails again
    assert rejected.value.reason == "no route takes dataset 'no_route'"
    assert "batch b-bad" in str(rejected.value)


def test_an_unreachable_daemon_fails_the_post(own_daemon: Daemon, tmp_path: Path) -> None:
    own_daemon.process.terminate()
    own_daemon.process.wait(timeout=30)

    with pytest.raises(ControlServerError, match="cannot reach the control server"):
        send("b-down", write_batch(tmp_path / "b-down", 10)).execute({})


# after a 202 the operator waits exactly as wait_in_worker does: here for batches this
# daemon never heard of


def test_a_batch_unknown_after_the_grace_fails_the_task(daemon: Daemon) -> None:
    watch = BatchWatch("b-unknown", not_found_grace_s=0.3, deadline=None)

    event = wait_in_worker(IntegrationSenderHook(), watch, poll_interval_s=0.05)

    with pytest.raises(BatchNotFound, match="no batch b-unknown after waiting 0s"):
        send("b-unknown", "/x").execute_complete({}, event)


def test_a_batch_not_settled_in_time_fails_the_task(daemon: Daemon) -> None:
    watch = BatchWatch("b-unknown", not_found_grace_s=None, deadline=time.time() + 0.3)

    event = wait_in_worker(IntegrationSenderHook(), watch, poll_interval_s=0.05)

    with pytest.raises(BatchTimeout, match=r"did not settle within 0s \(never seen"):
        send("b-unknown", "/x").execute_complete({}, event)


def test_deferrable_posts_then_defers_to_the_trigger_until_the_timeout(
    daemon: Daemon, tmp_path: Path
) -> None:
    operator = send(
        "b-defer",
        write_batch(tmp_path / "b-defer", 10),
        deferrable=True,
        poll_interval=3,
        timeout=timedelta(hours=2),
    )

    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({})

    trigger = deferred.value.trigger
    assert isinstance(trigger, BatchCompleteTrigger)
    assert (trigger.batch_id, trigger.poll_interval) == ("b-defer", 3.0)
    assert trigger.deadline is not None
    assert before + 7200 <= trigger.deadline <= time.time() + 7200
    assert deferred.value.method_name == "execute_complete"


def test_the_trigger_message_is_the_documented_json() -> None:
    operator = SendBatchOperator(
        task_id="t",
        batch_id="churn-2026-11-24",
        dataset="churn",
        uri="s3://lake/churn/2026-11-24/",
        format="parquet",
        routes=["churn_to_crm"],
    )

    assert operator.trigger_message() == {
        "batch_id": "churn-2026-11-24",
        "dataset": "churn",
        "uri": "s3://lake/churn/2026-11-24/",
        "format": "parquet",
        "routes": ["churn_to_crm"],
    }
    assert set(SendBatchOperator.template_fields) == {"batch_id", "uri"}
    assert operator.deferrable is True
    assert operator.timeout == 6 * 3600
    assert operator.fail_on_dead_letters is False
