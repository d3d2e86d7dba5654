"""CSV input (``.csv``, ``.tsv``, plain or gzip): rows as NDJSON objects of strings, read in
a worker thread a block at a time (a route's ``types`` casts them later, ``sender.casting``)."""

from __future__ import annotations

import asyncio
import csv
import io
import zlib
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING

import orjson

from .blocks import RecordBlock, numbered_lines
from .chunker import Lines
from .errors import SourceError
from .model import BadRecord, ObjectInfo
from .ports import Source
from .streams import StreamReader

if TYPE_CHECKING:
    import gzip  # imported when a file needs it: most batches are not gzipped

__all__ = ["read_csv"]

_GZIP_MAGIC = b"\x1f\x8b"
_CSV_ROWS_PER_BLOCK = 4096


# the shape of _csv_blocks: a generator, so that an abandoned read closes it in the worker thread
_BlockFactory = Callable[
    [Source, ObjectInfo, asyncio.AbstractEventLoop], Generator[RecordBlock, None, None]
]


async def _read_in_thread(
    source: Source, obj: ObjectInfo, blocks: _BlockFactory
) -> AsyncIterator[RecordBlock]:
    loop = asyncio.get_running_loop()
    iterator = await asyncio.to_thread(blocks, source, obj, loop)
    try:
        while True:
            block = await asyncio.to_thread(next, iterator, None)
            if block is None:
                return
            yield block
    finally:
        await asyncio.to_thread(iterator.close)


def _open_stream(
    source: Source, obj: ObjectInfo, loop: asyncio.AbstractEventLoop
) -> io.BufferedReader[StreamReader] | gzip.GzipFile:
    raw = io.BufferedReader(StreamReader(source, obj, loop), buffer_size=1024 * 1024)
    try:
        magic = raw.peek(2)[:2]
    except BaseException:
        raw.close()  # here, in the worker thread, not whenever the loop's thread drops it
        raise
    if magic == _GZIP_MAGIC:
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


def _csv_blocks(
    source: Source, obj: ObjectInfo, loop: asyncio.AbstractEventLoop
) -> Generator[RecordBlock, None, None]:
    import gzip

    stream = _open_stream(source, obj, loop)
    # a byte that is not UTF-8 is kept as a surrogate, so that only its row is a bad record
    # (at its real line), not the whole file (strict decoding fails a read-ahead early)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    delimiter = "\t" if obj.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    # the text lines the parser took since the block began: a bad row is stored as the
    # lines it was parsed from (quotes, spacing, line breaks as written), not re-joined
    taken: list[str] = []
    rows = csv.reader(_recorded(text, taken), delimiter=delimiter)
    try:
        try:
            header = next(rows)
        except StopIteration:
            return
        width = len(header)
        taken.clear()
        start = 0  # where the next row begins in ``taken``
        # rows leave as one Lines buffer per block: an object per row, kept until its chunk
        # is sent, would pin whole arenas of the parser's short-lived objects in memory
        lines: list[bytes] = []
        numbers: list[int] = []
        bad: list[BadRecord] = []
        dumps = orjson.dumps
        for row in rows:
            begin, start = start, len(taken)  # this row is taken[begin:start]
            if len(row) == width:
                try:
                    lines.append(dumps(dict(zip(header, row, strict=True))))
                except orjson.JSONEncodeError:  # a surrogate: the row had a non-UTF-8 byte
                    raw = _raw_row(taken[begin:start])
                    bad.append(BadRecord(raw, "not valid UTF-8", f"{obj.name}:{rows.line_num}"))
                    continue
                numbers.append(rows.line_num)
            elif row:  # blank lines are not records
                reason = f"{len(row)} columns, header has {width}"
                bad.append(
                    BadRecord(_raw_row(taken[begin:start]), reason, f"{obj.name}:{rows.line_num}")
                )
            if len(lines) + len(bad) >= _CSV_ROWS_PER_BLOCK:
                yield _csv_block(obj, lines, bad, numbers)
                lines, bad, numbers = [], [], []
                taken.clear()
                start = 0
        if lines or bad:
            yield _csv_block(obj, lines, bad, numbers)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{obj.uri}: unreadable CSV near line {rows.line_num}: {exc}") from exc
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise SourceError(f"{obj.uri}: corrupt or truncated file: {exc}") from exc
    finally:
        text.close()


def _recorded(text: Iterable[str], taken: list[str]) -> Iterator[str]:
    """``text``'s lines, each also appended to ``taken`` (the parser asks for a line only
    when the row it parses needs one, so a row's own lines are those taken while it was
    parsed)."""
    for line in text:
        taken.append(line)
        yield line


def _raw_row(lines: list[str]) -> bytes:
    """A row's bytes as they were in the file, without the line break that ends it."""
    raw = "".join(lines)
    raw = raw[:-2] if raw.endswith("\r\n") else raw.removesuffix("\n").removesuffix("\r")
    return raw.encode("utf-8", "surrogateescape")


def _csv_block(
    obj: ObjectInfo, lines: list[bytes], bad: list[BadRecord], numbers: list[int]
) -> RecordBlock:
    return RecordBlock(Lines.of(lines), bad, locate=numbered_lines(obj.name, numbers), format="csv")


def read_csv(source: Source, obj: ObjectInfo) -> AsyncIterator[RecordBlock]:
    """The CSV object's rows, a block at a time."""
    return _read_in_thread(source, obj, _csv_blocks)
