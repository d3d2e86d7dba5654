"""``sender replay``: send chosen chunks of a batch again, safely, with the bytes and
``Idempotency-Key`` they first had.

Which chunks (``Selection``): the dead-lettered ones (the default), every chunk (``all``), or
listed ids (``3,7-9``), of every route or of ``routes``; each goes to its route's primary, or
to ``to``. Where the payload comes from, in this order:

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
import getpass
import gzip
import hashlib
import io
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
import zstandard

from .chunker import RawChunk
from .codecs import encode
from .engine import SPLIT_TARGET
from .errors import (
    ConfigError,
    DeliveryError,
    ReplayRefused,
    SelectionError,
    SenderError,
    SourceError,
)
from .log import get_logger
from .model import ChunkState, EncodedChunk, ObjectInfo, Receipt, TriggerMessage, chunk_sort_key
from .ports import BatchRecord, ChunkRecord, ReplayLog, Resource, RouteStats, replays_of
from .readers import list_batch
from .targets import Target
from .units import Rate

if TYPE_CHECKING:
    from .app import App

__all__ = [
    "Mode",
    "ReplayHooks",
    "ReplayItem",
    "ReplayRefused",
    "ReplayReport",
    "Replayer",
    "Selection",
    "SelectionError",
    "dead_letter_files",
    "parse_chunk_ids",
    "replay_preview",
    "select_chunks",
    "stored_file",
    "who_am_i",
]

log = get_logger("sender.replay")

Mode = Literal["dead-lettered", "all", "chunks"]


def who_am_i() -> str:
    """``user@host``: who a replay is recorded as."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def parse_chunk_ids(text: str) -> tuple[str, ...]:
    """``"3,7-9"`` → ``("3", "7", "8", "9")``; ids of pieces of a split chunk (``"7.1"``)
    pass as they are. ``ValueError`` with a readable reason."""
    ids: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if dash:
            if not (first.strip().isdigit() and last.strip().isdigit()):
                raise ValueError(f"{part!r} is not a range like 7-9")
            low, high = int(first), int(last)
            if low > high:
                raise ValueError(f"{part!r}: the range runs backwards")
            if high - low > 100_000:
                raise ValueError(f"{part!r}: too many chunks in one range")
            ids.extend(str(i) for i in range(low, high + 1))
        elif all(piece.isdigit() for piece in part.split(".")):
            ids.append(".".join(str(int(piece)) for piece in part.split(".")))
        else:
            raise ValueError(f"{part!r} is not a chunk number (examples: 3  7-9  3,7-9)")
    if not ids:
        raise ValueError("names no chunk (examples: 3  7-9  3,7-9)")
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class Selection:
    """What a replay sends, and how."""

    mode: Mode = "dead-lettered"
    chunks: tuple[str, ...] = ()  # with mode "chunks"; "7" also picks its pieces "7.0", "7.1"
    routes: tuple[str, ...] = ()  # empty: every route of the batch
    to: str | None = None  # a destination; None: each route's primary
    rate: Rate | None = None
    dry_run: bool = False
    force: bool = False
    wait_s: float = 0.0

    def picks_route(self, chunk: ChunkRecord) -> bool:
        return not self.routes or chunk.route in self.routes

    def picks(self, chunk: ChunkRecord) -> bool:
        if chunk.kind != "data":
            return False  # bad input records go nowhere but the dead-letter store
        if chunk.target == SPLIT_TARGET:
            return False  # a split chunk travels as its pieces, which have their own rows
        if not self.picks_route(chunk):
            return False
        if self.mode == "dead-lettered":
            return chunk.state is ChunkState.DEAD_LETTERED
        if self.mode == "chunks":
            return any(
                chunk.chunk_id == wanted or chunk.chunk_id.startswith(wanted + ".")
                for wanted in self.chunks
            )
        return True

    def to_dict(self) -> dict[str, Any]:
        """The selectors as recorded in the ledger and shown by ``sender status``."""
        return {
            "mode": self.mode,
            "chunks": _ranges(self.chunks) if self.mode == "chunks" else None,
            "routes": list(self.routes) or None,
            "to": self.to,
            "rate": _rate_text(self.rate) if self.rate else None,
            "dry_run": self.dry_run,
            "force": self.force,
        }

    def describe(self) -> str:
        """The selectors as the command line spells them."""
        from .replay_views import describe_selectors

        return describe_selectors(self.to_dict())


def _rate_text(rate: Rate) -> str:
    """``5/s``, ``100/m``, ``500 records/s``: as typed, not ``5/1s``."""
    unit = " records" if rate.unit == "records" else ""
    per = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(rate.per_s, f"{rate.per_s:g}s")
    return f"{rate.amount:g}{unit}/{per}"


