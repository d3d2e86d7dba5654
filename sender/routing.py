"""Routing and chunk cutting: what one route of one batch makes of the records read.

Each route projects the records (``fields``), sets the bad ones aside by its
``on_bad_record`` policy, and cuts the rest into chunks (``chunk.records`` / ``chunk.bytes``);
a chunk split because a receiver refused it is cut in halves, always the same way. The same
cutting serves a run and ``sender replay``, which must re-create exactly the chunks first sent.
A ``RouteRun`` also keeps the route's reconciliation as chunks settle.
"""

from __future__ import annotations

import hashlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace

from .casting import Caster
from .chunker import Chunker, Lines, RawChunk
from .codecs import compress, encode
from .config import AppConfig, RouteConfig
from .diffsync import RouteDiff
from .errors import BadRecordPolicyFailed, SourceError
from .log import get_logger
from .model import BadRecord, ChunkState, EncodedChunk, ObjectInfo, chunk_sort_key, idempotency_key
from .ports import ChunkRecord, RouteStats, Source
from .projection import Projection
from .readers import MAX_RECORD_BYTES, RecordBlock, read_records
from .targets import Target

__all__ = [
    "SPLIT_TARGET",
    "RouteRun",
    "encode_chunk",
    "halves",
    "keep_counts_when_nothing_was_read",
    "recut",
]

log = get_logger("sender.engine")

_REJECTS_PER_FILE = 1000

# The ``target`` of a chunk row that was split because a receiver refused it (see
# ``sender.delivery``): its records are counted through its pieces' rows ("7.0", "7.1.0"...).
# Parentheses keep it apart from destination names (a bare TOML key cannot hold them).
SPLIT_TARGET = "(split)"  # sender.diffsync knows it too


def encode_chunk(
    raw: RawChunk,
    *,
    batch_id: str,
    dataset: str,
    route: str,
    format: str,
    codec: str,
    level: int | None,
    columns: Sequence[str] | None,
    kind: str = "data",
) -> EncodedChunk:
    """A raw chunk in one target's format and codec. CPU-bound: call it in a worker thread."""
    payload = compress(encode(raw.lines, format, columns), codec, level)
    return EncodedChunk(
        batch_id=batch_id,
        dataset=dataset,
        route=route,
        chunk_id=raw.chunk_id,
        records=raw.records,
        format=format,
        codec=codec,
        payload=payload,
        raw_size=raw.raw_size,
        idempotency_key=idempotency_key(batch_id, route, raw.chunk_id),
        kind=kind,
        digest=hashlib.sha256(payload).hexdigest(),  # here, off the event loop
    )


def halves(raw: RawChunk) -> list[RawChunk]:
    """``7`` → ``7.0`` (the first ceil(n/2) records) and ``7.1`` (the rest): always the same."""
    middle = (raw.records + 1) // 2
    return [
        RawChunk(f"{raw.chunk_id}.{i}", lines, sum(len(line) + 1 for line in lines))
        for i, lines in enumerate((raw.lines[:middle], raw.lines[middle:]))
    ]


