"""The ceilings: the least work that delivers a batch, one tight loop per scenario.

Each loop reads the batch, turns it into NDJSON chunks of at most 1 MiB cut on line
boundaries, compresses them in a thread pool (zstd and ISA-L gzip release the GIL) and POSTs
them with bounded concurrency over pooled aiohttp connections. No ledger, no framing check,
no retries: whatever the sender does beyond its scenario's loop is overhead.

- ``jsonl``: the files' bytes as they are (the passthrough ceiling, with the same codec and
  level as the scenario it bounds);
- ``projection``: each chunk projected with the fastest correct projection there is: msgspec
  decoding into a ``Struct`` of only the projected fields typed ``msgspec.Raw`` (values keep
  their exact text), joined into output lines;
- ``parquet``: the file decoded by polars in streaming batches, converted to NDJSON by
  polars (``write_ndjson``, which keeps values), cut and sent.

``python -m bench.raw URL FILE... [--kind K] [--codec C] [--level N] [--concurrency N]``
prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import msgspec
import orjson
import zstandard

__all__ = ["run"]

_CHUNK = 1024 * 1024
_local = threading.local()


def _compressor(codec: str, level: int) -> Callable[[bytes], bytes]:
    if codec == "gzip":
        from isal.igzip import compress as gzip

        return lambda data: gzip(data, level, mtime=0)

    def zstd(data: bytes) -> bytes:
        compressor = getattr(_local, "zstd", None)
        if compressor is None:  # one per thread: a ZstdCompressor is not thread-safe
            compressor = _local.zstd = zstandard.ZstdCompressor(level=level)
        return compressor.compress(data)

    return zstd


def _cut(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """NDJSON pieces re-cut into chunks of at most 1 MiB on line boundaries."""
    rest = b""
    for piece in pieces:
        data = rest + piece if rest else piece
        start = 0
        while len(data) - start >= _CHUNK:
            cut = data.rfind(b"\n", start, start + _CHUNK) + 1
            if cut <= start:  # a line longer than a chunk travels alone
                cut = data.index(b"\n", start) + 1
            yield data[start:cut]
            start = cut
        rest = data[start:]
    if rest:
        yield rest if rest.endswith(b"\n") else rest + b"\n"


def _jsonl(files: list[str]) -> Iterator[bytes]:
    for name in files:
        # blocking reads on purpose: the page cache answers in microseconds, and the ceiling
        # should carry no thread hop the sender might save
        with open(name, "rb", buffering=0) as file:
            while piece := file.read(_CHUNK):
                yield piece


def _parquet(files: list[str]) -> Iterator[bytes]:
    import polars

    out = io.BytesIO()
    for name in files:
        for frame in polars.scan_parquet(name).collect_batches(chunk_size=8192):
            out.seek(0)
            out.truncate()
            frame.write_ndjson(out)
            yield out.getvalue()


_NULL = msgspec.Raw(b"null")


class _Features(msgspec.Struct, frozen=True):
    plan: msgspec.Raw = _NULL
    tenure_months: msgspec.Raw = _NULL


class _Record(msgspec.Struct, frozen=True):
    id: msgspec.Raw = _NULL
    score: msgspec.Raw = _NULL
    model: msgspec.Raw = _NULL
    features: _Features | None = None


def _projector(fields: dict[str, str]) -> Callable[[bytes], bytes]:
    """The bench route's projection, written out by hand for its two flat and three dotted
    inputs: the fastest correct projection, to bound the sender's generic one."""
    assert list(fields.values()) == [
        "id",
        "score",
        "model",
        "features.plan",
        "features.tenure_months",
    ], "the ceiling is written for bench.data.FIELDS"
    keys = [orjson.dumps(k) for k in fields]
    k0, k1, k2, k3, k4 = [(b"{" if i == 0 else b",") + k + b":" for i, k in enumerate(keys)]
    decode = msgspec.json.Decoder(_Record).decode_lines
    missing = _Features()
    join = b"".join

    def project(chunk: bytes) -> bytes:
        lines = []
        for r in decode(chunk):
            f = r.features or missing
            lines.append(
                join((k0, r.id, k1, r.score, k2, r.model, k3, f.plan, k4, f.tenure_months))
            )
        lines.append(b"")
        return b"}\n".join(lines)

    return project


async def run(
    url: str, files: list[str], *, kind: str, codec: str, level: int, concurrency: int
) -> dict[str, Any]:
    from .data import FIELDS

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=2)
    slots = asyncio.Semaphore(2 * concurrency)
    prepare = _compressor(codec, level)
    if kind == "projection":
        # projected output is cut into 1 MiB chunks like the sender cuts them, so both send
        # the same number of requests
        project = _projector(FIELDS)
        chunks = _cut(project(piece) for piece in _cut(_jsonl(files)))
    elif kind == "parquet":
        chunks = _cut(_parquet(files))
    else:
        chunks = _cut(_jsonl(files))
    totals = {"bytes": 0, "requests": 0, "wire_body": 0}
    failed: list[int] = []
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": codec}
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def send(chunk: bytes) -> None:
            try:
                body = await loop.run_in_executor(pool, prepare, chunk)
                async with session.post(url, data=io.BytesIO(body), headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failed.append(response.status)
                totals["requests"] += 1
                totals["wire_body"] += len(body)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            # decoding or projecting is the loop's one heavy stage: it runs in the pool too
            source = iter(chunks)
            while True:
                if kind != "jsonl":
                    chunk = await loop.run_in_executor(pool, next, source, None)
                else:
                    chunk = next(source, None)
                if chunk is None:
                    break
                totals["bytes"] += len(chunk)
                await slots.acquire()
                group.create_task(send(chunk))
    pool.shutdown()
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {sorted(set(failed))}")
    return {**totals, "elapsed_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--kind", choices=("jsonl", "projection", "parquet"), default="jsonl")
    parser.add_argument("--codec", choices=("zstd", "gzip"), default="zstd")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.url,
            args.files,
            kind=args.kind,
            codec=args.codec,
            level=args.level,
            concurrency=args.concurrency,
        )
    )
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
