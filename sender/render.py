"""The pieces every on-call view is drawn with (``sender.status``, ``sender.replay_views``):
borderless tables that fit an 80-column terminal, states in colour, times, indented blocks
and paths that wrap after a ``/``."""

from __future__ import annotations

import contextlib
import os
import re
from datetime import datetime
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .model import BatchState, ChunkState
from .ports import RouteStats

__all__ = [
    "PathBlock",
    "block",
    "display_path",
    "reconciliation_line",
    "records",
    "seconds",
    "state_text",
    "table",
    "when",
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


def table() -> Table:
    # no borders, one space between columns: the most data an 80-column terminal can hold
    return Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")


def state_text(state: BatchState | ChunkState | str) -> Text:
    value = state.value if isinstance(state, BatchState | ChunkState) else state
    style = _STATE_STYLE.get(state, "") if not isinstance(state, str) else ""
    return Text(value.replace("_", "-"), style=style)


def when(value: datetime | None) -> str:
    if value is None:
        return "-"
    local = value.astimezone()
    today = datetime.now(local.tzinfo).date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%m-%d %H:%M")


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def block(text: str, indent: int = 4, style: str = "") -> Padding:
    """Text indented as a block: its wrapped lines keep the indent."""
    return Padding(Text(text, style=style), (0, 0, 0, indent), expand=False)


class PathBlock:
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
                yield block(text, self.indent, self.style)


def display_path(location: str) -> str:
    """A local file under the working folder as a relative path (what on-call types, and
    short enough for one 80-column line); anything else as it is."""
    if "://" in location and not location.startswith("file://"):
        return location
    path = Path(os.path.normpath(location.removeprefix("file://")))
    with contextlib.suppress(ValueError, OSError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def records(n: int) -> str:
    return f"{n:,} record{'' if n == 1 else 's'}"


def reconciliation_line(stats: RouteStats) -> Text:
    balanced = stats.reconciled
    text = Text(
        f"read {stats.read:,} = delivered {stats.delivered:,} + dead-lettered "
        f"{stats.dead_lettered:,} + rejected {stats.rejected:,}"
    )
    if stats.unchanged:  # a diff-synced route: records the receiver has already
        text.append(f" + unchanged {stats.unchanged:,}")
    if stats.tombstones or stats.tombstones_dead_lettered:
        text.append(f"  (tombstones: {stats.tombstones:,} delivered")
        text.append(f", {stats.tombstones_dead_lettered:,} dead-lettered)")
    text.append("  ✓" if balanced else "  ✗ (not yet reconciled)", "green" if balanced else "red")
    return text
