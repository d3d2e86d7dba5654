"""The engine: one batch, read once, fanned out to its routes, every chunk driven to a
terminal state in the ledger.

For each route a chunk is tried on the targets in order (primary, then fallbacks), each under
its retry policy; when all fail it goes to the route's dead-letter store. If even that fails,
the batch stops (``DeadLetterUnavailable``), stays incomplete and is resumed later: nothing is
dropped and nothing is marked done that was not stored somewhere.

A target whose circuit is open is skipped without an attempt (``circuit.skip``). A chunk a
target refuses for good (400, 422) is split in halves, down to single records, so that only
the records the receiver refuses are dead-lettered (``_split``; ``split_on_reject``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field

from .casting import Caster
from .chunker import Chunker, Lines, RawChunk
from .codecs import compress, encode
from .config import AppConfig, RouteConfig
from .errors import (
    BadRecordPolicyFailed,
    BatchBusy,
    CircuitOpenError,
    DeadLetterUnavailable,
    DeliveryError,
    FinishFailed,
    MessageError,
    PermanentError,
    SenderError,
    SourceError,
)
from .hooks import Hooks
from .log import get_logger
from .model import (
    BadRecord,
    BatchState,
    ChunkState,
    EncodedChunk,
    ObjectInfo,
    TriggerMessage,
    chunk_sort_key,
    idempotency_key,
)
from .ports import BatchRecord, BatchSummary, ChunkRecord, Ledger, RouteStats, Source
from .projection import Projection
from .readers import RecordBlock, list_batch, read_records
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

_REJECTS_PER_FILE = 1000

# The ``target`` of a chunk row that was split because a receiver refused it (see ``_split``):
# its records are counted through its pieces' rows ("7.0", "7.1.0"...). Parentheses keep it
# apart from destination names (a bare TOML key cannot hold them).
SPLIT_TARGET = "(split)"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


# host:pid alone is not unique: containers sharing a hostname all run as pid 1. The pid
# namespace says whether a pid can be checked from here; the nonce tells processes apart.
_OWNER_TAG = f"{_pid_namespace()}.{secrets.token_hex(3)}"


def default_owner() -> str:
    """Who holds a lease, readable in ``sender status``: ``host:pid:pidns.nonce``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_OWNER_TAG}"


@dataclass(slots=True)
class BatchOutcome:
    batch_id: str
    dataset: str
    state: BatchState
    routes: dict[str, RouteStats]
    error: str | None = None
    already_complete: bool = False
    duration_s: float = 0.0
    rejects_stored: int = 0  # bad records written to a dead-letter store
    fallbacks: int = 0

    @property
    def totals(self) -> RouteStats:
        return RouteStats.total(self.routes.values())

    @property
    def ok(self) -> bool:
        """Complete, with nothing dead-lettered (``sender send`` exits 0)."""
        totals = self.totals
        return (
            self.state is BatchState.COMPLETE
            and totals.dead_lettered == 0
            and self.rejects_stored == 0
        )


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


