"""Helpers shared by the object-store adapters (``s3``, ``gcs``); no SDK here.

The bucket-drop flow itself (object names, manifest, ``_SUCCESS``) is pure core logic and
lives in ``sender.drop``; this module holds what only the adapters need.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from sender.model import ObjectInfo

__all__ = ["ReadAhead"]

Fetch = Callable[[ObjectInfo, int, int], Awaitable[bytes]]


class ReadAhead:
    """Serves small ranged reads from a few aligned blocks, one request per block.

    Parquet asks for every column chunk separately, and pyarrow's threads ask out of order:
    a file written with small row groups means hundreds of reads of a few KiB, each a round
    trip to the store (~20-50 ms on S3 or GCS). Blocks of ``block_size`` bytes at fixed
    offsets turn them into about one request per block whatever the order; reads of a block
    or more go straight to the store. At most ``blocks`` blocks are kept (least recently used
    first out), so memory stays bounded at ``blocks * block_size``.
    """

    def __init__(self, fetch: Fetch, block_size: int, blocks: int = 4) -> None:
        self._fetch = fetch
        self._block_size = block_size
        self._blocks = blocks
        self._cache: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._pending: dict[tuple[str, str, int], asyncio.Future[bytes]] = {}
        self.requests = 0  # fetches made: what a reader cost on the wire

    async def read(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        """``length`` bytes of ``obj`` from ``start`` (fewer at the end)."""
        if length <= 0 or start >= obj.size:
            return b""
        end = min(start + length, obj.size)
        if end - start >= self._block_size:
            self.requests += 1
            return await self._fetch(obj, start, end - start)
        pieces = []
        at = start
        while at < end:  # a small read spans one block, or two
            index = at // self._block_size
            offset = index * self._block_size
            block = await self._block(obj, index)
            piece = block[at - offset : min(end, offset + len(block)) - offset]
            if not piece:  # the object is shorter than listed: stop rather than spin
                break
            pieces.append(piece)
            at += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _block(self, obj: ObjectInfo, index: int) -> bytes:
        key = (obj.uri, obj.version, index)
        while (pending := self._pending.get(key)) is not None:
            # another reader is fetching this very block: wait for it rather than fetch twice
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this reader was cancelled, not the fetch
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            self.requests += 1
            offset = index * self._block_size
            size = min(obj.size, offset + self._block_size) - offset
            block = await self._fetch(obj, offset, size)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: there may be no other reader waiting
            raise
        finally:
            del self._pending[key]
        future.set_result(block)
        self._cache[key] = block
        while len(self._cache) > self._blocks:
            self._cache.popitem(last=False)
        return block

    def clear(self) -> None:
        self._cache.clear()
