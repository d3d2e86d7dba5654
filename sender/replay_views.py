"""What on-call reads about replays and dead letters: a replay's table and summary, a
batch's replay history, and the dead-letter list, as rich renderables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from . import render
from .units import format_size

__all__ = [
    "dead_letter_list",
    "describe_selectors",
    "replay_history",
    "replay_summary",
    "replay_table",
]


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
    table = render.table()
    table.add_column("when", no_wrap=True)
    table.add_column("who", overflow="fold")
    table.add_column("selectors", overflow="fold")
    table.add_column("result", overflow="fold")
    for replay in replays:
        at = replay.get("at")
        when = render.when(at) if isinstance(at, datetime) else str(at or "-")
        table.add_row(
            when,
            str(replay.get("who", "?")),
            describe_selectors(replay.get("selectors") or {}),
            _replay_result(replay.get("outcome") or {}),
        )
    return table


def replay_table(items: Sequence[Any]) -> Table:
    """The chunks of a replay (``ReplayItem``): records, bytes on the wire, target, result."""
    table = render.table()
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
    if not items and report.rest is None:
        what = describe_selectors(report.selection.to_dict())
        lines.append(Text(f"nothing to replay: no chunk of {report.batch_id} matches {what}"))
        lines.extend(Text(f"warning: {warning}", style="yellow") for warning in report.warnings)
        return Group(*lines)
    if items:
        lines.append(replay_table(items))
    for item in items:
        if item.error or item.note:
            lines.append(Text(f"  chunk {item.chunk_id} ({item.route})", style="bold"))
            if item.note:
                lines.append(render.block(f"note: {item.note}", style="yellow"))
            if item.error:
                lines.append(render.block(f"error: {item.error}", style="red"))
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
    elif items:
        done = len(report.delivered)
        lines.append(
            Text(
                f"delivered {done} of {len(items)} chunks ({records:,} records selected) "
                f"in {render.seconds(report.duration_s)}",
                style="green" if report.ok else "red",
            )
        )
    lines.append(Text(f"source: {report.source}", style="dim"))
    if report.rest is not None:
        lines.append(
            Text(
                f"the chunks the batch's run never cut: {report.rest}",
                style="green" if report.rest == "complete" else "red",
            )
        )
    lines.extend(Text(f"warning: {warning}", style="yellow") for warning in report.warnings)
    for name, stats in report.routes.items():
        lines.append(Text(f"route {name}", style="bold"))
        lines.append(Text.assemble("  ", render.reconciliation_line(stats)))
    if any(i.dead_letter and i.state == "delivered" for i in items):
        lines.append(
            Text(
                "dead-letter files are kept: `sender dead-letters --batch "
                f"{report.batch_id} --purge` deletes those of delivered chunks",
                style="dim",
            )
        )
    return Group(*lines)


def dead_letter_list(entries: Sequence[Mapping[str, Any]]) -> RenderableType:
    """Dead-lettered chunks (and kept files of chunks a replay delivered since), each with
    its reason and where the file is."""
    lines: list[RenderableType] = []
    for entry in entries:
        kind = "rejects" if entry["kind"] != "data" else "chunk"
        state = entry["state"]
        head = Text.assemble(
            (entry["batch_id"], "bold"),
            f"  {entry['route']}  {kind} {entry['chunk']}  {render.records(entry['records'])}  ",
            (state, "red" if state == "dead-lettered" else "green"),
        )
        lines.append(head)
        if entry.get("reason"):
            lines.append(render.block(f"reason: {entry['reason']}", 2, "red"))
        where = render.display_path(entry.get("location") or "-")
        missing = "  (missing!)" if entry.get("exists") is False else ""
        lines.append(render.PathBlock(where + missing, 2))
    return Group(*lines)
