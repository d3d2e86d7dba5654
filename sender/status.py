"""What on-call reads about batches: the batch list, one batch's routes, chunks, targets
and reconciliation, and a send's outcome, as rich renderables that fit an 80-column terminal
(long values wrap inside their column, never past the edge). Replays and dead letters are in
``sender.replay_views``."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from . import render
from .engine import SPLIT_TARGET
from .model import BatchState, ChunkState
from .ports import BatchRecord, ChunkRecord, RouteStats, ShardRecord
from .replay_views import replay_history
from .serialize import duration_s, shard_progress
from .units import format_size, parse_duration

__all__ = [
    "batch_detail",
    "batch_filters",
    "batch_table",
    "chunk_table",
    "outcome_table",
    "run_duration",
    "shard_table",
    "target_usage",
]


_MANY_CHUNKS = 12


def batch_filters(
    *,
    dataset: str | None = None,
    state: str | None = None,
    since: str | None = None,
    limit: str | int = 50,
) -> dict[str, Any]:
    """Keyword arguments for ``Ledger.list_batches`` from CLI or query strings."""
    filters: dict[str, Any] = {"limit": int(limit)}
    if dataset:
        filters["dataset"] = dataset
    if state:
        try:
            filters["state"] = BatchState(state)
        except ValueError:
            known = ", ".join(s.value for s in BatchState)
            raise ValueError(f"unknown state {state!r} (one of {known})") from None
    if since:
        filters["since"] = datetime.now(UTC) - timedelta(seconds=parse_duration(since))
    return filters


def run_duration(record: BatchRecord, replays: Sequence[Mapping[str, Any]] = ()) -> float | None:
    """How long the batch's run took: a replay that updated its counts moved ``finished_at``
    to the replay, so the time the run ended is taken from the first replay's record."""
    for replay in replays:
        first = (replay.get("outcome") or {}).get("batch_finished_at")
        if not first or record.started_at is None or record.finished_at is None:
            continue
        finished = datetime.fromisoformat(first)
        if record.started_at <= finished <= record.finished_at:
            return round((finished - record.started_at).total_seconds(), 3)
        break
    return duration_s(record)


def target_usage(chunks: Sequence[ChunkRecord], primaries: Mapping[str, str]) -> dict[str, Any]:
    """Which targets hold a batch's data chunks: ``{targets: {name: chunks}, primary,
    fallback, dead_letter}`` (chunks delivered by a route's primary, by another target, and
    in a dead-letter store). ``primaries`` maps each route to its first target."""
    usage: dict[str, Any] = {"targets": {}, "primary": 0, "fallback": 0, "dead_letter": 0}
    for chunk in chunks:
        if chunk.kind != "data" or not chunk.target or chunk.target == SPLIT_TARGET:
            continue  # a split chunk is held through its pieces
        usage["targets"][chunk.target] = usage["targets"].get(chunk.target, 0) + 1
        if chunk.state is ChunkState.DELIVERED:
            usage["primary" if chunk.target == primaries.get(chunk.route) else "fallback"] += 1
        elif chunk.state is ChunkState.DEAD_LETTERED:
            usage["dead_letter"] += 1
    return usage


def batch_table(
    records: Sequence[BatchRecord], usage: Mapping[str, Mapping[str, Any]] | None = None
) -> RenderableType:
    """Recent batches, one line each. ``usage`` (by batch id, from ``target_usage``) adds the
    chunks delivered by primaries and by fallbacks."""
    table = render.table()
    columns: list[tuple[str, str]] = [
        ("batch", "left"),
        ("dataset", "left"),
        ("state", "left"),
        ("read", "right"),
        ("deliv.", "right"),
        ("dead", "right"),
        ("rej.", "right"),
    ]
    if usage is not None:
        columns.append(("prim+fb", "right"))
    columns += [("started", "left"), ("took", "right")]
    for column, justify in columns:
        table.add_column(
            column,
            justify=justify,  # type: ignore[arg-type]
            overflow="fold",
            no_wrap=column not in ("batch", "dataset"),
        )
    for record in records:
        totals = record.totals
        row: list[Text | str] = [
            record.batch_id,
            record.dataset,
            render.state_text(record.state),
            f"{totals.read:,}",
            f"{totals.delivered:,}",
            Text(f"{totals.dead_lettered:,}", style="red" if totals.dead_lettered else ""),
            f"{totals.rejected:,}",
        ]
        took = duration_s(record)
        if usage is not None:
            used = usage.get(record.batch_id) or {}
            row.append(f"{used.get('primary', 0)}+{used.get('fallback', 0)}")
            took = used.get("duration_s", took)
        row += [render.when(record.started_at), render.seconds(took)]
        table.add_row(*row)
    if usage is None:
        return table
    legend = Text(
        "prim+fb: chunks delivered by the route's primary + by a fallback target", style="dim"
    )
    return Group(table, legend)


