"""Bridges from a Source's async byte streams to the blocking file objects that the CSV
module and pyarrow want. The blocking side runs in a worker thread and asks the event loop for
more bytes, so a remote object is read piece by piece, never downloaded whole."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

from .model import ObjectInfo
from .ports import Source

__all__ = ["SeekableObject", "StreamReader"]

T = TypeVar("T")


def _run(loop: asyncio.AbstractEventLoop, coro: Awaitable[T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, loop).result()  # type: ignore[arg-type]


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_closing: set[asyncio.Task[None]] = set()  # strong references until the aclose has run


class StreamReader(io.RawIOBase):
    """A blocking, forward-only file over ``source.open(obj)``; use from a worker thread."""

    def __init__(self, source: Source, obj: ObjectInfo, loop: asyncio.AbstractEventLoop) -> None:
        self._stream: AsyncIterator[bytes] = source.open(obj)
        self._loop = loop
        self._buffer = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes | None:
        return await anext(self._stream, None)

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer and not self._eof:
            try:
                piece = _run(self._loop, self._next())
            except BaseException:
                self._eof = True  # a stream that raised is finished: nothing left to close
                raise
            if piece is None:
                self._eof = True
            else:
                self._buffer = memoryview(piece)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        if not self.closed and not self._eof:
            # a source's open() is an async generator (then it has aclose) or an iterator
            stream = self._stream if isinstance(self._stream, AsyncGenerator) else None
            if stream is not None and _on_loop_thread(self._loop):
                # closed on the loop's own thread (garbage collected there, with a traceback
                # that held it): waiting for the loop would deadlock it, so only schedule
                task = self._loop.create_task(stream.aclose())
                _closing.add(task)
                task.add_done_callback(_closing.discard)
            elif stream is not None:
                with contextlib.suppress(RuntimeError):  # the loop is gone already
                    _run(self._loop, stream.aclose())
        super().close()


class SeekableObject(io.RawIOBase):
    """A blocking, seekable file over ``source.read_range``: Parquet reads the footer, then
    only the row groups it needs. Use from a worker thread."""

    def __init__(self, source: Source, obj: ObjectInfo, loop: asyncio.AbstractEventLoop) -> None:
        self._source = source
        self._obj = obj
        self._loop = loop
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._obj.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        length = min(len(target), self._obj.size - self._pos)
        if length <= 0:
            return 0
        data = _run(self._loop, self._source.read_range(self._obj, self._pos, length))
        target[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, self._obj.size - self._pos)  # a seek may have gone past the end
        buffer = bytearray(size)
        n = self.readinto(buffer)
        return bytes(buffer[:n])
