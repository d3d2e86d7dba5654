"""Sharded batches: a batch of many objects delivered by every replica that is free.

A batch with more objects than ``[daemon] shard_objects`` is cut, at its first run in a
daemon, into shards of that many consecutive objects (in the listing's order); the plan is
recorded with the batch (the ledger's ``Shards``) and never changes, except by a rerun.

- **Distribution by the broker.** The run that plans the batch (the *parent* message) hands
  back one message per shard (the parent's, with ``shard`` set) for the daemon to publish on
  its own trigger, then the parent is acked. Whichever replica is free takes a shard message;
  a dead replica's shard message comes back by the broker's redelivery. Replicas never poll
  the ledger for work.
- **A parent delivered again** (a crash after planning, before its ack) finds the plan and
  publishes the messages again unless the plan says they were all published: a duplicate of
  a complete shard is acked, of a running one waits (``BatchBusy``) and is released.
- **Deterministic chunks.** Shard k numbers its chunks from ``k * SHARD_STRIDE`` (shard 2's
  are "2000000", "2000001"... and its rejects files "r2000000"...), so chunk ids, split
  pieces ("2000003.0"), idempotency keys, resume and ``sender replay`` are as for a whole
  batch; a chunk id says its shard (``shard_of``).
- **Leases per shard** (``shard_lease_key``), renewed while the shard runs; a replica killed
  mid-shard stops renewing, and the replica that gets the redelivered message takes the shard
  over once the lease expired (at once when the dead owner was on this host), resending only
  the chunks that were in flight, with their keys.
- **Exactly one end.** ``Shards.finish_shard`` says atomically which shard completed last;
  that run (or, after a crash there, any later run that finds every shard complete) takes
  the batch's lease and ends the batch once: the destinations' end of batch (a bucket drop's
  manifest), the batch's reconciliation summed over its shards, its completion event, one
  ``batch.finished`` line. A shard that fails (unreadable source, ``on_bad_record = "fail"``)
  fails the batch; its other shards' messages are then rejected.

Diff-synced routes (their tombstones need the whole batch) and ``sender send`` (in-process,
no queue) send batches whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

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
from .lease import hold_lease, take_stale_lease
from .log import get_logger, mask_optional
from .model import BatchState, ObjectInfo, TriggerMessage
from .outcome import BatchOutcome
from .ports import BatchRecord, ChunkRecord, Ledger, RouteStats, Trigger
from .route_finish import finish_routes
from .routing import RouteRun
from .shard_ports import SHARD_STRIDE, ShardRecord, Shards, shard_lease_key, shard_of

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["SHARD_STRIDE", "Sharding", "shard_messages", "shard_of", "shard_sizes"]

log = get_logger("sender.shards")


def shard_sizes(objects: int, per_shard: int) -> list[int]:
    """The plan for ``objects`` objects, ``per_shard`` a shard: ``[]`` (send it whole) when
    sharding is off (0) or the batch is not bigger than one shard."""
    if per_shard <= 0 or objects <= per_shard:
        return []
    full, rest = divmod(objects, per_shard)
    return [per_shard] * full + ([rest] if rest else [])


def shard_messages(message: TriggerMessage, plan: Sequence[ShardRecord]) -> list[TriggerMessage]:
    """One message per shard that is not complete: the parent's, with ``shard`` set (a
    rerun's shards read the objects the rerun recorded, they do not rerun themselves)."""
    return [
        message.model_copy(update={"shard": s.shard, "rerun": False})
        for s in plan
        if s.state != "complete"
    ]


def _summed(plan: Sequence[ShardRecord], route_names: Sequence[str]) -> dict[str, RouteStats]:
    """The batch's reconciliation per route: its shards' added up."""
    return {
        name: RouteStats.total(s.routes[name] for s in plan if name in s.routes)
        for name in route_names
    }


