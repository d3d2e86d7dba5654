"""Reading a batch: Spark folder rules, format detection, JSONL/CSV/Parquet readers, bad input,
the remote (streamed and ranged) reading path, and bounded memory."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import re
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sender.errors import SourceError
from sender.model import BadRecord, ObjectInfo
from sender.ports import Source
from sender.readers import detect_format, list_batch, read_records
from sender.streams import SeekableObject, StreamReader
from sender_adapters.local import LocalSource

# the smallest read size LocalSource allows: many pieces even for small files, so lines and
# CSV rows straddle piece boundaries
SMALL_READS = LocalSource.Options(read_size=4096)


def local_source() -> LocalSource:
    return LocalSource("local", LocalSource.Options())


class RangeOnlySource:
    """A LocalSource seen as remote storage: no ``local_path``, so the readers must stream
    (``open``) or seek (``read_range``) as they would on S3 or GCS. Counts what they ask for."""

    def __init__(self, inner: LocalSource) -> None:
        self._inner = inner
        self.opened: list[str] = []
        self.ranges: list[tuple[int, int]] = []

    async def list(self, uri: str) -> list[ObjectInfo]:
        return await self._inner.list(uri)

    def open(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
        self.opened.append(obj.name)
        return self._inner.open(obj)

    async def read_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        self.ranges.append((start, length))
        return await self._inner.read_range(obj, start, length)

    async def aclose(self) -> None:
        await self._inner.aclose()


def spark_folder(root: Path, files: dict[str, bytes], *, success: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if success:
        (root / "_SUCCESS").write_bytes(b"")
    return root


def jsonl(records: list[dict]) -> bytes:
    return b"".join(orjson.dumps(record) + b"\n" for record in records)


def part_name(index: int, extension: str) -> str:
    """As Spark names its output: ``part-00000-<uuid>-c000.json``."""
    return f"part-{index:05d}-{uuid.UUID(int=index)}-c000{extension}"


async def read_all(
    source: Source, uri: str | Path, format: str | None = None, *, require_success: bool = False
) -> tuple[list[dict], list[BadRecord]]:
    batch = await list_batch(source, str(uri), require_success=require_success)
    records: list[dict] = []
    bad: list[BadRecord] = []
    async for block in read_records(source, batch.objects, format):
        records += [orjson.loads(line) for line in block.lines]
        bad += block.bad
    return records, bad


# -- the Spark layout -------------------------------------------------------------------------


async def test_spark_folder_lists_part_files_sorted_and_skips_bookkeeping(tmp_path: Path) -> None:
    root = spark_folder(
        tmp_path / "batch",
        {
            "part-00002.json": jsonl([{"n": 2}]),
            "part-00000.json": jsonl([{"n": 0}]),
            "part-00001.json": jsonl([{"n": 1}]),
            ".part-00000.json.crc": b"crc",
            "part-00001.json.crc": b"crc",
            "_committed_1234": b"{}",
            "_started_1234": b"",
            ".hidden": b"nope",
            "_temporary/0/_temporary/attempt_1/part-00003.json": jsonl([{"n": 3}]),
            ".spark-staging/part-00004.json": jsonl([{"n": 4}]),
        },
    )
    batch = await list_batch(local_source(), str(root), require_success=True)
    assert [o.name for o in batch.objects] == [
        "part-00000.json",
        "part-00001.json",
        "part-00002.json",
    ]
    assert batch.has_success and not batch.single_object
    records, bad = await read_all(local_source(), root)
    assert records == [{"n": 0}, {"n": 1}, {"n": 2}] and bad == []


async def test_folder_without_success_marker_is_refused(tmp_path: Path) -> None:
    root = spark_folder(tmp_path / "batch", {"part-00000.json": jsonl([{"n": 0}])}, success=False)
    with pytest.raises(SourceError, match="_SUCCESS"):
        await list_batch(local_source(), str(root), require_success=True)


async def test_folder_without_success_marker_is_read_when_not_required(tmp_path: Path) -> None:
    root = spark_folder(tmp_path / "batch", {"part-00000.json": jsonl([{"n": 0}])}, success=False)
    batch = await list_batch(local_source(), str(root), require_success=False)
    assert [o.name for o in batch.objects] == ["part-00000.json"]
    assert not batch.has_success


async def test_folder_with_only_markers_is_refused(tmp_path: Path) -> None:
    root = spark_folder(tmp_path / "batch", {".part-00000.json.crc": b"", "_committed_1": b""})
    with pytest.raises(SourceError, match="no data files"):
        await list_batch(local_source(), str(root), require_success=True)


async def test_single_file_uri_is_a_batch_of_that_file_without_marker(tmp_path: Path) -> None:
    file = tmp_path / "scores.jsonl"
    file.write_bytes(jsonl([{"n": 0}, {"n": 1}]))
    batch = await list_batch(local_source(), str(file), require_success=True)
    assert batch.single_object
    assert [o.uri for o in batch.objects] == [str(file)]
    assert batch.objects[0].size == file.stat().st_size
    assert (await read_all(local_source(), file))[0] == [{"n": 0}, {"n": 1}]


async def test_file_uris_are_read_like_paths(tmp_path: Path) -> None:
    root = spark_folder(
        tmp_path / "batch",
        {"part-00000.json": jsonl([{"n": 0}]), "part-00001.json": jsonl([{"n": 1}])},
    )
    uri = f"file://{root}"
    batch = await list_batch(local_source(), uri, require_success=True)
    assert [o.uri for o in batch.objects] == [f"{uri}/part-00000.json", f"{uri}/part-00001.json"]
    assert (await read_all(local_source(), uri))[0] == [{"n": 0}, {"n": 1}]
    assert (await read_all(local_source(), f"file://{root}/part-00001.json"))[0] == [{"n": 1}]
    assert (await read_all(local_source(), uri + "/"))[0] == [{"n": 0}, {"n": 1}]


@pytest.mark.parametrize("uri", ["{tmp}/absent", "file://{tmp}/absent", "{tmp}/absent.json"])
async def test_missing_path_is_a_source_error(tmp_path: Path, uri: str) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        await list_batch(local_source(), uri.format(tmp=tmp_path), require_success=False)


async def test_partition_folders_are_read_in_order(tmp_path: Path) -> None:
    root = spark_folder(
        tmp_path / "batch",
        {
            "date=2026-11-25/part-00000.json": jsonl([{"n": 3}]),
            "date=2026-11-24/part-00001.json": jsonl([{"n": 2}]),
            "date=2026-11-24/part-00000.json": jsonl([{"n": 0}, {"n": 1}]),
            "date=2026-11-24/.part-00000.json.crc": b"",
            "date=2026-11-26/_SUCCESS": b"",
        },
    )
    batch = await list_batch(local_source(), str(root), require_success=True)
    assert [o.uri.removeprefix(f"{root}/") for o in batch.objects] == [
        "date=2026-11-24/part-00000.json",
        "date=2026-11-24/part-00001.json",
        "date=2026-11-25/part-00000.json",
    ]
    assert (await read_all(local_source(), root))[0] == [{"n": n} for n in range(4)]


async def test_listing_is_the_same_every_time(tmp_path: Path) -> None:
    files = {part_name(i, ".json"): jsonl([{"n": i}]) for i in (7, 3, 11, 0, 5)}
    root = spark_folder(tmp_path / "batch", files)
    first = await list_batch(local_source(), str(root), require_success=True)
    second = await list_batch(local_source(), str(root), require_success=True)
    assert first == second
    assert [o.name for o in first.objects] == sorted(files)


# -- format detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "format"),
    [
        (part_name(0, ".json"), "jsonl"),
        (part_name(0, ".json.gz"), "jsonl"),
        ("scores.jsonl", "jsonl"),
        ("scores.ndjson.gzip", "jsonl"),
        (part_name(0, ".csv"), "csv"),
        (part_name(0, ".csv.gz"), "csv"),
        ("scores.tsv", "csv"),
        (part_name(0, ".snappy.parquet"), "parquet"),
        (part_name(0, ".zstd.parquet"), "parquet"),
        ("scores.PARQUET", "parquet"),
    ],
)
def test_format_is_detected_from_spark_file_names(name: str, format: str) -> None:
    assert detect_format(name) == format


def test_unknown_file_name_asks_for_the_format_in_the_message() -> None:
    with pytest.raises(SourceError, match="set 'format' in the message"):
        detect_format("part-00000.txt")


async def test_format_from_the_message_wins_over_the_name(tmp_path: Path) -> None:
    file = tmp_path / "export.txt"
    file.write_bytes(jsonl([{"n": 0}]))
    assert (await read_all(local_source(), file, "jsonl"))[0] == [{"n": 0}]
    csv_named_json = tmp_path / "export.json"
    csv_named_json.write_bytes(b"a,b\n1,2\n")
    assert (await read_all(local_source(), csv_named_json, "csv"))[0] == [{"a": "1", "b": "2"}]


async def test_each_file_is_read_by_its_own_detected_format(tmp_path: Path) -> None:
    table = pa.table({"n": [2, 3]})
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    root = spark_folder(
        tmp_path / "batch",
        {
            part_name(0, ".json.gz"): gzip.compress(jsonl([{"n": 0}])),
            part_name(1, ".csv"): b"n\n1\n",
            part_name(2, ".snappy.parquet"): parquet.getvalue(),
        },
    )
    records, _ = await read_all(local_source(), root)
    assert records == [{"n": 0}, {"n": "1"}, {"n": 2}, {"n": 3}]


# -- JSON Lines -------------------------------------------------------------------------------


def many_records(count: int) -> list[dict]:
    return [
        {"id": i, "score": i / count, "model": "churn-v3", "tags": ["a", str(i)], "x": {"y": i}}
        for i in range(count)
    ]


async def test_jsonl_records_come_through_in_order_across_read_pieces(tmp_path: Path) -> None:
    records = many_records(3000)  # ~250 KB: lines straddle the 4 KiB pieces
    file = tmp_path / "part-00000.json"
    file.write_bytes(jsonl(records))
    assert await read_all(LocalSource("local", SMALL_READS), file) == (records, [])


async def test_jsonl_without_a_final_newline_keeps_its_last_record(tmp_path: Path) -> None:
    file = tmp_path / "part-00000.json"
    file.write_bytes(b'{"n":0}\n{"n":1}')
    assert (await read_all(local_source(), file))[0] == [{"n": 0}, {"n": 1}]


async def test_gzip_jsonl_is_inflated(tmp_path: Path) -> None:
    records = many_records(3000)
    file = tmp_path / part_name(0, ".json.gz")
    file.write_bytes(gzip.compress(jsonl(records)))
    assert await read_all(LocalSource("local", SMALL_READS), file) == (records, [])


async def test_multi_member_gzip_is_read_whole(tmp_path: Path) -> None:
    # `cat a.gz b.gz > c.gz` is a valid gzip file; members end mid-piece and at piece ends
    records = many_records(2000)
    members = [gzip.compress(jsonl(records[i : i + 250])) for i in range(0, 2000, 250)]
    file = tmp_path / "part-00000.json.gz"
    file.write_bytes(b"".join(members))
    assert await read_all(LocalSource("local", SMALL_READS), file) == (records, [])


async def test_gzip_is_told_by_its_bytes_not_its_name(tmp_path: Path) -> None:
    file = tmp_path / "part-00000.json"
    file.write_bytes(gzip.compress(jsonl([{"n": 0}])))
    assert (await read_all(local_source(), file))[0] == [{"n": 0}]


async def test_blank_lines_are_dropped_silently(tmp_path: Path) -> None:
    file = tmp_path / "part-00000.json"
    file.write_bytes(b'\n{"n":0}\n\n   \n{"n":1}\r\n\r\n{"n":2}\n\n')
    assert await read_all(local_source(), file) == ([{"n": 0}, {"n": 1}, {"n": 2}], [])


async def test_jsonl_garbage_and_truncated_lines_are_bad_records_with_their_location(
    tmp_path: Path,
) -> None:
    file = tmp_path / "part-00003.json"
    file.write_bytes(
        b'{"n":0}\n'
        b"this is not json\n"
        b'{"n":1}\n'
        b'{"n":2, "cut": "in the mid\n'
        b"[1, 2, 3]\n"
        b'{"n":3}\n'
        b'{"n":4, "last": tru'  # the file ends mid-object
    )
    records, bad = await read_all(local_source(), file)
    assert records == [{"n": 0}, {"n": 1}, {"n": 3}]
    assert [(b.location, b.reason) for b in bad] == [
        ("part-00003.json:2", "not a JSON object"),
        ("part-00003.json:4", "truncated JSON object"),
        ("part-00003.json:5", "not a JSON object"),
        ("part-00003.json:7", "truncated JSON object"),
    ]
    assert bad[0].raw == b"this is not json"
    assert bad[3].raw == b'{"n":4, "last": tru'


async def test_bad_line_numbers_count_across_read_pieces(tmp_path: Path) -> None:
    lines = [orjson.dumps({"n": i, "pad": "x" * 50}) for i in range(2000)]
    lines[1500] = b"garbage"
    file = tmp_path / "part-00000.json"
    file.write_bytes(b"\n".join(lines) + b"\n")
    records, bad = await read_all(LocalSource("local", SMALL_READS), file)
    assert len(records) == 1999
    assert [b.location for b in bad] == ["part-00000.json:1501"]


async def test_corrupt_gzip_is_a_source_error_naming_the_file(tmp_path: Path) -> None:
    valid = gzip.compress(jsonl(many_records(100)))
    file = tmp_path / "part-00007.json.gz"
    file.write_bytes(valid[:10] + os.urandom(2000))  # a valid header, then garbage
    with pytest.raises(SourceError, match=re.escape("part-00007.json.gz: corrupt gzip")):
        await read_all(local_source(), file)


async def test_truncated_gzip_is_a_source_error_naming_the_file(tmp_path: Path) -> None:
    valid = gzip.compress(jsonl(many_records(1000)))
    file = tmp_path / "part-00008.json.gz"
    file.write_bytes(valid[: len(valid) // 2])
    with pytest.raises(SourceError, match=re.escape("part-00008.json.gz: truncated gzip")):
        await read_all(local_source(), file)


# -- CSV --------------------------------------------------------------------------------------

CSV_TEXT = (
    "\ufeffid,comment,score\r\n"
    '1,"line one\nline two",0.5\r\n'
    '2,"quoted ""word"", and comma",0.25\r\n'
    "\r\n"
    "3,too,many,columns\r\n"
    "4,plain,1\r\n"
)
CSV_RECORDS = [
    {"id": "1", "comment": "line one\nline two", "score": "0.5"},
    {"id": "2", "comment": 'quoted "word", and comma', "score": "0.25"},
    {"id": "4", "comment": "plain", "score": "1"},
]


@pytest.mark.parametrize("compressed", [False, True])
async def test_csv_rows_become_records_keyed_by_the_header(
    tmp_path: Path, compressed: bool
) -> None:
    data = CSV_TEXT.encode()
    file = tmp_path / part_name(0, ".csv.gz" if compressed else ".csv")
    file.write_bytes(gzip.compress(data) if compressed else data)
    records, bad = await read_all(local_source(), file)
    assert records == CSV_RECORDS  # BOM gone, quoted newlines kept, blank line dropped
    assert [(b.location, b.reason) for b in bad] == [(f"{file.name}:6", "4 columns, header has 3")]
    assert bad[0].raw == b"3,too,many,columns"


async def test_ragged_csv_rows_are_kept_as_the_bytes_they_were_written_as(
    tmp_path: Path,
) -> None:
    written = [
        b'5,"a, b" ,x,"y"',  # quotes and spacing a re-join would lose
        b'"6";short',  # fewer fields: one, quoted
        b'7,"two\r\nlines",,',  # a quoted line break, empty fields
        b"8,caf\xe9,x,y",  # not UTF-8 either
    ]
    file = tmp_path / "part-00000.csv"
    file.write_bytes(b"id,comment,score\r\n1,ok,0.5\r\n" + b"\r\n".join(written) + b"\r\n")
    records, bad = await read_all(local_source(), file)
    assert records == [{"id": "1", "comment": "ok", "score": "0.5"}]
    assert [b.raw for b in bad] == written
    assert [b.location for b in bad] == [f"{file.name}:{n}" for n in (3, 4, 6, 7)]


async def test_large_csv_comes_through_in_order_across_blocks(tmp_path: Path) -> None:
    rows = [f'{i},"text {i}\nsecond line",{i / 7}' for i in range(10_000)]
    file = tmp_path / "part-00000.csv"
    file.write_text("id,text,score\n" + "\n".join(rows) + "\n")
    records, bad = await read_all(LocalSource("local", SMALL_READS), file)
    assert bad == []
    assert [r["id"] for r in records] == [str(i) for i in range(10_000)]
    assert records[9999]["text"] == "text 9999\nsecond line"


async def test_tsv_is_split_on_tabs(tmp_path: Path) -> None:
    file = tmp_path / "scores.tsv"
    file.write_text("a\tb\n1,5\t2\n")
    assert (await read_all(local_source(), file))[0] == [{"a": "1,5", "b": "2"}]


async def test_header_only_csv_has_no_records(tmp_path: Path) -> None:
    file = tmp_path / "part-00000.csv"
    file.write_text("a,b\n")
    assert await read_all(local_source(), file) == ([], [])


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
async def test_damaged_gzip_csv_is_a_source_error_naming_the_file(
    tmp_path: Path, damage: str
) -> None:
    valid = gzip.compress(("a,b\n" + "".join(f"{i},{i * i}\n" for i in range(20_000))).encode())
    data = valid[:10] + os.urandom(4000) if damage == "corrupt" else valid[: len(valid) // 2]
    file = tmp_path / "part-00009.csv.gz"
    file.write_bytes(data)
    with pytest.raises(SourceError, match=re.escape("part-00009.csv.gz")):
        await read_all(local_source(), file)


async def test_a_non_utf8_byte_in_a_csv_is_one_bad_record_at_its_real_line(
    tmp_path: Path,
) -> None:
    file = tmp_path / "part-00000.csv"
    rows = [f"c-{i},0.{i}" for i in range(1, 300)]
    rows[199] = "Jos\xe9,0.5"  # line 201 (the header is line 1), in latin-1
    file.write_bytes(("name,score\n" + "\n".join(rows) + "\n").encode("latin-1"))
    records, bad = await read_all(local_source(), file)
    assert len(records) == 298
    assert [(b.location, b.reason, b.raw) for b in bad] == [
        ("part-00000.csv:201", "not valid UTF-8", b"Jos\xe9,0.5")
    ]


# -- Parquet ----------------------------------------------------------------------------------


def parquet_table(count: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(count), pa.int64()),
            "score": pa.array([i / count for i in range(count)], pa.float64()),
            "customer": pa.array(
                [{"name": f"c{i}", "tier": i % 3, "tags": [str(i)]} for i in range(count)]
            ),
            "note": pa.array([None if i % 5 else f"n{i}" for i in range(count)], pa.string()),
        }
    )


def write_parquet(path: Path, table: pa.Table, row_group_size: int) -> Path:
    pq.write_table(table, path, row_group_size=row_group_size, compression="snappy")
    return path


async def test_parquet_with_nested_struct_and_several_row_groups_reads_in_order(
    tmp_path: Path,
) -> None:
    table = parquet_table(40_000)
    file = write_parquet(tmp_path / part_name(0, ".snappy.parquet"), table, 7_000)
    assert pq.ParquetFile(file).num_row_groups == 6
    records, bad = await read_all(local_source(), file)
    assert bad == []
    assert records == table.to_pylist()


async def test_spark_folder_of_parquet_parts_reads_every_part(tmp_path: Path) -> None:
    root = tmp_path / "batch"
    root.mkdir()
    tables = [parquet_table(100), parquet_table(50)]
    for i, table in enumerate(tables):
        write_parquet(root / part_name(i, ".snappy.parquet"), table, 30)
    (root / "_SUCCESS").write_bytes(b"")
    records, _ = await read_all(local_source(), root, require_success=True)
    assert records == tables[0].to_pylist() + tables[1].to_pylist()


async def test_corrupt_parquet_is_a_source_error_naming_the_file(tmp_path: Path) -> None:
    file = tmp_path / part_name(0, ".snappy.parquet")
    file.write_bytes(os.urandom(5000))
    with pytest.raises(SourceError, match=re.escape(f"{file.name}: corrupt or unreadable Parquet")):
        await read_all(local_source(), file)


async def test_truncated_parquet_is_a_source_error(tmp_path: Path) -> None:
    file = write_parquet(tmp_path / "part-00000.parquet", parquet_table(1000), 300)
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(SourceError, match=re.escape("part-00000.parquet")):
        await read_all(local_source(), file)


# -- the remote path: no local file, only streams and ranges ----------------------------------


async def test_remote_jsonl_and_csv_are_streamed(tmp_path: Path) -> None:
    records = many_records(2000)
    root = spark_folder(
        tmp_path / "batch",
        {
            "part-00000.json.gz": gzip.compress(jsonl(records)),
            "part-00001.csv.gz": gzip.compress(CSV_TEXT.encode()),
        },
    )
    remote = RangeOnlySource(LocalSource("local", SMALL_READS))
    assert not hasattr(remote, "local_path")
    read, bad = await read_all(remote, root, require_success=True)
    assert read == records + CSV_RECORDS
    assert [b.location for b in bad] == ["part-00001.csv.gz:6"]
    assert remote.opened == ["part-00000.json.gz", "part-00001.csv.gz"]
    assert await read_all(remote, root) == await read_all(local_source(), root)


async def test_remote_parquet_is_read_by_ranges_one_row_group_at_a_time(tmp_path: Path) -> None:
    table = parquet_table(60_000)
    file = write_parquet(tmp_path / "part-00000.snappy.parquet", table, 10_000)
    size = file.stat().st_size
    remote = RangeOnlySource(local_source())
    records, bad = await read_all(remote, file)

    assert (records, bad) == (table.to_pylist(), [])
    assert remote.opened == []  # never streamed whole
    assert len(remote.ranges) > 6  # the footer, then column chunks row group by row group
    assert max(length for _, length in remote.ranges) < size / 3
    assert all(start >= 0 and start + length <= size for start, length in remote.ranges)


async def test_remote_corrupt_parquet_is_a_source_error(tmp_path: Path) -> None:
    file = tmp_path / "part-00000.parquet"
    file.write_bytes(os.urandom(3000))
    with pytest.raises(SourceError, match=re.escape("part-00000.parquet")):
        await read_all(RangeOnlySource(local_source()), file)


async def test_seeking_past_the_end_of_a_remote_object_reads_nothing(tmp_path: Path) -> None:
    file = tmp_path / "part-00000.parquet"
    file.write_bytes(b"0123456789")
    remote = RangeOnlySource(local_source())
    [obj] = await remote.list(str(file))

    def read_around() -> tuple[bytes, bytes, bytes]:
        stream = SeekableObject(remote, obj, loop)
        stream.seek(-4, io.SEEK_END)
        tail = stream.read()
        stream.seek(25)
        return tail, stream.read(), stream.read(3)

    loop = asyncio.get_running_loop()
    assert await asyncio.to_thread(read_around) == (b"6789", b"", b"")


@pytest.mark.parametrize("name", ["part-00000.parquet", "part-00000.csv", "part-00000.json"])
async def test_file_gone_between_listing_and_reading_is_a_source_error(
    tmp_path: Path, name: str
) -> None:
    file = tmp_path / name
    file.write_bytes(b"x")
    batch = await list_batch(local_source(), str(file), require_success=False)
    file.unlink()
    with pytest.raises(SourceError, match=re.escape(f"{name}: cannot open")):
        async for _ in read_records(local_source(), batch.objects, None):
            pass


@pytest.mark.timeout(10)
async def test_stream_reader_dropped_on_the_loop_thread_closes_without_deadlock(
    tmp_path: Path,
) -> None:
    closed = asyncio.Event()

    class TracingSource(RangeOnlySource):
        async def _pieces(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
            try:
                async for piece in self._inner.open(obj):
                    yield piece
            finally:
                closed.set()

        def open(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
            return self._pieces(obj)

    file = tmp_path / "part-00000.csv"
    file.write_bytes(b"n\n" * 20_000)
    source = TracingSource(LocalSource("local", SMALL_READS))
    [obj] = await source.list(str(file))
    reader = StreamReader(source, obj, asyncio.get_running_loop())
    assert await asyncio.to_thread(reader.read, 10) == b"n\nn\nn\nn\nn\n"
    reader.close()  # as garbage collection would, on this thread: must not wait on the loop
    await asyncio.wait_for(closed.wait(), 5)


async def test_stopping_early_closes_the_remote_stream(tmp_path: Path) -> None:
    file = tmp_path / "part-00000.csv"
    file.write_text("n\n" + "".join(f"{i}\n" for i in range(50_000)))
    remote = RangeOnlySource(LocalSource("local", SMALL_READS))
    batch = await list_batch(remote, str(file), require_success=False)
    blocks = read_records(remote, batch.objects, None)
    first = await anext(blocks)
    assert orjson.loads(first.lines[0]) == {"n": "0"}
    await blocks.aclose()  # must not hang or leak the worker thread's stream


# -- memory -----------------------------------------------------------------------------------


def write_big_jsonl(path: Path, megabytes: int) -> int:
    template = b'{"id":%d,"customer":"cust-%08d","score":0.%06d,"model":"churn-v3","pad":"%s"}\n'
    pad = b"x" * 40
    count = 0
    with open(path, "wb") as out:
        while out.tell() < megabytes * 1024 * 1024:
            out.write(
                b"".join(
                    template % (i, i, i % 1_000_000, pad) for i in range(count, count + 10_000)
                )
            )
            count += 10_000
    return count


def gzip_file(plain: Path, target: Path) -> None:
    with open(plain, "rb") as src, gzip.open(target, "wb", compresslevel=1) as dst:
        while piece := src.read(4 * 1024 * 1024):
            dst.write(piece)


async def count_with_peak(source: Source, uri: str) -> tuple[int, int]:
    objects = await source.list(uri)
    count = 0
    tracemalloc.start()
    try:
        async for block in read_records(source, objects, None):
            count += len(block.lines)  # each block is dropped before the next
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return count, peak


async def test_reading_a_50mb_jsonl_file_never_holds_it_whole(tmp_path: Path) -> None:
    file = tmp_path / "part-00000.json"
    written = write_big_jsonl(file, 50)
    count, peak = await count_with_peak(local_source(), str(file))
    assert count == written
    assert peak < 20 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


async def test_reading_a_50mb_gzip_jsonl_file_never_holds_it_whole(tmp_path: Path) -> None:
    # JSON Lines compress ~25x: one 1 MiB compressed piece inflates to tens of MiB unless
    # the inflater hands its output on in bounded pieces
    plain = tmp_path / "plain.json"
    written = write_big_jsonl(plain, 50)
    file = tmp_path / "part-00000.json.gz"
    await asyncio.to_thread(gzip_file, plain, file)
    plain.unlink()
    count, peak = await count_with_peak(local_source(), str(file))
    assert count == written
    assert peak < 20 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
