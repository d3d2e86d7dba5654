"""A DAG that publishes a batch without the provider (``sender trigger`` from a BashOperator,
as a DAG using the stock SQS or Pub/Sub operators would) and waits for it with
``BatchSensor``, once deferred and once poking from the worker."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

from integration_sender_airflow.sensors import BatchSensor

with DAG(
    dag_id="sender_batch_sensor",
    schedule=None,
    start_date=datetime(2026, 11, 1),
    params={"sender": "sender", "config": "sender.toml", "uri": "", "batch_id": ""},
) as dag:
    publish = BashOperator(
        task_id="publish",
        bash_command=(
            "{{ params.sender }} trigger {{ params.uri }} --dataset churn "
            "--batch-id {{ params.batch_id }} -c {{ params.config }}"
        ),
    )
    deferred = BatchSensor(
        task_id="wait_deferred", batch_id="{{ params.batch_id }}", poke_interval=0.2, timeout=60
    )
    poking = BatchSensor(
        task_id="wait_poking",
        batch_id="{{ params.batch_id }}",
        deferrable=False,
        poke_interval=0.2,
        timeout=60,
    )
    publish >> [deferred, poking]
