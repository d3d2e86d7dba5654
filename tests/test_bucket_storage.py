"""The bucket-storage contract: every object store (S3, GCS) as a source of batches and as a
destination for chunks, run against each store's real server on loopback (moto, fake-gcs-server).

What only one store does (S3 credentials and endpoint variables, GCS emulator variable, its
download threads, how each classifies its SDK's errors) stays in test_s3.py / test_gcs.py.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from sender.app import App
from sender.config import AppConfig
from sender.drop import MANIFEST_NAME, SUCCESS_NAME
from sender.errors import ConfigError, PermanentError, RetryableError, SourceError
from sender.model import BatchState, ObjectInfo, TriggerMessage
from sender.readers import list_batch, read_records
from sender.testing.receiver import Receiver
from sender_adapters._readahead import ReadAhead
from sender_adapters.gcs import GcsDestination, GcsSource
from sender_adapters.s3 import S3Destination, S3Source
from tests.batches import prediction, write_batch
from tests.cloud import (
    Bucket,
    GcsBucket,
    GcsServer,
    MotoServer,
    S3Bucket,
    bucket_name,
    make_chunk,
    summary_of,
)

FAST_RETRY = {"attempts": 3, "initial": "5ms", "max": "20ms", "budget": "5s"}


@dataclass(frozen=True)
class Store:
    """One kind of object store: its server, its adapters, and what it says when things go
    wrong (the wording differs; that each store says *something* precise is the contract)."""

    kind: str  # the ``type`` in the config: "s3" or "gcs"
    server: MotoServer | GcsServer
    bucket_class: type[S3Bucket] | type[GcsBucket]
    source_class: type[S3Source] | type[GcsSource]
    destination_class: type[S3Destination] | type[GcsDestination]
    endpoint_option: str  # endpoint_url / endpoint
    endpoint_env: str  # the variable the vendor's own tools read
    version_pattern: str  # what an object's version looks like (ETag / generation)
    rewritten_open: str
    rewritten_range: str
    no_such_drop: str

    @property
    def scheme(self) -> str:
        return self.bucket_class.scheme

    @property
    def endpoint(self) -> str:
        return self.server.endpoint_url if isinstance(self.server, MotoServer) else self.server.url

    def bucket(self, name: str) -> Bucket:
        return self.bucket_class(self.server, name)  # type: ignore[arg-type]

    def source(self, **options: Any) -> Any:
        options.setdefault(self.endpoint_option, self.endpoint)
        return self.source_class(self.kind, self.source_class.Options(**options))

    def destination_options(self, bucket: str, **options: Any) -> Any:
        options.setdefault(self.endpoint_option, self.endpoint)
        return self.destination_class.Options(bucket=bucket, **options)

    def destination(self, name: str, bucket: str, **options: Any) -> Any:
        return self.destination_class(name, self.destination_options(bucket, **options))


def _store(kind: str, server: MotoServer | GcsServer) -> Store:
    if kind == "s3":
        return Store(
            "s3",
            server,
            S3Bucket,
            S3Source,
            S3Destination,
            endpoint_option="endpoint_url",
            endpoint_env="AWS_ENDPOINT_URL",
            version_pattern=r"[0-9a-f]{32}",
            rewritten_open="changed since it was listed",
            rewritten_range="changed since it was listed",
            no_such_drop="no such bucket: no-such-drop",
        )
    return Store(
        "gcs",
        server,
        GcsBucket,
        GcsSource,
        GcsDestination,
        endpoint_option="endpoint",
        endpoint_env="STORAGE_EMULATOR_HOST",
        version_pattern=r"[0-9]+",
        rewritten_open="rewritten since it was listed",
        rewritten_range="not found",
        no_such_drop="not found",
    )


_SERVERS = {"s3": "moto_server", "gcs": "gcs_server"}
# moto in a thread would be counted by tracemalloc; fake-gcs-server is a process already
_SEPARATE_SERVERS = {"s3": "moto_process", "gcs": "gcs_server"}


@pytest.fixture(params=["s3", "gcs"])
def store(request: pytest.FixtureRequest) -> Store:
    """Each store in turn; only its own server is started."""
    return _store(request.param, request.getfixturevalue(_SERVERS[request.param]))


@pytest.fixture(params=["s3", "gcs"])
def separate_store(request: pytest.FixtureRequest) -> Store:
    """Each store in turn, its server in another process (for memory measurements)."""
    return _store(request.param, request.getfixturevalue(_SEPARATE_SERVERS[request.param]))


@pytest.fixture
def bucket(store: Store, request: pytest.FixtureRequest) -> Bucket:
    return store.bucket(bucket_name(request.node.nodeid))


@pytest.fixture
async def source(store: Store) -> AsyncIterator[Any]:
    async with store.source() as src:
        yield src


def config_text(
    bucket: Bucket,
    *,
    api_url: str | None = None,
    drop: dict[str, object] | None = None,
    targets: tuple[str, ...] = ("api",),
    dead_in_bucket: bool = False,
    source_section: bool = True,
) -> str:
    parts = ['[daemon]\nledger = "ledger.db"\n']
    if source_section:
        parts.append(bucket.source_toml())
    if api_url:
        parts.append(
            f'[destinations.api]\ntype = "http"\nurl = "{api_url}"\ncompression = "zstd"\n'
            f'timeout = "2s"\nretry = {{ attempts = 3, initial = "5ms", max = "20ms" }}\n'
        )
    if drop is not None:
        parts.append(bucket.destination_toml("drop", retry=FAST_RETRY, **drop))
    if dead_in_bucket:
        parts.append(bucket.destination_toml("dead", prefix="dead/{dataset}/{batch_id}/{route}/"))
    else:
        parts.append('[destinations.dead]\ntype = "local"\npath = "dead"\n')
    parts.append(
        f'[routes.churn]\ndatasets = ["churn"]\nchunk = {{ records = 1000 }}\n'
        f'targets = {json.dumps(list(targets))}\ndead_letter = "dead"\n'
    )
    return "\n".join(parts)


def message(uri: str, batch_id: str = "b-1") -> TriggerMessage:
    return TriggerMessage(batch_id=batch_id, dataset="churn", uri=uri)


async def send(config: AppConfig, msg: TriggerMessage):  # type: ignore[no-untyped-def]
    async with App(config) as app:
        return await app.engine.run_batch(msg)


def expected_ids(n: int) -> set[str]:
    return {f"cust-{i:08d}" for i in range(n)}


# -- source ---------------------------------------------------------------------------------


async def test_listing_pages_through_more_than_a_thousand_objects(
    store: Store, bucket: Bucket, source: Any
) -> None:
    bucket.put_many([f"big/part-{i:05d}.json" for i in range(1100)], b"{}\n")
    bucket.put("big/_SUCCESS", b"")
    bucket.put("bigger/part-00000.json", b"{}\n")  # shares the prefix "big", not the folder

    listed = await source.list(bucket.uri("big"))

    assert len(listed) == 1101
    assert listed[0].uri == bucket.uri("big/_SUCCESS")
    assert [o.uri for o in listed[1:]] == [
        bucket.uri(f"big/part-{i:05d}.json") for i in range(1100)
    ]
    assert all(o.size == 3 for o in listed[1:])
    assert all(re.fullmatch(store.version_pattern, o.version or "") for o in listed)
    batch = await list_batch(source, bucket.uri("big/"), require_success=True)
    assert len(batch.objects) == 1100 and batch.has_success


async def test_a_single_object_uri_lists_that_object_exactly_as_given(
    bucket: Bucket, source: Any
) -> None:
    bucket.put("exports/scores.jsonl", b'{"id": 1}\n')

    listed = await source.list(bucket.uri("exports/scores.jsonl"))

    version = bucket.version("exports/scores.jsonl")
    assert listed == [ObjectInfo(bucket.uri("exports/scores.jsonl"), 10, version)]


async def test_a_missing_bucket_is_a_source_error_naming_it(store: Store, source: Any) -> None:
    with pytest.raises(SourceError, match="no such bucket: no-such-bucket-here"):
        await source.list(f"{store.scheme}://no-such-bucket-here/batch/")


async def test_a_missing_prefix_is_a_source_error(bucket: Bucket, source: Any) -> None:
    bucket.put("elsewhere/part-0.json", b"{}\n")

    with pytest.raises(SourceError, match="no such object or prefix"):
        await source.list(bucket.uri("not/here"))


async def test_open_streams_the_object_in_read_size_pieces(store: Store, bucket: Bucket) -> None:
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
    bucket.put("blob.bin", data)
    async with store.source(read_size="64KiB") as source:
        (obj,) = await source.list(bucket.uri("blob.bin"))
        pieces = [piece async for piece in source.open(obj)]

    assert b"".join(pieces) == data
    assert {len(p) for p in pieces[:-1]} == {64 * 1024} and len(pieces[-1]) == 4


async def test_read_range_returns_exactly_the_bytes_asked_for(bucket: Bucket, source: Any) -> None:
    data = b"0123456789" * 100
    bucket.put("blob.bin", data)
    (obj,) = await source.list(bucket.uri("blob.bin"))

    assert await source.read_range(obj, 10, 5) == b"01234"
    assert await source.read_range(obj, 995, 100) == b"56789"  # fewer at the end
    assert await source.read_range(obj, 1000, 10) == b""


async def test_an_object_rewritten_after_listing_is_an_error_not_a_mix(
    store: Store, bucket: Bucket, source: Any
) -> None:
    bucket.put("batch/part-0.json", b'{"v": 1}\n')
    (obj,) = await source.list(bucket.uri("batch/part-0.json"))
    bucket.put("batch/part-0.json", b'{"v": 2}\n')

    with pytest.raises(SourceError, match=store.rewritten_open):
        _ = [piece async for piece in source.open(obj)]
    with pytest.raises(SourceError, match=store.rewritten_range):
        await source.read_range(obj, 0, 4)


def _counting(source_class: type[Any]) -> type[Any]:
    class Counting(source_class):  # type: ignore[misc, valid-type]
        """Records every request for a range, to show what reading Parquet costs on the wire."""

        def __init__(self, name: str, options: Any) -> None:
            super().__init__(name, options)
            self.fetched: list[int] = []

        async def _fetch_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
            data: bytes = await super()._fetch_range(obj, start, length)
            self.fetched.append(len(data))
            return data

    return Counting


async def test_parquet_is_read_in_a_few_ranged_requests_not_downloaded_whole(
    tmp_path: Path, store: Store, bucket: Bucket
) -> None:
    # 60 row groups of 1000 rows: ~500 column chunks of a few KiB each
    folder = write_batch(tmp_path / "batch", 60_000, parts=1, fmt="parquet")
    uri = bucket.upload_folder(folder, "lake/churn/")
    options = store.source_class.Options(
        **{store.endpoint_option: store.endpoint, "read_size": "256KiB"}
    )
    source = _counting(store.source_class)(store.kind, options)
    async with source:
        batch = await list_batch(source, uri, require_success=True)
        (obj,) = batch.objects
        count = 0
        async for block in read_records(source, batch.objects, None):
            count += len(block.lines)

    assert count == 60_000
    assert obj.size > 1024 * 1024
    assert max(source.fetched) <= 256 * 1024  # piece by piece, never the file in one go
    assert len(source.fetched) <= obj.size / (256 * 1024) + 3  # read ahead, not per column
    assert sum(source.fetched) <= obj.size * 1.1 + 64 * 1024  # each byte fetched about once


async def test_reading_a_large_object_keeps_memory_bounded(
    separate_store: Store, request: pytest.FixtureRequest
) -> None:
    bucket = separate_store.bucket(bucket_name(request.node.nodeid))
    line = orjson.dumps(prediction(7)) + b"\n"
    bucket.put("big.jsonl", line * (200 * 1024 * 1024 // len(line)))
    async with separate_store.source() as source:
        (obj,) = await source.list(bucket.uri("big.jsonl"))
        tracemalloc.start()  # the server is another process: only the reader is counted
        try:
            total = 0
            async for piece in source.open(obj):
                total += len(piece)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            bucket.delete("big.jsonl")  # the servers keep objects in memory

    assert total == obj.size > 190 * 1024 * 1024
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


# -- read-ahead, shared by both sources ------------------------------------------------------


class _Blocks:
    """An object in memory that counts the ranges asked of it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[tuple[int, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        self.asked.append((start, length))
        await self.gate.wait()
        return self.data[start : start + length]


async def test_read_ahead_fetches_each_aligned_block_once_in_any_order() -> None:
    blocks = _Blocks(bytes(range(256)) * 64)  # 16 KiB
    obj = ObjectInfo("s3://b/k", len(blocks.data), "v1")
    ahead = ReadAhead(blocks.fetch, 4096, blocks=4)

    for start in (9000, 100, 5000, 4000, 12000, 8200):  # out of order, one spans two blocks
        assert await ahead.read(obj, start, 300) == blocks.data[start : start + 300]

    assert sorted(blocks.asked) == [(0, 4096), (4096, 4096), (8192, 4096), (12288, 4096)]
    assert await ahead.read(obj, 16000, 1000) == blocks.data[16000:]  # fewer at the end
    assert await ahead.read(obj, 0, 5000) == blocks.data[:5000]  # a block or more: direct
    assert blocks.asked[-1] == (0, 5000)


async def test_read_ahead_readers_of_one_block_share_one_fetch() -> None:
    blocks = _Blocks(b"x" * 10_000)
    obj = ObjectInfo("s3://b/k", 10_000, "v1")
    ahead = ReadAhead(blocks.fetch, 4096)
    blocks.gate.clear()

    reads = [asyncio.create_task(ahead.read(obj, start, 10)) for start in (0, 100, 200)]
    await asyncio.sleep(0)  # every reader is now waiting on the store
    blocks.gate.set()

    assert await asyncio.gather(*reads) == [b"x" * 10] * 3
    assert blocks.asked == [(0, 4096)]


# -- destination ----------------------------------------------------------------------------


async def test_a_resent_chunk_overwrites_its_object(store: Store, bucket: Bucket) -> None:
    chunk = make_chunk("3", 10)
    async with store.destination("drop", bucket.name) as drop:
        first = await drop.deliver(chunk)
        second = await drop.deliver(chunk)

    assert first == second
    assert first.location == bucket.uri("churn/b-1/churn/chunk-000003.ndjson.gz")
    assert bucket.keys() == ["churn/b-1/churn/chunk-000003.ndjson.gz"]


async def test_each_object_carries_its_type_encoding_and_metadata(
    store: Store, bucket: Bucket
) -> None:
    chunk = make_chunk("0", 25)
    async with store.destination("drop", bucket.name) as drop:
        await drop.deliver(chunk)

    content_type, content_encoding, metadata = bucket.described(
        "churn/b-1/churn/chunk-000000.ndjson.gz"
    )
    assert content_type == "application/x-ndjson"
    assert content_encoding == "gzip"
    assert metadata == {
        "idempotency-key": chunk.idempotency_key,
        "sender-batch": "b-1",
        "sender-dataset": "churn",
        "sender-route": "churn",
        "sender-chunk": "0",
        "sender-kind": "data",
        "sender-records": "25",
        "sha256": chunk.checksum,
    }
    assert bucket.get("churn/b-1/churn/chunk-000000.ndjson.gz") == chunk.payload


async def test_as_a_dead_letter_store_it_writes_why_next_to_the_chunk(
    store: Store, bucket: Bucket
) -> None:
    chunk = make_chunk("4", 10)
    chunk.context = {"error": "api: HTTP 500: down", "attempts": 3, "targets": ["api"]}
    async with store.destination("dead", bucket.name, manifest=False) as dead:
        receipt = await dead.deliver(chunk)

    key = "churn/b-1/churn/chunk-000004.ndjson.gz"
    assert receipt.location == bucket.uri(key)
    meta = orjson.loads(bucket.get(key + ".meta.json"))
    assert meta["error"] == "api: HTTP 500: down" and meta["attempts"] == 3
    assert meta["sha256"] == chunk.checksum and meta["records"] == 10
    assert bucket.get(key) == chunk.payload


async def test_success_marker_is_written_after_the_manifest(store: Store, bucket: Bucket) -> None:
    written: list[str] = []

    class Recording(store.destination_class):  # type: ignore[name-defined, misc]
        async def put_object(self, key: str, data: bytes, **kwargs: object) -> None:
            await super().put_object(key, data, **kwargs)
            written.append(key)

    chunks = [make_chunk("0", 5), make_chunk("1", 5)]
    async with Recording("drop", store.destination_options(bucket.name)) as drop:
        receipts = [await drop.deliver(c) for c in chunks]
        await drop.finish_batch(summary_of(chunks, [r.location for r in receipts], True))

    assert written[-2:] == ["churn/b-1/churn/_MANIFEST.json", "churn/b-1/churn/_SUCCESS"]


async def test_a_chunk_placeholder_gives_each_chunk_its_folder_under_the_manifest(
    store: Store, bucket: Bucket
) -> None:
    chunks = [make_chunk("0", 5), make_chunk("1", 5)]
    prefix = "out/{batch_id}/{route}/part={chunk}"
    async with store.destination("drop", bucket.name, prefix=prefix) as drop:
        receipts = [await drop.deliver(c) for c in chunks]
        await drop.finish_batch(summary_of(chunks, [r.location for r in receipts], True))

    assert bucket.keys() == [
        "out/b-1/churn/_MANIFEST.json",
        "out/b-1/churn/_SUCCESS",
        "out/b-1/churn/part=000000/chunk-000000.ndjson.gz",
        "out/b-1/churn/part=000001/chunk-000001.ndjson.gz",
    ]
    manifest = orjson.loads(bucket.get("out/b-1/churn/_MANIFEST.json"))
    assert [c["name"] for c in manifest["chunks"]] == [
        "part=000000/chunk-000000.ndjson.gz",
        "part=000001/chunk-000001.ndjson.gz",
    ]


async def test_an_incomplete_drop_gets_no_manifest_and_no_marker(
    store: Store, bucket: Bucket
) -> None:
    chunks = [make_chunk("0", 5)]
    async with store.destination("drop", bucket.name) as drop:
        receipt = await drop.deliver(chunks[0])
        await drop.finish_batch(summary_of(chunks, [receipt.location], complete=False))

    assert bucket.keys() == ["churn/b-1/churn/chunk-000000.ndjson.gz"]


async def test_manifest_false_writes_only_the_chunks(store: Store, bucket: Bucket) -> None:
    chunks = [make_chunk("0", 5)]
    async with store.destination("drop", bucket.name, manifest=False) as drop:
        receipt = await drop.deliver(chunks[0])
        await drop.finish_batch(summary_of(chunks, [receipt.location], complete=True))

    assert bucket.keys() == ["churn/b-1/churn/chunk-000000.ndjson.gz"]


async def test_a_manifest_for_a_chunk_that_is_gone_is_refused(store: Store, bucket: Bucket) -> None:
    chunks = [make_chunk("0", 5)]
    async with store.destination("drop", bucket.name) as drop:
        receipt = await drop.deliver(chunks[0])
        bucket.delete("churn/b-1/churn/chunk-000000.ndjson.gz")
        with pytest.raises(PermanentError, match="chunk 0 of batch b-1 is missing"):
            await drop.finish_batch(summary_of(chunks, [receipt.location], complete=True))

    assert bucket.keys() == []


async def test_a_missing_bucket_is_a_permanent_error(store: Store) -> None:
    async with store.destination("drop", "no-such-drop") as drop:
        with pytest.raises(PermanentError, match=store.no_such_drop) as caught:
            await drop.deliver(make_chunk("0", 1))

    # the store's answer, as a fact: about the bucket, so splitting the chunk would not help
    assert caught.value.status == 404
    assert caught.value.payload is False


async def test_an_unreachable_store_is_a_retryable_error(
    store: Store, closed_port_url: str
) -> None:
    endpoint = closed_port_url.removesuffix("/down")
    options = {store.endpoint_option: endpoint, "timeout": "2s"}
    async with store.destination("drop", "drop-bucket", **options) as drop:
        with pytest.raises(RetryableError, match="connection error") as caught:
            await drop.deliver(make_chunk("0", 1))

    # no answer: no status, and a refused connection says nothing about load
    assert caught.value.status is None
    assert caught.value.push_back is False


@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        ("{dataset}/{route}/", "must contain {batch_id}"),
        ("{dataset}/{batch}/", "unknown placeholder {batch}"),
        ("/{batch_id}/", "relative to the bucket"),
        ("out/{batch_id}-{chunk}/", "must contain {batch_id}"),
    ],
)
def test_a_prefix_that_would_lose_data_is_a_config_error(
    store: Store, write_config: Callable[[str], AppConfig], prefix: str, error: str
) -> None:
    text = f"""
        [destinations.drop]
        type = "{store.kind}"
        bucket = "their-inbox"
        prefix = "{prefix}"

        [routes.churn]
        datasets = ["churn"]
        targets = ["drop"]
        """
    with pytest.raises(ConfigError, match=r"destinations\.drop\.prefix: ") as caught:
        write_config(text)
    assert error in str(caught.value)


