"""Settling trigger messages for the daemon: every copy of a batch's message acked, rejected
or released together, the leases on them kept while the batch runs, and a record of the
latest settlements (for tests and embedding: ``Daemon.wait_settled``).

A settlement that fails (the broker went away) is logged, not raised: the broker then
redelivers the message, and the ledger makes the redelivery harmless.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from .errors import SenderError
from .log import get_logger
from .metrics import Metrics
from .model import TriggerMessage
from .ports import Envelope

__all__ = ["RunningBatch", "Settlement", "Settlements", "Verb", "run_key"]

log = get_logger("sender.daemon")

Verb = Literal["ack", "reject", "release"]

_SETTLED = {"ack": "acked", "reject": "rejected", "release": "released"}


@dataclass(frozen=True, slots=True)
class Settlement:
    """How the daemon settled one message (kept in ``Daemon.settled``, in order)."""

    message_id: str
    batch_id: str | None  # None for a message that was not a valid trigger
    verb: Verb
    ok: bool  # False when the broker refused it (it redelivers the message then)


def run_key(message: TriggerMessage) -> str:
    """What runs once at a time here: a batch, or one shard of it (``sender.shards``): the
    shards of a batch run side by side, copies of one message wait for the first."""
    return message.batch_id if message.shard is None else f"{message.batch_id}/{message.shard}"


@dataclass(eq=False)
class RunningBatch:
    """A batch (or a shard) running here, with every copy of its trigger message taken
    meanwhile."""

    message: TriggerMessage
    envelopes: list[Envelope] = field(default_factory=list)

    @property
    def key(self) -> str:
        return run_key(self.message)


class Settlements:
    """Settles messages and remembers the latest 1000 settlements (bounded: the daemon runs
    for months); ``total`` counts them all."""

    def __init__(self, metrics: Metrics, *, lease_s: float) -> None:
        self.metrics = metrics
        self.lease_s = lease_s
        self.latest: deque[Settlement] = deque(maxlen=1000)
        self.total = 0
        self._changed = asyncio.Condition()

    async def wait(self, count: int = 1) -> list[Settlement]:
        """Wait until at least ``count`` messages were settled; the latest settlements,
        oldest first."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.total >= count)
        return list(self.latest)

    async def settle_all(self, running: RunningBatch, verb: Verb, reason: str = "") -> None:
        """Settle every copy of the batch's message the same way."""
        for envelope in running.envelopes:
            await self.settle(envelope, verb, reason, running.message.batch_id)

    async def settle(
        self, envelope: Envelope, verb: Verb, reason: str = "", batch_id: str | None = None
    ) -> None:
        """Settle one message; a failure is logged (see the module docstring)."""
        ok = True
        try:
            if verb == "ack":
                await envelope.ack()
            elif verb == "reject":
                await envelope.reject(reason)
            else:
                await envelope.release()
        except Exception as exc:
            ok = False
            log.warning(
                "trigger.settle_failed", message_id=envelope.message_id, verb=verb, error=str(exc)
            )
        if ok:
            self.metrics.trigger_message(_SETTLED[verb])
        async with self._changed:
            self.latest.append(Settlement(envelope.message_id, batch_id, verb, ok))
            self.total += 1
            self._changed.notify_all()

    async def keep_leases(self, running: RunningBatch) -> None:
        """Extend the lease on every copy of the batch's message, a third of a lease apart,
        until cancelled (the batch is settled)."""
        while True:
            await asyncio.sleep(max(0.5, self.lease_s / 3))
            for envelope in list(running.envelopes):
                try:
                    await envelope.extend(self.lease_s)
                except SenderError as exc:
                    log.warning(
                        "trigger.extend_failed", message_id=envelope.message_id, error=str(exc)
                    )