def _ranges(ids: Sequence[str]) -> str:
    """``("3", "7", "8", "9")`` → ``"3,7-9"``."""
    out: list[str] = []
    numbers = sorted({int(i) for i in ids if i.isdigit()})
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}-{prev}")
    out += sorted((i for i in ids if not i.isdigit()), key=chunk_sort_key)
    return ",".join(out)


def select_chunks(chunks: Sequence[ChunkRecord], selection: Selection) -> list[ChunkRecord]:
    """The ledger's chunks the selection picks, in route then natural chunk order."""
    picked = [c for c in chunks if selection.picks(c)]
    picked.sort(key=lambda c: (c.route, chunk_sort_key(c.chunk_id)))
    return picked


def dead_letter_files(history: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """``(route, chunk) → dead-letter location`` of chunks a replay delivered: the ledger's
    chunk row then points at the target, and the replay history keeps where the file is."""
    found: dict[tuple[str, str], str] = {}
    for replay in history:
        for item in (replay.get("outcome") or {}).get("chunks") or ():
            if item.get("dead_letter") and item.get("state") == "delivered":
                found[(item["route"], item["chunk"])] = item["dead_letter"]
    return found


def replay_preview(chunks: Sequence[ChunkRecord], primaries: Mapping[str, str]) -> dict[str, Any]:
    """What ``sender replay BATCH`` (dead-lettered chunks to each route's primary) would send,
    from the ledger alone: ``{chunks, records, bytes, targets: {name: chunks}}``."""
    picked = select_chunks(chunks, Selection())
    targets: dict[str, int] = {}
    for chunk in picked:
        name = primaries.get(chunk.route, "?")
        targets[name] = targets.get(name, 0) + 1
    return {
        "chunks": len(picked),
        "records": sum(c.records for c in picked),
        "bytes": sum(c.raw_size for c in picked),
        "targets": targets,
    }


@dataclass(slots=True)
class ReplayItem:
    """One selected chunk: as the ledger had it, and what the replay did with it."""

    before: ChunkRecord
    target: str
    dead_letter: str | None = None  # its dead-letter file, kept after a delivery
    origin: str = ""  # "source" or "stored copy"
    wire_size: int = 0
    state: str = "pending"  # "delivered", "failed", "would send"
    attempts: int = 0
    location: str | None = None
    error: str | None = None
    note: str | None = None

    @property
    def route(self) -> str:
        return self.before.route

    @property
    def chunk_id(self) -> str:
        return self.before.chunk_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "chunk": self.chunk_id,
            "records": self.before.records,
            "bytes": self.wire_size,
            "was": self.before.state.value,
            "target": self.target,
            "origin": self.origin or None,
            "state": self.state,
            "attempts": self.attempts,
            "location": self.location,
            "idempotency_key": self.before.idempotency_key,
            "dead_letter": self.dead_letter,
            "error": self.error,
            "note": self.note,
        }


@dataclass(slots=True)
class ReplayReport:
    """What a replay did; ``ok`` when every selected chunk was delivered (or, in a dry run,
    could be)."""

    batch_id: str
    who: str
    selection: Selection
    items: list[ReplayItem] = field(default_factory=list)
    source: str = ""  # how the source was found: "unchanged", "gone: ...", "changed, forced"
    refused: str | None = None
    routes: dict[str, RouteStats] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    batch_finished_at: datetime | None = None  # as the batch's run left it
    interrupted: bool = False
    duration_s: float = 0.0
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def delivered(self) -> list[ReplayItem]:
        return [i for i in self.items if i.state == "delivered"]

    @property
    def failed(self) -> list[ReplayItem]:
        return [i for i in self.items if i.state == "failed"]

    @property
    def ok(self) -> bool:
        done = "would send" if self.selection.dry_run else "delivered"
        return (
            self.refused is None
            and not self.interrupted
            and all(i.state == done for i in self.items)
        )

    @property
    def result(self) -> str:
        if self.refused is not None:
            return "refused"
        if self.interrupted:
            return "interrupted"
        if not self.items:
            return "nothing to replay"
        if self.selection.dry_run:
            return "dry run" if self.ok else "dry run: some chunks cannot be replayed"
        if self.ok:
            return "delivered"
        return "partly delivered" if self.delivered else "failed"

    def outcome(self) -> dict[str, Any]:
        """What the ledger keeps of the replay (and ``--json`` shows)."""
        return {
            "result": self.result,
            "refused": self.refused,
            "source": self.source or None,
            "warnings": list(self.warnings),
            "selected": len(self.items),
            "delivered": len(self.delivered),
            "failed": len(self.failed),
            "records": sum(i.before.records for i in self.items),
            "bytes": sum(i.wire_size for i in self.items),
            "duration_s": round(self.duration_s, 3),
            # finish_batch moves the batch's finished_at to the replay: status keeps the run's
            "batch_finished_at": (
                self.batch_finished_at.isoformat() if self.batch_finished_at else None
            ),
            "chunks": [i.to_dict() for i in self.items],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "who": self.who,
            "at": self.at.isoformat(),
            "selectors": self.selection.to_dict(),
            **self.outcome(),
            "ok": self.ok,
            "routes": {name: stats.to_dict() for name, stats in self.routes.items()},
            "reconciled": all(s.reconciled for s in self.routes.values()),
        }


