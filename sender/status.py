"""What on-call reads: batches, chunks, replays and dead letters as rich renderables that fit
an 80-column terminal (long values wrap inside their column, never past the edge)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .engine import SPLIT_TARGET
from .model import BatchState, ChunkState
from .ports import BatchRecord, ChunkRecord, RouteStats
from .serialize import duration_s
from .units import format_size, parse_duration

__all__ = [
    "batch_detail",
    "batch_filters",
    "batch_table",
    "chunk_table",
    "dead_letter_list",
    "describe_selectors",
    "display_path",
    "outcome_table",
    "reconciliation_line",
    "replay_history",
    "replay_summary",
    "replay_table",
    "run_duration",
    "target_usage",
]

_STATE_STYLE = {
    BatchState.COMPLETE: "green",
    BatchState.RUNNING: "cyan",
    BatchState.INCOMPLETE: "yellow",
    BatchState.FAILED: "red",
    ChunkState.DELIVERED: "green",
    ChunkState.DEAD_LETTERED: "red",
    ChunkState.SKIPPED: "yellow",
    ChunkState.FAILED: "red",
    ChunkState.PENDING: "cyan",
}

# above this many chunks, `status BATCH` lists only those worth a look (unless asked for all)
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


def _table() -> Table:
    # no borders, one space between columns: the most data an 80-column terminal can hold
    return Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")


def _state(state: BatchState | ChunkState | str) -> Text:
    value = state.value if isinstance(state, BatchState | ChunkState) else state
    style = _STATE_STYLE.get(state, "") if not isinstance(state, str) else ""
    return Text(value.replace("_", "-"), style=style)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    local = value.astimezone()
    today = datetime.now(local.tzinfo).date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%m-%d %H:%M")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


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
    table = _table()
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
            _state(record.state),
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
        row += [_when(record.started_at), _seconds(took)]
        table.add_row(*row)
    if usage is None:
        return table
    legend = Text(
        "prim+fb: chunks delivered by the route's primary + by a fallback target", style="dim"
    )
    return Group(table, legend)


def reconciliation_line(stats: RouteStats) -> Text:
    balanced = stats.reconciled
    text = Text(
        f"read {stats.read:,} = delivered {stats.delivered:,} + dead-lettered "
        f"{stats.dead_lettered:,} + rejected {stats.rejected:,}"
    )
    text.append("  ✓" if balanced else "  ✗ (not yet reconciled)", "green" if balanced else "red")
    return text


def chunk_table(chunks: Sequence[ChunkRecord], *, route_column: bool = False) -> Table:
    """Chunks: state, records, the target that holds each, attempts and the full
    ``Idempotency-Key`` (what the receiving team greps for)."""
    table = _table()
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
            _state(chunk.state),
            f"{chunk.records:,}",
            chunk.target or "-",
            str(chunk.attempts),
            chunk.idempotency_key or "-",
        ]
        table.add_row(*row)
    return table


def outcome_table(routes: dict[str, RouteStats], targets: dict[str, int] | None = None) -> Table:
    table = _table()
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


def _block(text: str, indent: int = 4, style: str = "") -> Padding:
    """Text indented as a block: its wrapped lines keep the indent."""
    return Padding(Text(text, style=style), (0, 0, 0, indent), expand=False)


class _PathBlock:
    """A path, indented, broken only after a ``/`` when it does not fit on one line (a single
    name longer than a line is folded): no file name is cut in the middle, and the lines put
    back together are the path. With a ``label`` the path starts on the label's line and
    the lines after it are indented by the label's width."""

    def __init__(self, path: str, indent: int = 4, style: str = "", label: str = "") -> None:
        self.path = path
        self.indent = cell_len(label) if label else indent
        self.style = style
        self.label = label

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(8, options.max_width - self.indent)
        lines: list[str] = []
        line = ""
        for part in re.split(r"(?<=/)", self.path):  # each part keeps its trailing "/"
            if line and cell_len(line) + cell_len(part) > width:
                lines.append(line)
                line = ""
            line += part
        lines.append(line)
        for number, text in enumerate(lines):
            if number == 0 and self.label:
                yield Text.assemble(self.label, (text, self.style))
            else:
                yield _block(text, self.indent, self.style)


