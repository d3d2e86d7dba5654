"""Daily churn scores, delivered per customer domain by integration-sender.

    start_cluster >> build_features >> predict >> [stop_cluster, check_integrity]
        >> <domain>.start_sender >> <domain>.persist >> <domain>.index >> <domain>.stop_sender

``start_sender`` is a ``SendBatchOperator``: it posts the domain's batch to the daemon
(connection ``integration_sender_default``), waits deferred until the batch is delivered,
and returns its reconciliation, which ``persist`` and ``index`` read from XCom. With
``fail_on_dead_letters=True`` a domain whose records went to the dead-letter store fails at
``start_sender``, so nothing downstream indexes a partial delivery; on-call replays it with
``sender replay <batch_id>`` and clears the task.

The scores land under ``{{ params.lake }}/churn/{{ ds }}/<domain>/``, one Spark-style folder
per domain; the batch id ``churn-<domain>-{{ ds_nodash }}`` is the same on every retry of a
run, so the sender never delivers a batch twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, TaskGroup

from integration_sender_airflow.operators import SendBatchOperator

DOMAINS = ("retail", "business")


def check_integrity(**context: Any) -> None:
    """Stand-in for the pipeline's own checks of the scored output (row counts, nulls)."""


def persist_reconciliation(domain: str, ti: Any, **context: Any) -> dict[str, Any]:
    """What the pipeline keeps of a delivery: the sender's reconciliation, from XCom."""
    result = ti.xcom_pull(task_ids=f"{domain}.start_sender")
    return {
        "domain": domain,
        "batch_id": result["batch_id"],
        "read": result["read"],
        "delivered": result["delivered"],
        "dead_lettered": result["dead_lettered"],
    }


with DAG(
    dag_id="churn_scores",
    schedule="@daily",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    default_args={"retries": 0},
    params={"lake": "s3://lake"},
    tags=["integration-sender", "example"],
) as dag:
    start_cluster = EmptyOperator(task_id="start_cluster")
    build_features = EmptyOperator(task_id="build_features")
    predict = EmptyOperator(task_id="predict")
    stop_cluster = EmptyOperator(task_id="stop_cluster")
    integrity = PythonOperator(task_id="check_integrity", python_callable=check_integrity)

    start_cluster >> build_features >> predict >> [stop_cluster, integrity]

    for domain in DOMAINS:
        with TaskGroup(group_id=domain):
            start_sender = SendBatchOperator(
                task_id="start_sender",
                batch_id=f"churn-{domain}-{{{{ ds_nodash }}}}",
                dataset="churn",
                uri=f"{{{{ params.lake }}}}/churn/{{{{ ds }}}}/{domain}/",
                format="jsonl",
                fail_on_dead_letters=True,
                poll_interval=10,
                timeout=timedelta(hours=6),
            )
            persist = PythonOperator(
                task_id="persist",
                python_callable=persist_reconciliation,
                op_kwargs={"domain": domain},
            )
            index = EmptyOperator(task_id="index")
            stop_sender = EmptyOperator(task_id="stop_sender")
            [stop_cluster, integrity] >> start_sender
            start_sender >> persist >> index >> stop_sender
