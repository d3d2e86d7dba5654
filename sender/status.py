"""What on-call reads: batches and chunks as rich tables that fit 80 columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .model import BatchState, ChunkState
from .ports import BatchRecord, ChunkRecord, RouteStats
from .units import format_size, parse_duration
from .views import duration_s

__all__ = [
    "batch_filters",
    "batch_table",
    "chunk_table",
    "outcome_table",
    "reconciliation_line",
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


def _state(state: BatchState | ChunkState) -> Text:
    return Text(state.value.replace("_", "-"), style=_STATE_STYLE.get(state, ""))


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
    return f"{int(value // 60)}m{int(value % 60):02d}s"


def batch_table(records: Sequence[BatchRecord]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column, justify in (
        ("batch", "left"),
        ("dataset", "left"),
        ("state", "left"),
        ("read", "right"),
        ("deliv.", "right"),
        ("dead", "right"),
        ("rej.", "right"),
        ("started", "left"),
        ("took", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for record in records:
        totals = record.totals
        table.add_row(
            record.batch_id,
            record.dataset,
            _state(record.state),
            f"{totals.read:,}",
            f"{totals.delivered:,}",
            f"{totals.dead_lettered:,}",
            f"{totals.rejected:,}",
            _when(record.started_at),
            _seconds(duration_s(record)),
        )
    return table


def reconciliation_line(stats: RouteStats) -> Text:
    balanced = stats.reconciled
    text = Text(
        f"read {stats.read:,} = delivered {stats.delivered:,} + dead-lettered "
        f"{stats.dead_lettered:,} + rejected {stats.rejected:,}"
    )
    text.append("  ✓" if balanced else "  ✗ (not yet reconciled)", "green" if balanced else "red")
    return text


def chunk_table(chunks: Sequence[ChunkRecord]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column, justify in (
        ("route", "left"),
        ("chunk", "right"),
        ("state", "left"),
        ("recs", "right"),
        ("target", "left"),
        ("try", "right"),
        ("key / error", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for chunk in chunks:
        detail = chunk.idempotency_key[:12]
        if chunk.state is not ChunkState.DELIVERED and chunk.last_error:
            detail = chunk.last_error
        table.add_row(
            chunk.route,
            chunk.chunk_id,
            _state(chunk.state),
            f"{chunk.records:,}",
            chunk.target or "-",
            str(chunk.attempts),
            detail,
        )
    return table


def outcome_table(routes: dict[str, RouteStats], targets: dict[str, int] | None = None) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
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


def batch_detail(
    record: BatchRecord,
    chunks: Sequence[ChunkRecord],
    *,
    only: Callable[[ChunkRecord], bool] | None = None,
) -> RenderableType:
    """A batch for on-call: state, source, targets, reconciliation per route, and its chunks
    (those ``only`` picks, when given)."""
    targets: dict[str, int] = {}
    for chunk in chunks:
        if chunk.target:
            targets[chunk.target] = targets.get(chunk.target, 0) + 1
    head = Text.assemble(
        ("batch ", "bold"),
        record.batch_id,
        "  ",
        _state(record.state),
        f"  dataset {record.dataset}  runs {record.runs}",
    )
    lines: list[RenderableType] = [head, Text(f"source {record.uri}")]
    if record.error:
        lines.append(Text(f"error: {record.error}", style="red"))
    size = sum(c.raw_size for c in chunks)
    lines.append(
        Text(
            f"chunks {len(chunks)} ({format_size(size)}) · by target: "
            + (", ".join(f"{t} {n}" for t, n in targets.items()) or "none")
        )
    )
    for name, stats in record.routes.items():
        lines.append(Text(f"route {name}", style="bold"))
        lines.append(Text.assemble("  ", reconciliation_line(stats)))
    shown = [c for c in chunks if only(c)] if only else list(chunks)
    if shown:
        lines.append(chunk_table(shown))
    return Group(*lines)
