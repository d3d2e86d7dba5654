"""``sender replay``: send chosen chunks of a batch again, safely, with the bytes and
``Idempotency-Key`` they first had.

Which chunks (``Selection``): the dead-lettered ones (the default), every chunk (``all``), or
listed ids (``3,7-9``), of every route or of ``routes``; each goes to its route's primary, or
to ``to``. Where the payload comes from (``sender.replay.payloads``), in this order:

1. the **source**, re-read and re-chunked by the engine itself (``Engine.recreate_chunks``),
   when it is still there and unchanged since the batch was first read (a changed source is
   refused unless ``force``). Each re-created chunk is checked against the ledger (records,
   bytes, and the sha256 of the payload its holder got) before it is sent;
2. the chunk's **stored copy** otherwise — its dead-letter file (or a file a ``local``
   destination holds): the payload is decompressed, decoded back to the NDJSON lines of the
   chunk and encoded again for the target. Encoding and compression are deterministic, so the
   bytes are those first sent.

Safety: the replay takes the batch's lease in the ledger, so a daemon never sends the batch at
the same time (``wait_s`` waits for a daemon to finish; refused when it does not). A chunk a
replay delivers is marked delivered in the ledger (target, location) and the batch's route
counts move from dead-lettered to delivered; its dead-letter file is kept (``sender
dead-letters --purge`` deletes it). Every replay — refused, interrupted, dry run or not — is
recorded in the ledger with who ran it, the selectors and the outcome (one that selects
nothing, or names a chunk, route or target that is not there, sends nothing and is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..errors import (
    BatchBusy,
    DeliveryError,
    ReplayRefused,
    SelectionError,
    SenderError,
    first_error,
)
from ..events import finish_batch
from ..lease import hold_lease
from ..log import get_logger, mask, mask_optional
from ..model import BatchState, ChunkState, EncodedChunk, TriggerMessage
from ..ports import BatchRecord, ChunkRecord, ReplayLog, RouteStats, replays_of
from ..targets import Target
from .pacing import Paced, Pacer
from .payloads import Payloads
from .report import GuardedReplayHooks, ReplayHooks, ReplayItem, ReplayReport
from .selection import (
    Selection,
    check_chunk_ids,
    check_selection,
    dead_letter_files,
    select_chunks,
    who_am_i,
)

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Replayer"]

log = get_logger("sender.replay")


class Replayer:
    """Runs replays with an opened ``App`` (its ledger, targets, sources and engine)."""

    def __init__(
        self,
        app: App,
        *,
        who: str | None = None,
        hooks: ReplayHooks | None = None,
    ) -> None:
        self.app = app
        self.config = app.config
        self.ledger = app.ledger
        # the audit trail, when the ledger keeps one
        self.replay_log = app.ledger if isinstance(app.ledger, ReplayLog) else None
        self.who = who or who_am_i()
        self.owner = f"replay:{self.who}:{os.getpid()}"
        self.hooks: ReplayHooks = GuardedReplayHooks(hooks or ReplayHooks())
        self.payloads = Payloads(app, self.hooks)

    # -- the whole replay ----------------------------------------------------------------

    async def run(self, batch_id: str, selection: Selection) -> ReplayReport:
        """Replay the chunks ``selection`` picks. Raises ``SelectionError`` (nothing is
        recorded) when the selectors name what is not there; a refusal (``ReplayRefused``) is
        recorded, then raised; delivery failures are in the report."""
        started = time.monotonic()
        record = await self._batch(batch_id)
        check_selection(self.config, selection)
        report = ReplayReport(batch_id, self.who, selection)
        chunks = await self.ledger.chunks(batch_id)
        check_chunk_ids(chunks, selection)
        selected = select_chunks(chunks, selection)
        rest = _covers_the_rest(record, selection)
        if not selected and not rest:
            report.routes = record.routes
            if record.state is BatchState.FAILED:
                report.warnings.append(_REST_HINT)
            return report
        gone = sorted({c.route for c in selected} - set(self.config.routes))
        if gone:
            raise SelectionError(
                f"route {', '.join(gone)} of batch {batch_id} is not in the config any more: "
                "a replay needs its settings (fields, chunking, targets)"
            )
        report.items = await self._items(batch_id, chunks, selection)
        report.batch_finished_at = record.finished_at
        if record.state is BatchState.FAILED and not rest:
            report.warnings.append(_REST_HINT)
        now = datetime.now(UTC)
        if (
            selection.dry_run
            and record.lease_owner
            and (record.lease_expires is None or record.lease_expires > now)
        ):
            report.warnings.append(
                f"{record.lease_owner} holds the batch now: a replay would be refused "
                "(or wait, with --wait)"
            )
        try:
            if selection.dry_run:
                await self._replay(record, chunks, selection, report)
                if rest:
                    report.warnings.append(
                        f"the batch's run ended {record.state.value}: a replay would also cut "
                        "the rest of its chunks from the source as it is now and send them"
                    )
            else:
                await self._take_lease(record, selection.wait_s)
                lease_s = self.config.daemon.lease_s
                async with hold_lease(self.ledger, batch_id, self.owner, lease_s):
                    # the daemon may have moved the batch on while we waited: read it again
                    record = await self._batch(batch_id)
                    chunks = await self.ledger.chunks(batch_id)
                    readable = await self._replay(record, chunks, selection, report)
                if rest:
                    await self._send_rest(record, selection, readable, report)
        except ReplayRefused as exc:
            report.refused = str(exc)
            report.duration_s = time.monotonic() - started
            await self._record(report)
            raise
        except asyncio.CancelledError:
            # Ctrl-C: what was delivered is in the ledger; say so in the audit trail too
            report.interrupted = True
            report.duration_s = time.monotonic() - started
            with contextlib.suppress(SenderError):
                await asyncio.shield(self._record(report))
            raise
        report.duration_s = time.monotonic() - started
        await self._record(report)
        return report

    async def _batch(self, batch_id: str) -> BatchRecord:
        record = await self.ledger.get_batch(batch_id)
        if record is None:
            raise SelectionError(f"no batch {batch_id!r} in the ledger")
        return record

    async def _take_lease(self, record: BatchRecord, wait_s: float) -> None:
        lease_s = self.config.daemon.lease_s
        deadline = time.monotonic() + wait_s
        announced = False
        while not await self.ledger.acquire_lease(record.batch_id, self.owner, lease_s):
            current = await self.ledger.get_batch(record.batch_id)
            holder = (current.lease_owner if current else None) or "another process"
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" (waited {wait_s:g}s)" if wait_s else ""
                raise ReplayRefused(
                    f"batch {record.batch_id} is being sent by {holder}{waited}: a replay "
                    "never sends a batch a daemon is sending. Try again when it is done, "
                    "or wait for it with --wait 5m"
                )
            if not announced:
                self.hooks.waiting(holder, wait_s)
                announced = True
            await asyncio.sleep(min(1.0, left))

    async def _record(self, report: ReplayReport) -> None:
        if self.replay_log is not None:
            await self.replay_log.record_replay(
                report.batch_id, report.who, report.selection.to_dict(), report.outcome()
            )
        log.info(
            "replay.finished",
            batch_id=report.batch_id,
            who=report.who,
            selectors=report.selection.describe(),
            result=report.result,
            selected=len(report.items),
            delivered=len(report.delivered),
            failed=len(report.failed),
        )

    # -- planning and sending ------------------------------------------------------------

    async def _replay(
        self,
        record: BatchRecord,
        chunks: list[ChunkRecord],
        selection: Selection,
        report: ReplayReport,
    ) -> bool:
        """Send the selected chunks; whether the source can be read."""
        message = TriggerMessage.model_validate(record.message)
        report.items = await self._items(record.batch_id, chunks, selection)
        objects = await self.payloads.source_objects(message, record, selection, report)
        if not report.items:
            return objects is not None  # a daemon settled them while we waited for its lease
        self.hooks.started(report)
        targets = self._targets(report, selection)
        queue: asyncio.Queue[tuple[ReplayItem, EncodedChunk] | None] = asyncio.Queue(
            maxsize=max(2, 2 * max(t.concurrency for t in targets.values()))
        )
        workers = max(t.concurrency for t in targets.values())
        routes = {name: dataclasses.replace(stats) for name, stats in record.routes.items()}
        report.routes = routes
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(self._worker(queue, targets, routes, selection))
                await self.payloads.produce(message, objects, report, targets, queue)
                for _ in range(workers):
                    await queue.put(None)
        except BaseExceptionGroup as failed:
            # a ledger or source failure: raise it as itself (the CLI prints SenderErrors)
            raise first_error(failed) from None
        finally:
            if routes != record.routes:
                # the reconciliation follows the chunks: dead-lettered records now delivered.
                # finish_batch moves the batch's finished_at to now: the report keeps the
                # run's (``batch_finished_at``) for ``sender status``
                # a changed outcome is told as sender.batch.replayed (sender.events)
                await asyncio.shield(
                    finish_batch(
                        self.ledger,
                        self.config,
                        record.batch_id,
                        record.state,
                        routes,
                        record.error,
                        replayed=True,
                    )
                )
            # a diff route's baseline takes what the replay delivered (it was held back)
            for route in sorted({item.route for item in report.delivered}):
                await asyncio.shield(self.app.engine.commit_diff(message, route))
        return objects is not None

    async def _send_rest(
        self, record: BatchRecord, selection: Selection, readable: bool, report: ReplayReport
    ) -> None:
        """The chunks a run that ended early (failed on its input, stopped) never cut: a run
        of the batch under its id (``rerun``) cuts every chunk from the source as it is now,
        counts those the ledger has settled and sends the others, so the reconciliation
        counts every record."""
        if not readable:
            report.warnings.append(
                f"the batch's run ended {record.state.value} and its source cannot be read: "
                "the chunks it never cut were not sent"
            )
            return
        message = TriggerMessage.model_validate(record.message)
        routes = selection.routes or message.routes
        rerun = message.model_copy(update={"rerun": True, "routes": routes})
        try:
            outcome = await self.app.engine.run_batch(rerun)
        except BatchBusy as exc:
            report.rest = f"not sent: {exc}"
            return
        report.rest = outcome.state.value + (f": {outcome.error}" if outcome.error else "")
        report.routes = dict(outcome.routes)

    async def _items(
        self, batch_id: str, chunks: Sequence[ChunkRecord], selection: Selection
    ) -> list[ReplayItem]:
        kept = dead_letter_files(await replays_of(self.ledger, batch_id))
        items = []
        for chunk in select_chunks(chunks, selection):
            target = selection.to or self.config.routes[chunk.route].targets[0]
            dead = chunk.location if chunk.state is ChunkState.DEAD_LETTERED else None
            items.append(
                ReplayItem(
                    chunk, target, dead_letter=dead or kept.get((chunk.route, chunk.chunk_id))
                )
            )
        return items

    def _targets(self, report: ReplayReport, selection: Selection) -> dict[str, Target]:
        pacer = Pacer(selection.rate) if selection.rate else None
        targets: dict[str, Target] = {}
        for name in {item.target for item in report.items}:
            target = self.app.targets[name]
            if pacer is not None:
                target = Target(
                    name, Paced(target.destination, pacer), target.options, metrics=target.metrics
                )
            targets[name] = target
        return targets

    async def _worker(
        self,
        queue: asyncio.Queue[tuple[ReplayItem, EncodedChunk] | None],
        targets: dict[str, Target],
        routes: dict[str, RouteStats],
        selection: Selection,
    ) -> None:
        while (job := await queue.get()) is not None:
            item, chunk = job
            item.wire_size = len(chunk.payload)
            if selection.dry_run:
                item.state = "would send"
                self.hooks.chunk_done(item)
                continue
            await self._send(item, chunk, targets[item.target], routes)
            self.hooks.chunk_done(item)

    async def _send(
        self,
        item: ReplayItem,
        chunk: EncodedChunk,
        target: Target,
        routes: dict[str, RouteStats],
    ) -> None:
        fields = dict(batch_id=chunk.batch_id, route=item.route, chunk=item.chunk_id)
        before = item.before
        if chunk.idempotency_key != before.idempotency_key and before.idempotency_key:
            chunk.idempotency_key = before.idempotency_key  # the key it first had, always
        try:
            delivered = await target.send(
                chunk, batch_id=chunk.batch_id, route=item.route, chunk=item.chunk_id
            )
        except DeliveryError as exc:
            item.state, item.attempts, item.error = "failed", exc.attempts or 1, mask(str(exc))
            log.warning("replay.chunk_failed", target=target.name, error=str(exc), **fields)
            return
        item.state, item.attempts = "delivered", delivered.attempts
        item.location = mask_optional(delivered.receipt.location)
        after = dataclasses.replace(
            before,
            state=ChunkState.DELIVERED,
            target=target.name,
            location=item.location,
            attempts=before.attempts + delivered.attempts,
            checksum=chunk.checksum,
        )
        await self.ledger.save_chunks([after])
        stats = routes.get(item.route)
        if stats is not None and before.state is not ChunkState.DELIVERED:
            if before.state is ChunkState.DEAD_LETTERED:
                stats.dead_lettered -= before.records
            stats.delivered += before.records
        log.debug(
            "replay.chunk_delivered",
            target=target.name,
            attempts=delivered.attempts,
            records=before.records,
            bytes=len(chunk.payload),
            **fields,
        )


_REST_HINT = (
    "the batch's run failed before it cut every chunk: `sender replay --all` (with --force "
    "when its input was fixed) or `sender send --rerun` sends the rest"
)


def _covers_the_rest(record: BatchRecord, selection: Selection) -> bool:
    """``--all`` of a batch whose run did not complete covers the chunks it never cut, sent
    to their routes' targets (not with ``--to``: a run sends to the route's own)."""
    return (
        selection.mode == "all" and selection.to is None and record.state is not BatchState.COMPLETE
    )