@dataclass
class RouteRun:
    """One route of one running batch: projection, chunking, its targets, and the chunks the
    ledger already has (``previous``, kept up to date as chunks settle)."""

    name: str
    config: RouteConfig
    targets: list[Target]
    dead_letter: Target
    previous: dict[str, ChunkRecord]
    stats: RouteStats = field(default_factory=RouteStats)
    projection: Projection | None = None
    caster: Caster | None = None
    diff: RouteDiff | None = None  # set by the engine for a diff-synced route
    chunker: Chunker = field(init=False)
    seq_starts: dict[str, int] = field(default_factory=dict)  # data chunk -> its first seq
    _seq: int = 0
    rejects: list[BadRecord] = field(default_factory=list)
    rejects_index: int = 0
    rejects_stored: int = 0
    fallbacks: int = 0
    # the first chunk's (and rejects file's) index: a shard's base (``sender.shards``), and
    # the index its chunks must stay below (the next shard's base)
    base: int = 0
    ceiling: int | None = None

    def __post_init__(self) -> None:
        if self.config.fields:
            self.projection = Projection(self.config.fields)
        if self.config.types:
            self.caster = Caster(self.config.types)
        chunk = self.config.chunk
        self.chunker = Chunker(chunk.records, chunk.bytes, first_index=self.base)
        self.rejects_index = self.base

    @classmethod
    def of(
        cls,
        config: AppConfig,
        name: str,
        targets: dict[str, Target],
        previous: dict[str, ChunkRecord] | None = None,
        *,
        base: int = 0,
    ) -> RouteRun:
        """The run of route ``name`` with its targets and dead-letter store; its chunks are
        numbered from ``base`` (a shard's, else 0)."""
        route = config.routes[name]
        return cls(
            name,
            route,
            [targets[t] for t in route.targets],
            targets[route.dead_letter or config.dead_letter_default],
            previous if previous is not None else {},
            base=base,
        )

    @property
    def columns(self) -> list[str] | None:
        return list(self.config.fields) if self.config.fields else None

    def project(
        self, block: RecordBlock
    ) -> tuple[Sequence[bytes], list[BadRecord], Callable[[int], str]]:
        """The block's records as this route sends them (cast, projected), the bad ones,
        and where each good one came from. The same for a run, a replay and diff planning."""
        lines, bad, locate = block.lines, list(block.bad), block.locate
        if self.caster is not None and block.format == "csv":
            cast, more, locate = self.caster.apply(lines, locate)
            lines = Lines.of(cast)
            bad.extend(more)
        if self.projection is not None:
            # on the loop: in a worker thread it fought the loop for the GIL and cost a fifth
            # of the throughput (bench: 242k -> 194k records/s)
            lines, more = self.projection.apply(lines, locate)
            bad.extend(more)
        return lines, bad, locate

    def cut(self, block: RecordBlock) -> list[tuple[RawChunk, str]]:
        """The chunks a block of records completes, each with its kind ("data", or
        "rejects" for a file of bad input records). Raises ``BadRecordPolicyFailed``. A diff
        route's filter must have been prefetched for the block (``RouteDiff.prefetch``)."""
        self.stats.read += len(block.lines) + len(block.bad)
        lines, bad, locate = self.project(block)
        if self.diff is not None:
            lines, unchanged, more = self.diff.apply(lines, locate)
            self.stats.unchanged += unchanged
            bad.extend(more)
        if bad:
            self._bad_records(bad)
        out = [(raw, "data") for raw in self._chunks(self.chunker.feed(lines))]
        out.extend((raw, "rejects") for raw in self.flush_rejects(final=False))
        return out

    def feed_tombstones(self, lines: Sequence[bytes]) -> list[RawChunk]:
        """Tombstones go out after every record, through the same chunker."""
        return self._chunks(self.chunker.feed(lines))

    def finish(self) -> list[RawChunk]:
        """The last data chunk, when records are left over."""
        return self._chunks(self.chunker.finish())

    def _chunks(self, chunks: Iterable[RawChunk]) -> list[RawChunk]:
        # a chunk's records are consecutive among those sent: its first seq places them
        out = list(chunks)
        if self.ceiling is not None and out and int(out[-1].chunk_id) >= self.ceiling:
            # its ids would be the next shard's: refuse rather than overwrite them
            raise SourceError(
                f"route {self.name}: a shard cut more than {self.ceiling - self.base:,} "
                "chunks; lower [daemon] shard_objects or raise the route's chunk size"
            )
        for raw in out:
            self.seq_starts[raw.chunk_id] = self._seq
            self._seq += raw.records
        return out

    def _bad_records(self, bad: list[BadRecord]) -> None:
        first = bad[0]
        if self.config.on_bad_record == "fail":
            raise BadRecordPolicyFailed(
                f"bad record at {first.location}: {first.reason} (route {self.name} has "
                "on_bad_record = 'fail')"
            )
        log.warning(
            "records.bad",
            route=self.name,
            count=len(bad),
            first_location=first.location,
            first_reason=first.reason,
            policy=self.config.on_bad_record,
        )
        self.rejects.extend(bad)

    def flush_rejects(self, *, final: bool) -> list[RawChunk]:
        """Files of bad records: every full one, and with ``final`` the rest too."""
        out = []
        while len(self.rejects) >= _REJECTS_PER_FILE or (final and self.rejects):
            taken = self.rejects[:_REJECTS_PER_FILE]
            del self.rejects[:_REJECTS_PER_FILE]
            lines = [bad.to_json_line() for bad in taken]
            out.append(RawChunk(f"r{self.rejects_index}", lines, sum(len(x) + 1 for x in lines)))
            self.rejects_index += 1
        return out

    def count(self, chunk: ChunkRecord) -> None:
        """A chunk settled (or found settled in the ledger): into the reconciliation."""
        self.previous[chunk.chunk_id] = chunk
        if chunk.target == SPLIT_TARGET:
            # counted once, through its pieces; pieces split again are skipped in turn
            prefix = chunk.chunk_id + "."
            for piece in [c for c in self.previous.values() if c.chunk_id.startswith(prefix)]:
                if piece.target != SPLIT_TARGET:
                    self._tally(piece)
            return
        self._tally(chunk)

    def _tally(self, chunk: ChunkRecord) -> None:
        """Add one settled chunk (not a split one) to the route's reconciliation."""
        if chunk.kind == "rejects":
            self.stats.rejected += chunk.records
            if chunk.state is ChunkState.DEAD_LETTERED:
                self.rejects_stored += chunk.records
        elif chunk.state is ChunkState.DELIVERED:
            deleted = self._tombstones(chunk)
            self.stats.delivered += chunk.records - deleted
            self.stats.tombstones += deleted
            if chunk.target != self.targets[0].name:
                self.fallbacks += 1
        elif chunk.state is ChunkState.DEAD_LETTERED:
            deleted = self._tombstones(chunk)
            self.stats.dead_lettered += chunk.records - deleted
            self.stats.tombstones_dead_lettered += deleted

    def _tombstones(self, chunk: ChunkRecord) -> int:
        """The tombstones among a data chunk's (or piece's) records: not read from the batch,
        so they count apart from the records in the reconciliation."""
        if self.diff is None:
            return 0
        whole, _, halves_path = chunk.chunk_id.partition(".")
        start = self.seq_starts.get(whole)
        if start is None:
            return 0
        size = self.previous[whole].records if whole in self.previous else chunk.records
        for half in halves_path.split(".") if halves_path else ():
            middle = (size + 1) // 2
            start, size = (start, middle) if half == "0" else (start + middle, size - middle)
        return self.diff.tombstones_in(start, chunk.records)

    @property
    def unsettled(self) -> bool:
        """Some chunk the ledger knows is not terminal yet."""
        return any(not c.state.terminal for c in self.previous.values())