# -- the engine, end to end -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "gz"),
    [("jsonl", True), ("jsonl", False), ("csv", True), ("csv", False), ("parquet", False)],
)
async def test_a_spark_batch_in_a_bucket_reaches_the_receiver_with_every_record(
    tmp_path: Path,
    store: Store,
    bucket: Bucket,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    gz: bool,
) -> None:
    folder = write_batch(tmp_path / "batch", 5000, parts=7, fmt=fmt, gz=gz)
    uri = bucket.upload_folder(folder, "predictions/churn/2026-11-24/")
    # no [sources] section: the variable the vendor's own tools read is enough
    monkeypatch.setenv(store.endpoint_env, store.endpoint)
    config = write_config(
        config_text(bucket, api_url=receiver.url + "/scores", source_section=False)
    )

    outcome = await send(config, message(uri))

    assert outcome.state is BatchState.COMPLETE and outcome.ok
    assert {r["id"] for r in receiver.records()} == expected_ids(5000)
    assert len(receiver.records()) == 5000
    assert outcome.routes["churn"].read == 5000


async def test_a_bucket_drop_has_a_manifest_matching_what_was_sent(
    tmp_path: Path, bucket: Bucket, write_config: Callable[[str], AppConfig]
) -> None:
    folder = write_batch(tmp_path / "batch", 2500)
    uri = bucket.upload_folder(folder, "lake/churn/")
    config = write_config(config_text(bucket, drop={}, targets=("drop",)))

    outcome = await send(config, message(uri))

    assert outcome.ok
    prefix = "churn/b-1/churn/"
    names = [f"chunk-{i:06d}.ndjson.gz" for i in range(3)]
    assert bucket.keys(prefix) == sorted(
        [prefix + MANIFEST_NAME, prefix + SUCCESS_NAME] + [prefix + n for n in names]
    )
    manifest = orjson.loads(bucket.get(prefix + MANIFEST_NAME))
    assert (manifest["batch_id"], manifest["dataset"], manifest["route"]) == (
        "b-1",
        "churn",
        "churn",
    )
    assert manifest["records"] == 2500
    assert [c["name"] for c in manifest["chunks"]] == names
    assert [c["records"] for c in manifest["chunks"]] == [1000, 1000, 500]
    seen: list[str] = []
    for entry in manifest["chunks"]:
        body = bucket.get(prefix + entry["name"])
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["bytes"] == len(body)
        metadata = bucket.described(prefix + entry["name"])[2]
        assert entry["idempotency_key"] == metadata["idempotency-key"]
        seen += [orjson.loads(line)["id"] for line in gzip.decompress(body).splitlines()]
    assert seen == [f"cust-{i:08d}" for i in range(2500)]
    assert bucket.get(prefix + SUCCESS_NAME) == b""


