"""How a run of a batch ended (``BatchOutcome``): what the daemon settles the trigger message
by, what ``sender send`` prints and exits with, and the one ``batch.finished`` log line."""

from __future__ import annotations

from dataclasses import dataclass

from .log import get_logger
from .model import BatchState, TriggerMessage
from .ports import RouteStats

__all__ = ["BatchOutcome"]

log = get_logger("sender.engine")


@dataclass(slots=True)
class BatchOutcome:
    """How a run of a batch ended. ``state`` is what the daemon settles the trigger message
    by: complete (ack), failed (reject), incomplete (give back, resumed later)."""

    batch_id: str
    dataset: str
    state: BatchState
    routes: dict[str, RouteStats]
    error: str | None = None
    already_complete: bool = False
    duration_s: float = 0.0
    rejects_stored: int = 0  # bad records written to a dead-letter store
    fallbacks: int = 0
    # a shard's run (``sender.shards``): its shard; None for a whole batch's
    shard: int | None = None
    # the batch was sharded (``sender.shards``): these shard messages are to be published,
    # then the batch's own message acked; None for a batch that ran
    handoff: tuple[TriggerMessage, ...] | None = None

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

    def log(self) -> None:
        """The batch's one INFO line (ERROR with its error): counts, reconciliation, time."""
        totals = self.totals
        fields = dict(
            batch_id=self.batch_id,
            dataset=self.dataset,
            state=self.state.value,
            read=totals.read,
            delivered=totals.delivered,
            dead_lettered=totals.dead_lettered,
            rejected=totals.rejected,
            unchanged=totals.unchanged,
            tombstones=totals.tombstones,
            chunks=totals.chunks,
            fallbacks=self.fallbacks,
            duration_s=round(self.duration_s, 3),
            reconciled=all(s.reconciled for s in self.routes.values()),
        )
        if self.error:
            log.error("batch.finished", error=self.error, **fields)
        else:
            log.info("batch.finished", **fields)