async def recut(
    run: RouteRun,
    source: Source,
    objects: Sequence[ObjectInfo],
    format: str | None,
    wanted: Collection[str] | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> AsyncIterator[RawChunk]:
    """Read ``objects`` again and yield the data chunks of ``run``'s route cut exactly as a
    run cuts them (same projection, same chunker), in order. Only ids in ``wanted`` are
    yielded (every whole chunk when None), and reading stops once all of them were found.
    Pieces of a split chunk ("7.1.0") are cut from their chunk by ``halves``. Raises
    ``SourceError`` like a run does.
    """
    # whole chunk id -> the ids wanted from it (itself and/or its pieces)
    pieces: dict[str, list[str]] | None = None
    if wanted is not None:
        pieces = {}
        for chunk_id in sorted(set(wanted), key=chunk_sort_key):
            pieces.setdefault(chunk_id.split(".", 1)[0], []).append(chunk_id)
        if not pieces:
            return

    def cut(raw: RawChunk) -> list[RawChunk]:
        if pieces is None:
            return [raw]
        out = []
        for chunk_id in pieces.pop(raw.chunk_id, ()):
            piece = raw
            for half in chunk_id.split(".")[1:]:
                piece = halves(piece)[int(half)]
            out.append(piece)
        return out

    reader = read_records(source, list(objects), format, max_record_bytes=max_record_bytes)
    try:
        async for block in reader:
            if run.diff is not None:
                await run.diff.prefetch(block)
            for raw, kind in run.cut(block):
                if kind != "data":
                    continue
                for piece in cut(raw):
                    yield piece
                if pieces is not None and not pieces:
                    return
    finally:
        # stopping early: close the reader now (files, threads), not when collected
        if isinstance(reader, AsyncGenerator):
            await reader.aclose()
    if run.diff is not None:
        async for lines in run.diff.tombstone_lines():
            for raw in run.feed_tombstones(lines):
                for piece in cut(raw):
                    yield piece
    for raw in run.finish():
        for piece in cut(raw):
            yield piece


def keep_counts_when_nothing_was_read(
    runs: Sequence[RouteRun], previous: Mapping[str, RouteStats]
) -> None:
    """A run that failed before it read a record (its source gone, or changed since the
    batch was first read) keeps the counts the batch had (``previous``): zeros would read
    "read 0 = delivered 0" over records an earlier run delivered."""
    if any(run.stats.read or run.stats.chunks for run in runs):
        return
    for run in runs:
        stats = previous.get(run.name)
        if stats is not None:
            run.stats = replace(stats)
