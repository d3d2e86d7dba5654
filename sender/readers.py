"""Reading a batch: Spark layout rules, format detection, and record readers.

Every reader turns its input into blocks of NDJSON lines (one JSON object per line, no
newline), the one shape the rest of the pipeline works on. JSONL is split and frame-checked
without parsing each record (the fast path); CSV rows and Parquet row groups are converted in
a worker thread. Readers are streamed: memory holds a few read pieces, never a whole file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import ctypes
import io
import os
import zlib
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .chunker import Lines, framed, lines_size
from .errors import SourceError
from .model import BadRecord, ObjectInfo
from .ports import Source
from .streams import SeekableObject, StreamReader

if TYPE_CHECKING:
    import gzip  # imported when a file needs it: most batches are not gzipped

__all__ = [
    "BatchObjects",
    "RecordBlock",
    "detect_format",
    "list_batch",
    "read_records",
]

# pyarrow (imported on the first Parquet read) allocates from mimalloc by default, which keeps
# what it freed: ~30 MiB more peak memory for the same reads, and no faster. The choice is
# read from the environment when pyarrow first allocates, so it is made here, before that.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

_GZIP_MAGIC = b"\x1f\x8b"
_CSV_ROWS_PER_BLOCK = 4096
_PARQUET_ROWS_PER_BLOCK = 8192  # ~2.5 MB of NDJSON for 300-byte records
_MAX_LINE = 64 * 1024 * 1024  # a "line" longer than this is a corrupt file, not a record
_INFLATE_PIECE = 1024 * 1024  # inflated bytes handed on at a time


@dataclass(slots=True)
class RecordBlock:
    """Good records as NDJSON lines, and the bad ones met on the way.

    ``lines`` is a ``Lines`` buffer for JSONL and Parquet (no object per record), a list for
    CSV; both are sequences of lines. ``size`` and ``records`` never split a buffer."""

    lines: Sequence[bytes]
    bad: list[BadRecord] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes of the good records, without newlines."""
        return lines_size(self.lines)

    @property
    def records(self) -> int:
        """Good and bad records."""
        return len(self.lines) + len(self.bad)


@dataclass(frozen=True, slots=True)
class BatchObjects:
    """The data objects of a batch, in read order, and whether Spark's marker is there."""

    objects: list[ObjectInfo]
    has_success: bool
    single_object: bool


def _relative(uri: str, root: str) -> str:
    return uri[len(root) :].lstrip("/") if uri.startswith(root) else uri


def _skipped(relative: str) -> bool:
    """Spark's bookkeeping and hidden files: ``_SUCCESS``, ``_committed_*``, ``.crc``, ``.x``."""
    return any(part.startswith(("_", ".")) for part in relative.split("/")) or relative.endswith(
        ".crc"
    )


async def list_batch(source: Source, uri: str, *, require_success: bool) -> BatchObjects:
    """List a batch's data objects; ``SourceError`` if empty or ``_SUCCESS`` is required and
    missing. A URI naming one object is a batch of that object (no marker needed)."""
    listed = await source.list(uri)
    if len(listed) == 1 and listed[0].uri.rstrip("/") == uri.rstrip("/"):
        return BatchObjects([listed[0]], has_success=False, single_object=True)
    root = uri.rstrip("/") + "/"
    has_success = any(_relative(o.uri, root) == "_SUCCESS" for o in listed)
    objects = [o for o in listed if not _skipped(_relative(o.uri, root))]
    if require_success and not has_success:
        raise SourceError(
            f"{uri}: no _SUCCESS marker (the writing job has not finished; "
            "set require_success = false on the source to read it anyway)"
        )
    if not objects:
        raise SourceError(f"{uri}: no data files (only markers or hidden files)")
    return BatchObjects(objects, has_success=has_success, single_object=False)


def detect_format(name: str) -> str:
    """``jsonl``, ``csv`` or ``parquet`` from a file name (Spark names JSON parts ``.json``)."""
    lowered = name.lower()
    for suffix in (".gz", ".gzip"):
        lowered = lowered.removesuffix(suffix)
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith((".csv", ".tsv")):
        return "csv"
    if lowered.endswith((".parquet", ".parq", ".pq")):
        return "parquet"
    raise SourceError(f"{name}: cannot tell the format from the name; set 'format' in the message")


async def read_records(
    source: Source, objects: Sequence[ObjectInfo], format: str | None
) -> AsyncIterator[RecordBlock]:
    """Blocks of records from every object, in order."""
    for obj in objects:
        fmt = format or detect_format(obj.name)
        if fmt == "jsonl":
            reader = _read_jsonl(source, obj)
        elif fmt == "csv":
            reader = _read_in_thread(source, obj, _csv_blocks)
        elif fmt == "parquet":
            reader = _read_parquet(source, obj)
        else:
            raise SourceError(f"{obj.uri}: unknown format {fmt!r}")
        async for block in reader:
            yield block


