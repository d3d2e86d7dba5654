"""The local source reads the object it listed, or fails naming the file: a part file
rewritten in place (or replaced) after the listing or while it is read is a ``SourceError``,
so the batch fails instead of being marked complete with records never sent or torn."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sender.errors import SourceError
from sender_adapters.local import LocalSource

LINE = b'{"customer_id": "c-1", "score": 0.5}\n'


@pytest.fixture
async def source() -> AsyncIterator[LocalSource]:
    options = LocalSource.Options(type="local", read_size=4096)
    async with LocalSource("local", options) as source:
        yield source


def write_part(folder: Path, lines: int = 2000) -> Path:
    folder.mkdir()
    path = folder / "part-0.jsonl"
    path.write_bytes(LINE * lines)
    return path


async def read_all(source: LocalSource, uri: str) -> bytes:
    (obj,) = await source.list(uri)
    return b"".join([piece async for piece in source.open(obj)])


async def test_an_unchanged_file_reads_whole(tmp_path: Path, source: LocalSource) -> None:
    write_part(tmp_path / "in")
    assert await read_all(source, str(tmp_path / "in")) == LINE * 2000


async def test_a_file_truncated_and_rewritten_while_read_fails_naming_it(
    tmp_path: Path, source: LocalSource
) -> None:
    path = write_part(tmp_path / "in")
    (obj,) = await source.list(str(tmp_path / "in"))
    pieces = source.open(obj)
    await anext(pieces)
    path.write_bytes(LINE * 10)  # the writer starts over: truncate, write less
    with pytest.raises(SourceError, match=r"part-0\.jsonl: changed while it was read"):
        async for _ in pieces:
            pass


async def test_a_file_rewritten_in_place_with_the_same_size_fails(
    tmp_path: Path, source: LocalSource
) -> None:
    path = write_part(tmp_path / "in")
    (obj,) = await source.list(str(tmp_path / "in"))
    pieces = source.open(obj)
    await anext(pieces)
    descriptor = os.open(path, os.O_WRONLY)  # same byte count, other content, later mtime
    os.pwrite(descriptor, b'{"torn"', 5000)
    os.close(descriptor)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(SourceError, match=r"part-0\.jsonl: changed while it was read"):
        async for _ in pieces:
            pass


async def test_a_file_replaced_after_the_listing_fails_before_a_byte_is_read(
    tmp_path: Path, source: LocalSource
) -> None:
    path = write_part(tmp_path / "in")
    (obj,) = await source.list(str(tmp_path / "in"))
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(LINE * 3000)
    os.replace(replacement, path)
    with pytest.raises(SourceError, match=r"part-0\.jsonl: changed since it was listed"):
        async for _ in source.open(obj):
            pytest.fail("a byte of the replaced file was read")


async def test_a_dangling_symlink_in_a_batch_names_the_file(
    tmp_path: Path, source: LocalSource
) -> None:
    write_part(tmp_path / "in")
    (tmp_path / "in" / "part-1.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(SourceError, match=r"part-1\.jsonl: a dangling symlink \(-> .*gone\.jsonl"):
        await source.list(str(tmp_path / "in"))


async def test_a_symlink_loop_in_a_batch_names_the_file(
    tmp_path: Path, source: LocalSource
) -> None:
    write_part(tmp_path / "in")
    (tmp_path / "in" / "part-1.jsonl").symlink_to(tmp_path / "in" / "part-2.jsonl")
    (tmp_path / "in" / "part-2.jsonl").symlink_to(tmp_path / "in" / "part-1.jsonl")
    with pytest.raises(SourceError, match=r"part-1\.jsonl: a symlink loop"):
        await source.list(str(tmp_path / "in"))
