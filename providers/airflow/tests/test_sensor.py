"""``BatchSensor``: waiting for a batch that was published without the provider."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred
from conftest import Daemon, load_dag, sender_bin, write_batch

from integration_sender_airflow.errors import DeadLettersFound, TokenRejected
from integration_sender_airflow.hooks import IntegrationSenderHook
from integration_sender_airflow.sensors import BatchSensor
from integration_sender_airflow.triggers import BatchCompleteTrigger


def test_a_batch_published_by_sender_trigger_is_awaited_deferred_and_poking(
    daemon: Daemon, tmp_path: Path
) -> None:
    batch = write_batch(tmp_path / "b-sensed", 180)
    dag = load_dag("sender_batch_sensor")

    run = dag.test(
        run_conf={
            "sender": str(sender_bin()),
            "config": str(daemon.config),
            "uri": str(batch),
            "batch_id": "b-sensed",
        }
    )

    assert str(run.state) == "success"
    for task_id in ("wait_deferred", "wait_poking"):
        result = run.get_task_instance(task_id).xcom_pull(task_ids=task_id)
        assert (result["batch_id"], result["state"]) == ("b-sensed", "complete")
        assert (result["read"], result["delivered"]) == (180, 180)


def test_poking_is_not_done_while_the_daemon_has_no_such_batch(daemon: Daemon) -> None:
    sensor = BatchSensor(task_id="wait", batch_id="b-not-yet", deferrable=False)

    assert not sensor.poke({})


def test_poking_fails_on_dead_letters_when_asked_to(
    daemon_receiver_down: Daemon, tmp_path: Path
) -> None:
    message = {"batch_id": "b-sensed-dl", "dataset": "churn", "format": None, "routes": None}
    IntegrationSenderHook().post_batch({**message, "uri": str(write_batch(tmp_path / "b", 30))})
    sensor = BatchSensor(
        task_id="wait",
        batch_id="b-sensed-dl",
        deferrable=False,
        fail_on_dead_letters=True,
        poke_interval=0.05,
        timeout=30,
    )

    with pytest.raises(DeadLettersFound, match="30 records were dead-lettered"):
        sensor.execute({})


def test_deferred_it_waits_for_the_whole_timeout_unless_given_a_grace() -> None:
    sensor = BatchSensor(task_id="wait", batch_id="b1", timeout=3600, poke_interval=5)

    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})

    trigger = deferred.value.trigger
    assert isinstance(trigger, BatchCompleteTrigger)
    assert (trigger.batch_id, trigger.poll_interval, trigger.not_found_grace) == ("b1", 5, None)


def test_poking_an_unreachable_daemon_is_not_done_but_a_wrong_token_fails(
    own_daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    sensor = BatchSensor(task_id="wait", batch_id="b-any", deferrable=False)
    monkeypatch.setenv("AIRFLOW_CONN_INTEGRATION_SENDER_DEFAULT", own_daemon.connection("wrong"))
    with pytest.raises(TokenRejected):
        sensor.poke({})

    own_daemon.process.terminate()
    own_daemon.process.wait(timeout=30)

    assert not sensor.poke({})  # a restarting daemon is waited for
