"""GCS only: what the bucket-storage contract (test_bucket_storage.py) does not cover — the
emulator variable, Google credentials, the download threads, generations, how google-api-core's
errors are classified, the GCP example config — against fake-gcs-server on loopback through
google-cloud-storage (no SDK mocking)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as api_exceptions

from sender.config import load_config
from sender.drop import MANIFEST_NAME, SUCCESS_NAME
from sender.errors import DeliveryError, PermanentError, RetryableError, SourceError
from sender.model import ObjectInfo
from sender_adapters.gcs import GcsDestination, GcsSource, gcs_error
from tests.cloud import GcsBucket, GcsServer, bucket_name, make_chunk, summary_of

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture
def bucket(gcs_server: GcsServer, request: pytest.FixtureRequest) -> GcsBucket:
    return GcsBucket(gcs_server, bucket_name(request.node.nodeid))


@pytest.fixture
async def source(gcs_server: GcsServer) -> AsyncIterator[GcsSource]:
    async with GcsSource("gcs", GcsSource.Options(endpoint=gcs_server.url)) as src:
        yield src


# -- source ---------------------------------------------------------------------------------


async def test_a_reader_that_stops_early_stops_the_download(
    bucket: GcsBucket, gcs_server: GcsServer
) -> None:
    bucket.put("blob.bin", b"x" * (8 * 1024 * 1024))
    options = GcsSource.Options(endpoint=gcs_server.url, read_size="64KiB", workers=1)
    async with GcsSource("gcs", options) as source:
        (obj,) = await source.list(bucket.uri("blob.bin"))
        stream = source.open(obj)
        assert len(await anext(stream)) == 64 * 1024
        await stream.aclose()  # the download thread must let go of the only worker

        assert await source.read_range(obj, 0, 3) == b"xxx"


async def test_storage_emulator_host_needs_no_configuration(
    bucket: GcsBucket, gcs_server: GcsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket.put("batch/part-0.json", b"{}\n")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)

    async with GcsSource("gcs", GcsSource.Options()) as source:
        listed = await source.list(bucket.uri("batch/"))

    assert [o.name for o in listed] == ["part-0.json"]


async def test_missing_google_credentials_are_a_clear_source_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))

    async with GcsSource("gcs", GcsSource.Options()) as source:
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


# -- errors are classified at the boundary ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "push_back", "words"),
    [
        (429, RetryableError, True, "GCS error 429"),
        (503, RetryableError, True, "GCS error 503"),
        (500, RetryableError, False, "GCS error 500"),
        (403, PermanentError, False, "access denied"),
        (401, PermanentError, False, "access denied"),
        (404, PermanentError, False, "not found"),
        (400, PermanentError, False, "GCS error 400"),
    ],
)
def test_gcs_answers_become_errors_with_their_status(
    status: int, kind: type[DeliveryError], push_back: bool, words: str
) -> None:
    error = gcs_error(api_exceptions.from_http_status(status, "m"), "gs://b/k")

    assert type(error) is kind and words in error.reason
    assert error.status == status
    if isinstance(error, RetryableError):
        assert error.push_back is push_back  # 429 and 503 say "send less", a 500 does not
    else:
        assert isinstance(error, PermanentError)
        assert error.payload is False  # about the bucket or the request, not the records


def test_gcs_gave_up_retrying_keeps_the_last_answer() -> None:
    last = api_exceptions.from_http_status(429, "slow down")
    error = gcs_error(api_exceptions.RetryError("deadline", last), "gs://b/k")

    assert isinstance(error, RetryableError) and "gave up retrying" in error.reason
    assert error.status == 429 and error.push_back is True


def test_a_read_timeout_pushes_back_and_a_refused_connection_does_not() -> None:
    slow = gcs_error(TimeoutError(), "gs://b/k")
    refused = gcs_error(requests.ConnectionError("refused"), "gs://b/k")

    assert isinstance(slow, RetryableError) and slow.push_back is True
    assert slow.reason == "gs://b/k: timed out"
    assert isinstance(refused, RetryableError) and refused.push_back is False


def test_an_object_too_large_for_gcs_is_about_the_payload() -> None:
    error = gcs_error(api_exceptions.from_http_status(413, "too big"), "gs://b/k")
    assert isinstance(error, PermanentError) and error.payload is True


# -- destination ----------------------------------------------------------------------------


async def test_generations_show_the_marker_after_the_manifest_after_every_chunk(
    bucket: GcsBucket,
) -> None:
    chunks = [make_chunk(str(i), 5) for i in range(3)]
    options = GcsDestination.Options(bucket=bucket.name, endpoint=bucket.server.url)
    async with GcsDestination("drop", options) as drop:
        receipts = [await drop.deliver(c) for c in chunks]
        await drop.finish_batch(summary_of(chunks, [r.location for r in receipts], True))

    # generations are write times: the marker came after the manifest, after every chunk
    prefix = "churn/b-1/churn/"
    names = [f"chunk-{i:06d}.ndjson.gz" for i in range(3)]
    generation = {key: bucket.blob(key).generation for key in bucket.keys(prefix)}
    assert generation[prefix + SUCCESS_NAME] > generation[prefix + MANIFEST_NAME]
    assert generation[prefix + MANIFEST_NAME] > max(generation[prefix + n] for n in names)


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
