"""Parquet input: row groups decoded by pyarrow and turned into NDJSON by polars, each on a
thread of its own, by ranged reads (never the whole object)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from .blocks import RecordBlock
from .chunker import Lines
from .errors import SourceError
from .model import ObjectInfo
from .ports import LocalFiles, Source
from .streams import SeekableObject
from .tuning import release_free_memory

__all__ = ["read_parquet"]

_PARQUET_ROWS_PER_BLOCK = 8192  # ~2.5 MB of NDJSON for 300-byte records


def _parquet_batches(
    source: Source, obj: ObjectInfo, loop: asyncio.AbstractEventLoop
) -> Generator[Any, None, None]:
    """Batches of a Parquet object; run it in one thread (it blocks).

    A file on this machine is read by polars alone (``scan_parquet`` in streaming batches):
    pyarrow is never imported, which is ~40 MiB less peak memory, and faster here. An object
    in a bucket is read by pyarrow row group by row group through ranged reads (polars would
    fetch a file-like object whole)."""
    if isinstance(source, LocalFiles):
        yield from _local_batches(source.local_path(obj), obj)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = SeekableObject(source, obj, loop)
    try:
        try:
            # pre_buffer (pyarrow's default) fetches every row group's column chunks up
            # front, in one request as large as the file; without it each column chunk is
            # read when its row group is, through a bounded buffer
            parquet = pq.ParquetFile(file, buffer_size=1024 * 1024, pre_buffer=False)
            # no pyarrow threads: this one decodes while another converts (read_parquet)
            yield from parquet.iter_batches(batch_size=_PARQUET_ROWS_PER_BLOCK, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"{obj.uri}: corrupt or unreadable Parquet file: {exc}") from exc
    finally:
        file.close()


def _local_batches(path: str, obj: ObjectInfo) -> Generator[Any, None, None]:
    import polars as pl

    try:
        batches = pl.scan_parquet(path).collect_batches(chunk_size=_PARQUET_ROWS_PER_BLOCK)
        yield from batches
    except FileNotFoundError as exc:  # gone since it was listed
        raise SourceError(f"{obj.uri}: cannot open: {exc.strerror or exc}") from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SourceError(f"{obj.uri}: corrupt or unreadable Parquet file: {exc}") from exc


def _ndjson(obj: ObjectInfo, batch: Any, first_row: int = 1) -> RecordBlock:
    """A record batch as NDJSON, one line a row, each ending with a newline: a ``Lines``."""
    import polars as pl

    out = io.BytesIO()
    try:
        frame = batch if isinstance(batch, pl.DataFrame) else pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        frame.write_ndjson(out)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{obj.uri}: cannot convert Parquet rows to JSON: {exc}") from exc
    data = out.getvalue()
    decimals = [name for name, kind in frame.schema.items() if isinstance(kind, pl.Decimal)]
    if decimals and data:
        data = _decimals_as_numbers(data, frozenset(decimals))
    locate = _rows(obj.name, first_row)
    return RecordBlock(Lines(data, frame.height) if data else [], locate=locate, format="parquet")


def _decimals_as_numbers(data: bytes, names: frozenset[str]) -> bytes:
    """polars writes decimal columns as JSON strings ("123456789012345678901234567890.00");
    a decimal is a number, and an integer beyond 64 bits only fits Parquet as one, so these
    top-level columns go out as the same digits unquoted. Every other value keeps its exact
    text (``msgspec.Raw``)."""
    import msgspec

    decode = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
    dumps = orjson.dumps
    out = []
    for line in data[:-1].split(b"\n"):  # each line ends with one newline
        parts: list[bytes] = []
        for name, value in decode(line).items():
            text = bytes(value)
            if name in names and text[:1] == b'"':
                text = text[1:-1]
            parts += [b"," if parts else b"{", dumps(name), b":", text]
        parts.append(b"}\n")
        out.append(b"".join(parts))
    return b"".join(out)


def _rows(name: str, first: int) -> Callable[[int], str]:
    return lambda index: f"{name}:row {first + index}"


async def read_parquet(source: Source, obj: ObjectInfo) -> AsyncIterator[RecordBlock]:
    """Parquet in two stages on two threads of their own: one decodes the next batch while
    polars turns the last one into NDJSON, both without the GIL, beside the
    compressors. Each stage keeps to one thread, so each allocator's per-thread caches are
    held once, not by every worker of the default pool."""
    loop = asyncio.get_running_loop()
    decoder = ThreadPoolExecutor(1, thread_name_prefix="parquet-decode")
    converter = ThreadPoolExecutor(1, thread_name_prefix="parquet-ndjson")
    batches = _parquet_batches(source, obj, loop)

    rows = 1

    def decode() -> concurrent.futures.Future[RecordBlock] | None:
        nonlocal rows
        batch = next(batches, None)
        if batch is None:
            return None
        # the conversion starts as soon as the batch is there, whatever the reader does
        first, rows = rows, rows + len(batch)
        return converter.submit(_ndjson, obj, batch, first)

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
                # between two decodes, on the decoder's thread: off the event loop
                decoder.submit(release_free_memory)
    finally:
        if not decoding.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(decoding)  # let the batch being read finish first
        await loop.run_in_executor(decoder, batches.close)  # closes the file there
        decoder.shutdown(wait=False)
        converter.shutdown(wait=False, cancel_futures=True)