@dataclass
class _RouteRun:
    """One route of one running batch: projection, chunking, and the chunks in flight."""

    name: str
    config: RouteConfig
    targets: list[Target]
    dead_letter: Target
    previous: dict[str, ChunkRecord]
    stats: RouteStats = field(default_factory=RouteStats)
    projection: Projection | None = None
    caster: Caster | None = None
    chunker: Chunker | None = None
    rejects: list[BadRecord] = field(default_factory=list)
    rejects_index: int = 0
    rejects_stored: int = 0
    fallbacks: int = 0

    def __post_init__(self) -> None:
        if self.config.fields:
            self.projection = Projection(self.config.fields)
        if self.config.types:
            self.caster = Caster(self.config.types)
        self.chunker = Chunker(self.config.chunk.records, self.config.chunk.bytes)

    @property
    def columns(self) -> list[str] | None:
        return list(self.config.fields) if self.config.fields else None


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
        self.hooks = hooks or Hooks()
        self.owner = owner or default_owner()

    def routes_for(self, message: TriggerMessage) -> list[str]:
        return self.config.routes_for(message.dataset, message.routes)

    async def recreate_chunks(
        self,
        message: TriggerMessage,
        route: str,
        objects: Sequence[ObjectInfo],
        wanted: Collection[str] | None = None,
    ) -> AsyncIterator[RawChunk]:
        """Read ``objects`` again and yield the data chunks of ``route`` cut exactly as a run
        cuts them (same projection, same chunker), in order: ``sender replay`` re-creates
        the payloads and idempotency keys first sent. Only ids in ``wanted`` are yielded
        (every whole chunk when None), and reading stops once all of them were found. Pieces
        of a split chunk ("7.1.0") are cut from their chunk as ``_split`` cuts them. Raises
        ``SourceError`` like a run does.
        """
        config = self.config.routes[route]
        run = _RouteRun(
            route,
            config,
            [self.targets[t] for t in config.targets],
            self.targets[config.dead_letter or self.config.dead_letter_default],
            {},
        )
        # whole chunk id -> the ids wanted from it (itself and/or its pieces)
        pieces: dict[str, list[str]] | None = None
        if wanted is not None:
            pieces = {}
            for chunk_id in sorted(set(wanted), key=chunk_sort_key):
                pieces.setdefault(chunk_id.split(".", 1)[0], []).append(chunk_id)
            if not pieces:
                return
        source = await self._source_for(message.uri)

        def cut(raw: RawChunk) -> list[RawChunk]:
            if pieces is None:
                return [raw]
            out = []
            for chunk_id in pieces.pop(raw.chunk_id, ()):
                piece = raw
                for half in chunk_id.split(".")[1:]:
                    piece = _halves(piece)[int(half)]
                out.append(piece)
            return out

        reader = read_records(source, list(objects), message.format)
        try:
            async for block in reader:
                for raw, kind in await self._route_block(run, block):
                    if kind != "data":
                        continue
                    for piece in cut(raw):
                        yield piece
                    if pieces is not None and not pieces:
                        return
        finally:
            # stopping early: close the reader now (files, threads), not when collected
            aclose = getattr(reader, "aclose", None)
            if aclose is not None:
                await aclose()
        assert run.chunker is not None
        for raw in run.chunker.finish():
            for piece in cut(raw):
                yield piece

    async def encode_for(
        self, message: TriggerMessage, route: str, raw: RawChunk, target: Target
    ) -> EncodedChunk:
        """A re-created data chunk in ``target``'s format and codec, as a run encodes it."""
        config = self.config.routes[route]
        return await asyncio.to_thread(
            encode_chunk,
            raw,
            batch_id=message.batch_id,
            dataset=message.dataset,
            route=route,
            format=target.format,
            codec=target.codec,
            level=target.level,
            columns=list(config.fields) if config.fields else None,
        )

    async def run_batch(
        self,
        message: TriggerMessage,
        *,
        stop: asyncio.Event | None = None,
        force: bool = False,
    ) -> BatchOutcome:
        """Deliver a batch, resuming from the ledger; a complete batch sends nothing.

        ``stop`` set: take no new chunks, let those in flight finish, end incomplete.
        ``force``: read the source even if it changed since the batch was first read.
        Raises ``BatchBusy`` when another owner holds the batch, ``MessageError`` if no route
        takes the dataset, ``LedgerError`` if the ledger is down; every other failure is
        recorded in the ledger and returned as the outcome.
        """
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
        if not await self.ledger.acquire_lease(message.batch_id, self.owner, lease_s):
            holder = existing.lease_owner if existing else None
            if not (holder and await self._take_stale_lease(message.batch_id, holder, lease_s)):
                raise BatchBusy(
                    f"batch {message.batch_id} is being sent by {holder or 'another process'}"
                )
        renewer = asyncio.create_task(self._renew_lease(message.batch_id, lease_s))
        try:
            return await self._run(message, route_names, stop or asyncio.Event(), force)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(SenderError):
                await asyncio.shield(self.ledger.release_lease(message.batch_id, self.owner))

    async def _take_stale_lease(self, batch_id: str, holder: str, lease_s: float) -> bool:
        """Take over the lease of a daemon on this host that is gone (``kill -9``, a crash):
        its lease would otherwise hold the batch until it expires. Only a ``host:pid`` owner
        of this very host whose process no longer exists; anything else is left to expire."""
        if not _is_dead_local_owner(holder):
            return False
        log.warning("lease.stale", batch_id=batch_id, owner=holder, taken_by=self.owner)
        await self.ledger.release_lease(batch_id, holder)
        # another process may take it in between: then that one sends, and we do not
        return await self.ledger.acquire_lease(batch_id, self.owner, lease_s)

    async def _renew_lease(self, batch_id: str, lease_s: float) -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await self.ledger.acquire_lease(batch_id, self.owner, lease_s)
            except SenderError as exc:
                log.warning("lease.renew_failed", batch_id=batch_id, error=str(exc))

    async def _run(
        self, message: TriggerMessage, route_names: list[str], stop: asyncio.Event, force: bool
    ) -> BatchOutcome:
        started = time.monotonic()
        record = await self.ledger.start_batch(message)
        batch_id = message.batch_id
        resumed = record.runs > 1
        previous = await self.ledger.chunks(batch_id)
        by_route: dict[str, dict[str, ChunkRecord]] = {}
        for chunk in previous:
            by_route.setdefault(chunk.route, {})[chunk.chunk_id] = chunk
        runs = [
            _RouteRun(
                name,
                self.config.routes[name],
                [self.targets[t] for t in self.config.routes[name].targets],
                self.targets[
                    self.config.routes[name].dead_letter or self.config.dead_letter_default
                ],
                by_route.get(name, {}),
            )
            for name in route_names
        ]
        self.hooks.batch_started(batch_id, message.dataset, route_names)
        log.info(
            "batch.started",
            batch_id=batch_id,
            dataset=message.dataset,
            uri=message.uri,
            routes=route_names,
            resumed=resumed,
        )
        state, error = BatchState.COMPLETE, None
        try:
            await self._deliver_all(message, record, runs, stop, force)
            if stop.is_set() or any(
                not c.state.terminal for r in runs for c in r.previous.values()
            ):
                state = BatchState.INCOMPLETE
            else:
                await self._finish_routes(message, runs)
        except (SourceError, BadRecordPolicyFailed) as exc:
            state, error = BatchState.FAILED, str(exc)
        except (DeadLetterUnavailable, FinishFailed) as exc:
            state, error = BatchState.INCOMPLETE, str(exc)
        except asyncio.CancelledError:
            await asyncio.shield(
                self.ledger.finish_batch(
                    batch_id,
                    BatchState.INCOMPLETE,
                    {r.name: r.stats for r in runs},
                    "interrupted",
                )
            )
            raise
        duration = time.monotonic() - started
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
        await self.ledger.finish_batch(batch_id, state, routes, error)
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
        totals = outcome.totals
        log_fields = dict(
            batch_id=batch_id,
            dataset=message.dataset,
            state=state.value,
            read=totals.read,
            delivered=totals.delivered,
            dead_lettered=totals.dead_lettered,
            rejected=totals.rejected,
            chunks=totals.chunks,
            fallbacks=outcome.fallbacks,
            duration_s=round(duration, 3),
            reconciled=all(s.reconciled for s in routes.values()),
        )
        if error:
            log.error("batch.finished", error=error, **log_fields)
        else:
            log.info("batch.finished", **log_fields)
        return outcome

    async def _deliver_all(
        self,
        message: TriggerMessage,
        record: BatchRecord,
        runs: list[_RouteRun],
        stop: asyncio.Event,
        force: bool,
    ) -> None:
        source = await self._source_for(message.uri)
        section = self.config.source_for(message.uri)
        listing = await list_batch(
            source, message.uri, require_success=section.options.require_success
        )
        await self._check_unchanged(message, record, listing.objects, force)
        in_flight = asyncio.Semaphore(self._in_flight_limit(runs))
        try:
            await self._pump(message, source, listing.objects, runs, stop, in_flight)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    async def _pump(
        self,
        message: TriggerMessage,
        source: Source,
        objects: list[ObjectInfo],
        runs: list[_RouteRun],
        stop: asyncio.Event,
        in_flight: asyncio.Semaphore,
    ) -> None:
        read_error: SourceError | None = None
        halted: list[DeadLetterUnavailable] = []

        async def deliver(run: _RouteRun, raw: RawChunk, kind: str) -> None:
            try:
                await self._deliver(message, run, raw, kind, in_flight)
            except DeadLetterUnavailable as exc:
                halted.append(exc)  # take no new chunk; the others in flight still finish

        async with asyncio.TaskGroup() as group:

            async def submit(run: _RouteRun, raw: RawChunk, kind: str = "data") -> None:
                run.stats.chunks += kind == "data"
                done = run.previous.get(raw.chunk_id)
                if done is not None and done.state.terminal:
                    self._count(run, done)
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
        runs: list[_RouteRun],
        stop: asyncio.Event,
        submit: Callable[..., Awaitable[None]],
    ) -> None:
        """Read the batch once and hand every route its chunks, in order."""
        async for block in read_records(source, objects, message.format):
            if stop.is_set():
                return
            self.hooks.records_read(message.batch_id, block.records, block.size)
            for run in runs:
                for raw, kind in await self._route_block(run, block):
                    await submit(run, raw, kind)
        for run in runs:
            assert run.chunker is not None
            for raw in run.chunker.finish():
                await submit(run, raw)
            for raw in self._flush_rejects(run, final=True):
                await submit(run, raw, "rejects")

    async def _finish_routes(self, message: TriggerMessage, runs: list[_RouteRun]) -> None:
        """Tell each destination that wants to know (a bucket drop) which chunks it holds."""
        for run in runs:
            # a split chunk is not held anywhere itself: its pieces are
            data = [
                c for c in run.previous.values() if c.kind == "data" and c.target != SPLIT_TARGET
            ]
            data.sort(key=lambda c: chunk_sort_key(c.chunk_id))
            seen: set[str] = set()
            for target in [*run.targets, run.dead_letter]:
                finish = getattr(target.destination, "finish_batch", None)
                if finish is None or target.name in seen:
                    continue
                seen.add(target.name)
                held = [c for c in data if c.target == target.name]
                if not held:
                    continue
                summary = BatchSummary(
                    message.batch_id,
                    message.dataset,
                    run.name,
                    held,
                    complete=len(held) == len(data),
                )
                try:
                    await target.retry.call(functools.partial(finish, summary))
                except DeliveryError as exc:
                    raise FinishFailed(
                        f"route {run.name}: finishing the batch on {target.name} failed: {exc}"
                    ) from exc

    async def _check_unchanged(
        self, message: TriggerMessage, record: BatchRecord, objects: list[ObjectInfo], force: bool
    ) -> None:
        if record.objects is not None and not force:
            before = {(o.uri, o.size, o.version) for o in record.objects}
            now = {(o.uri, o.size, o.version) for o in objects}
            if before != now:
                raise SourceError(
                    f"{message.uri}: the source changed since the batch was first read "
                    "(replay with --force to send it as it is now)"
                )
        if record.objects is None or force:
            await self.ledger.set_objects(message.batch_id, objects)

    @staticmethod
    def _in_flight_limit(runs: Sequence[_RouteRun]) -> int:
        # enough chunks to keep every primary busy, few enough to bound memory
        return max(2, sum(2 * run.targets[0].concurrency for run in runs))

    async def _route_block(self, run: _RouteRun, block: RecordBlock) -> list[tuple[RawChunk, str]]:
        run.stats.read += len(block.lines) + len(block.bad)
        lines, bad, locate = block.lines, list(block.bad), block.locate
        if run.caster is not None and block.format == "csv":
            cast, more, locate = run.caster.apply(lines, locate)
            lines = Lines.of(cast)
            bad.extend(more)
        if run.projection is not None:
            # on the loop: in a worker thread it fought the loop for the GIL and cost a fifth
            # of the throughput (bench: 242k -> 194k records/s)
            lines, more = run.projection.apply(lines, locate)
            bad.extend(more)
        if bad:
            self._bad_records(run, bad)
        assert run.chunker is not None
        out = [(raw, "data") for raw in run.chunker.feed(lines)]
        out.extend((raw, "rejects") for raw in self._flush_rejects(run, final=False))
        return out

    def _bad_records(self, run: _RouteRun, bad: list[BadRecord]) -> None:
        first = bad[0]
        if run.config.on_bad_record == "fail":
            raise BadRecordPolicyFailed(
                f"bad record at {first.location}: {first.reason} (route {run.name} has "
                "on_bad_record = 'fail')"
            )
        log.warning(
            "records.bad",
            route=run.name,
            count=len(bad),
            first_location=first.location,
            first_reason=first.reason,
            policy=run.config.on_bad_record,
        )
        run.rejects.extend(bad)

    def _flush_rejects(self, run: _RouteRun, *, final: bool) -> list[RawChunk]:
        out = []
        while len(run.rejects) >= _REJECTS_PER_FILE or (final and run.rejects):
            taken = run.rejects[:_REJECTS_PER_FILE]
            del run.rejects[:_REJECTS_PER_FILE]
            lines = [bad.to_json_line() for bad in taken]
            out.append(RawChunk(f"r{run.rejects_index}", lines, sum(len(x) + 1 for x in lines)))
            run.rejects_index += 1
        return out

    @staticmethod
    def _count(run: _RouteRun, chunk: ChunkRecord) -> None:
        run.previous[chunk.chunk_id] = chunk
        if chunk.target == SPLIT_TARGET:
            # counted once, through its pieces; pieces split again are skipped in turn
            prefix = chunk.chunk_id + "."
            for piece in [c for c in run.previous.values() if c.chunk_id.startswith(prefix)]:
                if piece.target != SPLIT_TARGET:
                    _tally(run, piece)
            return
        _tally(run, chunk)

    async def _encode(
        self, message: TriggerMessage, run: _RouteRun, raw: RawChunk, target: Target, kind: str
    ) -> EncodedChunk:
        format = "ndjson" if kind == "rejects" else target.format
        return await asyncio.to_thread(
            encode_chunk,
            raw,
            batch_id=message.batch_id,
            dataset=message.dataset,
            route=run.name,
            format=format,
            codec=target.codec,
            level=target.level,
            columns=run.columns,
            kind=kind,
        )

    async def _deliver(
        self,
        message: TriggerMessage,
        run: _RouteRun,
        raw: RawChunk,
        kind: str,
        in_flight: asyncio.Semaphore,
    ) -> None:
        try:
            chunk_record, wire_size = await self._deliver_chunk(message, run, raw, kind)
        finally:
            in_flight.release()
        await self.ledger.save_chunks([chunk_record])
        self._count(run, chunk_record)
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

    async def _deliver_chunk(
        self,
        message: TriggerMessage,
        run: _RouteRun,
        raw: RawChunk,
        kind: str,
        *,
        first_target: int = 0,
    ) -> tuple[ChunkRecord, int]:
        """Try the targets in order (from ``first_target``), then the dead-letter store; the
        record and wire bytes. A target whose circuit is open is skipped; a chunk a target
        refuses permanently is split (``_split``) when the route allows it."""
        fields = dict(batch_id=message.batch_id, route=run.name, chunk=raw.chunk_id)
        record = ChunkRecord(
            message.batch_id,
            run.name,
            raw.chunk_id,
            ChunkState.PENDING,
            records=raw.records,
            raw_size=raw.raw_size,
            kind=kind,
            idempotency_key=idempotency_key(message.batch_id, run.name, raw.chunk_id),
        )
        errors: list[str] = []
        if kind == "rejects" and run.config.on_bad_record == "skip":
            record.state = ChunkState.SKIPPED
            return record, 0
        encoded: dict[tuple[str, str, int | None], EncodedChunk] = {}
        before = run.previous.get(raw.chunk_id)
        if kind == "data" and before is not None and before.target == SPLIT_TARGET:
            # split before a restart: split again (the pieces already done are not resent),
            # never send the whole chunk, whose delivered pieces would arrive twice
            record.attempts = before.attempts
            return await self._split(message, run, raw, record, 0, before.last_error or "")
        if kind == "data":
            for position, target in enumerate(run.targets):
                if position < first_target:
                    continue
                if not target.available():
                    self._skip(run, position, target, errors, fields)
                    continue
                key = target.encoding
                if key not in encoded:
                    encoded[key] = await self._encode(message, run, raw, target, kind)
                chunk = encoded[key]
                try:
                    delivered = await target.send(chunk, **fields)
                except CircuitOpenError:
                    # opened (or its probe taken) since available() said yes
                    self._skip(run, position, target, errors, fields)
                    continue
                except DeliveryError as exc:
                    record.attempts += exc.attempts or 1
                    errors.append(f"{target.name}: {exc}")
                    permanent = isinstance(exc, PermanentError)
                    if (
                        isinstance(exc, PermanentError)
                        and exc.payload
                        and run.config.split_on_reject
                        and raw.records > 1
                    ):
                        return await self._split(message, run, raw, record, position, errors[-1])
                    log.warning(
                        "chunk.target_failed",
                        target=target.name,
                        error=str(exc),
                        permanent=permanent,
                        next=_next_name(run.targets, position, run.dead_letter),
                        **fields,
                    )
                    if position + 1 < len(run.targets):
                        self.hooks.fallback(run.name, target.name, str(exc))
                    continue
                record.attempts += delivered.attempts
                record.state = ChunkState.DELIVERED
                record.target = target.name
                record.location = delivered.receipt.location
                record.checksum = chunk.checksum
                record.last_error = errors[-1] if errors else None
                log.debug(
                    "chunk.delivered",
                    target=target.name,
                    attempts=record.attempts,
                    records=raw.records,
                    bytes=len(chunk.payload),
                    **fields,
                )
                return record, len(chunk.payload)
        return await self._dead_letter(message, run, raw, kind, record, errors, encoded)

    def _skip(
        self,
        run: _RouteRun,
        position: int,
        target: Target,
        errors: list[str],
        fields: dict[str, str],
    ) -> None:
        """A target with an open circuit: no encoding, no attempt, on to the next one."""
        errors.append(f"{target.name}: circuit open")
        log.info(
            "circuit.skip",
            target=target.name,
            next=_next_name(run.targets, position, run.dead_letter),
            **fields,
        )
        if position + 1 < len(run.targets):
            self.hooks.fallback(run.name, target.name, "circuit open")

    async def _split(
        self,
        message: TriggerMessage,
        run: _RouteRun,
        raw: RawChunk,
        record: ChunkRecord,
        position: int,
        reason: str,
    ) -> tuple[ChunkRecord, int]:
        """Poison-record isolation: a target refused the chunk for good, so each half is
        delivered on its own from that target on (then its fallbacks, then the dead-letter
        store), halving again down to single records. The good records get through; a bad
        record ends dead-lettered with the receiver's answer.

        The halves are "7.0" (the first ceil(n/2) records) and "7.1", then "7.1.0"...: the
        same every time, each with its own Idempotency-Key. Every piece has its ledger row.
        The chunk's own row is marked split (target ``SPLIT_TARGET``, state pending) *before*
        a piece is sent, and delivered once every piece is terminal; its records are counted
        through the pieces. A resume splits it again and sends only the pieces not done.
        """
        fields = dict(batch_id=message.batch_id, route=run.name, chunk=raw.chunk_id)
        halves = _halves(raw)
        record.state = ChunkState.PENDING
        record.target = SPLIT_TARGET
        record.last_error = reason
        record.location = None
        await self.ledger.save_chunks([record])
        run.previous[raw.chunk_id] = record
        log.info(
            "chunk.split",
            target=run.targets[position].name,
            records=raw.records,
            into=[half.chunk_id for half in halves],
            error=reason,
            **fields,
        )
        wire_size = 0
        for half in halves:
            done = run.previous.get(half.chunk_id)
            if done is not None and done.state.terminal:
                continue  # settled before a restart
            piece, size = await self._deliver_chunk(
                message, run, half, "data", first_target=position
            )
            await self.ledger.save_chunks([piece])
            run.previous[half.chunk_id] = piece
            wire_size += size
            if piece.target != SPLIT_TARGET:
                self.hooks.chunk_done(
                    message.batch_id,
                    run.name,
                    piece.state.value,
                    piece.target,
                    piece.records,
                    piece.raw_size,
                    size,
                )
        record.state = ChunkState.DELIVERED
        return record, wire_size

    async def _dead_letter(
        self,
        message: TriggerMessage,
        run: _RouteRun,
        raw: RawChunk,
        kind: str,
        record: ChunkRecord,
        errors: list[str],
        encoded: dict[tuple[str, str, int | None], EncodedChunk],
    ) -> tuple[ChunkRecord, int]:
        target = run.dead_letter
        fields = dict(batch_id=message.batch_id, route=run.name, chunk=raw.chunk_id)
        chunk = await self._encode(message, run, raw, target, kind)
        reason = "bad input records" if kind == "rejects" else "; ".join(errors)
        chunk.context = {
            "error": reason,
            "attempts": record.attempts,
            "targets": [t.name for t in run.targets] if kind == "data" else [],
        }
        try:
            # never refused by its circuit: there is nothing to skip to, and a store that
            # came back must be used at once, not after the circuit's reset
            delivered = await target.send_ignoring_circuit(chunk, **fields)
        except DeliveryError as exc:
            record.state = ChunkState.FAILED
            record.last_error = f"{reason}; dead-letter {target.name}: {exc}"
            await self.ledger.save_chunks([record])
            log.error("chunk.dead_letter_failed", target=target.name, error=str(exc), **fields)
            raise DeadLetterUnavailable(
                f"chunk {raw.chunk_id} of route {run.name}: every target and the dead-letter "
                f"store {target.name} failed ({exc})"
            ) from exc
        record.state = ChunkState.DEAD_LETTERED
        record.target = target.name
        record.location = delivered.receipt.location
        record.checksum = chunk.checksum
        record.last_error = reason
        if kind == "data":
            log.warning(
                "chunk.dead_lettered",
                target=target.name,
                location=record.location,
                error=reason,
                records=raw.records,
                **fields,
            )
        return record, len(chunk.payload)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error that explains a failed task group: a stop of the batch before anything else."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (DeadLetterUnavailable, SourceError, SenderError):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0] if leaves else group


