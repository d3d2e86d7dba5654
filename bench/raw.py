"""Scenario 1, the ceiling: the least work that delivers a JSONL batch in 1 MiB zstd chunks.

A tight loop reads each file, cuts chunks of at most 1 MiB on line boundaries, compresses
them with zstd level 1 in a thread pool (zstd releases the GIL) and POSTs them with bounded
concurrency over pooled aiohttp connections. No ledger, no parsing, no framing check, no
retries: whatever the sender does beyond this is overhead.

``python -m bench.raw URL FILE... [--concurrency N]`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import orjson
import zstandard

__all__ = ["run"]

_CHUNK = 1024 * 1024
_local = threading.local()


def _compress(data: bytes) -> bytes:
    compressor = getattr(_local, "zstd", None)
    if compressor is None:  # one per thread: a ZstdCompressor is not thread-safe
        compressor = _local.zstd = zstandard.ZstdCompressor(level=1)
    return compressor.compress(data)


async def run(url: str, files: list[str], concurrency: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=2)
    slots = asyncio.Semaphore(2 * concurrency)
    # records are not counted here (a pass over every byte): the harness knows them
    totals = {"bytes": 0, "requests": 0, "wire_body": 0}
    failed: list[int] = []
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def send(chunk: bytes) -> None:
            try:
                body = await loop.run_in_executor(pool, _compress, chunk)
                async with session.post(
                    url,
                    data=io.BytesIO(body),
                    headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "zstd"},
                ) as response:
                    await response.read()
                    if response.status != 200:
                        failed.append(response.status)
                totals["requests"] += 1
                totals["wire_body"] += len(body)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            for name in files:
                # blocking reads on purpose: the page cache answers in microseconds, and the
                # ceiling should carry no thread hop the sender might save
                with open(name, "rb", buffering=0) as file:  # noqa: ASYNC230
                    rest = b""
                    while True:
                        piece = file.read(_CHUNK - len(rest))
                        if not piece:
                            break
                        data = rest + piece if rest else piece
                        cut = data.rfind(b"\n") + 1
                        chunk, rest = data[:cut], data[cut:]
                        totals["bytes"] += len(chunk)
                        await slots.acquire()
                        group.create_task(send(chunk))
                    if rest:
                        totals["bytes"] += len(rest)
                        await slots.acquire()
                        group.create_task(send(rest + b"\n"))
    pool.shutdown()
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {sorted(set(failed))}")
    return {**totals, "elapsed_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.files, args.concurrency))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
