"""Diff sync in a run: a diff route's plan made before the batch is sent, applied while it is
cut, and the delivered records moved into the baseline when it ends (``sender.diff`` has the
planner and the filter; the ledger's ``DiffStore`` keeps baselines and plans).

- ``plan_routes`` (once per batch and route, before the first chunk): the records are read
  and projected as the run will read them, and the plan is frozen in the ledger. A resume,
  or a replay, finds it there and never looks at the baseline again.
- ``RouteDiff`` rides on the route's run: ``prefetch`` before a block, ``apply`` inside the
  route's synchronous cutting, ``tombstone_lines`` after the last block.
- ``commit_delivered`` moves the records of delivered chunks (and pieces of split chunks) into
  the baseline: a record is in a chunk by its position among the sent ones (its ``seq``),
  and a chunk's records are contiguous, so each delivered chunk is one range of seqs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .blocks import RecordBlock
from .chunker import Lines
from .diff import DiffFilter, DiffPlanner, DiffSpec, baseline_pages, tombstone
from .log import get_logger
from .model import BadRecord, ChunkState, ObjectInfo, TriggerMessage, chunk_sort_key
from .options import DiffConfig
from .ports import ChunkRecord, DiffStore, Ledger, PlanRow, Source
from .readers import read_records

if TYPE_CHECKING:
    from .config import AppConfig
    from .routing import RouteRun

# the split chunk row's target (sender.routing.SPLIT_TARGET, which imports this module)
_SPLIT_TARGET = "(split)"

__all__ = [
    "RouteDiff",
    "attach_plan",
    "commit_delivered",
    "commit_route",
    "commit_runs",
    "delivered_ranges",
    "plan_and_attach",
    "plan_routes",
    "spec_of",
]

log = get_logger("sender.diff")

_TOMBSTONE_PAGE = 5000


def spec_of(config: DiffConfig) -> DiffSpec:
    return DiffSpec(key=tuple(config.key), ignore=frozenset(config.ignore), deletes=config.deletes)


@dataclass
class RouteDiff:
    """One diff route of one batch: its frozen plan, read back a page at a time."""

    store: DiffStore
    batch_id: str
    route: str
    spec: DiffSpec
    filter: DiffFilter = field(init=False)
    tombstones_from: int | None = None  # the first tombstone's seq: the number of sends

    def __post_init__(self) -> None:
        self.filter = DiffFilter(self._page)

    async def _page(self, after: int, limit: int) -> list[PlanRow]:
        return await self.store.plan_page(self.batch_id, self.route, after, limit)

    async def open(self) -> None:
        """Learn where the tombstones start (chunks holding them count them apart)."""
        first = await self.store.tombstone_page(self.batch_id, self.route, -1, 1)
        self.tombstones_from = first[0].seq if first else None

    async def prefetch(self, block: RecordBlock) -> None:
        await self.filter.prefetch(block.records)

    def apply(
        self, lines: Sequence[bytes], locate: Callable[[int], str]
    ) -> tuple[Sequence[bytes], int, list[BadRecord]]:
        sent, unchanged, bad = self.filter.apply(lines, locate)
        return (Lines.of(sent) if isinstance(lines, Lines) else sent), unchanged, bad

    async def tombstone_lines(self) -> AsyncIterator[list[bytes]]:
        """The tombstones ``{key..., "_deleted": true}``, a page at a time, in seq order."""
        after = -1
        while page := await self.store.tombstone_page(
            self.batch_id, self.route, after, _TOMBSTONE_PAGE
        ):
            yield [tombstone(self.spec, row.key or b"") for row in page]
            after = page[-1].seq or 0
            if len(page) < _TOMBSTONE_PAGE:
                return

    def tombstones_in(self, start: int, records: int) -> int:
        """How many of the records ``[start, start + records)`` are tombstones."""
        if self.tombstones_from is None:
            return 0
        return max(0, start + records - max(start, self.tombstones_from))


async def plan_routes(
    message: TriggerMessage,
    store: DiffStore,
    source: Source,
    objects: Sequence[ObjectInfo],
    runs: Mapping[str, Callable[[RecordBlock], tuple[Sequence[bytes], Callable[[int], str]]]],
    specs: Mapping[str, DiffSpec],
    max_record_bytes: int,
) -> None:
    """Freeze the plan of every route in ``runs`` that has none yet: one read of the batch
    feeds them all. ``runs[route](block)`` gives the block's records as the route's run
    projects them (good ones only, in order). ``message.full`` plans without the baseline."""
    todo = [r for r in runs if not await store.has_plan(message.batch_id, r)]
    if not todo:
        return
    planners = {route: DiffPlanner(specs[route]) for route in todo}
    try:
        async for block in read_records(
            source, list(objects), message.format, max_record_bytes=max_record_bytes
        ):
            for route in todo:
                lines, _ = runs[route](block)
                planners[route].add(lines)
        for route in todo:
            await store.start_plan(message.batch_id, route)

            async def save(rows: Sequence[PlanRow], route: str = route) -> None:
                await store.save_plan(message.batch_id, route, rows)

            baseline = None if message.full else baseline_pages(store, message.dataset, route)
            stats = await planners[route].plan(baseline, save)
            await store.finish_plan(message.batch_id, route)
            log.info(
                "diff.planned",
                batch_id=message.batch_id,
                route=route,
                full=message.full,
                read=stats.read,
                send=stats.send,
                unchanged=stats.unchanged,
                rejected=stats.rejected,
                tombstones=stats.tombstones,
            )
    finally:
        for planner in planners.values():
            planner.close()


def delivered_ranges(chunks: Sequence[ChunkRecord], split_target: str) -> list[tuple[int, int]]:
    """The seq ranges of a route's delivered data chunks (and delivered pieces of split ones).

    Whole chunks ("0", "1", ...) hold consecutive runs of the sent records in id order; a
    split chunk's pieces are its halves ("7.0": the first ceil(n/2), "7.1": the rest)."""
    by_id = {c.chunk_id: c for c in chunks if c.kind == "data"}
    whole = sorted(
        (c for c in by_id.values() if "." not in c.chunk_id),
        key=lambda c: chunk_sort_key(c.chunk_id),
    )
    ranges: list[tuple[int, int]] = []

    def walk(chunk: ChunkRecord, start: int) -> None:
        if chunk.target == split_target:
            first = by_id.get(chunk.chunk_id + ".0")
            second = by_id.get(chunk.chunk_id + ".1")
            middle = (chunk.records + 1) // 2
            if first is not None:
                walk(first, start)
            if second is not None:
                walk(second, start + middle)
        elif chunk.state is ChunkState.DELIVERED:
            ranges.append((start, start + chunk.records))

    start = 0
    for chunk in whole:
        walk(chunk, start)
        start += chunk.records
    return ranges


