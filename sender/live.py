"""What the status page and ``sender top`` show that the ledger does not keep: the live side.

- ``LiveStatus`` (a ``sender.hooks.Hooks``): the batches running in this process with their
  progress now (the ledger only has a batch's totals once it ends), the batches that ended
  lately, dead letters since start, and a short history of throughput (records delivered per
  time step) for the chart.
- ``AttemptLog``: one per target (``Target.attempts``), fed by the target on every delivery
  attempt: latency percentiles over the latest attempts, retries, the last error and when.

Both are bounded (rings), cheap to feed (a few additions per chunk, never per record) and
read only when someone looks. The clocks are injectable for tests.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .hooks import Hooks

__all__ = ["AttemptLog", "LiveBatch", "LiveStatus", "percentile"]


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``samples`` by the nearest-rank method; None when empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]


class AttemptLog:
    """A target's latest delivery attempts: how long answers took, retries, the last error.

    Only attempts that got an answer count for latency (a refused connection takes a
    millisecond and says nothing about the receiver); every failed attempt sets the last error.
    """

    def __init__(self, *, keep: int = 512, wall: Callable[[], float] = time.time) -> None:
        self._latencies: deque[float] = deque(maxlen=keep)
        self._wall = wall
        self.attempts = 0
        self.failures = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall-clock seconds (epoch)

    def answered(self, seconds: float) -> None:
        """An attempt got an answer (accepted or refused) after ``seconds``."""
        self.attempts += 1
        self._latencies.append(max(0.0, seconds))

    def failed(self, error: str, seconds: float | None = None) -> None:
        """An attempt failed with ``error``; ``seconds`` when the receiver answered."""
        if seconds is not None:
            self.answered(seconds)
        else:
            self.attempts += 1
        self.failures += 1
        self.last_error = error
        self.last_error_at = self._wall()

    def retried(self) -> None:
        self.retries += 1

    def stats(self) -> dict[str, Any]:
        latencies = list(self._latencies)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        return {
            "attempts": self.attempts,
            "failed_attempts": self.failures,
            "retries": self.retries,
            "latency_p50_s": round(p50, 4) if p50 is not None else None,
            "latency_p95_s": round(p95, 4) if p95 is not None else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


@dataclass(slots=True)
class LiveBatch:
    """One batch as this process runs it (or ran it lately)."""

    batch_id: str
    dataset: str
    routes: list[str]
    started_at: float  # wall-clock seconds
    started_mono: float
    state: str = "running"
    read: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    chunks: int = 0
    wire_bytes: int = 0
    elapsed_s: float = 0.0  # set when it ends; while it runs it is computed on read
    targets: dict[str, int] = field(default_factory=dict)  # chunks each target took

    def to_dict(self, now_mono: float) -> dict[str, Any]:
        elapsed = self.elapsed_s if self.state != "running" else now_mono - self.started_mono
        return {
            "batch_id": self.batch_id,
            "dataset": self.dataset,
            "routes": list(self.routes),
            "state": self.state,
            "started_at": self.started_at,
            "elapsed_s": round(elapsed, 3),
            "records": {
                "read": self.read,
                "delivered": self.delivered,
                "dead_lettered": self.dead_lettered,
                "rejected": self.rejected,
                "chunks": self.chunks,
            },
            "wire_bytes": self.wire_bytes,
            "throughput_rps": round(self.delivered / elapsed, 1) if elapsed > 0 else 0.0,
            "targets": dict(self.targets),
        }


class LiveStatus(Hooks):
    """Hooks that keep the live picture of this process: running batches and their progress,
    the latest finished ones, dead letters since start, records delivered per ``step_s``
    over the last ``history`` steps.

    A batch's records are counted once per route, read records too (as its reconciliation
    counts them: ``read = delivered + dead-lettered + rejected`` over its routes).
    """

    def __init__(
        self,
        *,
        step_s: float = 2.0,
        history: int = 150,
        recent: int = 20,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.step_s = step_s
        self.history = history
        self._clock = clock
        self._wall = wall
        self.started_at = wall()
        self.running: dict[str, LiveBatch] = {}
        self.finished: deque[LiveBatch] = deque(maxlen=recent)
        self.dead_letters: dict[str, dict[str, int]] = {}  # store -> {chunks, records}
        self.delivered_total = 0
        self._steps: deque[list[float]] = deque(maxlen=history)  # [step start (wall), records]

    # -- hooks ------------------------------------------------------------------------------

    def batch_started(self, batch_id: str, dataset: str, routes: Sequence[str]) -> None:
        self.running[batch_id] = LiveBatch(
            batch_id, dataset, list(routes), self._wall(), self._clock()
        )

    def records_read(self, batch_id: str, count: int, size: int) -> None:
        batch = self.running.get(batch_id)
        if batch is not None:
            batch.read += count * max(1, len(batch.routes))

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
        batch = self.running.get(batch_id)
        if batch is not None:
            batch.chunks += 1
            batch.wire_bytes += wire_size
            if target:
                batch.targets[target] = batch.targets.get(target, 0) + 1
        if kind != "data":
            if batch is not None:
                batch.rejected += records
        elif state == "delivered":
            if batch is not None:
                batch.delivered += records
            self.delivered_total += records
            self._add_step(records)
        elif state == "dead_lettered" and batch is not None:
            batch.dead_lettered += records
        if state == "dead_lettered" and target:
            counts = self.dead_letters.setdefault(target, {"chunks": 0, "records": 0})
            counts["chunks"] += 1
            counts["records"] += records

    def batch_finished(self, batch_id: str, state: str, duration_s: float) -> None:
        batch = self.running.pop(batch_id, None)
        if batch is None:
            return
        batch.state = state
        batch.elapsed_s = duration_s
        self.finished.appendleft(batch)

    # -- reading ----------------------------------------------------------------------------

    def _add_step(self, records: int) -> None:
        now = self._wall()
        start = now - now % self.step_s
        if self._steps and self._steps[-1][0] == start:
            self._steps[-1][1] += records
        else:
            self._steps.append([start, float(records)])

    def throughput(self) -> dict[str, Any]:
        """Records delivered per second in each of the last ``history`` steps, oldest first
        (steps without a delivery are zeros), and the step the last value belongs to. A
        process younger than that shows the steps since it started (a minute at least), so
        that its first batch does not hide in a corner of the chart."""
        now = self._wall()
        last = now - now % self.step_s
        since_start = math.ceil((now - self.started_at) / self.step_s) + 1
        steps = min(self.history, max(since_start, math.ceil(60 / self.step_s)))
        first = last - (steps - 1) * self.step_s
        values = [0.0] * steps
        for start, records in self._steps:
            index = round((start - first) / self.step_s)
            if 0 <= index < steps:
                values[index] = round(records / self.step_s, 1)
        return {"step_s": self.step_s, "until": last, "records_per_s": values}

    def batches(self) -> list[dict[str, Any]]:
        """Running batches first (newest first), then the latest finished ones."""
        now = self._clock()
        running = sorted(self.running.values(), key=lambda b: b.started_at, reverse=True)
        return [b.to_dict(now) for b in [*running, *self.finished]]
