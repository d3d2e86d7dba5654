"""Where a replayed chunk's payload comes from, in this order: the **source**, re-read and
re-chunked by the engine itself (``Engine.recreate_chunks``) when it is still there — each
re-created chunk checked against the ledger (records, bytes, the sha256 of the payload its
holder got) — else the chunk's **stored copy** (``sender.replay.stored``). A changed source
is refused unless the replay is forced.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..batch_source import list_source, source_change
from ..chunker import RawChunk
from ..errors import ConfigError, ReplayRefused, SourceError
from ..log import get_logger
from ..model import EncodedChunk, ObjectInfo, TriggerMessage
from ..ports import BatchRecord
from ..targets import Target
from .report import ReplayHooks, ReplayItem, ReplayReport
from .selection import Selection
from .stored import Unavailable, read_stored_copy

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Payloads"]

log = get_logger("sender.replay")

Queue = asyncio.Queue[tuple[ReplayItem, EncodedChunk] | None]


class Payloads:
    """The payloads of a replay's items, made for their targets with an opened ``App``."""

    def __init__(self, app: App, hooks: ReplayHooks) -> None:
        self.app = app
        self.hooks = hooks

    async def source_objects(
        self,
        message: TriggerMessage,
        record: BatchRecord,
        selection: Selection,
        report: ReplayReport,
    ) -> list[ObjectInfo] | None:
        """The source's objects when it can be read again, None when it is gone; refuse a
        changed source unless forced."""
        try:
            _, listing = await list_source(self.app.config, self.app.source_for, message.uri)
        except (SourceError, ConfigError) as exc:
            report.source = f"gone ({exc}): chunks come from their stored copies"
            return None
        changed = source_change(record.objects, listing.objects)
        if changed is not None:
            if not selection.force:
                raise ReplayRefused(
                    f"{message.uri}: the source changed since the batch was first read "
                    f"({changed}); its chunks would not be the ones first sent. Replay "
                    "with --force to send the source as it is now"
                )
            report.source = f"changed ({changed}), sent as it is now (--force)"
            return listing.objects
        report.source = (
            "unchanged"
            if record.objects is not None
            else "readable (its first run recorded no listing to compare with)"
        )
        return listing.objects

    async def produce(
        self,
        message: TriggerMessage,
        objects: list[ObjectInfo] | None,
        report: ReplayReport,
        targets: dict[str, Target],
        queue: Queue,
    ) -> None:
        """Payloads for every item, in order: from the source where possible, else from the
        stored copy; an item whose payload cannot be had fails here."""
        by_route: dict[str, dict[str, ReplayItem]] = {}
        for item in report.items:
            by_route.setdefault(item.route, {})[item.chunk_id] = item
        for route, items in by_route.items():
            pending = dict(items)
            if objects is not None:
                try:
                    async for raw in self.app.engine.recreate_chunks(
                        message, route, objects, list(items)
                    ):
                        item = pending[raw.chunk_id]
                        chunk = await self._checked(message, item, raw, targets, report)
                        if chunk is not None:
                            del pending[raw.chunk_id]
                            item.origin = "source"
                            await queue.put((item, chunk))
                except SourceError as exc:
                    log.warning("replay.source_failed", batch_id=message.batch_id, error=str(exc))
                    report.source = f"unreadable part-way ({exc})"
            for item in pending.values():
                try:
                    raw = await read_stored_copy(
                        self.app.config, self.app.source_for, item.before, item.dead_letter
                    )
                    item.origin = "stored copy"
                    chunk = await self.app.engine.encode_for(
                        message, route, raw, targets[item.target]
                    )
                except Unavailable as exc:
                    item.state, item.error = "failed", str(exc)
                    self.hooks.chunk_done(item)
                    continue
                await queue.put((item, chunk))

    async def _checked(
        self,
        message: TriggerMessage,
        item: ReplayItem,
        raw: RawChunk,
        targets: dict[str, Target],
        report: ReplayReport,
    ) -> EncodedChunk | None:
        """The re-created chunk for its target, when it is the one the ledger knows: same
        records and bytes, and the payload its holder got hashes the same. Else None (the
        stored copy is tried), unless the replay was forced."""
        before = item.before
        engine = self.app.engine
        chunk = await engine.encode_for(message, item.route, raw, targets[item.target])
        problem = None
        if raw.records != before.records or (before.raw_size and raw.raw_size != before.raw_size):
            problem = (
                f"re-created with {raw.records} records ({raw.raw_size} bytes), first sent "
                f"with {before.records} ({before.raw_size} bytes)"
            )
        elif before.checksum and before.target in self.app.targets:
            holder = self.app.targets[before.target]
            first = chunk
            if holder.encoding != targets[item.target].encoding:
                first = await engine.encode_for(message, item.route, raw, holder)
            if first.checksum != before.checksum:
                problem = "re-created payload differs from the one first sent"
        if problem is None:
            return chunk
        if report.selection.force:
            item.note = f"{problem} (sent anyway: --force)"
            return chunk
        item.note = f"{problem} (route config changed?): sent from the stored copy"
        log.warning(
            "replay.chunk_differs",
            batch_id=message.batch_id,
            route=item.route,
            chunk=item.chunk_id,
            problem=problem,
        )
        return None
