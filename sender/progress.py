"""Rich progress displays: ``sender send`` (fed by engine hooks) and ``sender replay`` (fed
by replay hooks). Both draw on stderr, so that stdout stays the result."""

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
from .replay import ReplayHooks, ReplayItem, ReplayReport

__all__ = ["ReplayProgress", "SendProgress"]


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
        kind: str = "data",
    ) -> None:
        self._states[state] = self._states.get(state, 0) + 1
        detail = " ".join(f"{k.replace('_', '-')} {v}" for k, v in sorted(self._states.items()))
        self.progress.update(self._chunks, advance=1, detail=detail)


class ReplayProgress(ReplayHooks):
    """Chunks of a replay settled (delivered, failed, or checked in a dry run), out of those
    selected; says so when it waits for a daemon's lease."""

    def __init__(self, console: Console) -> None:
        self.console = console
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
        self._task = self.progress.add_task("replay", total=None, detail="", start=False)
        self._states: dict[str, int] = {}

    def __enter__(self) -> ReplayProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def waiting(self, holder: str, wait_s: float) -> None:
        self.progress.update(
            self._task, description=f"waiting up to {wait_s:g}s for {holder}'s lease"
        )

    def started(self, report: ReplayReport) -> None:
        targets = ", ".join(sorted({item.target for item in report.items}))
        verb = "checking" if report.selection.dry_run else "to"
        self.progress.start_task(self._task)
        self.progress.update(self._task, description=f"{verb} {targets}", total=len(report.items))

    def chunk_done(self, item: ReplayItem) -> None:
        self._states[item.state] = self._states.get(item.state, 0) + 1
        detail = " ".join(f"{k} {v}" for k, v in sorted(self._states.items()))
        self.progress.update(self._task, advance=1, detail=detail)