def shard_table(
    shards: Sequence[ShardRecord], chunks: Sequence[ChunkRecord], now: datetime
) -> Table:
    """A sharded batch's shards: objects, state, who holds each now (or last ran it),
    progress, runs."""
    table = Table(title=f"shards ({len(shards)})", title_justify="left", box=None)
    for column in ("shard", "objects", "state", "owner", "chunks settled", "delivered", "runs"):
        table.add_column(column, justify="right" if column != "owner" else "left")
    for shard in shards:
        live = shard.owner and (shard.lease_expires is None or shard.lease_expires > now)
        progress = shard_progress(shard, chunks)
        state = shard.state if not live or shard.state != "pending" else "running"
        table.add_row(
            str(shard.shard),
            f"{shard.first_object}-{shard.first_object + shard.objects - 1}",
            state,
            shard.owner if live else shard.sent_by or "",
            f"{progress['settled']}/{progress['chunks']}",
            f"{progress['delivered']:,}",
            str(shard.runs),
        )
    return table


def chunk_table(chunks: Sequence[ChunkRecord], *, route_column: bool = False) -> Table:
    """Chunks: state, records, the target that holds each, attempts and the full
    ``Idempotency-Key`` (what the receiving team greps for)."""
    table = render.table()
    columns: list[tuple[str, str]] = [("chunk", "right")]
    if route_column:
        columns.insert(0, ("route", "left"))
    columns += [
        ("state", "left"),
        ("recs", "right"),
        ("target", "left"),
        ("try", "right"),
        ("idempotency key", "left"),
    ]
    for column, justify in columns:
        table.add_column(
            column,
            justify=justify,  # type: ignore[arg-type]
            overflow="fold",
            no_wrap=column in ("chunk", "state", "recs", "try"),
        )
    for chunk in chunks:
        row: list[Text | str] = [chunk.chunk_id]
        if route_column:
            row.insert(0, chunk.route)
        row += [
            render.state_text(chunk.state),
            f"{chunk.records:,}",
            chunk.target or "-",
            str(chunk.attempts),
            chunk.idempotency_key or "-",
        ]
        table.add_row(*row)
    return table


def outcome_table(routes: dict[str, RouteStats], targets: dict[str, int] | None = None) -> Table:
    table = render.table()
    for column in ("route", "read", "delivered", "dead-lettered", "rejected", "chunks"):
        table.add_column(column, justify="left" if column == "route" else "right")
    for name, stats in routes.items():
        table.add_row(
            name,
            f"{stats.read:,}",
            f"{stats.delivered:,}",
            f"{stats.dead_lettered:,}",
            f"{stats.rejected:,}",
            f"{stats.chunks:,}",
        )
    return table


def _noteworthy(chunk: ChunkRecord, primaries: Mapping[str, str]) -> bool:
    return (
        chunk.state is not ChunkState.DELIVERED
        or chunk.kind != "data"
        or chunk.target != primaries.get(chunk.route)
        or chunk.attempts > 1
    )


def _chunk_notes(
    chunks: Sequence[ChunkRecord],
    kept: Mapping[tuple[str, str], str],
    purged: Collection[str] = frozenset(),
) -> list[RenderableType]:
    """Under the table: for each chunk with a story, why, and where its dead letter is."""
    notes: list[RenderableType] = []
    for chunk in chunks:
        dead = chunk.location if chunk.state is ChunkState.DEAD_LETTERED else None
        replayed = kept.get((chunk.route, chunk.chunk_id))
        if not (dead or replayed or (chunk.last_error and chunk.state is not ChunkState.DELIVERED)):
            continue
        label = "rejects" if chunk.kind != "data" else "chunk"
        notes.append(Text(f"  {label} {chunk.chunk_id}", style="bold"))
        if chunk.last_error:
            notes.append(render.block(f"error: {chunk.last_error}", style="red"))
        if dead:
            notes.append(render.block("dead letter:"))
            notes.append(render.PathBlock(render.display_path(dead)))
        if replayed:
            fate = "purged" if replayed in purged else "kept"
            notes.append(render.block(f"dead letter ({fate}; delivered by a replay since):"))
            notes.append(render.PathBlock(render.display_path(replayed)))
            notes.append(render.block("now at:"))
            notes.append(render.PathBlock(render.display_path(chunk.location or "-")))
    return notes