async def commit_delivered(
    store: DiffStore,
    message: TriggerMessage,
    route: str,
    chunks: Sequence[ChunkRecord],
    split_target: str,
    *,
    replace: bool,
) -> int:
    """Move the route's delivered records into its baseline (see ``delivered_ranges``)."""
    ranges = delivered_ranges(chunks, split_target)
    moved = await store.commit_baseline(
        message.dataset, route, message.batch_id, ranges, replace=replace
    )
    log.info("diff.committed", batch_id=message.batch_id, route=route, rows=moved, full=replace)
    return moved


# -- the engine's and the replayer's side ------------------------------------------------------


async def plan_and_attach(
    ledger: Ledger,
    message: TriggerMessage,
    runs: Sequence[RouteRun],
    fresh: Callable[[str], RouteRun],
    source: Source,
    objects: Sequence[ObjectInfo],
    max_record_bytes: int,
) -> None:
    """Freeze the plan of every diff route among ``runs`` (once: a resume finds it), then
    attach it to the run. ``fresh(route)`` makes another run of the route to project the
    records for planning, so that the batch's own runs count nothing twice."""
    diffed = [run for run in runs if run.config.diff is not None]
    if not diffed:
        return
    assert isinstance(ledger, DiffStore), "config check refuses diff without a DiffStore"
    specs = {run.name: spec_of(run.config.diff) for run in diffed if run.config.diff}
    projections = {run.name: _projected(fresh(run.name)) for run in diffed}
    await plan_routes(message, ledger, source, objects, projections, specs, max_record_bytes)
    for run in diffed:
        run.diff = RouteDiff(ledger, message.batch_id, run.name, specs[run.name])
        await run.diff.open()


async def attach_plan(ledger: Ledger, message: TriggerMessage, run: RouteRun) -> None:
    """A replay cuts a diff route by the plan frozen at its first run, as that run did."""
    config = run.config.diff
    if config is None or not isinstance(ledger, DiffStore):
        return
    if await ledger.has_plan(message.batch_id, run.name):
        run.diff = RouteDiff(ledger, message.batch_id, run.name, spec_of(config))
        await run.diff.open()


async def commit_runs(message: TriggerMessage, runs: Sequence[RouteRun]) -> None:
    """The batch is complete: what each diff route delivered enters its baseline (a full
    refresh replaces the baseline with it)."""
    for run in runs:
        if run.diff is not None:
            chunks = list(run.previous.values())
            await commit_delivered(
                run.diff.store, message, run.name, chunks, _SPLIT_TARGET, replace=message.full
            )


async def commit_route(
    config: AppConfig, ledger: Ledger, message: TriggerMessage, route: str
) -> None:
    """After a replay: what the route has delivered by now, records dead-lettered at first
    and delivered by the replay among them, enters its baseline."""
    if config.routes[route].diff is None or not isinstance(ledger, DiffStore):
        return
    if not await ledger.has_plan(message.batch_id, route):
        return
    chunks = await ledger.chunks(message.batch_id, route)
    await commit_delivered(ledger, message, route, chunks, _SPLIT_TARGET, replace=False)


def _projected(
    run: RouteRun,
) -> Callable[[RecordBlock], tuple[Sequence[bytes], Callable[[int], str]]]:
    def project(block: RecordBlock) -> tuple[Sequence[bytes], Callable[[int], str]]:
        lines, _, locate = run.project(block)
        return lines, locate

    return project
