"""Delivers the completion events waiting in the ledger's outbox (``sender.events`` writes
them), each through its destination with that destination's retry policy.

``OutboxPump.run`` is the daemon's background task: it claims due events (leased, so that
replicas sharing a PostgreSQL ledger never send one event at once, and one whose owner was
killed is claimed again when its lease ends), sends each, and settles it: delivered, or kept
with its error and a next attempt after a backoff that grows with its attempts, however long
the receiver stays down. It has its own task, so an event never holds up the next batch.
``sender send`` and ``sender replay`` call ``deliver_due`` once before they exit; what fails
there stays in the outbox for the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .config import AppConfig
from .errors import SenderError
from .events import event_chunk, notify_destinations
from .ledger_ports import Ledger, Outbox, OutboxEvent
from .log import get_logger
from .retry import is_testing
from .targets import Target

__all__ = [
    "OutboxPump",
    "backoff_s",
    "deliver_pending",
    "delivering",
    "describe_pending",
    "pump_for",
]

log = get_logger("sender.outbox")

_BACKOFF_S = (5.0, 15.0, 60.0, 300.0)  # then every 5 minutes, for as long as it takes


def backoff_s(attempts: int) -> float:
    """Seconds before the next attempt of an event that failed ``attempts`` times (zero in
    the retry module's test mode)."""
    if is_testing():
        return 0.0
    return _BACKOFF_S[min(max(attempts, 1), len(_BACKOFF_S)) - 1]


def pending_json(event: OutboxEvent) -> dict[str, Any]:
    """An event waiting in the outbox, as ``sender status --json`` shows it."""
    return {
        "id": event.event_id,
        "type": event.type,
        "batch_id": event.batch_id,
        "destination": event.destination,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "next_attempt_at": event.next_attempt_at.isoformat() if event.next_attempt_at else None,
    }


def describe_pending(pending: list[OutboxEvent]) -> str | None:
    """One line for ``/readyz`` and ``sender status``: how many events wait, for whom, and
    the latest error; None when none waits."""
    if not pending:
        return None
    by_destination: dict[str, int] = {}
    for event in pending:
        by_destination[event.destination] = by_destination.get(event.destination, 0) + 1
    where = ", ".join(f"{n} for {name}" for name, n in sorted(by_destination.items()))
    errors = [e for e in pending if e.last_error]
    line = f"events: {len(pending)} waiting ({where})"
    if errors:
        worst = max(errors, key=lambda e: e.attempts)
        line += f"; {worst.attempts} attempts, last error: {worst.last_error}"
    return line


class OutboxPump:
    """Sends the outbox's due events (see module). ``poll_s``: how often it looks when idle
    (``wake()`` makes it look at once)."""

    def __init__(
        self,
        outbox: Outbox,
        targets: Mapping[str, Target],
        *,
        owner: str,
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        limit: int = 50,
    ) -> None:
        self.outbox = outbox
        self.targets = targets
        self.owner = owner
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.limit = limit
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def deliver_due(self) -> int:
        """Claim and send the due events once; return how many were delivered."""
        events = await self.outbox.claim_events(self.owner, self.limit, self.lease_s)
        if not events:
            return 0
        sent = await asyncio.gather(*(self._send(event) for event in events))
        return sum(sent)

    async def _send(self, event: OutboxEvent) -> bool:
        target = self.targets.get(event.destination)
        error: str | None
        if target is None:
            error = f"no destination {event.destination!r} in this config"
        else:
            try:
                await target.send(event_chunk(event), event_id=event.event_id, type=event.type)
            except SenderError as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug in a plug-in: the event stays, logged
                error = f"{type(exc).__name__}: {exc}"
                log.error("events.send_crashed", destination=event.destination, exc_info=True)
            else:
                error = None
        retry_in = backoff_s(event.attempts + 1)
        await self.outbox.settle_event(
            event.event_id, event.destination, error=error, retry_in_s=retry_in
        )
        if error is None:
            log.info(
                "events.delivered",
                batch_id=event.batch_id,
                type=event.type,
                destination=event.destination,
                event_id=event.event_id,
            )
            return True
        log.warning(
            "events.undelivered",
            batch_id=event.batch_id,
            destination=event.destination,
            attempts=event.attempts + 1,
            retry_in_s=retry_in,
            error=error,
        )
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due events until ``stop`` is set; a failing ledger is logged and tried
        again at the next poll."""
        while not stop.is_set():
            delivered = 0
            try:
                delivered = await self.deliver_due()
            except SenderError as exc:
                log.warning("events.outbox_unreachable", error=str(exc))
            except Exception:  # a bug: logged, and the events stay for the next round
                log.error("events.pump_crashed", exc_info=True)
            if delivered:
                continue  # there may be more due now
            self._wake.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await wait


def pump_for(
    config: AppConfig, ledger: Ledger, targets: Mapping[str, Target], *, owner: str
) -> OutboxPump | None:
    """The pump of this config's events; None when nobody is notified or the ledger keeps
    no outbox (``sender.events`` then writes none either)."""
    if not isinstance(ledger, Outbox) or not notify_destinations(config, config.routes):
        return None
    return OutboxPump(ledger, targets, owner=owner, lease_s=config.daemon.lease_s)


@contextlib.asynccontextmanager
async def delivering(pump: OutboxPump | None) -> AsyncIterator[None]:
    """Run ``pump`` in a task of its own while the body runs; on exit it is cancelled (an
    event it was sending stays in the outbox, claimed again when its lease ends)."""
    if pump is None:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(pump.run(stop), name="outbox")
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def deliver_pending(
    config: AppConfig, ledger: Ledger, targets: Mapping[str, Target], *, owner: str
) -> None:
    """One pass over the due events, for ``sender send`` and ``sender replay`` before they
    exit: what cannot be delivered now stays in the outbox, for a daemon or the next run."""
    pump = pump_for(config, ledger, targets, owner=owner)
    if pump is not None:
        with contextlib.suppress(SenderError):
            await pump.deliver_due()
