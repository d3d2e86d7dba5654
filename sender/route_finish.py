"""The end of a complete batch for the destinations that want to know it: each one that is a
``BatchFinisher`` (a bucket drop writes its manifest and ``_SUCCESS``) is told which of the
batch's chunks it holds. The engine calls it for a whole batch, ``sender.shards`` once the
last shard of a sharded batch is complete."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from .errors import DeliveryError, FinishFailed
from .model import TriggerMessage, chunk_sort_key
from .ports import BatchFinisher, BatchSummary
from .routing import SPLIT_TARGET, RouteRun

__all__ = ["finish_routes"]


async def finish_routes(message: TriggerMessage, runs: Sequence[RouteRun]) -> None:
    """Tell each destination that wants to know (a bucket drop) which chunks it holds, from
    the chunks each run knows (``previous``). Raises ``FinishFailed``."""
    for run in runs:
        # a split chunk is not held anywhere itself: its pieces are
        data = [c for c in run.previous.values() if c.kind == "data" and c.target != SPLIT_TARGET]
        data.sort(key=lambda c: chunk_sort_key(c.chunk_id))
        seen: set[str] = set()
        for target in [*run.targets, run.dead_letter]:
            finisher = target.destination
            if not isinstance(finisher, BatchFinisher) or target.name in seen:
                continue
            seen.add(target.name)
            held = [c for c in data if c.target == target.name]
            if not held:
                continue
            summary = BatchSummary(
                message.batch_id,
                message.dataset,
                run.name,
                held,
                complete=len(held) == len(data),
            )
            try:
                await target.retry.call(functools.partial(finisher.finish_batch, summary))
            except DeliveryError as exc:
                raise FinishFailed(
                    f"route {run.name}: finishing the batch on {target.name} failed: {exc}"
                ) from exc
