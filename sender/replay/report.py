"""What a replay did, chunk by chunk (``ReplayItem``) and as a whole (``ReplayReport``: the
audit-trail record and ``--json``), and the hooks a progress display learns it from."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from ..hooks import HookGuard
from ..ports import ChunkRecord, RouteStats
from .selection import Selection

__all__ = ["GuardedReplayHooks", "ReplayHooks", "ReplayItem", "ReplayReport"]


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
    # how the chunks the batch's run never cut went (``--all`` of a batch that did not
    # complete): the state of the run that sent them, with its error
    rest: str | None = None
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
            and self.rest in (None, "complete")
        )

    @property
    def result(self) -> str:
        if self.refused is not None:
            return "refused"
        if self.interrupted:
            return "interrupted"
        if not self.items and self.rest is None:
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
            "rest": self.rest,
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


class GuardedReplayHooks(ReplayHooks):
    """``hooks`` as the replayer calls them: one that raises (a broken progress bar, a
    metrics hook) is logged once per kind and never changes the replay."""

    def __init__(self, hooks: ReplayHooks) -> None:
        self.inner = hooks
        self.guard = HookGuard()

    def waiting(self, holder: str, wait_s: float) -> None:
        self.guard.call(self.inner, "waiting", partial(self.inner.waiting, holder, wait_s))

    def started(self, report: ReplayReport) -> None:
        self.guard.call(self.inner, "started", partial(self.inner.started, report))

    def chunk_done(self, item: ReplayItem) -> None:
        self.guard.call(self.inner, "chunk_done", partial(self.inner.chunk_done, item))