def _preview_line(batch_id: str, preview: Mapping[str, Any]) -> Text:
    if not preview.get("chunks"):
        return Text(
            "replay: no chunk is dead-lettered, so `sender replay` sends nothing by default "
            "(--all or --chunks 3,7-9 send delivered chunks again)"
        )
    targets = ", ".join(preview.get("targets") or {}) or "?"
    n = preview["chunks"]
    return Text(
        f"replay: `sender replay {batch_id}` would send {n} dead-lettered "
        f"chunk{'s' if n != 1 else ''} ({preview['records']:,} records, "
        f"{format_size(preview['bytes'])} before compression) to {targets}",
        style="yellow",
    )


def batch_detail(
    record: BatchRecord,
    chunks: Sequence[ChunkRecord],
    *,
    only: Callable[[ChunkRecord], bool] | None = None,
    primaries: Mapping[str, str] | None = None,
    replays: Sequence[Mapping[str, Any]] | None = None,
    kept: Mapping[tuple[str, str], str] | None = None,
    purged: Collection[str] = frozenset(),
    preview: Mapping[str, Any] | None = None,
    all_chunks: bool = False,
    shards: Sequence[ShardRecord] = (),
) -> RenderableType:
    """A batch for on-call: state, source, lease, targets, per route its reconciliation and
    chunks (those ``only`` picks, when given; only the noteworthy ones of a big batch unless
    ``all_chunks``), where its dead letters are and why, what a replay would send
    (``preview``) and the replays so far. ``kept`` are the dead letters of chunks a replay
    delivered since, ``purged`` those of them their store no longer holds."""
    primaries = primaries or {}
    kept = kept or {}
    head = Text.assemble(
        ("batch ", "bold"),
        record.batch_id,
        "  ",
        render.state_text(record.state),
        f"  dataset {record.dataset}  runs {record.runs}",
    )
    lines: list[RenderableType] = [head, render.PathBlock(record.uri, label="source  ")]
    lease = "free"
    now = datetime.now(UTC)
    if record.lease_owner and (record.lease_expires is None or record.lease_expires > now):
        lease = f"held by {record.lease_owner}"
    lines.append(
        Text(
            f"started {render.when(record.started_at)}  "
            f"took {render.seconds(run_duration(record, replays or ()))}  "
            f"lease {lease}"
        )
    )
    if record.error:
        lines.append(Text(f"error: {record.error}", style="red"))
    if shards:
        lines.append(shard_table(shards, chunks, now))
    usage = target_usage(chunks, primaries)
    held = []
    for name, count in usage["targets"].items():
        role = ""
        if name in primaries.values():
            role = " (primary)"
        elif any(c.target == name and c.state is ChunkState.DEAD_LETTERED for c in chunks):
            role = " (dead letter)"
        elif primaries:
            role = " (fallback)"
        held.append(f"{name} {count}{role}")
    size = sum(c.raw_size for c in chunks if c.kind == "data")
    data = sum(c.kind == "data" for c in chunks)
    lines.append(
        Text(f"chunks  {data} ({format_size(size)}) · held by: " + (", ".join(held) or "none"))
    )
    routes = list(record.routes) + sorted({c.route for c in chunks} - set(record.routes))
    for name in routes:
        route_chunks = [c for c in chunks if c.route == name]
        lines.append(Text(f"route {name}", style="bold"))
        if name in record.routes:
            lines.append(Text.assemble("  ", render.reconciliation_line(record.routes[name])))
        if only is not None:
            shown = [c for c in route_chunks if only(c)]
        elif all_chunks or len(route_chunks) <= _MANY_CHUNKS:
            shown = route_chunks
        else:
            shown = [c for c in route_chunks if _noteworthy(c, primaries)]
        if shown:
            lines.append(chunk_table(shown))
        hidden = len(route_chunks) - len(shown)
        if hidden and only is None:
            lines.append(
                Text(
                    f"  … and {hidden} delivered by the primary at the first try (--all-chunks)",
                    style="dim",
                )
            )
        lines.extend(_chunk_notes(shown, kept, purged))
    if preview is not None:
        lines.append(_preview_line(record.batch_id, preview))
    if replays:
        lines.append(Text("replays", style="bold"))
        lines.append(replay_history(replays))
    return Group(*lines)