def _next_name(targets: Sequence[Target], position: int, dead_letter: Target) -> str:
    return targets[position + 1].name if position + 1 < len(targets) else dead_letter.name


def _is_dead_local_owner(owner: str) -> bool:
    """``owner`` is ``default_owner()`` of a process that no longer exists, on this host and
    in this pid namespace (a pid from another container's namespace means nothing here)."""
    parts = owner.split(":")
    if len(parts) != 3:
        return False
    host, pid, tag = parts
    if host != socket.gethostname() or tag.split(".")[0] != _OWNER_TAG.split(".")[0]:
        return False
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, someone else's
        return False
    return False


def _tally(run: _RouteRun, chunk: ChunkRecord) -> None:
    """Add one settled chunk (not a split one) to its route's reconciliation."""
    if chunk.kind == "rejects":
        run.stats.rejected += chunk.records
        if chunk.state is ChunkState.DEAD_LETTERED:
            run.rejects_stored += chunk.records
    elif chunk.state is ChunkState.DELIVERED:
        run.stats.delivered += chunk.records
        if chunk.target != run.targets[0].name:
            run.fallbacks += 1
    elif chunk.state is ChunkState.DEAD_LETTERED:
        run.stats.dead_lettered += chunk.records


def _halves(raw: RawChunk) -> list[RawChunk]:
    """``7`` → ``7.0`` (the first ceil(n/2) records) and ``7.1`` (the rest): always the same."""
    middle = (raw.records + 1) // 2
    return [
        RawChunk(f"{raw.chunk_id}.{i}", lines, sum(len(line) + 1 for line in lines))
        for i, lines in enumerate((raw.lines[:middle], raw.lines[middle:]))
    ]
