"""A JSON Lines record longer than 16 MiB is one bad record at its line (its first KiB kept),
and reading it holds no more than a read piece or two: memory does not grow with the longest
line, and the records after it are read as usual."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from sender.model import ObjectInfo
from sender.readers import MAX_RECORD_BYTES, read_records
from sender_adapters.local import LocalSource


async def read_file(path: Path) -> tuple[list[bytes], list[tuple[str, str, int]]]:
    async with LocalSource("local", LocalSource.Options(type="local")) as source:
        (obj,) = await source.list(str(path))
        good: list[bytes] = []
        bad: list[tuple[str, str, int]] = []
        async for block in read_records(source, [ObjectInfo(obj.uri, obj.size, obj.version)], None):
            good.extend(bytes(line) for line in block.lines)
            bad.extend((b.location, b.reason, len(b.raw)) for b in block.bad)
        return good, bad


async def test_a_64_mb_line_is_one_bad_record_at_its_line_in_bounded_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "part-00000.json"
    with path.open("wb") as file:
        file.write(b'{"id": 1}\n{"blob": "')
        for _ in range(64):
            file.write(b"x" * (1024 * 1024))
        file.write(b'"}\n{"id": 3}\n')

    tracemalloc.start()
    try:
        good, bad = await read_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert good == [b'{"id": 1}', b'{"id": 3}']
    assert bad == [("part-00000.json:2", "record longer than 16 MiB (first 1024 bytes kept)", 1024)]
    # bounded by the limit (a record being completed and its copy), not by the 64 MB line
    assert peak < 3 * MAX_RECORD_BYTES


async def test_a_long_last_line_without_a_newline_is_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "part-00000.json"
    path.write_bytes(b'{"id": 1}\n{"blob": "' + b"y" * (MAX_RECORD_BYTES + 10))
    good, bad = await read_file(path)
    assert good == [b'{"id": 1}']
    assert [location for location, _, _ in bad] == ["part-00000.json:2"]