class ReplayHooks:
    """What a progress display learns; every method is called on the event loop."""

    def waiting(self, holder: str, wait_s: float) -> None: ...

    def started(self, report: ReplayReport) -> None: ...

    def chunk_done(self, item: ReplayItem) -> None: ...


class _Unavailable(Exception):
    """A chunk's payload cannot be had (no stored copy, undecodable, not what was sent)."""


class _Pacer:
    """At most ``rate``: requests (or records) spaced evenly, whoever asks."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self, records: int) -> None:
        cost = records if self.rate.unit == "records" else 1
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + cost / self.rate.per_second
            if start > now:
                await asyncio.sleep(start - now)


class _Paced(Resource):
    """A destination whose every attempt (retries too) waits for the replay's pacer: the
    fragile receiver ``--rate`` protects sees no burst, not even of retries."""

    def __init__(self, inner: Any, pacer: _Pacer) -> None:
        self.inner = inner
        self.name = inner.name
        self.formats = inner.formats
        self.codecs = inner.codecs
        self.pacer = pacer

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        await self.pacer.wait(chunk.records)
        receipt: Receipt = await self.inner.deliver(chunk)
        return receipt

    async def aclose(self) -> None:
        return None  # the app closes the real destination


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
        self.hooks = hooks or ReplayHooks()

    # -- the whole replay ----------------------------------------------------------------

    async def run(self, batch_id: str, selection: Selection) -> ReplayReport:
        """Replay the chunks ``selection`` picks. Raises ``SelectionError`` (nothing is
        recorded) when the selectors name what is not there; a refusal (``ReplayRefused``) is
        recorded, then raised; delivery failures are in the report."""
        started = time.monotonic()
        record = await self._batch(batch_id)
        self._check_selection(record, selection)
        report = ReplayReport(batch_id, self.who, selection)
        chunks = await self.ledger.chunks(batch_id)
        self._check_chunk_ids(chunks, selection)
        selected = select_chunks(chunks, selection)
        if not selected:
            report.routes = record.routes
            return report
        gone = sorted({c.route for c in selected} - set(self.config.routes))
        if gone:
            raise SelectionError(
                f"route {', '.join(gone)} of batch {batch_id} is not in the config any more: "
                "a replay needs its settings (fields, chunking, targets)"
            )
        report.items = await self._items(batch_id, chunks, selection)
        report.batch_finished_at = record.finished_at
        leased = False
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
            if not selection.dry_run:
                await self._take_lease(record, selection.wait_s)
                leased = True
                # the daemon may have moved the batch on while we waited: read it again
                record = await self._batch(batch_id)
                chunks = await self.ledger.chunks(batch_id)
            await self._replay(record, chunks, selection, report)
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
        finally:
            if leased:
                with contextlib.suppress(SenderError):
                    await asyncio.shield(self.ledger.release_lease(batch_id, self.owner))
        report.duration_s = time.monotonic() - started
        await self._record(report)
        return report

    async def _batch(self, batch_id: str) -> BatchRecord:
        record = await self.ledger.get_batch(batch_id)
        if record is None:
            raise SelectionError(f"no batch {batch_id!r} in the ledger")
        return record

    def _check_selection(self, record: BatchRecord, selection: Selection) -> None:
        for route in selection.routes:
            if route not in self.config.routes:
                known = ", ".join(sorted(self.config.routes)) or "none"
                raise SelectionError(f"--route: no route {route!r} in the config (known: {known})")
        if selection.to is not None:
            if selection.to not in self.config.destinations:
                known = ", ".join(sorted(self.config.destinations))
                raise SelectionError(f"--to: no destination {selection.to!r} (known: {known})")
            dead = {
                r.dead_letter or self.config.dead_letter_default
                for r in self.config.routes.values()
            }
            if selection.to in dead:
                raise SelectionError(
                    f"--to: {selection.to} is a dead-letter store; name a destination that delivers"
                )

    @staticmethod
    def _check_chunk_ids(chunks: Sequence[ChunkRecord], selection: Selection) -> None:
        if selection.mode != "chunks":
            return
        data = [c for c in chunks if c.kind == "data" and selection.picks_route(c)]
        missing = [
            wanted
            for wanted in selection.chunks
            if not any(c.chunk_id == wanted or c.chunk_id.startswith(wanted + ".") for c in data)
        ]
        if missing:
            known = _ranges([c.chunk_id for c in data]) or "none"
            raise SelectionError(
                f"--chunks: the batch has no chunk {_ranges(missing)} (it has {known})"
            )

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

    async def _renew_lease(self, batch_id: str) -> None:
        lease_s = self.config.daemon.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await self.ledger.acquire_lease(batch_id, self.owner, lease_s)
            except SenderError as exc:
                log.warning("lease.renew_failed", batch_id=batch_id, error=str(exc))

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
    ) -> None:
        message = TriggerMessage.model_validate(record.message)
        report.items = await self._items(record.batch_id, chunks, selection)
        if not report.items:
            return  # a daemon settled them while we waited for its lease
        objects = await self._source_objects(message, record, selection, report)
        self.hooks.started(report)
        targets = self._targets(report, selection)
        queue: asyncio.Queue[tuple[ReplayItem, EncodedChunk] | None] = asyncio.Queue(
            maxsize=max(2, 2 * max(t.concurrency for t in targets.values()))
        )
        workers = max(t.concurrency for t in targets.values())
        routes = {name: dataclasses.replace(stats) for name, stats in record.routes.items()}
        report.routes = routes
        renewer = (
            None if selection.dry_run else asyncio.create_task(self._renew_lease(record.batch_id))
        )
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(self._worker(queue, targets, routes, selection))
                await self._produce(message, objects, report, targets, queue)
                for _ in range(workers):
                    await queue.put(None)
        except BaseExceptionGroup as failed:
            # a ledger or source failure: raise it as itself (the CLI prints SenderErrors)
            raise _first_leaf(failed) from None
        finally:
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            if routes != record.routes:
                # the reconciliation follows the chunks: dead-lettered records now delivered
                await asyncio.shield(self._save_routes(record, routes))

    async def _save_routes(self, record: BatchRecord, routes: dict[str, RouteStats]) -> None:
        # a ledger that can update the counts alone keeps the batch's finished_at (and so its
        # duration) as the run left it; finish_batch moves it to now
        update = getattr(self.ledger, "update_routes", None)
        if update is not None:
            await update(record.batch_id, routes)
        else:
            await self.ledger.finish_batch(record.batch_id, record.state, routes, record.error)

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

    async def _source_objects(
        self,
        message: TriggerMessage,
        record: BatchRecord,
        selection: Selection,
        report: ReplayReport,
    ) -> list[ObjectInfo] | None:
        """The source's objects when it can be read again, None when it is gone; refuse a
        changed source unless forced."""
        try:
            source = await self.app.source_for(message.uri)
            section = self.config.source_for(message.uri)
            listing = await list_batch(
                source, message.uri, require_success=section.options.require_success
            )
        except (SourceError, ConfigError) as exc:
            report.source = f"gone ({exc}): chunks come from their stored copies"
            return None
        if record.objects is not None:
            before = {(o.uri, o.size, o.version) for o in record.objects}
            now = {(o.uri, o.size, o.version) for o in listing.objects}
            if before != now:
                changed = _describe_change(record.objects, listing.objects)
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

    def _targets(self, report: ReplayReport, selection: Selection) -> dict[str, Target]:
        pacer = _Pacer(selection.rate) if selection.rate else None
        targets: dict[str, Target] = {}
        for name in {item.target for item in report.items}:
            target = self.app.targets[name]
            if pacer is not None:
                target = Target(name, _Paced(target.destination, pacer), target.options)
            targets[name] = target
        return targets

    async def _produce(
        self,
        message: TriggerMessage,
        objects: list[ObjectInfo] | None,
        report: ReplayReport,
        targets: dict[str, Target],
        queue: asyncio.Queue[tuple[ReplayItem, EncodedChunk] | None],
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
                    raw = await self._stored_raw(item)
                    item.origin = "stored copy"
                    chunk = await self.app.engine.encode_for(
                        message, route, raw, targets[item.target]
                    )
                except _Unavailable as exc:
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

    async def _stored_raw(self, item: ReplayItem) -> RawChunk:
        """The chunk's lines from its stored copy (dead-letter file, or a file the holding
        destination wrote), checked against the ledger."""
        before = item.before
        location = item.dead_letter or before.location
        if not location:
            raise _Unavailable("no stored copy and the source cannot be read")
        payload, meta = await self._read_stored(location)
        holder = self.config.destinations.get(before.target or "")
        fmt = meta.get("format") or (holder.options.format if holder else "ndjson")
        codec = meta.get("codec") or (holder.options.compression if holder else "none")
        expected = meta.get("sha256") or (before.checksum if location == before.location else None)
        if expected and hashlib.sha256(payload).hexdigest() != expected:
            raise _Unavailable(f"stored copy {location} is corrupt (sha256 differs)")
        try:
            lines = _decode_lines(_decompress(payload, codec), fmt)
        except ValueError as exc:
            raise _Unavailable(f"stored copy {location}: {exc}") from None
        raw = RawChunk(before.chunk_id, lines, sum(len(line) + 1 for line in lines))
        if raw.records != before.records:
            raise _Unavailable(
                f"stored copy {location} holds {raw.records} records, the ledger {before.records}"
            )
        return raw

    async def _read_stored(self, location: str) -> tuple[bytes, dict[str, Any]]:
        try:
            source = await self.app.source_for(location)
            listed = await source.list(location)
            if not listed:
                raise _Unavailable(f"stored copy {location} is gone")
            payload = b"".join([piece async for piece in source.open(listed[0])])
        except (SourceError, ConfigError) as exc:
            raise _Unavailable(f"stored copy {location} cannot be read: {exc}") from None
        meta: dict[str, Any] = {}
        sidecar = location + ".meta.json"
        with contextlib.suppress(SourceError, ValueError):
            listed = await source.list(sidecar)
            if listed:
                body = b"".join([piece async for piece in source.open(listed[0])])
                meta = orjson.loads(body)
        return payload, meta

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
            item.state, item.attempts, item.error = "failed", exc.attempts or 1, str(exc)
            log.warning("replay.chunk_failed", target=target.name, error=str(exc), **fields)
            return
        item.state, item.attempts = "delivered", delivered.attempts
        item.location = delivered.receipt.location
        after = dataclasses.replace(
            before,
            state=ChunkState.DELIVERED,
            target=target.name,
            location=delivered.receipt.location,
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


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup) and first.exceptions:
        first = first.exceptions[0]
    return first


def _describe_change(before: Sequence[ObjectInfo], now: Sequence[ObjectInfo]) -> str:
    old = {o.uri: o for o in before}
    new = {o.uri: o for o in now}
    parts = []
    gone = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    changed = sorted(u for u in set(old) & set(new) if old[u] != new[u])
    for label, uris in (("rewritten", changed), ("new", added), ("missing", gone)):
        if uris:
            names = ", ".join(u.rsplit("/", 1)[-1] for u in uris[:3])
            more = f" and {len(uris) - 3} more" if len(uris) > 3 else ""
            parts.append(f"{label}: {names}{more}")
    return "; ".join(parts) or "objects differ"


def _decompress(payload: bytes, codec: str) -> bytes:
    try:
        if codec == "none":
            return payload
        if codec == "gzip":
            return gzip.decompress(payload)
        if codec == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(payload), read_across_frames=True
            )
            with reader:
                return reader.read()
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise ValueError(f"cannot decompress ({codec}): {exc}") from exc
    raise ValueError(f"unknown codec {codec!r}")


def _decode_lines(body: bytes, fmt: str) -> list[bytes]:
    """The NDJSON lines a payload was encoded from — exactly, or ``ValueError``."""
    if fmt == "ndjson":
        if body and not body.endswith(b"\n"):
            raise ValueError("not NDJSON as the sender writes it (no final newline)")
        return body[:-1].split(b"\n") if body else []
    if fmt == "json":
        try:
            records = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not a JSON array: {exc}") from None
        if not isinstance(records, list):
            raise ValueError("not a JSON array")
        lines = [orjson.dumps(r) for r in records]
        # the array was built by joining the lines unparsed: it is only recovered exactly
        # when they were written the way orjson writes them (true after a projection)
        if encode(lines, "json") != body:
            raise ValueError("its JSON array cannot be split back into the exact records sent")
        return lines
    raise ValueError(f"a {fmt} payload cannot be turned back into the records first sent")


def stored_file(location: str) -> Path | None:
    """The local file behind a location, or None for a URL or an object in a bucket."""
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if "://" in location:
        return None
    return Path(location)