def display_path(location: str) -> str:
    """A local file under the working folder as a relative path (what on-call types, and
    short enough for one 80-column line); anything else as it is."""
    if "://" in location and not location.startswith("file://"):
        return location
    path = Path(os.path.normpath(location.removeprefix("file://")))
    with contextlib.suppress(ValueError, OSError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


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
            notes.append(_block(f"error: {chunk.last_error}", style="red"))
        if dead:
            notes.append(_block("dead letter:"))
            notes.append(_PathBlock(display_path(dead)))
        if replayed:
            fate = "purged" if replayed in purged else "kept"
            notes.append(_block(f"dead letter ({fate}; delivered by a replay since):"))
            notes.append(_PathBlock(display_path(replayed)))
            notes.append(_block("now at:"))
            notes.append(_PathBlock(display_path(chunk.location or "-")))
    return notes


def describe_selectors(selectors: Mapping[str, Any]) -> str:
    """Recorded selectors as the command line spells them: ``--chunks 3,7-9 --to inbox``."""
    mode = selectors.get("mode") or "dead-lettered"
    words = [f"--chunks {selectors.get('chunks')}" if mode == "chunks" else f"--{mode}"]
    words += [f"--route {r}" for r in selectors.get("routes") or ()]
    for key in ("to", "rate"):
        if selectors.get(key):
            words.append(f"--{key} {selectors[key]}")
    words += [f"--{k.replace('_', '-')}" for k in ("dry_run", "force") if selectors.get(k)]
    return " ".join(words)


def _replay_result(outcome: Mapping[str, Any]) -> Text:
    result = str(outcome.get("result", "?"))
    if result == "refused":
        return Text(f"refused: {outcome.get('refused') or ''}", style="red")
    style = "green" if result == "delivered" else "yellow" if "dry" in result else "red"
    text = Text(result, style=style)
    selected = outcome.get("selected", 0)
    if selected:
        done = outcome.get("delivered", 0)
        text.append(f" {done}/{selected} chunks" if "dry" not in result else f" {selected} chunks")
    return text


def replay_history(replays: Sequence[Mapping[str, Any]]) -> Table:
    """Every replay of a batch: when, who, selectors, result."""
    table = _table()
    table.add_column("when", no_wrap=True)
    table.add_column("who", overflow="fold")
    table.add_column("selectors", overflow="fold")
    table.add_column("result", overflow="fold")
    for replay in replays:
        at = replay.get("at")
        when = _when(at) if isinstance(at, datetime) else str(at or "-")
        table.add_row(
            when,
            str(replay.get("who", "?")),
            describe_selectors(replay.get("selectors") or {}),
            _replay_result(replay.get("outcome") or {}),
        )
    return table


def _records(n: int) -> str:
    return f"{n:,} record{'' if n == 1 else 's'}"


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
        _state(record.state),
        f"  dataset {record.dataset}  runs {record.runs}",
    )
    lines: list[RenderableType] = [head, _PathBlock(record.uri, label="source  ")]
    lease = "free"
    now = datetime.now(UTC)
    if record.lease_owner and (record.lease_expires is None or record.lease_expires > now):
        lease = f"held by {record.lease_owner}"
    lines.append(
        Text(
            f"started {_when(record.started_at)}  "
            f"took {_seconds(run_duration(record, replays or ()))}  "
            f"lease {lease}"
        )
    )
    if record.error:
        lines.append(Text(f"error: {record.error}", style="red"))
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
            lines.append(Text.assemble("  ", reconciliation_line(record.routes[name])))
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


# -- replay ------------------------------------------------------------------------------


