"""``BatchCompleteTrigger``: waits in the triggerer until a batch is complete or failed.

It polls ``GET /v1/batches/{id}`` every ``poll_interval`` seconds with aiohttp and fires one
event (see ``outcome``): the batch settled (with its reconciliation), it stayed unknown
longer than the not-found grace, the token was refused, or ``deadline`` passed. The task
resumes in ``execute_complete``, which turns the event into a result or an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from .errors import IntegrationSenderError
from .hooks import IntegrationSenderHook
from .watch import BatchWatch

__all__ = ["BatchCompleteTrigger"]


class BatchCompleteTrigger(BaseTrigger):
    """Fires once batch ``batch_id`` has settled on the daemon behind ``sender_conn_id``.

    :param batch_id: the batch to wait for.
    :param sender_conn_id: an ``integration_sender`` connection.
    :param poll_interval: seconds between two polls.
    :param not_found_grace: seconds the daemon may not know the batch (its trigger message
        still queued) before the wait ends with *not_found*; None waits until ``deadline``.
    :param deadline: UNIX time at which the wait ends with *timeout*; None never.
    """

    def __init__(
        self,
        batch_id: str,
        sender_conn_id: str = IntegrationSenderHook.default_conn_name,
        poll_interval: float = 10.0,
        not_found_grace: float | None = 600.0,
        deadline: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's is unannotated
        self.batch_id = batch_id
        self.sender_conn_id = sender_conn_id
        self.poll_interval = float(poll_interval)
        self.not_found_grace = None if not_found_grace is None else float(not_found_grace)
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "batch_id": self.batch_id,
                "sender_conn_id": self.sender_conn_id,
                "poll_interval": self.poll_interval,
                "not_found_grace": self.not_found_grace,
                "deadline": self.deadline,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = IntegrationSenderHook(self.sender_conn_id)
        watch = BatchWatch(
            self.batch_id, not_found_grace_s=self.not_found_grace, deadline=self.deadline
        )
        while True:
            try:
                event = watch.seen(await hook.aget_batch(self.batch_id))
            except IntegrationSenderError as exc:
                event = watch.failed(exc)
            if event is not None:
                yield TriggerEvent(event)
                return
            self.log.debug("batch %s is %s; polling again", self.batch_id, watch.state)
            await asyncio.sleep(watch.pause_s(self.poll_interval))
