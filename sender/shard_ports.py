"""The ledger's ``Shards`` ability: a sharded batch's plan and each shard's progress
(``sender.shards`` runs the shards; ``[daemon] shard_objects`` turns it on).

A batch with more objects than ``shard_objects`` is cut into shards of consecutive objects
(in the listing's order) once, at its first run; the plan is recorded with the batch so that
every replica, a resume and a replay cut the same chunks. Each shard is leased on its own
(``Ledger.acquire_lease`` under ``shard_lease_key``) and ends ``complete`` or ``failed``;
``finish_shard`` says, atomically, which call completed the batch's last shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, Self, runtime_checkable

from .errors import LedgerError
from .ledger_ports import RouteStats

__all__ = [
    "SHARD_STRIDE",
    "ShardEnd",
    "ShardRecord",
    "Shards",
    "no_shard",
    "plan_of",
    "shard_lease_key",
    "shard_of",
    "shards_of",
]

ShardEnd = Literal["complete", "failed"]


SHARD_STRIDE = 1_000_000
"""Shard k's chunks (and rejects files) are numbered from ``k * SHARD_STRIDE``."""


def shard_of(chunk_id: str) -> int:
    """The shard whose chunk (or piece, or rejects file) this is; -1 for an id no run cuts."""
    whole = chunk_id.split(".", 1)[0].removeprefix("r")
    return int(whole) // SHARD_STRIDE if whole.isdigit() else -1


def shard_lease_key(batch_id: str, shard: int) -> str:
    """The key a shard's lease is taken under: a batch id holds no ``/``, so it never names
    a batch."""
    return f"{batch_id}/{shard}"


@dataclass(slots=True)
class ShardRecord:
    """One shard of a batch's plan: ``objects`` consecutive objects from ``first_object``.

    ``state`` is ``pending`` until it ends ``complete`` (``routes`` then holds its
    reconciliation) or ``failed`` (with ``error``); ``runs`` counts its starts; ``published``
    says the plan's shard messages were all put on the queue. ``owner`` holds its lease
    while ``lease_expires`` is ahead; ``sent_by`` is the replica that last started it, kept
    after its lease is gone (who delivered a finished shard)."""

    batch_id: str
    shard: int
    first_object: int
    objects: int
    state: str = "pending"
    routes: dict[str, RouteStats] = field(default_factory=dict)
    error: str | None = None
    runs: int = 0
    published: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = None
    lease_expires: datetime | None = None
    sent_by: str | None = None


def plan_of(batch_id: str, sizes: Sequence[int]) -> list[ShardRecord]:
    """The plan ``Shards.plan_shards`` records: shard k holds ``sizes[k]`` objects, starting
    after those of the shards before it."""
    plan, first = [], 0
    for index, size in enumerate(sizes):
        plan.append(ShardRecord(batch_id, index, first, size))
        first += size
    return plan


def no_shard(batch_id: str, shard: int) -> LedgerError:
    """The error of a ledger asked for a shard the batch's plan does not have."""
    return LedgerError(f"batch {batch_id!r} has no shard {shard}")


@runtime_checkable
class Shards(Protocol):
    """Optional for a ledger: sharded batches (``[daemon] shard_objects``). Without it a
    daemon sends every batch whole. Every method is one transaction; ``LedgerError`` when
    the store fails."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def aclose(self) -> None: ...

    async def plan_shards(
        self, batch_id: str, sizes: Sequence[int], *, replace: bool = False
    ) -> list[ShardRecord]:
        """Record the batch's plan: shard k holds ``sizes[k]`` objects starting after those of
        the shards before it. A plan once recorded is kept, and returned unchanged, whatever
        ``sizes`` says (a redelivered message plans again); ``replace`` (a rerun) drops it
        for this one, every shard pending. ``LedgerError`` for an unknown batch."""
        ...

    async def shards(self, batch_id: str) -> list[ShardRecord]:
        """The batch's plan in shard order, each with its lease's holder; ``[]`` without one."""
        ...

    async def set_shards_published(self, batch_id: str) -> None:
        """Every shard message of the plan is on the queue (``published`` True for all)."""
        ...

    async def start_shard(self, batch_id: str, shard: int, owner: str | None = None) -> ShardRecord:
        """A run of the shard begins, by ``owner`` (kept as ``sent_by``): ``runs`` + 1,
        ``started_at`` now, a failed shard pending again (its error cleared); a shard run
        again (resumed, taken over) is a run of the batch too (its ``runs`` + 1).
        ``LedgerError`` for a shard not in the plan."""
        ...

    async def finish_shard(
        self,
        batch_id: str,
        shard: int,
        state: ShardEnd,
        routes: dict[str, RouteStats],
        error: str | None = None,
    ) -> bool:
        """Record how the shard ended. True for exactly one call per plan: the one that made
        the last shard that was not complete complete (two replicas finishing the last two
        shards at once: one of them). Completing a complete shard changes nothing (False).
        ``LedgerError`` for a shard not in the plan."""
        ...


async def shards_of(ledger: object, batch_id: str) -> list[ShardRecord]:
    """The batch's shards (``Shards.shards``); ``[]`` from a ledger that keeps none."""
    return await ledger.shards(batch_id) if isinstance(ledger, Shards) else []
