"""The example DAG, run with ``dag.test()`` against a real ``sender run`` daemon."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, load_dag, write_batch

from integration_sender_airflow.operators import SendBatchOperator

DAY = datetime(2026, 11, 24, tzinfo=timezone.utc)


def write_domain_batches(lake: Path, records: dict[str, int]) -> None:
    for domain, count in records.items():
        write_batch(lake / "churn" / DAY.date().isoformat() / domain, count)


def run_example(lake: Path, day: datetime = DAY) -> tuple[Any, Any]:
    dag = load_dag("churn_scores")
    for task in dag.tasks:  # poll a daemon on loopback faster than a production one
        if isinstance(task, SendBatchOperator):
            task.poll_interval = 0.2
    run = dag.test(logical_date=day, run_conf={"lake": str(lake)})
    return dag, run


def states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_the_dag_has_the_pipeline_shape_with_a_send_per_domain() -> None:
    dag = load_dag("churn_scores")

    def downstream(task_id: str) -> set[str]:
        return set(dag.get_task(task_id).downstream_task_ids)

    assert downstream("predict") == {"stop_cluster", "check_integrity"}
    for domain in ("retail", "business"):
        start = f"{domain}.start_sender"
        assert isinstance(dag.get_task(start), SendBatchOperator)
        assert set(dag.get_task(start).upstream_task_ids) == {"stop_cluster", "check_integrity"}
        assert downstream(start) == {f"{domain}.persist"}
        assert downstream(f"{domain}.persist") == {f"{domain}.index"}
        assert downstream(f"{domain}.index") == {f"{domain}.stop_sender"}


def test_each_domain_is_delivered_and_its_reconciliation_reaches_xcom(
    daemon: Daemon, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    write_domain_batches(lake, {"retail": 250, "business": 120})

    _, run = run_example(lake)

    assert str(run.state) == "success", states(run)
    retail = run.get_task_instance("retail.start_sender").xcom_pull(task_ids="retail.start_sender")
    assert retail["batch_id"] == "churn-retail-20261124"
    assert retail["state"] == "complete"
    assert (retail["read"], retail["delivered"], retail["dead_lettered"]) == (250, 250, 0)
    assert retail["routes"]["churn"]["delivered"] == 250
    persisted = run.get_task_instance("business.persist").xcom_pull(task_ids="business.persist")
    assert persisted == {
        "domain": "business",
        "batch_id": "churn-business-20261124",
        "read": 120,
        "delivered": 120,
        "dead_lettered": 0,
    }
    assert daemon.delivered_records("churn-retail-20261124") == 250
    assert daemon.delivered_records("churn-business-20261124") == 120


def test_dead_letters_fail_start_sender_and_nothing_downstream_runs(
    daemon_receiver_down: Daemon, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    write_domain_batches(lake, {"retail": 250, "business": 120})

    _, run = run_example(lake)

    assert str(run.state) == "failed"
    got = states(run)
    assert got["retail.start_sender"] == "failed"
    assert got["retail.persist"] == "upstream_failed"
    assert got["business.stop_sender"] == "upstream_failed"
    # the task log says what went wrong, with the counts
    log = capfd.readouterr().out
    assert "DeadLettersFound" in log
    assert "batch churn-retail-20261124 is complete but 250 records were dead-lettered" in log
