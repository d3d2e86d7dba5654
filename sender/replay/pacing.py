"""``sender replay --rate``: every attempt to the replay's targets, retries included, waits
its turn, so that the fragile receiver the rate protects sees no burst."""

from __future__ import annotations

import asyncio
import time

from ..model import EncodedChunk, Receipt
from ..ports import Destination, Resource
from ..units import Rate

__all__ = ["Paced", "Pacer"]


class Pacer:
    """At most ``rate``: requests (or records) spaced evenly, whoever asks."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self, records: int) -> None:
        cost = records if self.rate.unit == "records" else 1
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + cost / self.rate.per_second
            if start > now:
                await asyncio.sleep(start - now)


class Paced(Resource):
    """A destination whose every attempt (retries too) waits for the replay's pacer: the
    fragile receiver ``--rate`` protects sees no burst, not even of retries."""

    def __init__(self, inner: Destination, pacer: Pacer) -> None:
        self.inner = inner
        self.name = inner.name
        self.formats = inner.formats
        self.codecs = inner.codecs
        self.pacer = pacer

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        await self.pacer.wait(chunk.records)
        return await self.inner.deliver(chunk)

    async def aclose(self) -> None:
        return None  # the app closes the real destination