async def test_a_replay_from_scratch_overwrites_the_same_objects(
    tmp_path: Path, bucket: Bucket, write_config: Callable[[str], AppConfig]
) -> None:
    folder = write_batch(tmp_path / "batch", 2500)
    uri = bucket.upload_folder(folder, "lake/churn/")
    config = write_config(config_text(bucket, drop={}, targets=("drop",)))
    await send(config, message(uri))
    before = {key: bucket.get(key) for key in bucket.keys("churn/")}

    # the ledger is dropped on purpose (its marker too): everything is sent again
    (tmp_path / "ledger.db").unlink()
    (tmp_path / "ledger.db.id").unlink()
    again = await send(config, message(uri))

    assert again.ok and not again.already_complete
    after = {key: bucket.get(key) for key in bucket.keys("churn/")}
    assert after.keys() == before.keys()
    chunks = [key for key in after if "/chunk-" in key]
    assert all(after[key] == before[key] for key in chunks)  # byte for byte


async def test_the_bucket_fallback_takes_over_when_the_http_primary_is_down(
    tmp_path: Path,
    bucket: Bucket,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
) -> None:
    folder = write_batch(tmp_path / "batch", 3500, gz=True)
    uri = bucket.upload_folder(folder, "lake/churn/2026-11-24/")
    receiver.fail_always(503)
    config = write_config(
        config_text(bucket, api_url=receiver.url + "/scores", drop={}, targets=("api", "drop"))
    )

    outcome = await send(config, message(uri))

    assert outcome.state is BatchState.COMPLETE and outcome.ok
    assert receiver.accepted == [] and receiver.requests  # the primary was tried
    async with App(config) as app:
        chunks = await app.ledger.chunks("b-1")
    assert {c.target for c in chunks} == {"drop"} and len(chunks) == 4
    manifest = orjson.loads(bucket.get("churn/b-1/churn/" + MANIFEST_NAME))
    assert manifest["records"] == 3500
    offered = {r.idempotency_key for r in receiver.requests}
    assert offered == {c["idempotency_key"] for c in manifest["chunks"]}


