"""``SendBatchOperator``: a DAG's ``start_sender`` step, from trigger to reconciliation.

It posts the trigger message to ``POST /v1/batches`` (202: stored durably in the daemon's
ledger), then waits until the batch is complete or failed: deferred to
``BatchCompleteTrigger`` (the default, no worker slot held), or polling in the worker with
``deferrable=False``. The task returns the reconciliation (XCom ``return_value``), and fails
when the batch failed, when records were dead-lettered and ``fail_on_dead_letters`` is set,
or when the batch has not settled within ``timeout``.

Use a deterministic ``batch_id`` (``churn-{{ ds }}``): an Airflow retry then posts the same
batch again, and the daemon, finding it complete, sends nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context

from .errors import IntegrationSenderError
from .hooks import IntegrationSenderHook
from .outcome import resolve
from .triggers import BatchCompleteTrigger
from .watch import BatchWatch

__all__ = ["SendBatchOperator", "seconds"]

# the triggerer's own timeout is a backstop only: the trigger fires a timeout event with the
# batch's last state at the deadline, which says more than Airflow's TaskDeferralTimeout
_BACKSTOP_S = 300.0


def seconds(value: timedelta | float | None) -> float | None:
    """A duration given as ``timedelta`` or seconds, in seconds."""
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def wait_in_worker(
    hook: IntegrationSenderHook, watch: BatchWatch, poll_interval_s: float
) -> dict[str, Any]:
    """The trigger's loop, synchronous: for ``deferrable=False`` and nothing else."""
    while True:
        try:
            event = watch.seen(hook.get_batch(watch.batch_id))
        except IntegrationSenderError as exc:
            event = watch.failed(exc)
        if event is not None:
            return event
        hook.log.info("batch %s is %s; polling again", watch.batch_id, watch.state)
        time.sleep(watch.pause_s(poll_interval_s))


class SendBatchOperator(BaseOperator):
    """Have integration-sender deliver one batch and wait for its reconciliation.

    :param batch_id: the batch id (templated); deterministic per logical run.
    :param dataset: the dataset the daemon's routes match.
    :param uri: the batch's folder or object (templated): ``s3://``, ``gs://``, a path.
    :param format: ``jsonl``, ``csv`` or ``parquet``; None detects from the file names.
    :param routes: only these routes; None all that match the dataset.
    :param sender_conn_id: an ``integration_sender`` connection.
    :param deferrable: wait in the triggerer (True) or in the worker (False).
    :param poll_interval: seconds (or a timedelta) between two polls of the batch.
    :param timeout: how long the batch may take, from the post, before the task fails.
    :param fail_on_dead_letters: fail the task when any record was dead-lettered.
    :param not_found_grace: how long the daemon may not know the batch yet (the message
        queued behind running batches) before the task fails; None waits until ``timeout``.
    :param expected_records: records the batch should hold; the daemon logs a mismatch.
    """

    template_fields: Sequence[str] = ("batch_id", "uri")
    ui_color = "#d6ecf5"

    def __init__(
        self,
        *,
        batch_id: str,
        dataset: str,
        uri: str,
        format: str | None = None,
        routes: Sequence[str] | None = None,
        sender_conn_id: str = IntegrationSenderHook.default_conn_name,
        deferrable: bool = True,
        poll_interval: timedelta | float = 10,
        timeout: timedelta | float = timedelta(hours=6),
        fail_on_dead_letters: bool = False,
        not_found_grace: timedelta | float | None = timedelta(minutes=10),
        expected_records: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.dataset = dataset
        self.uri = uri
        self.format = format
        self.routes = list(routes) if routes is not None else None
        self.sender_conn_id = sender_conn_id
        self.deferrable = deferrable
        self.poll_interval = seconds(poll_interval) or 0.0
        self.timeout = seconds(timeout)
        self.fail_on_dead_letters = fail_on_dead_letters
        self.not_found_grace = seconds(not_found_grace)
        self.expected_records = expected_records

    def trigger_message(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/batches`` (DESIGN.md "Trigger message")."""
        message: dict[str, Any] = {
            "batch_id": self.batch_id,
            "dataset": self.dataset,
            "uri": self.uri,
            "format": self.format,
            "routes": self.routes,
        }
        if self.expected_records is not None:
            message["expected_records"] = self.expected_records
        return message

    def execute(self, context: Context) -> dict[str, Any]:
        hook = IntegrationSenderHook(self.sender_conn_id)
        accepted = hook.post_batch(self.trigger_message())
        self.log.info(
            "integration-sender accepted batch %s (%s at %s)", accepted, self.dataset, self.uri
        )
        deadline = time.time() + self.timeout if self.timeout is not None else None
        if self.deferrable:
            self.defer(
                trigger=BatchCompleteTrigger(
                    batch_id=self.batch_id,
                    sender_conn_id=self.sender_conn_id,
                    poll_interval=self.poll_interval,
                    not_found_grace=self.not_found_grace,
                    deadline=deadline,
                ),
                method_name="execute_complete",
                timeout=None if self.timeout is None else self.timeout + _BACKSTOP_S,
            )
        watch = BatchWatch(self.batch_id, not_found_grace_s=self.not_found_grace, deadline=deadline)
        return self.execute_complete(context, wait_in_worker(hook, watch, self.poll_interval))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """The batch's reconciliation, or the error that fails the task."""
        result = resolve(event, fail_on_dead_letters=self.fail_on_dead_letters)
        self.log.info(
            "integration-sender batch %s %s: read %s, delivered %s, dead-lettered %s, rejected %s",
            result["batch_id"],
            result["state"],
            result.get("read"),
            result.get("delivered"),
            result.get("dead_lettered"),
            result.get("rejected"),
        )
        return result
