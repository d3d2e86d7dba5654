"""The HTTP destination against a real receiver on loopback, and its pure helpers."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import io
import socket
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

import orjson
import pytest
import zstandard
from multidict import CIMultiDict
from pydantic import ValidationError

from sender import __version__
from sender.errors import AdapterClosed, PermanentError, RetryableError
from sender.model import EncodedChunk, Receipt, idempotency_key
from sender.ports import Destination
from sender.registry import adapter_class
from sender.testing.receiver import Receiver
from sender_adapters.http import HttpDestination, classify_response, parse_retry_after

RECORDS = [
    {"id": "c-1", "score": "0.91", "model": "churn-v3"},
    {"id": "c-2", "score": "0.12", "model": "churn-v3"},
    {"id": "c-3", "score": "0.55", "model": "churn-v3"},
]

MakeDestination = Callable[..., HttpDestination]


def encode(records: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "ndjson":
        return b"".join(orjson.dumps(r) + b"\n" for r in records)
    if fmt == "json":
        return orjson.dumps(records)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode()


def compress(data: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.compress(data, compresslevel=1)
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


def make_chunk(
    records: list[dict[str, Any]] = RECORDS,
    *,
    fmt: str = "ndjson",
    codec: str = "gzip",
    chunk_id: str = "0",
    batch_id: str = "2024-06-01",
) -> EncodedChunk:
    raw = encode(records, fmt)
    return EncodedChunk(
        batch_id=batch_id,
        dataset="churn",
        route="churn_to_crm",
        chunk_id=chunk_id,
        records=len(records),
        format=fmt,
        codec=codec,
        payload=compress(raw, codec),
        raw_size=len(raw),
        idempotency_key=idempotency_key(batch_id, "churn_to_crm", chunk_id),
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as running:
        yield running


@pytest.fixture
async def make_destination() -> AsyncIterator[MakeDestination]:
    made: list[HttpDestination] = []

    def make(url: str, **options: Any) -> HttpDestination:
        destination = HttpDestination("crm_api", HttpDestination.Options(url=url, **options))
        made.append(destination)
        return destination

    yield make
    for destination in made:
        await destination.aclose()


@pytest.fixture
def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# requests on the wire ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "content_encoding"), [("gzip", "gzip"), ("zstd", "zstd"), ("none", None)]
)
async def test_chunk_arrives_with_its_headers_and_decodes_to_its_records(
    receiver: Receiver, make_destination: MakeDestination, codec: str, content_encoding: str | None
) -> None:
    destination = make_destination(receiver.url + "/api/v2/scores")
    chunk = make_chunk(codec=codec, chunk_id="7")

    receipt = await destination.deliver(chunk)

    assert receipt == Receipt(location=receiver.url + "/api/v2/scores", status=200)
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/api/v2/scores"
    assert request.body_raw == chunk.payload  # the exact bytes, not re-encoded on the way
    assert request.records == RECORDS
    headers = request.headers
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers.get("Content-Encoding") == content_encoding
    assert headers["Idempotency-Key"] == chunk.idempotency_key
    assert headers["X-Sender-Batch"] == "2024-06-01"
    assert headers["X-Sender-Chunk"] == "7"
    assert headers["X-Sender-Route"] == "churn_to_crm"
    assert headers["X-Sender-Dataset"] == "churn"
    assert headers["X-Sender-Records"] == "3"
    assert headers["User-Agent"] == f"integration-sender/{__version__}"
    assert int(headers["Content-Length"]) == len(chunk.payload)
    assert "webhook-signature" not in headers


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("ndjson", "application/x-ndjson"),
        ("json", "application/json"),
        ("csv", "text/csv; charset=utf-8"),
    ],
)
async def test_content_type_follows_the_chunk_format(
    receiver: Receiver, make_destination: MakeDestination, fmt: str, content_type: str
) -> None:
    destination = make_destination(receiver.url + "/in", format=fmt)
    await destination.deliver(make_chunk(fmt=fmt, codec="zstd"))
    [request] = receiver.accepted
    assert request.headers["Content-Type"] == content_type
    assert request.records == RECORDS


async def test_configured_headers_are_sent_and_masked_in_repr(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    destination = make_destination(
        receiver.url, headers={"Authorization": "Bearer s3cr3t-token", "X-Team": "crm"}
    )
    await destination.deliver(make_chunk())
    [request] = receiver.requests
    assert request.headers["Authorization"] == "Bearer s3cr3t-token"
    assert request.headers["X-Team"] == "crm"
    assert "s3cr3t-token" not in repr(destination.options)


async def test_configured_headers_may_replace_user_agent_and_content_type(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    destination = make_destination(
        receiver.url,
        headers={"user-agent": "acme-scores/1", "content-type": "application/vnd.acme+x-ndjson"},
    )
    await destination.deliver(make_chunk())
    [request] = receiver.requests
    assert request.headers.getall("User-Agent") == ["acme-scores/1"]
    assert request.headers.getall("Content-Type") == ["application/vnd.acme+x-ndjson"]


async def test_receipt_does_not_carry_credentials_from_the_url(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    url = receiver.url.replace("http://", "http://svc:hunter22@") + "/in"
    receipt = await make_destination(url).deliver(make_chunk())
    assert receipt.location == receiver.url.replace("http://", "http://svc:***@") + "/in"
    assert receiver.requests[0].headers["Authorization"].startswith("Basic ")


async def test_put_method_is_used_when_configured(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    await make_destination(receiver.url + "/drop", method="PUT").deliver(make_chunk())
    assert receiver.requests[0].method == "PUT"


async def test_a_resend_carries_the_same_idempotency_key(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    destination = make_destination(receiver.url)
    receiver.fail_next(1, status=503)
    with pytest.raises(RetryableError):
        await destination.deliver(make_chunk(chunk_id="3"))
    await destination.deliver(make_chunk(chunk_id="3"))
    await destination.deliver(make_chunk(chunk_id="3"))
    keys = {r.idempotency_key for r in receiver.requests}
    assert len(receiver.requests) == 3
    assert keys == {idempotency_key("2024-06-01", "churn_to_crm", "3")}
    assert len(receiver.records()) == 6
    assert receiver.unique_records() == RECORDS


async def test_payload_larger_than_aiohttp_default_limit_is_delivered(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    records = [{"id": f"c-{i}", "blob": "x" * 200} for i in range(8000)]  # ~1.7 MB raw
    chunk = make_chunk(records, codec="none")
    assert len(chunk.payload) > 1024 * 1024
    await make_destination(receiver.url).deliver(chunk)
    assert len(receiver.records()) == 8000


def test_non_ascii_batch_ids_become_valid_header_values() -> None:
    destination = HttpDestination("x", HttpDestination.Options(url="http://127.0.0.1:1/"))
    headers = destination.headers_for(make_chunk(batch_id="lot-été"))
    assert headers["X-Sender-Batch"] == "lot-%C3%A9t%C3%A9"


# outcomes -----------------------------------------------------------------------------------


async def test_503_is_retryable(receiver: Receiver, make_destination: MakeDestination) -> None:
    receiver.fail_next(1, status=503, body=b"upstream overloaded")
    with pytest.raises(RetryableError, match="HTTP 503: upstream overloaded") as caught:
        await make_destination(receiver.url).deliver(make_chunk())
    assert caught.value.retry_after is None
    assert (caught.value.status, caught.value.push_back) == (503, True)


async def test_429_with_retry_after_seconds_says_when_to_come_back(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.fail_next(1, status=429, retry_after=7)
    with pytest.raises(RetryableError, match="HTTP 429") as caught:
        await make_destination(receiver.url).deliver(make_chunk())
    assert caught.value.retry_after == 7


async def test_retry_after_as_an_http_date_is_relative_to_now(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.fail_next(1, status=503, retry_after=formatdate(time.time() + 120, usegmt=True))
    with pytest.raises(RetryableError) as caught:
        await make_destination(receiver.url).deliver(make_chunk())
    assert caught.value.retry_after is not None
    assert 115 <= caught.value.retry_after <= 121


async def test_429_without_retry_after_uses_ratelimit_reset(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.fail_next(1, status=429, headers={"RateLimit-Reset": "12"})
    with pytest.raises(RetryableError) as caught:
        await make_destination(receiver.url).deliver(make_chunk())
    assert caught.value.retry_after == 12


@pytest.mark.parametrize("status", [400, 422])
async def test_client_errors_are_permanent_and_quote_the_body(
    receiver: Receiver, make_destination: MakeDestination, status: int
) -> None:
    receiver.fail_next(1, status=status, body=b'{"error": "field score must be a number"}')
    with pytest.raises(PermanentError, match="score must be a number") as caught:
        await make_destination(receiver.url).deliver(make_chunk())
    assert caught.value.status == status
    assert f"HTTP {status}" in caught.value.reason


async def test_rejected_records_get_a_permanent_422(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.reject_records(lambda record: record["id"] == "c-2")
    with pytest.raises(PermanentError, match="rejected records") as caught:
        await make_destination(receiver.url).deliver(make_chunk())
    assert caught.value.status == 422
    assert receiver.accepted == []


async def test_redirects_are_not_followed(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.fail_next(1, status=307, headers={"Location": "http://elsewhere.example/"})
    with pytest.raises(PermanentError, match=r"redirect to http://elsewhere\.example/"):
        await make_destination(receiver.url).deliver(make_chunk())
    assert len(receiver.requests) == 1


async def test_connection_refused_is_retryable(
    make_destination: MakeDestination, free_port: int
) -> None:
    destination = make_destination(f"http://127.0.0.1:{free_port}/scores")
    with pytest.raises(RetryableError, match="connection refused") as caught:
        await destination.deliver(make_chunk())
    assert caught.value.__cause__ is not None  # the aiohttp error is kept as the cause
    assert caught.value.status is None  # no answer
    assert caught.value.push_back is False  # a refusal says nothing about load


async def test_slow_receiver_times_out_as_retryable(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.slow(30)  # released when the receiver stops
    destination = make_destination(receiver.url, timeout="200ms")
    started = time.monotonic()
    with pytest.raises(RetryableError, match=r"timeout after 0\.2s") as caught:
        await destination.deliver(make_chunk())
    assert time.monotonic() - started < 5
    assert caught.value.status is None
    assert caught.value.push_back is True  # a receiver too slow to answer may be overloaded


async def test_dropped_connection_is_retryable(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.reset_next(1)
    destination = make_destination(receiver.url)
    with pytest.raises(RetryableError, match=r"disconnected|connection"):
        await destination.deliver(make_chunk())
    # the pool recovers: the next chunk goes through
    await destination.deliver(make_chunk(chunk_id="1"))
    assert len(receiver.accepted) == 1


async def test_at_most_concurrency_requests_are_in_flight(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.slow(0.05)
    destination = make_destination(receiver.url, concurrency=2)
    chunks = [make_chunk(chunk_id=str(i)) for i in range(6)]
    await asyncio.gather(*(destination.deliver(c) for c in chunks))
    assert len(receiver.accepted) == 6
    assert receiver.max_in_flight == 2


async def test_waiting_for_a_slot_does_not_count_against_the_timeout(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    receiver.slow(0.15)
    destination = make_destination(receiver.url, concurrency=1, timeout="400ms")
    # four requests one after another take ~0.6 s in all, each well within its own timeout
    await asyncio.gather(*(destination.deliver(make_chunk(chunk_id=str(i))) for i in range(4)))
    assert len(receiver.accepted) == 4


# lifecycle ----------------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_a_closed_destination_refuses_work(
    receiver: Receiver,
) -> None:
    async with HttpDestination("crm_api", HttpDestination.Options(url=receiver.url)) as d:
        await d.deliver(make_chunk())
    await d.aclose()
    await d.aclose()
    with pytest.raises(AdapterClosed, match="destination crm_api is closed"):
        await d.deliver(make_chunk())


async def test_closing_an_unused_destination_is_fine() -> None:
    destination = HttpDestination("x", HttpDestination.Options(url="http://127.0.0.1:1/"))
    await destination.aclose()


def test_destination_is_built_outside_a_loop_and_fits_the_port() -> None:
    destination = HttpDestination("crm_api", HttpDestination.Options(url="https://crm/api"))
    assert isinstance(destination, Destination)
    assert destination.formats == {"ndjson", "json", "csv"}
    assert destination.codecs == {"none", "gzip", "zstd"}


def test_http_is_registered_as_a_destination_type() -> None:
    assert adapter_class("destination", "http") is HttpDestination


# options -----------------------------------------------------------------------------------


def test_options_have_the_documented_defaults() -> None:
    options = HttpDestination.Options(type="http", url="https://crm.internal/api")
    assert options.method == "POST"
    assert options.format == "ndjson"
    assert options.compression == "gzip"
    assert options.concurrency == 4
    assert options.timeout_s == 30.0
    assert options.headers == {}
    assert options.signing_secret is None


def test_adaptive_concurrency_pools_up_to_max_concurrency() -> None:
    options = HttpDestination.Options(url="https://crm/", concurrency="adaptive", max_concurrency=9)
    assert HttpDestination("x", options).limit == 9


@pytest.mark.parametrize("url", ["ftp://crm.internal/", "crm.internal/api", "http:///nohost"])
def test_url_must_be_http_or_https(url: str) -> None:
    with pytest.raises(ValidationError, match="http:// or https://"):
        HttpDestination.Options(url=url)


@pytest.mark.parametrize("name", ["Idempotency-Key", "content-encoding", "X-Sender-Batch"])
def test_headers_the_sender_sets_cannot_be_configured(name: str) -> None:
    with pytest.raises(ValidationError, match="set by the sender"):
        HttpDestination.Options(url="https://crm/", headers={name: "x"})


def test_header_values_cannot_smuggle_line_breaks() -> None:
    with pytest.raises(ValidationError, match="line breaks"):
        HttpDestination.Options(url="https://crm/", headers={"X-A": "a\r\nX-Evil: 1"})


# classification and Retry-After, as pure functions ------------------------------------------

NOW = 1_700_000_000.0


def classify(status: int, body: bytes = b"", **headers: str) -> Any:
    return classify_response(status, CIMultiDict(headers), body, url="https://crm/api", now=NOW)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    assert classify(status) == Receipt(location="https://crm/api", status=status)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_timeouts_throttling_and_server_errors_are_retryable_by_default(status: int) -> None:
    outcome = classify(status)
    assert isinstance(outcome, RetryableError)
    assert outcome.reason == f"HTTP {status}"
    assert outcome.status == status
    assert outcome.push_back is (status in (429, 503))


@pytest.mark.parametrize(
    "status", [301, 304, 400, 401, 403, 404, 409, 413, 415, 422, 501, 505, 599]
)
def test_other_statuses_are_permanent(status: int) -> None:
    outcome = classify(status, b"nope")
    assert isinstance(outcome, PermanentError)
    assert outcome.status == status
    assert outcome.gone is False
    assert outcome.reason.startswith(f"HTTP {status}: nope")


def test_410_is_permanent_and_says_the_destination_is_gone() -> None:
    outcome = classify(410, b"endpoint retired")
    assert isinstance(outcome, PermanentError)
    assert (outcome.status, outcome.gone, outcome.payload) == (410, True, False)
    assert outcome.reason.startswith("HTTP 410: endpoint retired")


def test_permanent_reason_quotes_only_the_first_200_characters_of_the_body() -> None:
    outcome = classify(400, b"e" * 1000)
    assert outcome.reason == "HTTP 400: " + "e" * 200


def test_retry_after_is_read_for_503_as_well_as_429() -> None:
    assert classify(503, **{"Retry-After": "30"}).retry_after == 30
    assert classify(429, **{"Retry-After": "0"}).retry_after == 0


def test_ratelimit_reset_is_used_only_for_429() -> None:
    assert classify(429, **{"X-RateLimit-Reset": "5"}).retry_after == 5
    assert classify(503, **{"RateLimit-Reset": "5"}).retry_after is None


def test_x_ratelimit_reset_as_a_unix_time_is_made_relative() -> None:
    assert classify(429, **{"X-RateLimit-Reset": str(int(NOW) + 42)}).retry_after == 42


def test_retry_after_wins_over_ratelimit_reset() -> None:
    outcome = classify(429, **{"Retry-After": "3", "RateLimit-Reset": "60"})
    assert outcome.retry_after == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        (formatdate(NOW + 90, usegmt=True), 90.0),
        (formatdate(NOW - 90, usegmt=True), 0.0),  # in the past: now
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


# the test receiver itself ------------------------------------------------------------------


async def statuses_under_fail_ratio(seed: int) -> list[int | None]:
    async with Receiver() as receiver:
        receiver.fail_ratio(0.5, seed=seed, statuses=[500, 503])
        async with HttpDestination("x", HttpDestination.Options(url=receiver.url)) as d:
            for i in range(12):
                with contextlib.suppress(RetryableError):
                    await d.deliver(make_chunk(chunk_id=str(i)))
        return [r.status_returned for r in receiver.requests]


async def test_receiver_fail_ratio_is_reproducible_with_a_seed() -> None:
    first = await statuses_under_fail_ratio(seed=3)
    assert first == await statuses_under_fail_ratio(seed=3)
    assert {200, 500, 503} <= set(first) | {500, 503}
    assert 200 in first and (500 in first or 503 in first)


async def test_receiver_faults_apply_in_order_and_recover_clears_them(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    destination = make_destination(receiver.url)
    receiver.fail_always(500)
    receiver.fail_next(1, status=429, retry_after=2)
    for i in range(3):
        with contextlib.suppress(RetryableError):
            await destination.deliver(make_chunk(chunk_id=str(i)))
    receiver.recover()
    await destination.deliver(make_chunk(chunk_id="3"))
    assert [r.status_returned for r in receiver.requests] == [429, 500, 500, 200]


async def test_receiver_can_be_awaited_instead_of_polled(
    receiver: Receiver, make_destination: MakeDestination
) -> None:
    destination = make_destination(receiver.url)
    task = asyncio.create_task(destination.deliver(make_chunk()))
    async with asyncio.timeout(5):
        await receiver.wait_for_requests(1)
    assert receiver.requests[0].done
    await task


async def test_receiver_stop_releases_requests_held_by_slow() -> None:
    receiver = Receiver()
    await receiver.start()
    receiver.slow(60)
    destination = HttpDestination("x", HttpDestination.Options(url=receiver.url))
    task = asyncio.create_task(destination.deliver(make_chunk()))
    async with asyncio.timeout(5):
        await receiver.wait_for(lambda r: len(r.requests) == 1)
        await receiver.stop()
    await receiver.stop()  # idempotent
    with contextlib.suppress(RetryableError):
        await task
    await destination.aclose()
