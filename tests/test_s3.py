"""S3 only: what the bucket-storage contract (test_bucket_storage.py) does not cover — the
AWS endpoint variable, AWS credentials, and how botocore's errors are classified — against
moto's server on loopback through aiobotocore (no SDK mocking)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from sender.errors import DeliveryError, PermanentError, RetryableError, SourceError
from sender_adapters import _aws
from sender_adapters.s3 import S3Destination, S3Source, s3_error
from tests.cloud import MotoServer, S3Bucket, bucket_name, make_chunk


@pytest.fixture
def bucket(moto_server: MotoServer, request: pytest.FixtureRequest) -> S3Bucket:
    return S3Bucket(moto_server, bucket_name(request.node.nodeid))


# -- source ---------------------------------------------------------------------------------


async def test_the_endpoint_comes_from_aws_endpoint_url_like_the_aws_tools(
    bucket: S3Bucket, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket.put("batch/part-0.json", b"{}\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.endpoint_url)

    async with S3Source("s3", S3Source.Options()) as source:
        listed = await source.list(bucket.uri("batch/"))

    assert [o.name for o in listed] == ["part-0.json"]


async def test_missing_aws_credentials_are_a_clear_source_error(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)

    async with S3Source("s3", S3Source.Options(endpoint_url=moto_server.endpoint_url)) as source:
        with pytest.raises(SourceError, match="no usable AWS credentials found"):
            await source.list("s3://some-bucket/batch/")


# -- one client per settings, shared ----------------------------------------------------------


async def test_drops_with_the_same_settings_share_one_client_closed_by_the_last(
    bucket: S3Bucket, moto_server: MotoServer
) -> None:
    options = S3Destination.Options(bucket=bucket.name, endpoint_url=moto_server.endpoint_url)
    first, second = S3Destination("a", options), S3Destination("b", options)
    source = S3Source("s3", S3Source.Options(endpoint_url=moto_server.endpoint_url))

    await first.deliver(make_chunk("0", 2))
    await second.deliver(make_chunk("1", 2))
    await source.list(bucket.uri("churn/"))
    assert _aws.open_clients() == 2  # the drops' one, and the source's (other retries)

    await first.aclose()
    await second.deliver(make_chunk("2", 2))  # still open for the other holder
    await second.aclose()
    await source.aclose()

    assert _aws.open_clients() == 0
    assert len(bucket.keys("churn/")) == 3


def test_every_session_reads_the_service_models_once() -> None:
    sessions = [_aws.aws_session(), _aws.aws_session("other-profile")]
    loaders = {id(session.get_component("data_loader")) for session in sessions}
    assert len(loaders) == 1


# -- errors are classified at the boundary ---------------------------------------------------


def _client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "kind", "push_back", "words"),
    [
        ("SlowDown", 503, RetryableError, True, "SlowDown"),
        ("RequestLimitExceeded", 400, RetryableError, True, "RequestLimitExceeded"),
        ("InternalError", 500, RetryableError, False, "InternalError"),
        ("RequestTimeout", 400, RetryableError, False, "RequestTimeout"),
        ("AccessDenied", 403, PermanentError, False, "access denied"),
        ("InvalidAccessKeyId", 403, PermanentError, False, "credentials were refused"),
        ("NoSuchBucket", 404, PermanentError, False, "no such bucket"),
        ("InvalidArgument", 400, PermanentError, False, "InvalidArgument"),
    ],
)
def test_s3_answers_become_errors_with_their_status(
    code: str, status: int, kind: type[DeliveryError], push_back: bool, words: str
) -> None:
    error = s3_error(_client_error(code, status), "s3://b/k")

    assert type(error) is kind and words in error.reason
    assert error.status == status
    if isinstance(error, RetryableError):
        assert error.push_back is push_back  # throttling says "send less", a 500 does not
    else:
        assert isinstance(error, PermanentError)
        assert error.payload is False  # about the bucket or the request, not the records


def test_only_an_object_too_large_is_about_the_payload() -> None:
    error = s3_error(_client_error("EntityTooLarge", 400), "s3://b/k")
    assert isinstance(error, PermanentError) and error.payload is True


def test_a_read_timeout_pushes_back_and_a_refused_connection_does_not() -> None:
    slow = s3_error(ReadTimeoutError(endpoint_url="http://s3"), "s3://b/k")
    refused = s3_error(EndpointConnectionError(endpoint_url="http://s3"), "s3://b/k")

    assert isinstance(slow, RetryableError) and slow.push_back is True
    assert isinstance(refused, RetryableError) and refused.push_back is False
    assert slow.status is None and refused.status is None  # no answer, no status
