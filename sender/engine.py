"""The engine: one batch, read once, fanned out to its routes, every chunk driven to a
terminal state in the ledger.

This module orchestrates a batch: it holds the batch's lease (``sender.lease``), lists and
checks its source (``sender.batch_source``), reads it once and hands each route its chunks
(``sender.routing``), delivers them at most a bounded number at a time (``sender.pump``, each
by the delivery policy, ``sender.delivery``), tells the destinations that care that a route is
done, and records the outcome. A big batch is planned and delivered in shards
(``sender.shards``).

Whatever happens inside a batch, the batch ends in a state (STYLE.md #23): an exception the
engine does not expect (a ``LedgerError``, an ``AdapterClosed``, a bug) is recorded as
``incomplete`` with the error (best effort when the ledger itself is failing) and returned as
the outcome; the batch-finished hooks run either way, so every gauge comes back down. Hooks
are isolated by the engine itself (``sender.hooks.isolated``): a hook that raises never
changes delivery.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence

from .batch_source import list_source, source_change
from .chunker import RawChunk
from .config import AppConfig
from .delivery import ChunkDelivery
from .diffsync import attach_plan, commit_route, commit_runs, plan_and_attach
from .errors import (
    BadRecordPolicyFailed,
    BatchBusy,
    DeadLetterUnavailable,
    FinishFailed,
    MessageError,
    SenderError,
    SourceError,
    describe_error,
)
from .events import finish_batch
from .hooks import Hooks, isolated
from .lease import default_owner, hold_lease, take_stale_lease
from .log import get_logger, mask_optional
from .model import BatchState, EncodedChunk, ObjectInfo, TriggerMessage
from .outcome import BatchOutcome
from .ports import BatchRecord, ChunkRecord, Ledger, Source
from .pump import Pump
from .route_finish import finish_routes
from .routing import SPLIT_TARGET, RouteRun, encode_chunk, keep_counts_when_nothing_was_read, recut
from .shards import Sharding
from .targets import Target

__all__ = [
    "SPLIT_TARGET",
    "BatchBusy",
    "BatchOutcome",
    "DeadLetterUnavailable",
    "Engine",
    "default_owner",
    "encode_chunk",
]

log = get_logger("sender.engine")


class Engine:
    """Runs batches: reads the source once, delivers every route, keeps the ledger."""

    def __init__(
        self,
        config: AppConfig,
        ledger: Ledger,
        targets: dict[str, Target],
        source_for: Callable[[str], Awaitable[Source]],
        *,
        hooks: Hooks | None = None,
        owner: str | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.targets = targets
        self._source_for = source_for
        self.hooks = isolated(hooks)
        self.owner = owner or default_owner()
        self.delivery = ChunkDelivery(ledger, self.hooks)
        self.pump = Pump(config, ledger, self.delivery, self.hooks)
        self.sharding = Sharding(self)

    async def source_for(self, uri: str) -> Source:
        return await self._source_for(uri)

    def routes_for(self, message: TriggerMessage) -> list[str]:
        return self.config.routes_for(message.dataset, message.routes)

    # -- for sender replay: the chunks a run cut, cut again --------------------------------

    async def recreate_chunks(
        self,
        message: TriggerMessage,
        route: str,
        objects: Sequence[ObjectInfo],
        wanted: Collection[str] | None = None,
    ) -> AsyncIterator[RawChunk]:
        """Read ``objects`` again and yield the data chunks of ``route`` cut exactly as a run
        cuts them, in order (``sender.routing.recut``): ``sender replay`` re-creates the
        payloads and idempotency keys first sent. Raises ``SourceError`` like a run does."""
        if wanted is not None and not wanted:
            return
        source = await self._source_for(message.uri)
        limit = self.config.daemon.max_record_bytes
        # a sharded batch is cut shard by shard, each numbered from its base
        for base, part, mine in await self.sharding.parts(message.batch_id, objects, wanted):
            run = RouteRun.of(self.config, route, self.targets, base=base)
            await attach_plan(self.ledger, message, run)
            async for raw in recut(run, source, part, message.format, mine, limit):
                yield raw

    async def encode_for(
        self, message: TriggerMessage, route: str, raw: RawChunk, target: Target
    ) -> EncodedChunk:
        """A re-created data chunk in ``target``'s format and codec, as a run encodes it."""
        run = RouteRun.of(self.config, route, self.targets)
        return await self.delivery.encode(message, run, raw, target, "data")

    # -- a run -----------------------------------------------------------------------------

    async def run_batch(
        self,
        message: TriggerMessage,
        *,
        stop: asyncio.Event | None = None,
        force: bool = False,
        sharded: bool = False,
    ) -> BatchOutcome:
        """Deliver a batch, resuming from the ledger; a complete batch sends nothing.

        ``stop`` set: take no new chunks, let those in flight finish, end incomplete.
        ``force`` (or the message's ``rerun``): read the source even if it changed since the
        batch was first read, and record its objects anew.
        ``sharded`` (the daemon): a big batch is planned in shards and handed back
        (``BatchOutcome.handoff``); a shard message runs its shard (``sender.shards``).
        Raises, before the batch starts, ``BatchBusy`` when another owner holds the batch,
        ``MessageError`` if no route takes the dataset (or a batch is sharded and not
        ``sharded``), ``LedgerError`` if the ledger cannot be read. Once it started, every
        failure — expected or not — is recorded in the ledger and returned as the outcome.
        """
        stop = stop or asyncio.Event()
        if message.shard is not None:
            if not sharded:
                raise MessageError(f"shard {message.shard}: shards are run by the daemon")
            return await self.sharding.run_shard(message, stop)
        if not sharded:
            await self.sharding.refuse_whole(message)
        existing = await self.ledger.get_batch(message.batch_id)
        if existing is not None and existing.state is BatchState.COMPLETE:
            log.info("batch.already_complete", batch_id=message.batch_id)
            return BatchOutcome(
                message.batch_id,
                message.dataset,
                existing.state,
                existing.routes,
                already_complete=True,
            )
        route_names = self.routes_for(message)
        if not route_names:
            raise MessageError(f"no route takes dataset {message.dataset!r}")
        lease_s = self.config.daemon.lease_s
        batch_id = message.batch_id
        if not await self.ledger.acquire_lease(batch_id, self.owner, lease_s):
            holder = existing.lease_owner if existing else None
            if not (
                holder
                and await take_stale_lease(self.ledger, batch_id, holder, self.owner, lease_s)
            ):
                raise BatchBusy(f"batch {batch_id} is being sent by {holder or 'another process'}")
        async with hold_lease(self.ledger, batch_id, self.owner, lease_s):
            return await self._run(message, route_names, stop, force or message.rerun, sharded)

    async def _run(
        self,
        message: TriggerMessage,
        route_names: list[str],
        stop: asyncio.Event,
        force: bool,
        sharded: bool,
    ) -> BatchOutcome:
        started = time.monotonic()
        batch_id = message.batch_id
        runs: list[RouteRun] = []
        self.hooks.batch_started(batch_id, message.dataset, route_names)
        state, error = BatchState.COMPLETE, None
        record: BatchRecord | None = None
        try:
            record = await self.ledger.start_batch(message)
            runs = await self._route_runs(batch_id, route_names)
            handoff = await self._deliver_all(message, record, runs, stop, force, sharded)
            if handoff is not None:
                self.hooks.batch_finished(batch_id, "sharded", time.monotonic() - started)
                return BatchOutcome(batch_id, message.dataset, record.state, {}, handoff=handoff)
            if stop.is_set() or any(run.unsettled for run in runs):
                state = BatchState.INCOMPLETE
            else:
                await finish_routes(message, runs)
                await commit_runs(message, runs)
        except (SourceError, BadRecordPolicyFailed) as exc:
            state, error = BatchState.FAILED, str(exc)
            if record is not None:
                keep_counts_when_nothing_was_read(runs, record.routes)
        except (DeadLetterUnavailable, FinishFailed) as exc:
            state, error = BatchState.INCOMPLETE, str(exc)
        except asyncio.CancelledError:
            await asyncio.shield(
                self._record_end(batch_id, BatchState.INCOMPLETE, runs, "interrupted")
            )
            self.hooks.batch_finished(
                batch_id, BatchState.INCOMPLETE.value, time.monotonic() - started
            )
            raise
        except Exception as exc:
            # a LedgerError, a closed adapter, a bug: the batch still ends in a state, and
            # its trigger message is given back rather than acked
            state, error = BatchState.INCOMPLETE, describe_error(exc)
            log.error(
                "batch.crashed",
                batch_id=batch_id,
                error=error,
                exc_info=not isinstance(exc, SenderError),
            )
        return await self.end(message, runs, state, error, started)

    async def _route_runs(self, batch_id: str, route_names: list[str]) -> list[RouteRun]:
        by_route: dict[str, dict[str, ChunkRecord]] = {}
        for chunk in await self.ledger.chunks(batch_id):
            by_route.setdefault(chunk.route, {})[chunk.chunk_id] = chunk
        return [
            RouteRun.of(self.config, name, self.targets, by_route.get(name, {}))
            for name in route_names
        ]

    async def _record_end(
        self, batch_id: str, state: BatchState, runs: list[RouteRun], error: str | None
    ) -> str | None:
        """Record how the batch ended; None when the ledger took it, else why it did not."""
        try:
            routes = {r.name: r.stats for r in runs}
            # with its completion event, when someone is to be told (sender.events)
            await finish_batch(self.ledger, self.config, batch_id, state, routes, error)
        except Exception as exc:
            log.error("batch.finish_unrecorded", batch_id=batch_id, error=describe_error(exc))
            return describe_error(exc)
        return None

    async def end(
        self,
        message: TriggerMessage,
        runs: list[RouteRun],
        state: BatchState,
        error: str | None,
        started: float,
    ) -> BatchOutcome:
        """Record how the batch ended (its reconciliation: the runs' stats), with its event;
        the batch's one ``batch.finished`` line and hook."""
        batch_id = message.batch_id
        error = mask_optional(error)  # stored in the ledger and shown: no secret in it
        routes = {r.name: r.stats for r in runs}
        if state is BatchState.COMPLETE and message.expected_records is not None:
            read = max((s.read for s in routes.values()), default=0)
            if read != message.expected_records:
                log.warning(
                    "batch.expected_records_mismatch",
                    batch_id=batch_id,
                    expected=message.expected_records,
                    read=read,
                )
        unrecorded = await self._record_end(batch_id, state, runs, error)
        if unrecorded is not None:
            # the ledger does not know how the batch ended: neither acked nor rejected, its
            # message comes back and the batch resumes from what the ledger has
            state = BatchState.INCOMPLETE
            error = f"{error}; " if error else ""
            error += f"the ledger could not record the batch's end: {unrecorded}"
        duration = time.monotonic() - started
        outcome = BatchOutcome(
            batch_id,
            message.dataset,
            state,
            routes,
            error,
            duration_s=duration,
            rejects_stored=sum(r.rejects_stored for r in runs),
            fallbacks=sum(r.fallbacks for r in runs),
        )
        self.hooks.batch_finished(batch_id, state.value, duration)
        outcome.log()
        return outcome

    async def _deliver_all(
        self,
        message: TriggerMessage,
        record: BatchRecord,
        runs: list[RouteRun],
        stop: asyncio.Event,
        force: bool,
        sharded: bool,
    ) -> tuple[TriggerMessage, ...] | None:
        """Deliver the batch; or, sharded, plan it and hand back its shard messages."""
        source, listing = await list_source(self.config, self._source_for, message.uri)
        if not force and source_change(record.objects, listing.objects) is not None:
            raise SourceError(
                f"{message.uri}: the source changed since the batch was first read "
                '(send it again with --rerun, or "rerun": true in its trigger message, to '
                "read it as it is now; replay with --force to resend its chunks as they are)"
            )
        if record.objects is None or force:
            await self.ledger.set_objects(message.batch_id, listing.objects)
        if sharded:  # a big batch is planned and handed back in shards (sender.shards)
            handoff = await self.sharding.plan(message, record, runs, listing.objects, force)
            if handoff is not None:
                return handoff
        log.info(
            "batch.started",
            batch_id=message.batch_id,
            dataset=message.dataset,
            uri=message.uri,
            routes=[run.name for run in runs],
            resumed=record.runs > 1,
        )
        fresh = functools.partial(RouteRun.of, self.config, targets=self.targets)
        limit = self.config.daemon.max_record_bytes
        await plan_and_attach(self.ledger, message, runs, fresh, source, listing.objects, limit)
        await self.pump.deliver_objects(message, source, listing.objects, runs, stop)
        return None

    async def commit_diff(self, message: TriggerMessage, route: str) -> None:
        """After a replay: what the route has delivered by now enters its baseline."""
        await commit_route(self.config, self.ledger, message, route)
