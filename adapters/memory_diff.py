"""Diff sync's state in memory: the ``DiffStore`` port as a mixin of ``MemoryLedger``, for
fast tests of the core (same semantics as the SQL ledgers, nothing durable)."""

from __future__ import annotations

from collections.abc import Sequence

from sender.ports import PlanRow

__all__ = ["MemoryDiff"]


class MemoryDiff:
    """Baselines and plans in dicts; ``MemoryLedger`` calls ``_init_diff`` and provides
    ``_enter`` (a closed ledger raises ``AdapterClosed`` there)."""

    _baselines: dict[tuple[str, str], dict[bytes, bytes]]
    _plans: dict[tuple[str, str], list[PlanRow]]
    _finished_plans: set[tuple[str, str]]

    def _init_diff(self) -> None:
        self._baselines, self._plans, self._finished_plans = {}, {}, set()

    async def _enter(self) -> None:  # pragma: no cover - MemoryLedger's own is used
        raise NotImplementedError

    async def baseline_page(
        self, dataset: str, route: str, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        await self._enter()
        items = sorted(self._baselines.get((dataset, route), {}).items())
        return [item for item in items if after is None or item[0] > after][:limit]

    async def start_plan(self, batch_id: str, route: str) -> None:
        await self._enter()
        self._plans[(batch_id, route)] = []
        self._finished_plans.discard((batch_id, route))

    async def save_plan(self, batch_id: str, route: str, rows: Sequence[PlanRow]) -> None:
        await self._enter()
        self._plans.setdefault((batch_id, route), []).extend(rows)

    async def finish_plan(self, batch_id: str, route: str) -> None:
        await self._enter()
        self._finished_plans.add((batch_id, route))

    async def has_plan(self, batch_id: str, route: str) -> bool:
        await self._enter()
        return (batch_id, route) in self._finished_plans

    async def plan_page(
        self, batch_id: str, route: str, after_ordinal: int, limit: int
    ) -> list[PlanRow]:
        await self._enter()
        rows = self._plans.get((batch_id, route), [])
        picked = [r for r in rows if r.kind != "delete" and (r.ordinal or 0) > after_ordinal]
        return sorted(picked, key=lambda r: r.ordinal or 0)[:limit]

    async def tombstone_page(
        self, batch_id: str, route: str, after_seq: int, limit: int
    ) -> list[PlanRow]:
        await self._enter()
        rows = self._plans.get((batch_id, route), [])
        picked = [r for r in rows if r.kind == "delete" and (r.seq or 0) > after_seq]
        return sorted(picked, key=lambda r: r.seq or 0)[:limit]

    async def commit_baseline(
        self,
        dataset: str,
        route: str,
        batch_id: str,
        delivered: Sequence[tuple[int, int]],
        *,
        replace: bool = False,
    ) -> int:
        await self._enter()
        baseline = self._baselines.setdefault((dataset, route), {})
        if replace:
            baseline.clear()
        moved = 0
        for row in self._plans.get((batch_id, route), []):
            if row.seq is None or row.key is None:
                continue
            if not any(start <= row.seq < end for start, end in delivered):
                continue
            if row.kind == "send" and row.hash is not None:
                baseline[row.key] = row.hash
                moved += 1
            elif row.kind == "delete" and baseline.pop(row.key, None) is not None:
                moved += 1
        return moved