# -- JSONL ---------------------------------------------------------------------------------


class _Gunzip:
    """Incremental gzip that also reads multi-member files (``cat a.gz b.gz``).

    Output comes in pieces of at most ``max_out`` bytes: JSON Lines often compress 20-50x, so
    inflating a whole read piece at once would hold tens of MiB where the compressed piece
    was one.
    """

    def __init__(self, name: str, max_out: int = _INFLATE_PIECE) -> None:
        self._name = name
        self._max_out = max_out
        self._inflate = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        self._pending = b""

    def feed(self, data: bytes) -> None:
        """Take the next compressed piece; ``read()`` until it returns ``b""`` before the next."""
        self._pending = self._pending + data if self._pending else data

    def read(self) -> bytes:
        """Up to ``max_out`` inflated bytes, or ``b""`` when more input is needed."""
        try:
            while True:
                data, self._pending = self._pending, b""
                if data and self._inflate.eof:  # the next member of a multi-member file
                    self._inflate = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
                # called with b"" too: zlib may hold output for input it already took
                out = self._inflate.decompress(data, self._max_out)
                self._pending = (
                    self._inflate.unused_data
                    if self._inflate.eof
                    else self._inflate.unconsumed_tail
                )
                if out or not self._pending:
                    return out
        except zlib.error as exc:
            raise SourceError(f"{self._name}: corrupt gzip data ({exc})") from exc

    def finish(self) -> None:
        if not self._inflate.eof:
            raise SourceError(f"{self._name}: truncated gzip file (ends mid-stream)")


def _frame_check(lines: list[bytes], name: str, first_line_no: int) -> RecordBlock:
    """Keep lines that look like one JSON object each; report the others as bad records.
    Blank lines are dropped silently. Records are not parsed here: that is the fast path."""
    for line in lines:
        if not line or line[0] != 0x7B or line[-1] != 0x7D:
            break
    else:
        return RecordBlock(lines)
    good: list[bytes] = []
    bad: list[BadRecord] = []
    for offset, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] == 0x7B and stripped[-1] == 0x7D:
            good.append(stripped)
        else:
            reason = "truncated JSON object" if stripped[0] == 0x7B else "not a JSON object"
            bad.append(BadRecord(line, reason, f"{name}:{first_line_no + offset}"))
    return RecordBlock(good, bad)


def _frame_buffer(data: bytes, name: str, first_line_no: int) -> tuple[RecordBlock, int]:
    """``_frame_check`` for whole lines in one buffer (ending with a newline), and the number
    of lines. When every newline sits between ``}`` and ``{`` (Spark's output: one object a
    line, no blank lines, no ``\\r``) the buffer is the block as it is: a few vectorised
    passes (``chunker.framed``) instead of an object per line."""
    count = framed(data)
    if count is not None:
        return RecordBlock(Lines(data, count)), count
    lines = data[:-1].split(b"\n")
    block = _frame_check(lines, name, first_line_no)
    block.lines = Lines.of(block.lines)
    return block, len(lines)


async def _plain_pieces(source: Source, obj: ObjectInfo) -> AsyncIterator[bytes]:
    """The object's bytes, inflated when it is gzip (told by its magic, not its name)."""
    gunzip: _Gunzip | None = None
    first = True
    async for piece in source.open(obj):
        if first:
            first = False
            if piece[:2] == _GZIP_MAGIC:
                gunzip = _Gunzip(obj.uri)
        if gunzip is None:
            yield piece
            continue
        gunzip.feed(piece)
        # inflating releases the GIL: let it run beside the compressors
        while out := await asyncio.to_thread(gunzip.read):
            yield out
    if gunzip is not None:
        gunzip.finish()


async def _read_jsonl(source: Source, obj: ObjectInfo) -> AsyncIterator[RecordBlock]:
    rest = b""
    line_no = 1
    async for piece in _plain_pieces(source, obj):
        cut = piece.rfind(b"\n") + 1
        if not cut:
            rest += piece
            if len(rest) > _MAX_LINE:
                raise SourceError(f"{obj.uri}: a line longer than 64 MiB (not JSON Lines?)")
            continue
        # whole lines: the start of this piece completes the line the last one began;
        # one copy, and none when the piece starts and ends on a line boundary
        if rest:
            data = b"".join((rest, memoryview(piece)[:cut]))
        else:
            data = piece if cut == len(piece) else piece[:cut]
        rest = piece[cut:]
        block, lines = _frame_buffer(data, obj.name, line_no)
        line_no += lines
        if block.lines or block.bad:
            yield block
    if rest.strip():
        yield _frame_check([rest], obj.name, line_no)