class Sharding:
    """The engine's sharded batches (see the module): planning a parent, running a shard,
    ending the batch when its last shard is complete."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def _ledger(self) -> Ledger:
        return self.engine.ledger

    def _shards(self) -> Shards | None:
        ledger = self._ledger
        return ledger if isinstance(ledger, Shards) else None

    async def refuse_whole(self, message: TriggerMessage) -> None:
        """``MessageError`` when the batch is sharded: its shards belong to the daemons."""
        store = self._shards()
        if store is not None and await store.shards(message.batch_id):
            raise MessageError(
                f"batch {message.batch_id} is sharded: its shards are delivered by the "
                f"daemons (sender status {message.batch_id})"
            )

    # -- the parent ------------------------------------------------------------------------

    async def plan(
        self,
        message: TriggerMessage,
        record: BatchRecord,
        runs: Sequence[RouteRun],
        objects: Sequence[ObjectInfo],
        force: bool,
    ) -> tuple[TriggerMessage, ...] | None:
        """The shard messages to publish for a batch that is (now) sharded — none when they
        were all published already — or None to send it whole. Runs inside the batch's
        lease, after its objects were recorded."""
        store = self._shards()
        if store is None or any(run.config.diff is not None for run in runs):
            return None
        plan = await store.shards(message.batch_id)
        if force or not plan:
            if not plan and any(run.previous for run in runs):
                return None  # begun whole (before sharding was on): it ends whole
            sizes = shard_sizes(len(objects), self.engine.config.daemon.shard_objects)
            if not sizes and plan:  # a rerun of a sharded batch that shrank: one shard
                sizes = [len(objects)]
            if not sizes:
                return None
            plan = await store.plan_shards(message.batch_id, sizes, replace=force)
        if plan and all(s.published for s in plan) and not force:
            return ()
        messages = tuple(shard_messages(message, plan))
        log.info(
            "batch.sharded",
            batch_id=message.batch_id,
            objects=len(objects),
            shards=len(plan),
            publishing=len(messages),
            runs=record.runs,
        )
        return messages

    async def publish(
        self, trigger: Trigger, batch_id: str, messages: Sequence[TriggerMessage]
    ) -> None:
        """Put the shard messages ``plan`` handed back on ``trigger`` (durable when
        ``publish`` returns), then record that they all are. Raises ``TriggerError``."""
        for message in messages:
            await trigger.publish(message)
        store = self._shards()
        if store is not None and messages:
            await store.set_shards_published(batch_id)

    async def parts(
        self, batch_id: str, objects: Sequence[ObjectInfo], wanted: Collection[str] | None
    ) -> list[tuple[int, Sequence[ObjectInfo], Collection[str] | None]]:
        """What ``sender replay`` re-cuts: ``(base, objects, wanted)`` per shard holding a
        chunk in ``wanted`` (every shard when None), or the whole batch from 0 when it is
        not sharded."""
        store = self._shards()
        plan = await store.shards(batch_id) if store is not None else []
        if not plan:
            return [(0, objects, wanted)]
        out: list[tuple[int, Sequence[ObjectInfo], Collection[str] | None]] = []
        for s in plan:
            mine = None if wanted is None else [c for c in wanted if shard_of(c) == s.shard]
            if mine is None or mine:
                part = objects[s.first_object : s.first_object + s.objects]
                out.append((s.shard * SHARD_STRIDE, part, mine))
        return out

    # -- a shard ---------------------------------------------------------------------------

    async def run_shard(self, message: TriggerMessage, stop: asyncio.Event) -> BatchOutcome:
        """Deliver shard ``message.shard`` of its batch, resuming from the ledger; end the
        batch when it is the last. Raises, before the shard starts, ``MessageError`` for a
        batch that is unknown, not sharded or has no such shard (the message is rejected),
        ``BatchBusy`` while another owner holds the shard."""
        assert message.shard is not None
        batch_id, index = message.batch_id, message.shard
        record = await self._ledger.get_batch(batch_id)
        store = self._shards()
        if record is None or store is None:
            raise MessageError(f"shard {index} of batch {batch_id}: no such batch in the ledger")
        plan = await store.shards(batch_id)
        if not plan:
            raise MessageError(f"shard {index} of batch {batch_id}: the batch is not sharded")
        if index >= len(plan) or record.objects is None:
            raise MessageError(
                f"shard {index} of batch {batch_id}: the batch has {len(plan)} shards "
                f"(0 to {len(plan) - 1})"
            )
        if record.state is BatchState.COMPLETE:
            log.info("batch.already_complete", batch_id=batch_id, shard=index)
            return self._outcome(message, record.state, record.routes, already_complete=True)
        if record.state is BatchState.FAILED:
            return self._outcome(message, record.state, {}, f"the batch failed: {record.error}")
        route_names = self.engine.routes_for(message)
        shard = plan[index]
        if shard.state == "complete":
            log.info("shard.already_complete", batch_id=batch_id, shard=index)
            if all(s.state == "complete" for s in plan):
                return await self._end_batch(message, plan, route_names)
            return self._outcome(message, BatchState.COMPLETE, shard.routes, already_complete=True)
        key = shard_lease_key(batch_id, index)
        if not await self._take_lease(key, shard.owner):
            raise BatchBusy(
                f"shard {index} of batch {batch_id} is being sent by "
                f"{shard.owner or 'another process'}"
            )
        owner, lease_s = self.engine.owner, self.engine.config.daemon.lease_s
        async with hold_lease(self._ledger, key, owner, lease_s):
            return await self._run(message, store, record.objects, shard, route_names, stop)

    async def _take_lease(self, key: str, holder: str | None) -> bool:
        owner, lease_s = self.engine.owner, self.engine.config.daemon.lease_s
        if await self._ledger.acquire_lease(key, owner, lease_s):
            return True
        return bool(holder) and await take_stale_lease(
            self._ledger, key, holder or "", owner, lease_s
        )

    async def _run(
        self,
        message: TriggerMessage,
        store: Shards,
        objects: list[ObjectInfo],
        shard: ShardRecord,
        route_names: list[str],
        stop: asyncio.Event,
    ) -> BatchOutcome:
        started = time.monotonic()
        batch_id, index = message.batch_id, shard.shard
        runs: list[RouteRun] = []
        state, error = BatchState.COMPLETE, None
        try:
            begun = await store.start_shard(batch_id, index, self.engine.owner)
            runs = self._route_runs(route_names, index, await self._ledger.chunks(batch_id))
            log.info(
                "batch.started",
                batch_id=batch_id,
                dataset=message.dataset,
                shard=index,
                objects=shard.objects,
                resumed=begun.runs > 1,
            )
            mine = objects[shard.first_object : shard.first_object + shard.objects]
            source = await self.engine.source_for(message.uri)
            await self.engine.pump.deliver_objects(message, source, mine, runs, stop)
            if stop.is_set() or any(run.unsettled for run in runs):
                state = BatchState.INCOMPLETE
        except (SourceError, BadRecordPolicyFailed) as exc:
            state, error = BatchState.FAILED, str(exc)
        except (DeadLetterUnavailable, FinishFailed) as exc:
            state, error = BatchState.INCOMPLETE, str(exc)
        except Exception as exc:
            # a LedgerError, a closed adapter, a bug: the shard's message is given back
            state, error = BatchState.INCOMPLETE, describe_error(exc)
            log.error(
                "shard.crashed",
                batch_id=batch_id,
                shard=index,
                error=error,
                exc_info=not isinstance(exc, SenderError),
            )
        error = mask_optional(error)
        routes = {r.name: r.stats for r in runs}
        outcome = self._outcome(message, state, routes, error, started=started, runs=runs)
        if state is BatchState.INCOMPLETE:
            return self._logged(outcome, index)
        last = await store.finish_shard(
            batch_id, index, "complete" if state is BatchState.COMPLETE else "failed", routes, error
        )
        self._logged(outcome, index)
        if state is BatchState.FAILED:
            # the batch fails with its shard (its event, once: one id per outcome and run)
            whole = self._whole_runs(route_names, [])
            plan = await store.shards(batch_id)
            for run in whole:
                run.stats = _summed(plan, [run.name])[run.name]
            self.engine.hooks.batch_started(batch_id, message.dataset, route_names)
            await self.engine.end(
                message, whole, BatchState.FAILED, f"shard {index}: {error}", started
            )
            return outcome
        if last:
            return await self._end_batch(message, await store.shards(batch_id), route_names)
        return outcome

    def _route_runs(
        self, route_names: Sequence[str], index: int, chunks: Sequence[ChunkRecord]
    ) -> list[RouteRun]:
        """The shard's runs, numbering from its base and knowing its chunks only."""
        by_route: dict[str, dict[str, ChunkRecord]] = {name: {} for name in route_names}
        for chunk in chunks:
            if chunk.route in by_route and shard_of(chunk.chunk_id) == index:
                by_route[chunk.route][chunk.chunk_id] = chunk
        engine, base = self.engine, index * SHARD_STRIDE
        runs = [
            RouteRun.of(engine.config, name, engine.targets, by_route[name], base=base)
            for name in route_names
        ]
        for run in runs:
            run.ceiling = base + SHARD_STRIDE
        return runs

    # -- the batch's end -------------------------------------------------------------------

    async def _end_batch(
        self, message: TriggerMessage, plan: Sequence[ShardRecord], route_names: list[str]
    ) -> BatchOutcome:
        """Every shard is complete: end the batch, once (under the batch's lease, and only
        while the ledger does not have it complete)."""
        started = time.monotonic()
        batch_id = message.batch_id
        record = await self._ledger.get_batch(batch_id)
        holder = record.lease_owner if record is not None else None
        if not await self._take_lease(batch_id, holder):
            raise BatchBusy(f"batch {batch_id} is being ended by {holder or 'another process'}")
        owner, lease_s = self.engine.owner, self.engine.config.daemon.lease_s
        async with hold_lease(self._ledger, batch_id, owner, lease_s):
            record = await self._ledger.get_batch(batch_id)
            if record is None or record.state is BatchState.COMPLETE:
                state = record.state if record else BatchState.COMPLETE
                return self._outcome(message, state, {}, already_complete=True)
            runs = self._whole_runs(route_names, await self._ledger.chunks(batch_id))
            for run in runs:
                run.stats = _summed(plan, [run.name])[run.name]
            # the batch's end counts once in the metrics, on the replica that ends it
            self.engine.hooks.batch_started(batch_id, message.dataset, route_names)
            try:
                await finish_routes(message, runs)
            except FinishFailed as exc:
                return await self.engine.end(
                    message, runs, BatchState.INCOMPLETE, str(exc), started
                )
            log.info("batch.shards_complete", batch_id=batch_id, shards=len(plan))
            return await self.engine.end(message, runs, BatchState.COMPLETE, None, started)

    def _whole_runs(
        self, route_names: Sequence[str], chunks: Sequence[ChunkRecord]
    ) -> list[RouteRun]:
        by_route: dict[str, dict[str, ChunkRecord]] = {name: {} for name in route_names}
        for chunk in chunks:
            if chunk.route in by_route:
                by_route[chunk.route][chunk.chunk_id] = chunk
        engine = self.engine
        return [RouteRun.of(engine.config, n, engine.targets, by_route[n]) for n in route_names]

    # -- outcomes --------------------------------------------------------------------------

    def _outcome(
        self,
        message: TriggerMessage,
        state: BatchState,
        routes: dict[str, RouteStats],
        error: str | None = None,
        *,
        already_complete: bool = False,
        started: float | None = None,
        runs: Sequence[RouteRun] = (),
    ) -> BatchOutcome:
        return BatchOutcome(
            message.batch_id,
            message.dataset,
            state,
            routes,
            error,
            already_complete=already_complete,
            duration_s=0.0 if started is None else time.monotonic() - started,
            rejects_stored=sum(r.rejects_stored for r in runs),
            fallbacks=sum(r.fallbacks for r in runs),
            shard=message.shard,
        )

    def _logged(self, outcome: BatchOutcome, index: int) -> BatchOutcome:
        """A shard's one INFO line (ERROR with its error); the batch has its own."""
        totals = outcome.totals
        fields = dict(
            batch_id=outcome.batch_id,
            shard=index,
            state=outcome.state.value,
            read=totals.read,
            delivered=totals.delivered,
            dead_lettered=totals.dead_lettered,
            rejected=totals.rejected,
            chunks=totals.chunks,
            duration_s=round(outcome.duration_s, 3),
        )
        if outcome.error:
            log.error("shard.finished", error=outcome.error, **fields)
        else:
            log.info("shard.finished", **fields)
        return outcome
