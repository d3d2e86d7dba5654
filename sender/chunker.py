"""Deterministic chunking: records as NDJSON lines, cut by record count and NDJSON bytes.

Records travel as NDJSON lines (a list, or one ``Lines`` buffer on the fast path). A route
cuts them into chunks whose bounds depend only on the records and the route config, so a
resume or a replay re-creates the same chunks, payloads and idempotency keys.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

_np: Any
try:  # vectorised newline counts: ~8x faster than bytes.count, which scans a byte at a time
    import numpy as _np
except ImportError:  # pragma: no cover - then bytes.count does it, slower
    _np = None

__all__ = ["Chunker", "Lines", "RawChunk", "count_newlines", "framed", "lines_size"]


_scratch = threading.local()


def _masks(size: int) -> list[Any]:
    # boolean arrays reused across blocks: a fresh 1 MiB array per comparison would be
    # mapped and unmapped each time, and first-touch page faults are slow (PITFALLS.md)
    masks: list[Any] | None = getattr(_scratch, "masks", None)
    if masks is None or len(masks[0]) < size:
        masks = _scratch.masks = [_np.empty(max(size, 1 << 21), _np.bool_) for _ in range(3)]
    return masks


def count_newlines(data: bytes, start: int = 0, end: int | None = None) -> int:
    """``data.count(b"\\n", start, end)``, vectorised when numpy is there."""
    stop = len(data) if end is None else end
    size = stop - start
    if _np is None or size < 4096:
        return data.count(b"\n", start, stop)
    mask = _masks(size)[0][:size]
    _np.equal(_np.frombuffer(data, _np.uint8, size, start), 10, out=mask)
    return int(_np.count_nonzero(mask))


def framed(data: bytes) -> int | None:
    """The number of lines in ``data`` (whole lines, ending with a newline) when each one is
    a ``{...}`` object with no blank line and no ``\\r``: every newline sits between ``}`` and
    ``{``. None otherwise (then the lines must be looked at one by one)."""
    if len(data) < 3 or data[0] != 0x7B or data[-2] != 0x7D or data[-1] != 0x0A:
        return None
    if _np is None:
        count = data.count(b"\n")
        return count if data.count(b"}\n{") == count - 1 else None
    size = len(data)
    newline, between, other = (mask[:size] for mask in _masks(size))
    a = _np.frombuffer(data, _np.uint8)
    _np.equal(a, 0x0A, out=newline)
    count = int(_np.count_nonzero(newline))
    between, other = between[: size - 2], other[: size - 2]
    _np.equal(a[2:], 0x7B, out=between)
    _np.equal(a[:-2], 0x7D, out=other)
    between &= other
    between &= newline[1:-1]
    return count if int(_np.count_nonzero(between)) == count - 1 else None


class Lines(Sequence[bytes]):
    """Records as one NDJSON buffer: ``data`` holds every line followed by ``\\n``.

    The fast path's shape. A JSONL file is read, framed, chunked and sent as such buffers, so
    no object is made per record (each one costs an allocation, and fresh memory is slow to
    touch here). It is still a sequence of lines: iterating or indexing splits it on demand.
    """

    __slots__ = ("_count", "data")

    def __init__(self, data: bytes, count: int | None = None) -> None:
        self.data = data
        self._count = count_newlines(data) if count is None else count

    @classmethod
    def of(cls, lines: Sequence[bytes]) -> Lines:
        """``lines`` as a buffer (no copy when they are one already)."""
        if isinstance(lines, Lines):
            return lines
        return cls(b"\n".join(lines) + b"\n" if lines else b"", len(lines))

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        """Bytes of the lines without their newlines, as ``sum(map(len, lines))``."""
        return len(self.data) - self._count

    def split(self) -> list[bytes]:
        return self.data[:-1].split(b"\n") if self._count else []

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.split())

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        return self.split()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Lines):
            return self.data == other.data
        if isinstance(other, Sequence) and not isinstance(other, bytes | str):
            return self.split() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Lines({self._count} records, {len(self.data)} bytes)"


def lines_size(lines: Sequence[bytes]) -> int:
    """Bytes of the lines without newlines; a ``Lines`` buffer knows it without splitting."""
    return lines.size if isinstance(lines, Lines) else sum(map(len, lines))


@dataclass(slots=True)
class RawChunk:
    """A chunk before encoding: its id within the route and its records as NDJSON lines
    (a list, or a ``Lines`` buffer when they came from one)."""

    chunk_id: str
    lines: Sequence[bytes]
    raw_size: int  # bytes of the NDJSON form

    @property
    def records(self) -> int:
        return len(self.lines)


def _after_nth_newline(data: bytes, start: int, end: int, n: int, total: int) -> int:
    """The offset just after the ``n``-th of the ``total`` newlines in ``data[start:end]``.

    Guessed from the mean line length, then walked line by line to the exact spot: a few
    ``find`` calls for records of similar size, never a Python loop over the whole block."""
    guess = start + (end - start) * n // total
    k = count_newlines(data, start, guess)  # newlines before the guess
    pos = guess
    if k < n:
        while k < n:
            pos = data.find(b"\n", pos, end) + 1
            k += 1
        return pos
    newline = guess
    while k >= n:
        newline = data.rfind(b"\n", start, newline)
        k -= 1
    return newline + 1


class Chunker:
    """Cuts a stream of lines into chunks of at most ``max_records`` records and ``max_bytes``
    bytes (NDJSON form). A single record above ``max_bytes`` travels alone.

    Lists of lines are cut line by line; ``Lines`` buffers by offsets (``rfind``/``count``
    on the buffer), with the same cuts: a chunk's bounds depend on the records only, not on
    how they were handed in. Once a buffer came, chunks are ``Lines`` buffers too.
    """

    def __init__(self, max_records: int, max_bytes: int, *, first_index: int = 0) -> None:
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._index = first_index
        self._lines: list[bytes] = []
        self._size = 0
        # buffer mode: the pending chunk as pieces of NDJSON, and its record count
        self._buffered = False
        self._parts: list[bytes | memoryview] = []
        self._count = 0

    def feed(self, lines: Sequence[bytes]) -> Iterator[RawChunk]:
        if isinstance(lines, Lines):
            yield from self._feed_buffer(lines.data, len(lines))
            return
        if self._buffered:
            if lines:
                yield from self._feed_buffer(b"\n".join(lines) + b"\n", len(lines))
            return
        max_records, max_bytes = self._max_records, self._max_bytes
        current, size = self._lines, self._size
        for line in lines:
            n = len(line) + 1
            if current and (size + n > max_bytes or len(current) >= max_records):
                yield self._cut(current, size)
                current, size = [], 0
            current.append(line)
            size += n
        self._lines, self._size = current, size

    def _feed_buffer(self, data: bytes, total: int) -> Iterator[RawChunk]:
        if not self._buffered:
            self._buffered = True
            if self._lines:
                self._parts = [b"\n".join(self._lines) + b"\n"]
                self._count = len(self._lines)
                self._lines = []
        max_records, max_bytes = self._max_records, self._max_bytes
        view = memoryview(data)
        pos, end, left = 0, len(data), total
        while pos < end:
            if self._count >= max_records:
                yield self._cut_parts()
                continue
            budget = max_bytes - self._size
            if pos + budget >= end:
                cut, n = end, left  # the rest fits by bytes
            elif budget > 0:
                cut = data.rfind(b"\n", pos, pos + budget) + 1 or pos
                # count the shorter side of the cut
                if cut - pos <= end - cut:
                    n = count_newlines(data, pos, cut)
                else:
                    n = left - count_newlines(data, cut, end)
            else:
                cut, n = pos, 0
            allowed = max_records - self._count
            if n > allowed:
                cut, n = _after_nth_newline(data, pos, cut, allowed, n), allowed
            if cut == pos:  # the next record does not fit
                if self._count:
                    yield self._cut_parts()
                    continue
                cut, n = data.find(b"\n", pos) + 1, 1  # a record above max_bytes: alone
            self._parts.append(data if cut - pos == end else view[pos:cut])
            self._count += n
            self._size += cut - pos
            left -= n
            pos = cut

    def finish(self) -> Iterator[RawChunk]:
        if self._buffered:
            if self._count:
                yield self._cut_parts()
        elif self._lines:
            yield self._cut(self._lines, self._size)
            self._lines, self._size = [], 0

    def _cut(self, lines: list[bytes], size: int) -> RawChunk:
        chunk = RawChunk(str(self._index), lines, size)
        self._index += 1
        return chunk

    def _cut_parts(self) -> RawChunk:
        parts = self._parts
        data = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
        chunk = self._cut(Lines(data, self._count), len(data))  # type: ignore[arg-type]
        self._parts, self._count, self._size = [], 0, 0
        return chunk