# -- CSV and Parquet, converted in a worker thread ------------------------------------------


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
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    delimiter = "\t" if obj.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    rows = csv.reader(text, delimiter=delimiter)
    try:
        try:
            header = next(rows)
        except StopIteration:
            return
        width = len(header)
        # rows leave as one Lines buffer per block: an object per row, kept until its chunk
        # is sent, would pin whole arenas of the parser's short-lived objects in memory
        lines: list[bytes] = []
        bad: list[BadRecord] = []
        dumps = orjson.dumps
        for row in rows:
            if len(row) == width:
                lines.append(dumps(dict(zip(header, row, strict=True))))
            elif row:  # blank lines are not records
                raw = delimiter.join(row).encode()
                reason = f"{len(row)} columns, header has {width}"
                bad.append(BadRecord(raw, reason, f"{obj.name}:{rows.line_num}"))
            if len(lines) + len(bad) >= _CSV_ROWS_PER_BLOCK:
                yield RecordBlock(Lines.of(lines), bad)
                lines, bad = [], []
        if lines or bad:
            yield RecordBlock(Lines.of(lines), bad)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{obj.uri}: unreadable CSV near line {rows.line_num}: {exc}") from exc
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise SourceError(f"{obj.uri}: corrupt or truncated file: {exc}") from exc
    finally:
        text.close()


def _parquet_batches(
    source: Source, obj: ObjectInfo, loop: asyncio.AbstractEventLoop
) -> Generator[Any, None, None]:
    """Arrow record batches of a Parquet object; run it in one thread (it blocks)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    local_path = getattr(source, "local_path", None)
    path = local_path(obj) if local_path else None
    try:
        file = open(path, "rb") if path else SeekableObject(source, obj, loop)  # noqa: SIM115
    except OSError as exc:  # gone since it was listed: a SourceError like the other readers
        raise SourceError(f"{obj.uri}: cannot open: {exc.strerror}") from exc
    try:
        try:
            # pre_buffer (pyarrow's default) fetches every row group's column chunks up
            # front, in one request as large as the file; without it each column chunk is
            # read when its row group is, through a bounded buffer
            parquet = pq.ParquetFile(file, buffer_size=1024 * 1024, pre_buffer=False)
            # no pyarrow threads: this one decodes while another converts (_read_parquet)
            yield from parquet.iter_batches(batch_size=_PARQUET_ROWS_PER_BLOCK, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"{obj.uri}: corrupt or unreadable Parquet file: {exc}") from exc
    finally:
        file.close()


def _malloc_trim() -> Callable[[int], object] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_trim = _malloc_trim()


def _release_free_memory() -> None:
    """Give the heap's free pages back to the system. Arrow buffers are allocated by one
    thread and freed by others, so glibc's per-thread arenas keep growing holes that it
    would not return on its own: on a 2 GB batch this is ~50 MiB of peak memory."""
    if _trim is not None:
        _trim(0)


def _ndjson(obj: ObjectInfo, batch: Any) -> RecordBlock:
    """A record batch as NDJSON, one line a row, each ending with a newline: a ``Lines``."""
    import polars as pl

    out = io.BytesIO()
    try:
        pl.from_arrow(batch).write_ndjson(out)  # type: ignore[union-attr]
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{obj.uri}: cannot convert Parquet rows to JSON: {exc}") from exc
    data = out.getvalue()
    return RecordBlock(Lines(data, batch.num_rows) if data else [])


async def _read_parquet(source: Source, obj: ObjectInfo) -> AsyncIterator[RecordBlock]:
    """Parquet in two stages on two threads of their own: pyarrow decodes the next batch
    while polars turns the last one into NDJSON, both without the GIL, beside the
    compressors. Each stage keeps to one thread, so each allocator's per-thread caches are
    held once, not by every worker of the default pool."""
    loop = asyncio.get_running_loop()
    decoder = ThreadPoolExecutor(1, thread_name_prefix="parquet-decode")
    converter = ThreadPoolExecutor(1, thread_name_prefix="parquet-ndjson")
    batches = _parquet_batches(source, obj, loop)

    def decode() -> concurrent.futures.Future[RecordBlock] | None:
        batch = next(batches, None)
        # the conversion starts as soon as the batch is there, whatever the reader does
        return None if batch is None else converter.submit(_ndjson, obj, batch)

    decoding = loop.run_in_executor(decoder, decode)
    blocks = 0
    try:
        while (converting := await decoding) is not None:
            decoding = loop.run_in_executor(decoder, decode)
            block = await asyncio.wrap_future(converting)
            if block.lines:
                yield block
            blocks += 1
            if blocks % 8 == 0:
                _release_free_memory()
    finally:
        if not decoding.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(decoding)  # let the batch being read finish first
        await loop.run_in_executor(decoder, batches.close)  # closes the file there
        decoder.shutdown(wait=False)
        converter.shutdown(wait=False, cancel_futures=True)
