"""``GET /v1/status``: one JSON document with what on-call wants to see at a glance.

It joins three sources: the ledger (recent batches, one batch's chunks and reconciliation),
the targets (circuit, concurrency, rate-limit waits, latency, last error: ``Target.stats``)
and the live hooks of this process (``sender.live.LiveStatus``: running batches' progress,
throughput history, dead letters since start). The status page, its script and
``sender top`` all read this one shape. Every string in it passes through the log masking,
so a secret that reached an error message never reaches a screen.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .config import AppConfig
from .errors import SenderError
from .live import LiveStatus
from .log import mask_values
from .ports import BatchRecord, ChunkRecord, Ledger
from .targets import Target

__all__ = ["StatusSource", "replay_command"]

_RECENT = 20  # batches listed
_CHUNKS = 500  # chunks listed on one batch's page (the noteworthy ones first)


def replay_command(batch_id: str, config_path: str | None) -> str:
    """The command that re-sends a batch's dead-lettered chunks (what the page shows)."""
    words = ["sender", "replay", batch_id]
    if config_path:
        words += ["-c", config_path]
    return " ".join(shlex.quote(w) for w in words)


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


@dataclass
class StatusSource:
    """Everything ``/v1/status`` reads, gathered by the daemon at start."""

    config: AppConfig
    ledger: Ledger
    targets: Mapping[str, Target]
    live: LiveStatus
    active: Callable[[], set[str]]  # ids of the batches running here now
    # what /readyz would say is wrong (draining, trigger down, dead-letter store full...)
    readiness: Callable[[], Awaitable[list[str]]] | None = None

    def _roles(self) -> dict[str, str]:
        roles: dict[str, str] = {}
        for route in self.config.routes.values():
            for position, name in enumerate(route.targets):
                role = "primary" if position == 0 else "fallback"
                if roles.get(name) != "primary":
                    roles[name] = role
            dead = route.dead_letter or self.config.dead_letter_default
            roles.setdefault(dead, "dead letter")
        return roles

    def destinations(self) -> list[dict[str, Any]]:
        roles = self._roles()
        out = []
        for name, target in self.targets.items():
            stats = target.stats()
            section = self.config.destinations.get(name)
            out.append(
                {
                    "name": name,
                    "type": section.type if section else "?",
                    "role": roles.get(name, "unused"),
                    "adaptive": target.adaptive,
                    **stats,
                }
            )
        order = {"primary": 0, "fallback": 1, "dead letter": 2, "unused": 3}
        return sorted(out, key=lambda d: (order.get(d["role"], 9), d["name"]))

    def _ledger_batch(self, record: BatchRecord, now: float) -> dict[str, Any]:
        started = _epoch(record.started_at)
        finished = _epoch(record.finished_at)
        elapsed = (finished or now) - started if started is not None else None
        totals = record.totals
        running = record.state.value == "running"
        return {
            "batch_id": record.batch_id,
            "dataset": record.dataset,
            "routes": list(record.routes),
            "state": record.state.value,
            "started_at": started,
            "finished_at": finished,
            "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
            "records": totals.to_dict(),
            "throughput_rps": round(totals.delivered / elapsed, 1)
            if elapsed and not running
            else None,
            "reconciled": totals.reconciled and not running,
            "error": record.error,
            "here": False,  # running in this process (live progress)
            "owner": record.lease_owner if running else None,
        }

    async def batches(self, problems: list[str] | None = None) -> list[dict[str, Any]]:
        """Batches running here (live progress) first, then the latest from the ledger; with
        the ledger unreachable only the first, and the reason in ``problems``."""
        now = time.time()
        live = {b["batch_id"]: b for b in self.live.batches()}
        out: list[dict[str, Any]] = []
        # a batch that ended is read from the ledger: it has the batch's final word
        for batch_id in [b for b in live if live[b]["state"] == "running"]:
            out.append({**live[batch_id], "here": True, "reconciled": False, "error": None})
        shown = {b["batch_id"] for b in out}
        try:
            records = await self.ledger.list_batches(limit=_RECENT)
        except SenderError as exc:
            if problems is None:
                raise
            problems.append(f"ledger: {exc}")
            records = []
        for record in records:
            if record.batch_id in shown:
                continue
            item = self._ledger_batch(record, now)
            mine = live.get(record.batch_id)
            if mine is not None and item["throughput_rps"] is None:
                item["throughput_rps"] = mine["throughput_rps"]
            out.append(item)
        return out[: _RECENT + len(shown)]

    async def snapshot(self, batch_id: str | None = None) -> dict[str, Any]:
        """The whole ``/v1/status`` document; with ``batch_id`` also that batch's detail
        (``"batch"``, None when the ledger does not know it)."""
        problems = list(await self.readiness()) if self.readiness is not None else []
        batches = await self.batches(problems)
        destinations = self.destinations()
        stores = {name: dict(counts) for name, counts in sorted(self.live.dead_letters.items())}
        throughput = self.live.throughput()
        running = [b for b in batches if b["state"] == "running"]
        doc: dict[str, Any] = {
            "generated_at": time.time(),
            "version": __version__,
            "daemon": {
                "started_at": self.live.started_at,
                "uptime_s": round(time.time() - self.live.started_at, 1),
                "trigger": self.config.trigger.type,
                "max_batches": self.config.daemon.max_batches,
                "running_here": len(self.active()),
                "delivered_since_start": self.live.delivered_total,
            },
            "summary": {
                "running": len(running),
                "records_per_s": _now_rate(throughput),
                "open_circuits": sorted(
                    d["name"] for d in destinations if d["circuit"] != "closed"
                ),
                "dead_lettered_recent": sum(b["records"]["dead_lettered"] for b in batches),
            },
            "problems": list(dict.fromkeys(problems)),  # once each, in order
            "batches": batches,
            "destinations": destinations,
            "dead_letters": {"since_start": stores},
            "throughput": throughput,
        }
        if batch_id is not None:
            try:
                doc["batch"] = await self.batch_detail(batch_id, batches)
            except SenderError as exc:
                doc["batch"] = None
                doc["problems"].append(f"ledger: {exc}")
        masked: dict[str, Any] = mask_values(doc)
        return masked

    async def batch_detail(
        self, batch_id: str, batches: list[dict[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        """One batch: state, per-route reconciliation, chunks, and the repair command."""
        from .replay import replay_preview

        record = await self.ledger.get_batch(batch_id)
        if record is None:
            return None
        chunks = await self.ledger.chunks(batch_id)
        primaries = {name: route.targets[0] for name, route in self.config.routes.items()}
        preview = replay_preview(chunks, primaries)
        listed = next((b for b in batches or () if b["batch_id"] == batch_id), None)
        summary = listed or self._ledger_batch(record, time.time())
        noteworthy = sorted(chunks, key=lambda c: _plain(c, primaries))
        config_path = str(self.config.path) if self.config.path else None
        return {
            **summary,
            "uri": record.uri,
            "runs": record.runs,
            "error": record.error,
            "reconciliation": {
                name: {**stats.to_dict(), "reconciled": stats.reconciled}
                for name, stats in record.routes.items()
            },
            "chunks_total": len(chunks),
            "chunks": [_chunk(c) for c in noteworthy[:_CHUNKS]],
            "replay": {
                **preview,
                "command": replay_command(batch_id, config_path) if preview["chunks"] else None,
            },
        }


def _plain(chunk: ChunkRecord, primaries: Mapping[str, str]) -> tuple[int, str, str]:
    """Sort key: chunks with a story (dead-lettered, retried, fallback) before the rest."""
    story = (
        chunk.state.value != "delivered"
        or chunk.kind != "data"
        or chunk.attempts > 1
        or chunk.target != primaries.get(chunk.route)
    )
    return (0 if story else 1, chunk.route, chunk.chunk_id.zfill(12))


def _chunk(chunk: ChunkRecord) -> dict[str, Any]:
    return {
        "route": chunk.route,
        "chunk": chunk.chunk_id,
        "kind": chunk.kind,
        "state": chunk.state.value,
        "records": chunk.records,
        "target": chunk.target,
        "attempts": chunk.attempts,
        "last_error": chunk.last_error,
        "updated_at": _epoch(chunk.updated_at.astimezone(UTC)) if chunk.updated_at else None,
    }


def _now_rate(throughput: Mapping[str, Any]) -> float:
    """Records per second over the last few steps (the last one is still filling)."""
    values = throughput["records_per_s"][-4:-1] or throughput["records_per_s"][-1:]
    return round(sum(values) / len(values), 1) if values else 0.0
