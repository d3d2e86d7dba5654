"""GCS: batches read from a bucket and chunks dropped into one, against fake-gcs-server on
loopback through google-cloud-storage (no SDK mocking)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from google.api_core import exceptions as api_exceptions

from adapters.gcs import GcsDestination, GcsSource, describe_gcs_error
from sender.app import App
from sender.config import AppConfig, load_config
from sender.drop import MANIFEST_NAME, SUCCESS_NAME
from sender.engine import encode_chunk
from sender.errors import PermanentError, RetryableError, SourceError
from sender.formats import list_batch
from sender.model import BatchState, EncodedChunk, ObjectInfo, TriggerMessage
from sender.pipeline import RawChunk
from sender.receiver import Receiver
from tests.batches import prediction, write_batch
from tests.cloud import GcsBucket, GcsServer, bucket_name

FAST_RETRY = {"attempts": 3, "initial": "5ms", "max": "20ms", "budget": "5s"}
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture
def bucket(gcs_server: GcsServer, request: pytest.FixtureRequest) -> GcsBucket:
    return GcsBucket(gcs_server, bucket_name(request.node.nodeid))


@pytest.fixture
async def source(gcs_server: GcsServer) -> AsyncIterator[GcsSource]:
    async with GcsSource(GcsSource.Options(endpoint=gcs_server.url)) as src:
        yield src


def config_text(
    bucket: GcsBucket,
    *,
    api_url: str | None = None,
    drop: dict[str, object] | None = None,
    targets: tuple[str, ...] = ("api",),
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
    bucket: GcsBucket, source: GcsSource
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
    assert all(o.size == 3 and o.version.isdigit() for o in listed[1:])
    batch = await list_batch(source, bucket.uri("big/"), require_success=True)
    assert len(batch.objects) == 1100 and batch.has_success


async def test_a_single_object_uri_lists_that_object_exactly_as_given(
    bucket: GcsBucket, source: GcsSource
) -> None:
    bucket.put("exports/scores.jsonl", b'{"id": 1}\n')

    listed = await source.list(bucket.uri("exports/scores.jsonl"))

    version = str(bucket.blob("exports/scores.jsonl").generation)
    assert listed == [ObjectInfo(bucket.uri("exports/scores.jsonl"), 10, version)]


async def test_a_missing_bucket_is_a_source_error_naming_it(source: GcsSource) -> None:
    with pytest.raises(SourceError, match="no such bucket: no-such-bucket-here"):
        await source.list("gs://no-such-bucket-here/batch/")


async def test_a_missing_prefix_is_a_source_error(bucket: GcsBucket, source: GcsSource) -> None:
    bucket.put("elsewhere/part-0.json", b"{}\n")

    with pytest.raises(SourceError, match="no such object or prefix"):
        await source.list(bucket.uri("not/here"))


async def test_open_streams_the_object_in_read_size_pieces(
    bucket: GcsBucket, gcs_server: GcsServer
) -> None:
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
    bucket.put("blob.bin", data)
    options = GcsSource.Options(endpoint=gcs_server.url, read_size="64KiB")
    async with GcsSource(options) as source:
        (obj,) = await source.list(bucket.uri("blob.bin"))
        pieces = [piece async for piece in source.open(obj)]

    assert b"".join(pieces) == data
    assert {len(p) for p in pieces[:-1]} == {64 * 1024} and len(pieces[-1]) == 4


async def test_a_reader_that_stops_early_stops_the_download(
    bucket: GcsBucket, gcs_server: GcsServer
) -> None:
    bucket.put("blob.bin", b"x" * (8 * 1024 * 1024))
    options = GcsSource.Options(endpoint=gcs_server.url, read_size="64KiB", workers=1)
    async with GcsSource(options) as source:
        (obj,) = await source.list(bucket.uri("blob.bin"))
        stream = source.open(obj)
        assert len(await anext(stream)) == 64 * 1024
        await stream.aclose()  # the download thread must let go of the only worker

        assert await source.read_range(obj, 0, 3) == b"xxx"


async def test_read_range_returns_exactly_the_bytes_asked_for(
    bucket: GcsBucket, source: GcsSource
) -> None:
    data = b"0123456789" * 100
    bucket.put("blob.bin", data)
    (obj,) = await source.list(bucket.uri("blob.bin"))

    assert await source.read_range(obj, 10, 5) == b"01234"
    assert await source.read_range(obj, 995, 100) == b"56789"  # fewer at the end
    assert await source.read_range(obj, 1000, 10) == b""


async def test_an_object_rewritten_after_listing_is_an_error_not_a_mix(
    bucket: GcsBucket, source: GcsSource
) -> None:
    bucket.put("batch/part-0.json", b'{"v": 1}\n')
    (obj,) = await source.list(bucket.uri("batch/part-0.json"))
    bucket.put("batch/part-0.json", b'{"v": 2}\n')

    with pytest.raises(SourceError, match="rewritten since it was listed"):
        _ = [piece async for piece in source.open(obj)]
    with pytest.raises(SourceError, match="not found"):
        await source.read_range(obj, 0, 4)


async def test_storage_emulator_host_needs_no_configuration(
    bucket: GcsBucket, gcs_server: GcsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket.put("batch/part-0.json", b"{}\n")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)

    async with GcsSource() as source:
        listed = await source.list(bucket.uri("batch/"))

    assert [o.name for o in listed] == ["part-0.json"]


async def test_missing_google_credentials_are_a_clear_source_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))

    async with GcsSource() as source:
        with pytest.raises(SourceError, match="no Google credentials found"):
            await source.list("gs://some-bucket/batch/")
        with pytest.raises(SourceError, match="no Google credentials found"):
            _ = [p async for p in source.open(ObjectInfo("gs://some-bucket/batch/p.json", 9))]


async def test_the_event_loop_keeps_running_while_gcs_is_read(
    bucket: GcsBucket, source: GcsSource
) -> None:
    bucket.put("big.bin", b"y" * (48 * 1024 * 1024))
    (obj,) = await source.list(bucket.uri("big.bin"))
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    total = 0
    async for piece in source.open(obj):
        total += len(piece)
    done.set()
    await task
    bucket.delete("big.bin")

    assert total == 48 * 1024 * 1024
    assert len(gaps) > 5 and max(gaps) < 0.25  # the download never held the loop


async def test_reading_a_large_object_keeps_memory_bounded(
    bucket: GcsBucket, source: GcsSource
) -> None:
    line = orjson.dumps(prediction(7)) + b"\n"
    bucket.put("big.jsonl", line * (200 * 1024 * 1024 // len(line)))
    (obj,) = await source.list(bucket.uri("big.jsonl"))
    tracemalloc.start()  # fake-gcs-server is another process: only the reader is counted
    try:
        total = 0
        async for piece in source.open(obj):
            total += len(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        bucket.delete("big.jsonl")  # the emulator keeps objects in memory

    assert total == obj.size > 190 * 1024 * 1024
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


async def test_a_closed_source_refuses_work_and_closes_twice(
    bucket: GcsBucket, source: GcsSource
) -> None:
    bucket.put("batch/part-0.json", b"{}\n")
    await source.list(bucket.uri("batch/"))

    await source.aclose()
    await source.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await source.list(bucket.uri("batch/"))


# -- errors are classified at the boundary ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable", "words"),
    [
        (429, True, "GCS error 429"),
        (503, True, "GCS error 503"),
        (500, True, "GCS error 500"),
        (403, False, "access denied"),
        (401, False, "access denied"),
        (404, False, "not found"),
        (400, False, "GCS error 400"),
    ],
)
def test_gcs_errors_are_retryable_or_permanent(status: int, retryable: bool, words: str) -> None:
    error = api_exceptions.from_http_status(status, "m")
    reason, is_retryable = describe_gcs_error(error, "gs://b/k")
    assert is_retryable is retryable
    assert words in reason


# -- destination ----------------------------------------------------------------------------


def make_chunk(chunk_id: str, records: int) -> EncodedChunk:
    lines = [orjson.dumps(prediction(int(chunk_id) * 1000 + i)) for i in range(records)]
    raw = RawChunk(chunk_id, lines, sum(len(x) + 1 for x in lines))
    return encode_chunk(
        raw,
        batch_id="b-1",
        dataset="churn",
        route="churn",
        format="ndjson",
        codec="gzip",
        level=None,
        columns=None,
    )


def drop_options(bucket: GcsBucket, **extra: object) -> GcsDestination.Options:
    return GcsDestination.Options(bucket=bucket.name, endpoint=bucket.server.url, **extra)


async def test_a_resent_chunk_overwrites_its_object(bucket: GcsBucket) -> None:
    chunk = make_chunk("3", 10)
    async with GcsDestination("drop", drop_options(bucket)) as drop:
        first = await drop.deliver(chunk)
        second = await drop.deliver(chunk)

    assert first == second
    assert first.location == bucket.uri("churn/b-1/churn/chunk-000003.ndjson.gz")
    assert bucket.keys() == ["churn/b-1/churn/chunk-000003.ndjson.gz"]


async def test_each_object_carries_its_type_encoding_and_metadata(bucket: GcsBucket) -> None:
    chunk = make_chunk("0", 25)
    async with GcsDestination("drop", drop_options(bucket)) as drop:
        await drop.deliver(chunk)

    blob = bucket.blob("churn/b-1/churn/chunk-000000.ndjson.gz")
    assert blob.content_type == "application/x-ndjson"
    assert blob.content_encoding == "gzip"
    assert blob.metadata["idempotency-key"] == chunk.idempotency_key
    assert blob.metadata["sha256"] == chunk.checksum
    assert blob.metadata["sender-records"] == "25"
    assert bucket.get("churn/b-1/churn/chunk-000000.ndjson.gz") == chunk.payload


async def test_as_a_dead_letter_store_it_writes_why_next_to_the_chunk(bucket: GcsBucket) -> None:
    chunk = make_chunk("4", 10)
    chunk.context = {"error": "api: HTTP 500: down", "attempts": 3, "targets": ["api"]}
    async with GcsDestination("dead", drop_options(bucket, manifest=False)) as dead:
        receipt = await dead.deliver(chunk)

    key = "churn/b-1/churn/chunk-000004.ndjson.gz"
    assert receipt.location == bucket.uri(key)
    meta = orjson.loads(bucket.get(key + ".meta.json"))
    assert meta["error"] == "api: HTTP 500: down" and meta["attempts"] == 3
    assert meta["sha256"] == chunk.checksum and meta["records"] == 10
    assert bucket.get(key) == chunk.payload


async def test_a_missing_bucket_is_a_permanent_error(gcs_server: GcsServer) -> None:
    options = GcsDestination.Options(bucket="no-such-drop", endpoint=gcs_server.url)
    async with GcsDestination("drop", options) as drop:
        with pytest.raises(PermanentError, match="not found"):
            await drop.deliver(make_chunk("0", 1))


async def test_an_unreachable_store_is_a_retryable_error(closed_port_url: str) -> None:
    endpoint = closed_port_url.removesuffix("/down")
    options = GcsDestination.Options(bucket="drop-bucket", endpoint=endpoint, timeout="2s")
    async with GcsDestination("drop", options) as drop:
        with pytest.raises(RetryableError, match="connection error"):
            await drop.deliver(make_chunk("0", 1))


async def test_a_closed_destination_refuses_chunks(bucket: GcsBucket) -> None:
    drop = GcsDestination("drop", drop_options(bucket))
    await drop.aclose()
    await drop.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await drop.deliver(make_chunk("0", 1))


# -- the engine, end to end -----------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "gz"), [("jsonl", True), ("csv", False), ("parquet", False)])
async def test_a_spark_batch_in_gcs_reaches_the_receiver_with_every_record(
    tmp_path: Path,
    bucket: GcsBucket,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
    fmt: str,
    gz: bool,
) -> None:
    folder = write_batch(tmp_path / "batch", 5000, parts=7, fmt=fmt, gz=gz)
    uri = bucket.upload_folder(folder, "predictions/churn/2026-11-24/")
    config = write_config(config_text(bucket, api_url=receiver.url + "/scores"))

    outcome = await send(config, message(uri))

    assert outcome.state is BatchState.COMPLETE and outcome.ok
    assert {r["id"] for r in receiver.records()} == expected_ids(5000)
    assert len(receiver.records()) == 5000


async def test_a_bucket_drop_has_a_manifest_matching_what_was_sent(
    tmp_path: Path, bucket: GcsBucket, write_config: Callable[[str], AppConfig]
) -> None:
    folder = write_batch(tmp_path / "batch", 2500)
    uri = bucket.upload_folder(folder, "lake/churn/")
    config = write_config(config_text(bucket, drop={}, targets=("drop",)))

    outcome = await send(config, message(uri))

    assert outcome.ok
    prefix = "churn/b-1/churn/"
    names = [f"chunk-{i:06d}.ndjson.gz" for i in range(3)]
    expected = [prefix + MANIFEST_NAME, prefix + SUCCESS_NAME] + [prefix + n for n in names]
    assert bucket.keys(prefix) == sorted(expected)
    manifest = orjson.loads(bucket.get(prefix + MANIFEST_NAME))
    assert manifest["records"] == 2500
    assert [c["name"] for c in manifest["chunks"]] == names
    seen: list[str] = []
    for entry in manifest["chunks"]:
        body = bucket.get(prefix + entry["name"])
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["bytes"] == len(body)
        seen += [orjson.loads(line)["id"] for line in gzip.decompress(body).splitlines()]
    assert seen == [f"cust-{i:08d}" for i in range(2500)]
    # generations are write times: the marker came after the manifest, after every chunk
    generation = {key: bucket.blob(key).generation for key in expected}
    assert generation[prefix + SUCCESS_NAME] > generation[prefix + MANIFEST_NAME]
    assert generation[prefix + MANIFEST_NAME] > max(generation[prefix + n] for n in names)


async def test_the_gcs_fallback_takes_over_when_the_http_primary_is_down(
    tmp_path: Path,
    bucket: GcsBucket,
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
    bucket: GcsBucket,
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
        uri = "gs://gone-bucket/lake/churn/"
    config = write_config(config_text(bucket, api_url=receiver.url + "/scores"))

    outcome = await send(config, message(uri))

    assert outcome.state is BatchState.FAILED
    assert words in (outcome.error or "")
    async with App(config) as app:
        record = await app.ledger.get_batch("b-1")
    assert record is not None and record.state is BatchState.FAILED
    assert words in (record.error or "")


# -- the example configuration --------------------------------------------------------------


def test_the_gcp_example_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SENDER_CONTROL_TOKEN", "SENDER_TRIGGER_TOKEN", "CRM_API_TOKEN"):
        monkeypatch.setenv(name, f"{name.lower()}-value")

    config = load_config(CONFIG_DIR / "gcp.toml")

    assert config.trigger.type == "http"
    assert config.source_for("gs://acme-lake/churn/").type == "gcs"
    route = config.routes["churn_to_crm"]
    types = {name: config.destinations[name].type for name in [*route.targets, route.dead_letter]}
    assert types == {"crm_api": "http", "crm_inbox": "gcs", "dead": "gcs"}
    assert config.destinations["crm_inbox"].options.manifest is True
