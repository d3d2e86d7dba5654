"""From records to chunks: caps, determinism, projection, encodings and codecs."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import zstandard

from sender.chunker import Chunker, RawChunk
from sender.codecs import DEFAULT_LEVELS, compress, encode
from sender.projection import Projection


def lines_of(count: int, *, width: int = 0) -> list[bytes]:
    return [orjson.dumps({"id": i, "pad": "x" * (width or i % 17)}) for i in range(count)]


def chunk_all(chunker: Chunker, blocks: Sequence[Sequence[bytes]]) -> list[RawChunk]:
    chunks = [chunk for block in blocks for chunk in chunker.feed(block)]
    return chunks + list(chunker.finish())


def random_split(lines: list[bytes], rng: random.Random) -> list[list[bytes]]:
    blocks, i = [], 0
    while i < len(lines):
        n = rng.choice([0, 1, 2, 7, 50, 333, 1000])
        blocks.append(lines[i : i + n])
        i += n
    return blocks


# -- chunking ---------------------------------------------------------------------------------


def test_chunks_are_capped_by_record_count() -> None:
    lines = lines_of(2500)
    chunks = chunk_all(Chunker(1000, 1 << 30), [lines])
    assert [c.records for c in chunks] == [1000, 1000, 500]
    assert [line for c in chunks for line in c.lines] == lines


def test_chunks_are_capped_by_bytes_of_their_ndjson_form() -> None:
    lines = lines_of(1000, width=90)  # ~110 bytes each
    max_bytes = 4096
    chunks = chunk_all(Chunker(10_000, max_bytes), [lines])
    assert len(chunks) > 1
    for chunk in chunks:
        ndjson = encode(chunk.lines, "ndjson")
        assert chunk.raw_size == len(ndjson) <= max_bytes
    # each chunk is full: the next record would have gone over
    for chunk, following in itertools.pairwise(chunks):
        assert chunk.raw_size + len(following.lines[0]) + 1 > max_bytes
    assert [line for c in chunks for line in c.lines] == lines


def test_a_record_larger_than_the_byte_cap_travels_alone() -> None:
    small = lines_of(3, width=10)
    huge = orjson.dumps({"id": "huge", "pad": "x" * 5000})
    chunks = chunk_all(Chunker(100, 1024), [[*small, huge, *small]])
    assert [c.lines for c in chunks] == [small, [huge], small]
    assert chunks[1].raw_size == len(huge) + 1


def test_chunk_ids_count_up_from_the_first_index() -> None:
    chunks = chunk_all(Chunker(10, 1 << 20, first_index=5), [lines_of(35)])
    assert [c.chunk_id for c in chunks] == ["5", "6", "7", "8"]


def test_finish_emits_the_rest_once() -> None:
    chunker = Chunker(10, 1 << 20)
    assert list(chunker.feed(lines_of(4))) == []
    assert [c.records for c in chunker.finish()] == [4]
    assert list(chunker.finish()) == []


def test_no_records_make_no_chunks() -> None:
    assert chunk_all(Chunker(10, 1 << 20), [[], []]) == []


@pytest.mark.parametrize("seed", range(5))
def test_chunking_is_the_same_however_the_input_is_split_into_blocks(seed: int) -> None:
    rng = random.Random(seed)
    lines = [orjson.dumps({"id": i, "pad": "x" * rng.randrange(0, 400)}) for i in range(5000)]
    expected = chunk_all(Chunker(300, 16 * 1024), [lines])
    split = chunk_all(Chunker(300, 16 * 1024), random_split(lines, rng))
    one_by_one = chunk_all(Chunker(300, 16 * 1024), [[line] for line in lines])
    assert split == expected
    assert one_by_one == expected
    assert len(expected) > 10


# -- projection -------------------------------------------------------------------------------


def test_projection_renames_fields_in_the_configured_order() -> None:
    projection = Projection({"customer_id": "id", "churn_score": "score", "model": "model"})
    out, bad = projection.apply([b'{"model":"v3","score":0.9,"id":"c1","extra":1}'])
    assert bad == []
    assert out == [b'{"customer_id":"c1","churn_score":0.9,"model":"v3"}']
    assert list(orjson.loads(out[0])) == ["customer_id", "churn_score", "model"]


def test_projection_reaches_into_nested_objects_with_dotted_paths() -> None:
    projection = Projection({"id": "id", "tier": "customer.plan.tier", "name": "customer.name"})
    out, _ = projection.apply(
        [
            b'{"id":1,"customer":{"name":"Ada","plan":{"tier":"gold"}}}',
            b'{"id":2,"customer":{"name":"Bob","plan":"legacy"}}',
            b'{"id":3,"customer":null}',
        ]
    )
    assert [orjson.loads(line) for line in out] == [
        {"id": 1, "tier": "gold", "name": "Ada"},
        {"id": 2, "tier": None, "name": "Bob"},
        {"id": 3, "tier": None, "name": None},
    ]


@pytest.mark.parametrize("fields", [{"a": "a", "b": "b"}, {"a": "a", "b": "x.b"}])
def test_missing_fields_become_null_so_every_record_has_the_same_keys(
    fields: dict[str, str],
) -> None:
    out, _ = Projection(fields).apply([b'{"a":1}', b"{}"])
    assert [orjson.loads(line) for line in out] == [{"a": 1, "b": None}, {"a": None, "b": None}]


def test_invalid_json_and_non_objects_are_bad_records() -> None:
    out, bad = Projection({"a": "a"}).apply(
        [b'{"a":1}', b'{"a":', b"[1,2]", b'"text"', b'{"a":2}'], "part-00000.json"
    )
    assert [orjson.loads(line) for line in out] == [{"a": 1}, {"a": 2}]
    assert [b.raw for b in bad] == [b'{"a":', b"[1,2]", b'"text"']
    assert bad[0].reason.startswith("invalid JSON")
    assert bad[1].reason == "not a JSON object"
    assert {b.location for b in bad} == {"part-00000.json"}


# -- encoding ---------------------------------------------------------------------------------

RECORDS = [
    {"id": 1, "name": 'Ada, "the first"', "tags": ["a", "b"], "meta": {"x": 1}, "ok": True},
    {"id": 2, "name": "line\nbreak", "tags": [], "meta": None, "ok": False},
    {"id": 3, "name": None, "tags": None, "meta": {}, "ok": None},
]
LINES = [orjson.dumps(record) for record in RECORDS]


def test_ndjson_is_one_record_per_line() -> None:
    payload = encode(LINES, "ndjson")
    assert payload.endswith(b"\n")
    assert [orjson.loads(line) for line in payload.splitlines()] == RECORDS


def test_json_is_an_array_of_the_records() -> None:
    assert json.loads(encode(LINES, "json")) == RECORDS
    assert json.loads(encode([], "json")) == []


def test_csv_has_a_header_in_field_order_nested_values_as_json_and_null_as_empty() -> None:
    payload = encode(LINES, "csv", ["name", "id", "tags", "meta", "ok", "absent"])
    rows = list(csv.reader(io.StringIO(payload.decode())))
    assert rows == [
        ["name", "id", "tags", "meta", "ok", "absent"],
        ['Ada, "the first"', "1", '["a","b"]', '{"x":1}', "true", ""],
        ["line\nbreak", "2", "[]", "", "false", ""],
        ["", "3", "", "{}", "", ""],
    ]


def test_csv_without_fields_has_a_column_for_every_key_met() -> None:
    payload = encode([b'{"a":1}', b'{"b":2,"a":3}'], "csv")
    assert list(csv.DictReader(io.StringIO(payload.decode()))) == [
        {"a": "1", "b": ""},
        {"a": "3", "b": "2"},
    ]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        encode(LINES, "xml")


# -- compression ------------------------------------------------------------------------------

PAYLOAD = encode(lines_of(5000), "ndjson")


def decompress(data: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.decompress(data)
    if codec == "zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    return data


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("level", [None, 1, 9])
def test_compression_round_trips(codec: str, level: int | None) -> None:
    compressed = compress(PAYLOAD, codec, level)
    assert decompress(compressed, codec) == PAYLOAD
    if codec != "none":
        assert len(compressed) < len(PAYLOAD) / 3


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compression_is_deterministic(codec: str) -> None:
    assert compress(PAYLOAD, codec) == compress(PAYLOAD, codec)


def test_gzip_header_carries_no_time() -> None:
    # bytes 4-7 of a gzip member are its mtime: a resent chunk must have the same bytes
    assert compress(PAYLOAD, "gzip")[4:8] == b"\x00\x00\x00\x00"


def test_empty_payload_compresses_and_round_trips() -> None:
    for codec in ("none", "gzip", "zstd"):
        assert decompress(compress(b"", codec), codec) == b""


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        compress(PAYLOAD, "brotli")


def test_zstd_from_many_threads_at_once_gives_the_same_bytes() -> None:
    # one shared ZstdCompressor across threads crashes the process (PITFALLS.md)
    payloads = [encode(lines_of(200 + i), "ndjson") for i in range(64)]
    jobs = [(payload, level) for payload in payloads for level in (None, 1, 3)]
    default = DEFAULT_LEVELS["zstd"]
    expected = [zstandard.ZstdCompressor(level=level or default).compress(p) for p, level in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: compress(job[0], "zstd", job[1]), jobs * 4))
    assert results == expected * 4
