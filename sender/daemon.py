"""The daemon loop (``sender run``): take trigger messages, run batches, settle messages.

- At most ``max_batches`` batches run at once; the next message is taken only when a slot is
  free, so a message waits in its queue, not in our memory.
- A message is acked only once its batch is complete in the ledger; an invalid one is rejected
  with the reason; a duplicate of a complete batch is acked without sending; a duplicate of a
  running batch is acked (the first copy is still unacked and settles the batch).
- SIGTERM/SIGINT: stop taking messages, let chunks in flight finish within ``shutdown_grace``,
  release unfinished messages for redelivery, exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from .app import App
from .config import AppConfig
from .control import ControlServer
from .engine import BatchBusy
from .errors import LedgerError, MessageError, SenderError, TriggerError
from .hooks import Hooks
from .log import get_logger
from .model import BatchState, TriggerMessage, parse_trigger_message
from .ports import Envelope, Trigger

__all__ = ["Daemon", "serve"]

log = get_logger("sender.daemon")

_RETRY_DELAY_S = (1.0, 5.0, 15.0, 60.0)  # before giving back a batch that could not finish


class Daemon:
    """Runs until stopped; ``burst`` mode returns once the queue is empty (demo, cron)."""

    def __init__(self, app: App, trigger: Trigger, *, burst: bool = False) -> None:
        self.app = app
        self.config = app.config
        self.trigger = trigger
        self.burst = burst
        self.stopping = asyncio.Event()
        self.active: set[str] = set()
        self.problem: str | None = None  # set while batches cannot finish (dead-letter down)
        self._slots = asyncio.Semaphore(self.config.daemon.max_batches)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures = 0
        self.engine = app.engine

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
            problems.append("trigger: not connected")
        if self.problem:
            problems.append(self.problem)
        return problems

    async def accept(self, message: TriggerMessage) -> None:
        """A message that came over HTTP: check it, then queue it on the trigger."""
        if not self.engine.routes_for(message):
            raise MessageError(f"no route takes dataset {message.dataset!r}")
        await self.trigger.publish(message)

    # -- the loop --------------------------------------------------------------------------

    def request_stop(self, signame: str = "") -> None:
        if self.stopping.is_set():
            log.warning("daemon.forced_exit", signal=signame)
            os._exit(1)
        log.info("daemon.stopping", signal=signame, in_flight=sorted(self.active))
        self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        log.info(
            "daemon.started",
            trigger=self.config.trigger.type,
            max_batches=self.config.daemon.max_batches,
            burst=self.burst,
        )
        try:
            await self._consume()
        finally:
            await self._drain()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        log.info("daemon.stopped")
        return 0

    async def _consume(self) -> None:
        messages = aiter(self.trigger.messages())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            while not self.stopping.is_set():
                await self._acquire_slot(stop)
                if self.stopping.is_set():
                    return
                if self.burst and await self._queue_empty():
                    return
                next_message = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait(
                    {next_message, stop},
                    timeout=self._idle_timeout(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if next_message not in done:
                    next_message.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await next_message
                    self._slots.release()
                    continue
                try:
                    envelope = next_message.result()
                except StopAsyncIteration:
                    self._slots.release()
                    return
                except TriggerError as exc:
                    self._slots.release()
                    log.error("trigger.failed", error=str(exc))
                    await self._pause(5.0)
                    continue
                task = asyncio.create_task(self._handle(envelope))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            stop.cancel()
            with contextlib.suppress(Exception):
                await messages.aclose()  # type: ignore[attr-defined]

    def _idle_timeout(self) -> float | None:
        return 1.0 if self.burst else None

    async def _queue_empty(self) -> bool:
        pending = getattr(self.trigger, "pending", None)
        if pending is None:
            return False
        return not self._tasks and await pending() == 0

    async def _acquire_slot(self, stop: asyncio.Future[object]) -> None:
        acquire = asyncio.ensure_future(self._slots.acquire())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not acquire.done():
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace = self.config.daemon.shutdown_grace_s
        log.info("daemon.draining", batches=len(self._tasks), grace_s=grace)
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("daemon.grace_expired", cancelled=len(pending))
            await asyncio.wait(pending)

    # -- one message -----------------------------------------------------------------------

    async def _handle(self, envelope: Envelope) -> None:
        try:
            await self._settle(envelope)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(envelope.release())
            raise
        except Exception:
            log.exception("message.failed", message_id=envelope.message_id)
            with contextlib.suppress(Exception):
                await envelope.release()
        finally:
            self._slots.release()

    async def _settle(self, envelope: Envelope) -> None:
        try:
            message = parse_trigger_message(envelope.body)
            if message.routes is not None:
                unknown = sorted(set(message.routes) - set(self.config.routes))
                if unknown:
                    raise MessageError(f"unknown routes {unknown}")
            if not self.engine.routes_for(message):
                raise MessageError(f"no route takes dataset {message.dataset!r}")
        except MessageError as exc:
            log.warning("trigger.rejected", message_id=envelope.message_id, reason=str(exc))
            await envelope.reject(str(exc))
            return
        batch_id = message.batch_id
        if batch_id in self.active:
            log.info("trigger.duplicate_in_flight", batch_id=batch_id)
            await envelope.ack()
            return
        log.info(
            "trigger.received",
            batch_id=batch_id,
            dataset=message.dataset,
            message_id=envelope.message_id,
        )
        self.active.add(batch_id)
        extender = asyncio.create_task(self._keep_lease(envelope))
        try:
            outcome = await self.engine.run_batch(message, stop=self.stopping)
        except (BatchBusy, LedgerError) as exc:
            log.warning("batch.deferred", batch_id=batch_id, reason=str(exc))
            await self._give_back(envelope)
            return
        finally:
            extender.cancel()
            self.active.discard(batch_id)
        if outcome.state is BatchState.COMPLETE:
            self.problem = None
            self._failures = 0
            await envelope.ack()
            log.info("trigger.acked", batch_id=batch_id, message_id=envelope.message_id)
        elif outcome.state is BatchState.FAILED:
            await envelope.reject(outcome.error or "batch failed")
            log.warning("trigger.rejected", batch_id=batch_id, reason=outcome.error)
        else:
            if not self.stopping.is_set():
                self.problem = f"batch {batch_id} incomplete: {outcome.error}"
            await self._give_back(envelope)

    async def _give_back(self, envelope: Envelope) -> None:
        """Release a message we could not finish; wait a little first so that a batch that
        cannot progress (dead-letter store down) does not spin."""
        if not self.stopping.is_set():
            delay = _RETRY_DELAY_S[min(self._failures, len(_RETRY_DELAY_S) - 1)]
            self._failures += 1
            await self._pause(delay)
        await envelope.release()

    async def _keep_lease(self, envelope: Envelope) -> None:
        interval = max(1.0, self.config.daemon.lease_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await envelope.extend(self.config.daemon.lease_s)
            except SenderError as exc:
                log.warning("trigger.extend_failed", message_id=envelope.message_id, error=str(exc))


async def serve(config: AppConfig, *, burst: bool = False, hooks: Hooks | None = None) -> int:
    """``sender run``: open everything from the config, serve until stopped, close in reverse."""
    async with contextlib.AsyncExitStack() as stack:
        app = await stack.enter_async_context(App(config, hooks=hooks))
        trigger = config.trigger.cls(config.trigger.options)
        stack.push_async_callback(trigger.aclose)
        daemon = Daemon(app, trigger, burst=burst)
        token = config.daemon.token.get_secret_value() if config.daemon.token else None
        control = ControlServer(
            app.ledger, readiness=daemon.readiness, accept=daemon.accept, token=token
        )
        await control.start(config.daemon.host, config.daemon.port)
        stack.push_async_callback(control.stop)
        return await daemon.run()
    raise AssertionError("unreachable")