def replay_table(items: Sequence[Any]) -> Table:
    """The chunks of a replay (``ReplayItem``): records, bytes on the wire, target, result."""
    table = _table()
    for column, justify in (
        ("route", "left"),
        ("chunk", "right"),
        ("recs", "right"),
        ("bytes", "right"),
        ("from", "left"),
        ("target", "left"),
        ("try", "right"),
        ("result", "left"),
    ):
        table.add_column(
            column,
            justify=justify,  # type: ignore[arg-type]
            overflow="fold",
            no_wrap=column in ("chunk", "recs", "bytes", "try"),
        )
    for item in items:
        style = {"delivered": "green", "failed": "red", "would send": "yellow"}.get(item.state, "")
        table.add_row(
            item.route,
            item.chunk_id,
            f"{item.before.records:,}",
            format_size(item.wire_size) if item.wire_size else "-",
            {"source": "source", "stored copy": "stored"}.get(item.origin, "-"),
            item.target,
            str(item.attempts) if item.attempts else "-",
            Text(item.state, style=style),
        )
    return table


def replay_summary(report: Any) -> RenderableType:
    """After a replay: the table, errors, what was sent and the reconciliation now."""
    items = report.items
    lines: list[RenderableType] = []
    if not items:
        what = describe_selectors(report.selection.to_dict())
        lines.append(Text(f"nothing to replay: no chunk of {report.batch_id} matches {what}"))
        return Group(*lines)
    lines.append(replay_table(items))
    for item in items:
        if item.error or item.note:
            lines.append(Text(f"  chunk {item.chunk_id} ({item.route})", style="bold"))
            if item.note:
                lines.append(_block(f"note: {item.note}", style="yellow"))
            if item.error:
                lines.append(_block(f"error: {item.error}", style="red"))
    records = sum(i.before.records for i in items)
    if report.selection.dry_run:
        ready = sum(i.state == "would send" for i in items)
        lines.append(
            Text(
                f"dry run: {ready} of {len(items)} chunks ({records:,} records) would be sent; "
                "nothing was sent",
                style="yellow" if ready == len(items) else "red",
            )
        )
    else:
        done = len(report.delivered)
        lines.append(
            Text(
                f"delivered {done} of {len(items)} chunks ({records:,} records selected) "
                f"in {_seconds(report.duration_s)}",
                style="green" if report.ok else "red",
            )
        )
    lines.append(Text(f"source: {report.source}", style="dim"))
    lines.extend(Text(f"warning: {warning}", style="yellow") for warning in report.warnings)
    for name, stats in report.routes.items():
        lines.append(Text(f"route {name}", style="bold"))
        lines.append(Text.assemble("  ", reconciliation_line(stats)))
    if any(i.dead_letter and i.state == "delivered" for i in items):
        lines.append(
            Text(
                "dead-letter files are kept: `sender dead-letters --batch "
                f"{report.batch_id} --purge` deletes those of delivered chunks",
                style="dim",
            )
        )
    return Group(*lines)


# -- dead letters ------------------------------------------------------------------------


def dead_letter_list(entries: Sequence[Mapping[str, Any]]) -> RenderableType:
    """Dead-lettered chunks (and kept files of chunks a replay delivered since), each with
    its reason and where the file is."""
    lines: list[RenderableType] = []
    for entry in entries:
        kind = "rejects" if entry["kind"] != "data" else "chunk"
        state = entry["state"]
        head = Text.assemble(
            (entry["batch_id"], "bold"),
            f"  {entry['route']}  {kind} {entry['chunk']}  {_records(entry['records'])}  ",
            (state, "red" if state == "dead-lettered" else "green"),
        )
        lines.append(head)
        if entry.get("reason"):
            lines.append(_block(f"reason: {entry['reason']}", 2, "red"))
        where = display_path(entry.get("location") or "-")
        missing = "  (missing!)" if entry.get("exists") is False else ""
        lines.append(_PathBlock(where + missing, 2))
    return Group(*lines)
