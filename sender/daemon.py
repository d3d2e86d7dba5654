"""The daemon loop (``sender run``): take trigger messages, run batches, settle messages.

- At most ``max_batches`` batches run at once; the next message is taken only when a slot is
  free, so a message waits in its queue, not in our memory.
- A message is acked only once its batch is complete in the ledger; an invalid one (not a
  trigger message, unknown dataset or route) is rejected with the reason logged and never
  holds a slot; a duplicate of a complete batch is acked without sending.
- A duplicate of a batch that is running here is not started again: it waits beside the
  first copy (its lease kept too) and is settled like it when the batch ends — acked when
  complete, released when not. After a broker reconnect the "duplicate" is often the very
  message whose first delivery can no longer be acked, so acking it early could lose it.
- A trigger that loses its broker reconnects by itself while ``connected`` is False
  (``/readyz`` answers 503); if its message stream fails anyway, the daemon opens it again
  with backoff.
- SIGTERM/SIGINT (unless ``run(handle_signals=False)`` leaves signals to the host, which
  calls ``request_stop``): stop taking messages, let chunks in flight finish within
  ``shutdown_grace``, record them, release unfinished messages for redelivery, exit 0. A
  second signal stops waiting for the grace period: what is in flight is cancelled (and
  recorded, and its messages released), exit code 1.

``sender.service`` builds a daemon from a config (``open_daemon``) and runs it (``serve``,
which is ``sender run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from .app import App, checkable_dead_letters, dead_letter_problems, open_trigger
from .control import ControlServer
from .errors import BatchBusy, ConfigError, LedgerError, MessageError, SenderError, TriggerError
from .log import get_logger
from .model import BatchState, TriggerMessage, parse_trigger_message
from .outbox import delivering, describe_pending, pump_for
from .ports import (
    Envelope,
    LocalQueue,
    PendingCount,
    Trigger,
)
from .settlement import RunningBatch, Settlement, Settlements, Verb, run_key

__all__ = ["Daemon", "Settlement", "open_trigger"]

log = get_logger("sender.daemon")

_RETRY_DELAY_S = (1.0, 5.0, 15.0, 60.0)  # before giving back a batch that could not finish
_REOPEN_DELAY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # before opening a failed message stream again
_BURST_IDLE_S = 1.0


class Daemon:
    """Runs until stopped; ``burst`` mode returns once the queue is empty (demo, cron)."""

    def __init__(self, app: App, trigger: Trigger, *, burst: bool = False) -> None:
        self.app = app
        self.metrics = app.metrics
        self.config = app.config
        self.trigger = trigger
        self.burst = burst
        # what the daemon asks of its adapters beyond their ports is checked once, here
        self._pending: PendingCount | None = trigger if isinstance(trigger, PendingCount) else None
        if burst and self._pending is None:
            raise ConfigError(
                f"trigger.type: a {self.config.trigger.type} trigger cannot tell when its queue "
                "is empty (it has no pending()): sender run --burst needs one that can"
            )
        self._dead_letter_checks = checkable_dead_letters(app)
        self.stopping = asyncio.Event()
        self._forced = asyncio.Event()  # a second stop request: stop waiting for the grace
        self.problem: str | None = None  # set while batches cannot finish (dead-letter down)
        self.trigger_problem: str | None = None  # set while the message stream fails
        self.control: ControlServer | None = None  # set by open_daemon
        self._running: dict[str, RunningBatch] = {}
        self._slots = asyncio.Semaphore(self.config.daemon.max_batches)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures = 0
        self.settlements = Settlements(app.metrics, lease_s=self.config.daemon.lease_s)
        self.engine = app.engine
        # completion events: delivered from the outbox by a task of their own (sender.outbox)
        self.outbox = pump_for(self.config, app.ledger, app.targets, owner=self.engine.owner)

    @property
    def settled(self) -> deque[Settlement]:
        """The latest settlements (up to 1000), oldest first."""
        return self.settlements.latest

    @property
    def active(self) -> set[str]:
        """Ids of the batches running now (a shard's too)."""
        return {running.message.batch_id for running in self._running.values()}

    # -- readiness -------------------------------------------------------------------------

    async def readiness(self) -> list[str]:
        problems = []
        if self.stopping.is_set():
            problems.append("draining: shutting down")
        try:
            await self.app.ledger.ping()
        except SenderError as exc:
            problems.append(f"ledger: {exc}")
        if not self.trigger.connected:
            problems.append(f"trigger: {self.config.trigger.type} not connected (reconnecting)")
        if self.trigger_problem:
            problems.append(f"trigger: {self.trigger_problem}")
        if self.problem:
            problems.append(self.problem)
        problems.extend(await dead_letter_problems(self._dead_letter_checks))
        return problems

    async def notes(self) -> list[str]:
        """What ``/readyz`` says beside its verdict without making the daemon unready:
        completion events waiting for a receiver that is down."""
        if self.outbox is None:
            return []
        try:
            line = describe_pending(await self.outbox.outbox.pending_events())
        except SenderError:
            return []  # the ledger's outage is a problem of its own
        return [f"{line} (kept and retried; the daemon stays ready)"] if line else []

    async def deliver_events(self) -> None:
        """One pass over the due events (``--burst`` before it exits); what fails stays."""
        if self.outbox is not None:
            with contextlib.suppress(SenderError):
                await self.outbox.deliver_due()

    async def wait_settled(self, count: int = 1) -> list[Settlement]:
        """Wait until at least ``count`` messages were settled since start; return the
        latest settlements (up to 1000), oldest first."""
        return await self.settlements.wait(count)

    async def accept(self, message: TriggerMessage) -> None:
        """A message that came over HTTP: check it, then queue it on the trigger."""
        self._check(message)
        await self.trigger.publish(message)

    def _check(self, message: TriggerMessage) -> None:
        if message.routes is not None:
            unknown = sorted(set(message.routes) - set(self.config.routes))
            if unknown:
                raise MessageError(f"unknown routes {unknown}")
        if not self.engine.routes_for(message):
            raise MessageError(f"no route takes dataset {message.dataset!r}")
        refusal = self.config.uri_refusal(
            message.uri, remote=not isinstance(self.trigger, LocalQueue)
        )
        if refusal is not None:
            raise MessageError(refusal)

    # -- the loop --------------------------------------------------------------------------

    def request_stop(self, signame: str = "") -> None:
        """Begin a graceful stop; called a second time, stop waiting for the grace period:
        what is in flight is cancelled and ``run`` returns 1."""
        if self.stopping.is_set():
            if not self._forced.is_set():
                log.warning("daemon.forced_exit", signal=signame, cancelled=len(self._tasks))
                self._forced.set()
            return
        log.info("daemon.stopping", signal=signame, in_flight=sorted(self._running))
        self.stopping.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        """Take and run messages until stopped (or, in burst mode, until the queue is
        empty); drain; return the exit code: 0, or 1 when a second stop request cut the
        grace period short.

        With ``handle_signals`` SIGTERM and SIGINT call ``request_stop`` while this runs;
        ``handle_signals=False`` leaves signals to the host, which calls ``request_stop``."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        log.info(
            "daemon.started",
            trigger=self.config.trigger.type,
            max_batches=self.config.daemon.max_batches,
            burst=self.burst,
        )
        try:
            async with delivering(self.outbox):
                try:
                    await self._consume()
                finally:
                    await self._drain()
            if self.burst and self.outbox is not None:
                await self.deliver_events()
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
        log.info("daemon.stopped", forced=self._forced.is_set())
        return 1 if self._forced.is_set() else 0

    async def _consume(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            messages = aiter(self.trigger.messages())
            try:
                await self._take(messages)
                return  # stopping, burst done, or the trigger was closed
            except Exception as exc:
                # a trigger reconnects by itself; this is for one whose stream still failed
                delay = _REOPEN_DELAY_S[min(failures, len(_REOPEN_DELAY_S) - 1)]
                failures += 1
                self.trigger_problem = str(exc) or type(exc).__name__
                log.error(
                    "trigger.failed",
                    error=self.trigger_problem,
                    retry_in_s=delay,
                    exc_info=not isinstance(exc, TriggerError),
                )
                await self._pause(delay)
                self.trigger_problem = None  # reopened next: set again if it fails again
            finally:
                # cancels the consumer (prefetched AMQP messages go back to the broker); the
                # messages of running batches are settled later, on the open connection
                with contextlib.suppress(Exception):
                    await messages.aclose()  # type: ignore[attr-defined]

    async def _take(self, messages: AsyncIterator[Envelope]) -> None:
        """Take messages while a slot is free. ``anext`` is never cancelled except to stop:
        cancelling a broker receive part-way could strand a message until its lease ends."""
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.stopping.wait())
        pending: asyncio.Future[Any] | None = None  # the next Envelope
        try:
            while not self.stopping.is_set():
                if pending is None:
                    if not await self._acquire_slot(stop):
                        return
                    pending = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait(
                    {pending, stop},
                    timeout=_BURST_IDLE_S if self.burst else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if pending in done:
                    future, pending = pending, None
                    try:
                        envelope = future.result()
                    except StopAsyncIteration:
                        self._slots.release()
                        return
                    except BaseException:
                        self._slots.release()
                        raise
                    self.trigger_problem = None
                    if self.stopping.is_set():
                        self._slots.release()
                        await self.settlements.settle(envelope, "release")
                        return
                    self._start(envelope)
                elif not done and await self._burst_done():
                    return
        finally:
            stop.cancel()
            if pending is not None:
                await self._abandon(pending)

    async def _abandon(self, pending: asyncio.Future[Any]) -> None:
        """Stop waiting for the next message; one that arrived meanwhile goes back."""
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
        self._slots.release()
        if pending.done() and not pending.cancelled() and pending.exception() is None:
            await self.settlements.settle(pending.result(), "release")

    def _start(self, envelope: Envelope) -> None:
        task = asyncio.create_task(self._handle(envelope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _burst_done(self) -> bool:
        if self._tasks:
            return False
        return self._pending is None or await self._pending.pending() == 0

    async def _acquire_slot(self, stop: asyncio.Future[Any]) -> bool:
        """Wait for a free slot; False (holding none) when stopping first."""
        acquire: asyncio.Future[Any] = asyncio.ensure_future(self._slots.acquire())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not acquire.done():
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire
        if acquire.done() and not acquire.cancelled():
            if self.stopping.is_set():
                self._slots.release()
                return False
            return True
        return False

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace = self.config.daemon.shutdown_grace_s
        log.info("daemon.draining", batches=sorted(self._running), grace_s=grace)
        finished: asyncio.Future[Any] = asyncio.gather(*self._tasks, return_exceptions=True)
        forced: asyncio.Future[Any] = asyncio.ensure_future(self._forced.wait())
        try:
            # the grace period, cut short by a second stop request
            await asyncio.wait(
                {finished, forced}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            forced.cancel()
        pending = {task for task in self._tasks if not task.done()}
        for task in pending:
            task.cancel()
        if pending:
            log.warning("daemon.grace_expired", cancelled=len(pending))
            await asyncio.wait(pending)
        await finished

    # -- one message -----------------------------------------------------------------------

    async def _handle(self, envelope: Envelope) -> None:
        """One message, holding the slot it was taken with: a batch keeps it until it ends;
        an invalid message or a duplicate gives it back at once."""
        self.metrics.trigger_message("received")
        try:
            try:
                message = parse_trigger_message(envelope.body)
                self._check(message)
            except MessageError as exc:
                log.warning(
                    "trigger.rejected",
                    message_id=envelope.message_id,
                    reason=str(exc),
                    body=envelope.body[:500].decode("utf-8", "replace"),
                )
                await self.settlements.settle(envelope, "reject", str(exc))
                return
            running = self._running.get(run_key(message))
            if running is not None:
                # checked and registered with no await in between: two copies taken at once
                # cannot both start the batch
                running.envelopes.append(envelope)
                self.metrics.trigger_message("duplicate")
                log.info(
                    "trigger.duplicate_in_flight",
                    batch_id=message.batch_id,
                    message_id=envelope.message_id,
                )
                return
            running = RunningBatch(message, [envelope])
            self._running[run_key(message)] = running
            await self._run(running)
        finally:
            self._slots.release()

    async def _run(self, running: RunningBatch) -> None:
        message = running.message
        log.info(
            "trigger.received",
            batch_id=message.batch_id,
            dataset=message.dataset,
            message_id=running.envelopes[0].message_id,
        )
        # the leases are kept until the messages are settled, a give-back's pause included
        extender = asyncio.create_task(self.settlements.keep_leases(running))
        try:
            await self._run_and_settle(running)
        finally:
            extender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await extender

    async def _run_and_settle(self, running: RunningBatch) -> None:
        batch_id = running.message.batch_id
        try:
            outcome = await self.engine.run_batch(running.message, stop=self.stopping, sharded=True)
            if outcome.handoff is not None:  # sharded: publish its shards, then ack it
                await self.engine.sharding.publish(self.trigger, batch_id, outcome.handoff)
                await self._settle_all(running, "ack")
                log.info("trigger.sharded", batch_id=batch_id, published=len(outcome.handoff))
                return
        except asyncio.CancelledError:
            # the grace period ran out: the engine recorded what finished; give the messages
            # back even though we are being cancelled
            await asyncio.shield(self._settle_all(running, "release"))
            raise
        except (BatchBusy, LedgerError, TriggerError) as exc:
            log.warning("batch.deferred", batch_id=batch_id, reason=str(exc))
            await self._give_back(running)
            return
        except MessageError as exc:  # found out with the ledger (a shard of no such batch)
            log.warning("trigger.rejected", batch_id=batch_id, reason=str(exc))
            await self._settle_all(running, "reject", str(exc))
            return
        except Exception:
            log.exception("batch.crashed", batch_id=batch_id)
            await self._give_back(running)
            return
        if outcome.state is BatchState.COMPLETE:
            self.problem = None
            self._failures = 0
            await self._settle_all(running, "ack")
            log.info(
                # trigger.acked: the batch is complete (a shard's ack ends it only when last)
                "trigger.acked" if outcome.shard is None else "shard.acked",
                batch_id=batch_id,
                messages=len(running.envelopes),
                already_complete=outcome.already_complete,
                shard=running.message.shard,
            )
        elif outcome.state is BatchState.FAILED:
            log.warning("trigger.rejected", batch_id=batch_id, reason=outcome.error)
            await self._settle_all(running, "reject", outcome.error or "batch failed")
        else:
            if not self.stopping.is_set():
                self.problem = f"batch {batch_id} incomplete: {outcome.error}"
            await self._give_back(running)

    async def _give_back(self, running: RunningBatch) -> None:
        """Release a batch's messages; wait a little first so that a batch that cannot
        progress (dead-letter store down) does not spin."""
        if not self.stopping.is_set():
            delay = _RETRY_DELAY_S[min(self._failures, len(_RETRY_DELAY_S) - 1)]
            self._failures += 1
            await self._pause(delay)
        await self._settle_all(running, "release")
        log.info("trigger.released", batch_id=running.message.batch_id)

    async def _settle_all(self, running: RunningBatch, verb: Verb, reason: str = "") -> None:
        # unregistered first: a copy taken from now on starts the batch afresh (and finds it
        # complete in the ledger), rather than joining a batch that is over
        self._running.pop(running.key, None)
        await self.settlements.settle_all(running, verb, reason)
