"""A target is a destination as the core uses it: the adapter, plus the policies that wrap
every delivery to it — bounded concurrency and the retry policy — shared by all batches.

Encoding is per target (each destination has its own format and codec), and a chunk's
encodings are cached so a fallback with the same format and codec reuses the bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .config import DestinationOptions
from .log import get_logger
from .model import EncodedChunk, Receipt
from .ports import Destination
from .retry import RetryEvent, RetryPolicy

__all__ = ["Delivered", "Target"]

log = get_logger("sender.targets")


@dataclass(frozen=True, slots=True)
class Delivered:
    receipt: Receipt
    attempts: int


class Target:
    """One configured destination with its shared concurrency limit and retry policy."""

    def __init__(self, name: str, destination: Destination, options: DestinationOptions) -> None:
        self.name = name
        self.destination = destination
        self.options = options
        self.format: str = options.format
        self.codec: str = options.compression
        self.level: int | None = options.compression_level
        limit = options.concurrency
        self.concurrency = options.max_concurrency if limit == "adaptive" else int(limit)
        self._slots = asyncio.Semaphore(self.concurrency)
        self.retry = RetryPolicy(options.retry)

    @property
    def encoding(self) -> tuple[str, str, int | None]:
        return self.format, self.codec, self.level

    async def send(self, chunk: EncodedChunk, /, **log_fields: Any) -> Delivered:
        """Deliver with retries; raise the final ``DeliveryError`` (with ``.attempts``)."""

        async def attempt() -> Receipt:
            async with self._slots:
                return await self.destination.deliver(chunk)

        def on_retry(event: RetryEvent) -> None:
            log.info(
                "chunk.retry",
                target=self.name,
                attempt=event.attempt,
                error=event.error,
                wait_s=round(event.wait_s, 3),
                **log_fields,
            )

        result = await self.retry.call(attempt, on_retry=on_retry)
        return Delivered(result.value, result.attempts)

    async def aclose(self) -> None:
        await self.destination.aclose()
