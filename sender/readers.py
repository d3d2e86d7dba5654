"""Reading a batch: Spark layout rules, format detection, and record readers.

Every reader turns its input into blocks of NDJSON lines (one JSON object per line, no
newline), the one shape the rest of the pipeline works on. JSONL is split and frame-checked
without parsing each record (the fast path); CSV rows and Parquet row groups are converted in
a worker thread. Readers are streamed: memory holds a few read pieces, never a whole file.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .blocks import RecordBlock, consecutive_lines, numbered_lines
from .chunker import Lines, framed
from .csv_input import read_csv
from .errors import SourceError
from .model import BadRecord, ObjectInfo
from .parquet_input import read_parquet
from .ports import Source

if TYPE_CHECKING:
    pass  # imported when a file needs it: most batches are not gzipped

__all__ = [
    "MAX_RECORD_BYTES",
    "BatchObjects",
    "RecordBlock",
    "detect_format",
    "list_batch",
    "read_records",
]

_T = TypeVar("_T")

_GZIP_MAGIC = b"\x1f\x8b"
MAX_RECORD_BYTES = 16 * 1024 * 1024
"""A JSON Lines record longer than this is a bad record (its first ``_KEPT_BYTES`` kept, with
its location); the reader skips to the next newline without holding the line."""
_KEPT_BYTES = 1024
_INFLATE_PIECE = 1024 * 1024  # inflated bytes handed on at a time


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
    source: Source,
    objects: Sequence[ObjectInfo],
    format: str | None,
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> AsyncGenerator[RecordBlock, None]:
    """Blocks of records from every object, in order. A JSONL line longer than
    ``max_record_bytes`` (``daemon.max_record_bytes``) is a bad record. Close it
    (``contextlib.aclosing``) when stopping early: it closes the object it is reading."""
    for obj in objects:
        fmt = format or detect_format(obj.name)
        if fmt == "jsonl":
            reader = _read_jsonl(source, obj, max_record_bytes)
        elif fmt == "csv":
            reader = read_csv(source, obj)
        elif fmt == "parquet":
            reader = read_parquet(source, obj)
        else:
            raise SourceError(f"{obj.uri}: unknown format {fmt!r}")
        async with _closing(reader):
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
        return RecordBlock(lines, locate=consecutive_lines(name, first_line_no))
    good: list[bytes] = []
    numbers: list[int] = []
    bad: list[BadRecord] = []
    for offset, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] == 0x7B and stripped[-1] == 0x7D:
            good.append(stripped)
            numbers.append(first_line_no + offset)
        else:
            reason = "truncated JSON object" if stripped[0] == 0x7B else "not a JSON object"
            bad.append(BadRecord(line, reason, f"{name}:{first_line_no + offset}"))
    return RecordBlock(good, bad, locate=numbered_lines(name, numbers))


def _frame_buffer(data: bytes, name: str, first_line_no: int) -> tuple[RecordBlock, int]:
    """``_frame_check`` for whole lines in one buffer (ending with a newline), and the number
    of lines. When every newline sits between ``}`` and ``{`` (Spark's output: one object a
    line, no blank lines, no ``\\r``) the buffer is the block as it is: a few vectorised
    passes (``chunker.framed``) instead of an object per line."""
    count = framed(data)
    if count is not None:
        return RecordBlock(Lines(data, count), locate=consecutive_lines(name, first_line_no)), count
    lines = data[:-1].split(b"\n")
    block = _frame_check(lines, name, first_line_no)
    block.lines = Lines.of(block.lines)
    return block, len(lines)


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[_T]) -> AsyncGenerator[AsyncIterator[_T], None]:
    """Close ``stream`` on the way out, when it can be closed: a reader stopped early closes
    what it reads now, layer by layer down to the object's stream (an open part file, an
    HTTP body), not when the garbage collector gets to it."""
    try:
        yield stream
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


async def _plain_pieces(source: Source, obj: ObjectInfo) -> AsyncIterator[bytes]:
    """The object's bytes, inflated when it is gzip (told by its magic, not its name)."""
    gunzip: _Gunzip | None = None
    first = True
    async with _closing(source.open(obj)) as pieces:
        async for piece in pieces:
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


def _too_long(head: bytes, name: str, line_no: int, limit: int) -> RecordBlock:
    reason = f"record longer than {limit / (1024 * 1024):g} MiB (first {len(head)} bytes kept)"
    return RecordBlock([], [BadRecord(head, reason, f"{name}:{line_no}")])


async def _read_jsonl(
    source: Source, obj: ObjectInfo, limit: int = MAX_RECORD_BYTES
) -> AsyncIterator[RecordBlock]:
    rest = b""
    line_no = 1
    skipping: bytes | None = None  # the head of a record too long to keep, while skipping it
    pieces = _plain_pieces(source, obj)
    async with _closing(pieces):
        async for piece in pieces:
            if skipping is not None:
                end = piece.find(b"\n")
                if end < 0:
                    continue  # still inside the long record: nothing kept
                yield _too_long(skipping, obj.name, line_no, limit)
                line_no += 1
                skipping, piece = None, piece[end + 1 :]
            cut = piece.rfind(b"\n") + 1
            if not cut:
                if len(rest) + len(piece) > limit:  # checked before the copy
                    skipping, rest = (rest[:_KEPT_BYTES] + piece[:_KEPT_BYTES])[:_KEPT_BYTES], b""
                else:
                    rest += piece
                continue
            if rest and len(rest) + piece.find(b"\n") > limit:
                # the line the last pieces began ends here, too long: a bad record
                yield _too_long(rest[:_KEPT_BYTES], obj.name, line_no, limit)
                line_no += 1
                rest, piece = b"", piece[piece.find(b"\n") + 1 :]
                cut = piece.rfind(b"\n") + 1
                if not cut:
                    rest = piece
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
    if skipping is not None:
        yield _too_long(skipping, obj.name, line_no, limit)
        return
    if rest.strip():
        yield _frame_check([rest], obj.name, line_no)
