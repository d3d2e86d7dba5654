"""A bridge from a blocking download to the event loop, for SDKs that only write to a file
(google-cloud-storage's ``download_to_file``): the download thread writes into a
``DownloadPipe``, whose bytes reach the loop in bounded pieces. No SDK here.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from typing import Any

__all__ = ["DownloadPipe", "PipeCancelled"]

_QUEUED_PIECES = 2  # pieces a download may run ahead of its reader


class PipeCancelled(Exception):
    """The reader went away: the download thread stops."""


class DownloadPipe(io.RawIOBase):
    """A writable file for a download thread whose bytes reach the loop in pieces of
    ``size``; the thread blocks while ``_QUEUED_PIECES`` pieces wait to be read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self._size = size
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._slots = threading.Semaphore(_QUEUED_PIECES)
        self._buffer = bytearray()
        self._cancelled = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # from the download thread
        if self._cancelled:
            raise PipeCancelled
        self._buffer += data
        if len(self._buffer) >= self._size:
            self._hand_over()
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # the SDK rewinds only after decompressive transcoding, which raw downloads avoid
        raise io.UnsupportedOperation("a streamed download cannot rewind")

    def _hand_over(self) -> None:
        self._slots.acquire()
        if self._cancelled:
            raise PipeCancelled
        piece = bytes(self._buffer)
        self._buffer.clear()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, piece)

    def finish(self) -> None:
        """The download ended (well or not): hand over the rest, then the end mark."""
        try:
            if self._buffer and not self._cancelled:
                self._hand_over()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads
                self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def get(self) -> bytes | None:
        piece = await self._queue.get()
        if piece is not None:
            self._slots.release()
        return piece

    def cancel(self) -> None:
        self._cancelled = True
        self._slots.release()  # wake a thread waiting for room