async def test_a_bucket_is_a_dead_letter_store_that_says_why(
    tmp_path: Path,
    bucket: Bucket,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
) -> None:
    folder = write_batch(tmp_path / "batch", 1500)
    uri = bucket.upload_folder(folder, "lake/churn/")
    receiver.fail_always(500, body=b"scoring service down")
    config = write_config(
        config_text(bucket, api_url=receiver.url + "/scores", dead_in_bucket=True)
    )

    outcome = await send(config, message(uri))

    assert outcome.state is BatchState.COMPLETE and outcome.routes["churn"].dead_lettered == 1500
    prefix = "dead/churn/b-1/churn/"
    keys = bucket.keys(prefix)
    assert prefix + "chunk-000000.ndjson.gz" in keys and prefix + "chunk-000001.ndjson.gz" in keys
    meta = orjson.loads(bucket.get(prefix + "chunk-000000.ndjson.gz.meta.json"))
    assert "api: HTTP 500" in meta["error"] and "scoring service down" in meta["error"]
    assert meta["attempts"] == 3 and meta["targets"] == ["api"]
    assert meta["idempotency_key"] in {r.idempotency_key for r in receiver.requests}
    body = gzip.decompress(bucket.get(prefix + "chunk-000001.ndjson.gz"))
    assert len(body.splitlines()) == 500
    assert prefix + MANIFEST_NAME in keys  # every chunk is in this store: the drop is whole


