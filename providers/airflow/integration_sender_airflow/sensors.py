"""``BatchSensor``: wait for a batch published some other way (the stock SQS or Pub/Sub
operators, ``sender trigger``) and return its reconciliation.

Deferrable by default: it hands the wait to ``BatchCompleteTrigger`` at once. With
``deferrable=False`` it pokes ``GET /v1/batches/{id}`` every ``poke_interval`` (``mode`` poke
or reschedule, as any sensor); there a batch the daemon does not know yet is simply not done,
and the sensor's ``timeout`` bounds the wait.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue

from .errors import IntegrationSenderError
from .hooks import IntegrationSenderHook
from .operators import seconds
from .outcome import is_settled, resolve, settled_event
from .triggers import BatchCompleteTrigger
from .watch import transient

__all__ = ["BatchSensor"]

_BACKSTOP_S = 300.0


class BatchSensor(BaseSensorOperator):
    """Succeeds once batch ``batch_id`` is complete; returns its reconciliation.

    :param batch_id: the batch to wait for (templated).
    :param sender_conn_id: an ``integration_sender`` connection.
    :param deferrable: wait in the triggerer (True) or poke from the worker (False).
    :param fail_on_dead_letters: fail when any record was dead-lettered.
    :param not_found_grace: (deferrable) how long the daemon may not know the batch before
        the sensor fails; None (the default) waits for the whole ``timeout``, since a message
        published to a queue may wait there behind others.
    :param poke_interval: seconds between polls (also the trigger's interval).
    :param timeout: how long to wait in all (BaseSensorOperator's ``timeout``).
    """

    template_fields: Sequence[str] = ("batch_id",)
    ui_color = "#d6ecf5"

    def __init__(
        self,
        *,
        batch_id: str,
        sender_conn_id: str = IntegrationSenderHook.default_conn_name,
        deferrable: bool = True,
        fail_on_dead_letters: bool = False,
        not_found_grace: timedelta | float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 10)
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.sender_conn_id = sender_conn_id
        self.deferrable = deferrable
        self.fail_on_dead_letters = fail_on_dead_letters
        self.not_found_grace = seconds(not_found_grace)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        self.defer(
            trigger=BatchCompleteTrigger(
                batch_id=self.batch_id,
                sender_conn_id=self.sender_conn_id,
                poll_interval=self.poke_interval,
                not_found_grace=self.not_found_grace,
                deadline=time.time() + self.timeout,
            ),
            method_name="execute_complete",
            timeout=self.timeout + _BACKSTOP_S,
        )

    def poke(self, context: Context) -> PokeReturnValue:
        try:
            batch = IntegrationSenderHook(self.sender_conn_id).get_batch(self.batch_id)
        except IntegrationSenderError as exc:
            if not transient(exc):
                raise
            self.log.warning("batch %s: %s; poking again", self.batch_id, exc)
            return PokeReturnValue(is_done=False)
        if batch is None or not is_settled(batch):
            self.log.info(
                "batch %s is %s", self.batch_id, batch.get("state") if batch else "not received"
            )
            return PokeReturnValue(is_done=False)
        result = resolve(settled_event(batch), fail_on_dead_letters=self.fail_on_dead_letters)
        return PokeReturnValue(is_done=True, xcom_value=result)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return resolve(event, fail_on_dead_letters=self.fail_on_dead_letters)
