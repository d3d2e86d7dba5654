"""Sharded batches in memory: the ``Shards`` port as a mixin of ``MemoryLedger``, for fast
tests of the core (same semantics as the SQL ledgers, nothing durable)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime

from sender.ports import BatchRecord, RouteStats
from sender.shard_ports import ShardEnd, ShardRecord, no_shard, plan_of, shard_lease_key

__all__ = ["MemoryShards"]


class MemoryShards:
    """Plans in a dict by batch; ``MemoryLedger`` calls ``_init_shards`` and provides
    ``_enter``, ``_now``, ``_require`` and ``_leases``."""

    _plans: dict[str, list[ShardRecord]]
    _leases: dict[str, tuple[str, datetime]]

    def _init_shards(self) -> None:
        self._plans = {}

    async def _enter(self) -> None:  # pragma: no cover - MemoryLedger's own is used
        raise NotImplementedError

    def _now(self) -> datetime:  # pragma: no cover - MemoryLedger's own is used
        raise NotImplementedError

    def _require(self, batch_id: str) -> BatchRecord:  # pragma: no cover - MemoryLedger's
        raise NotImplementedError

    def _shard(self, batch_id: str, shard: int) -> ShardRecord:
        plan = self._plans.get(batch_id, [])
        if not 0 <= shard < len(plan):
            raise no_shard(batch_id, shard)
        return plan[shard]

    def _shard_out(self, record: ShardRecord) -> ShardRecord:
        copied = copy.deepcopy(record)
        key = shard_lease_key(record.batch_id, record.shard)
        copied.owner, copied.lease_expires = self._leases.get(key, (None, None))
        return copied

    async def plan_shards(
        self, batch_id: str, sizes: Sequence[int], *, replace: bool = False
    ) -> list[ShardRecord]:
        await self._enter()
        self._require(batch_id)
        if replace or batch_id not in self._plans:
            self._plans[batch_id] = plan_of(batch_id, sizes)
        return [self._shard_out(s) for s in self._plans[batch_id]]

    async def shards(self, batch_id: str) -> list[ShardRecord]:
        await self._enter()
        return [self._shard_out(s) for s in self._plans.get(batch_id, [])]

    async def set_shards_published(self, batch_id: str) -> None:
        await self._enter()
        for record in self._plans.get(batch_id, []):
            record.published = True

    async def start_shard(self, batch_id: str, shard: int, owner: str | None = None) -> ShardRecord:
        await self._enter()
        record = self._shard(batch_id, shard)
        record.runs += 1
        record.started_at = self._now()
        record.sent_by = owner
        if record.runs > 1:
            self._require(batch_id).runs += 1
        if record.state == "failed":
            record.state, record.error = "pending", None
        return self._shard_out(record)

    async def finish_shard(
        self,
        batch_id: str,
        shard: int,
        state: ShardEnd,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> bool:
        if state not in ("complete", "failed"):
            raise ValueError(f"unknown shard end {state!r}")
        await self._enter()
        record = self._shard(batch_id, shard)
        if record.state == "complete":
            return False
        record.state, record.error = state, error
        record.routes = copy.deepcopy(routes)
        record.finished_at = self._now()
        return state == "complete" and all(s.state == "complete" for s in self._plans[batch_id])