def _truncate_last_gz(folder: Path) -> None:
    last = sorted(folder.glob("part-*.gz"))[-1]
    last.write_bytes(last.read_bytes()[:200])


def _garble_parquet(folder: Path) -> None:
    part = sorted(folder.glob("part-*.parquet"))[-1]
    data = part.read_bytes()
    part.write_bytes(data[:100] + b"\x00" * (len(data) - 200) + data[-100:])


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing_success", "no _SUCCESS marker"),
        ("missing_bucket", "no such bucket: gone-bucket"),
        ("corrupt_gzip", "part-00002-c000.json.gz"),
        ("corrupt_parquet", "corrupt or unreadable Parquet file"),
    ],
)
async def test_an_unreadable_batch_fails_with_a_clear_error_in_the_ledger(
    tmp_path: Path,
    store: Store,
    bucket: Bucket,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
    case: str,
    words: str,
) -> None:
    fmt = "parquet" if case == "corrupt_parquet" else "jsonl"
    folder = write_batch(
        tmp_path / "batch",
        3000,
        fmt=fmt,
        gz=case == "corrupt_gzip",
        success=case != "missing_success",
    )
    if case == "corrupt_gzip":
        _truncate_last_gz(folder)
    if case == "corrupt_parquet":
        _garble_parquet(folder)
    uri = bucket.upload_folder(folder, "lake/churn/")
    if case == "missing_bucket":
        uri = f"{store.scheme}://gone-bucket/lake/churn/"
    config = write_config(config_text(bucket, api_url=receiver.url + "/scores"))

    outcome = await send(config, message(uri))

    assert outcome.state is BatchState.FAILED
    assert words in (outcome.error or "")
    async with App(config) as app:
        record = await app.ledger.get_batch("b-1")
    assert record is not None and record.state is BatchState.FAILED
    assert words in (record.error or "")
