"""A rich progress display for ``sender send`` and ``sender replay``, fed by engine hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from .hooks import Hooks

__all__ = ["SendProgress"]


class SendProgress(Hooks):
    """Records read (no total: a batch is streamed) and chunks settled per state."""

    def __init__(self, console: Console, *, total_chunks: int | None = None) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._read = self.progress.add_task("records read", total=None, detail="")
        self._chunks = self.progress.add_task("chunks", total=total_chunks, detail="")
        self._states: dict[str, int] = {}

    def __enter__(self) -> SendProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def batch_started(self, batch_id: str, dataset: str, routes: Sequence[str]) -> None:
        self.progress.update(self._read, description=f"{batch_id} read")

    def records_read(self, batch_id: str, count: int, size: int) -> None:
        self.progress.advance(self._read, count)

    def chunk_done(
        self,
        batch_id: str,
        route: str,
        state: str,
        target: str | None,
        records: int,
        raw_size: int,
        wire_size: int,
    ) -> None:
        self._states[state] = self._states.get(state, 0) + 1
        detail = " ".join(f"{k.replace('_', '-')} {v}" for k, v in sorted(self._states.items()))
        self.progress.update(self._chunks, advance=1, detail=detail)
