"""The pump: read a batch's objects once (or a shard's), hand every route the chunks it cuts,
in order, and drive each chunk to a terminal state in the ledger, a bounded number at a time.

At most ``_in_flight_limit`` chunks are out at once (enough to keep every route's primary
busy, few enough to bound memory): reading waits for a free place. A chunk the ledger already
has in a terminal state (a resumed batch) is counted, not sent. A dead-letter store that is
down halts the pump: no new chunk is taken, those in flight finish and are recorded, then
``DeadLetterUnavailable`` is raised; a ``SourceError`` likewise lets what is in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from .chunker import RawChunk
from .config import AppConfig
from .delivery import ChunkDelivery
from .errors import DeadLetterUnavailable, SenderError, SourceError, first_error
from .hooks import Hooks
from .model import ObjectInfo, TriggerMessage
from .ports import Ledger, Source
from .readers import read_records
from .routing import SPLIT_TARGET, RouteRun

__all__ = ["Pump"]


class Pump:
    """Delivers the chunks of one engine's runs; one instance serves every batch."""

    def __init__(
        self, config: AppConfig, ledger: Ledger, delivery: ChunkDelivery, hooks: Hooks
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.delivery = delivery
        self.hooks = hooks

    async def deliver_objects(
        self,
        message: TriggerMessage,
        source: Source,
        objects: list[ObjectInfo],
        runs: list[RouteRun],
        stop: asyncio.Event,
    ) -> None:
        """Read ``objects`` once and drive the chunks ``runs`` cut of them to a terminal
        state in the ledger (a whole batch's, or a shard's). Raises ``SourceError``,
        ``DeadLetterUnavailable``, ``BadRecordPolicyFailed``."""
        in_flight = asyncio.Semaphore(_in_flight_limit(runs))
        try:
            await self._pump(message, source, objects, runs, stop, in_flight)
        except BaseExceptionGroup as group:
            raise first_error(group, DeadLetterUnavailable, SourceError, SenderError) from None

    async def _pump(
        self,
        message: TriggerMessage,
        source: Source,
        objects: list[ObjectInfo],
        runs: list[RouteRun],
        stop: asyncio.Event,
        in_flight: asyncio.Semaphore,
    ) -> None:
        read_error: SourceError | None = None
        halted: list[DeadLetterUnavailable] = []

        async def deliver(run: RouteRun, raw: RawChunk, kind: str) -> None:
            try:
                await self._deliver(message, run, raw, kind, in_flight)
            except DeadLetterUnavailable as exc:
                halted.append(exc)  # take no new chunk; the others in flight still finish

        async with asyncio.TaskGroup() as group:

            async def submit(run: RouteRun, raw: RawChunk, kind: str = "data") -> None:
                run.stats.chunks += kind == "data"
                done = run.previous.get(raw.chunk_id)
                if done is not None and done.state.terminal:
                    run.count(done)
                    return
                await in_flight.acquire()
                if halted:
                    in_flight.release()
                    raise halted[0]
                group.create_task(deliver(run, raw, kind))

            try:
                await self._feed(message, source, objects, runs, stop, submit)
            except (SourceError, DeadLetterUnavailable) as exc:
                # chunks already in flight still finish, so their outcome is in the ledger
                read_error = exc if isinstance(exc, SourceError) else None
        if read_error is not None:
            raise read_error
        if halted:
            raise halted[0]

    async def _feed(
        self,
        message: TriggerMessage,
        source: Source,
        objects: list[ObjectInfo],
        runs: list[RouteRun],
        stop: asyncio.Event,
        submit: Callable[..., Awaitable[None]],
    ) -> None:
        """Read the batch once and hand every route its chunks, in order."""
        limit = self.config.daemon.max_record_bytes
        blocks = read_records(source, objects, message.format, max_record_bytes=limit)
        # closed here, not by the garbage collector, when a route fails or the batch stops
        # mid-read: the part file the reader holds open is closed with it
        async with contextlib.aclosing(blocks):
            async for block in blocks:
                if stop.is_set():
                    return
                self.hooks.records_read(message.batch_id, block.records, block.size)
                for run in runs:
                    if run.diff is not None:
                        await run.diff.prefetch(block)
                    for raw, kind in run.cut(block):
                        await submit(run, raw, kind)
        for run in runs:
            if run.diff is not None:
                async for lines in run.diff.tombstone_lines():
                    for raw in run.feed_tombstones(lines):
                        await submit(run, raw)
            for raw in run.finish():
                await submit(run, raw)
            for raw in run.flush_rejects(final=True):
                await submit(run, raw, "rejects")

    async def _deliver(
        self,
        message: TriggerMessage,
        run: RouteRun,
        raw: RawChunk,
        kind: str,
        in_flight: asyncio.Semaphore,
    ) -> None:
        try:
            chunk_record, wire_size = await self.delivery.deliver(message, run, raw, kind)
        finally:
            in_flight.release()
        await self.ledger.save_chunks([chunk_record])
        run.count(chunk_record)
        if chunk_record.target == SPLIT_TARGET:
            return  # its pieces were reported one by one
        self.hooks.chunk_done(
            message.batch_id,
            run.name,
            chunk_record.state.value,
            chunk_record.target,
            chunk_record.records,
            chunk_record.raw_size,
            wire_size,
            kind=chunk_record.kind,
        )


def _in_flight_limit(runs: Sequence[RouteRun]) -> int:
    # enough chunks to keep every primary busy, few enough to bound memory
    return max(2, sum(2 * run.targets[0].concurrency for run in runs))
