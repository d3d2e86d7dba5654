"""S3 only: what the bucket-storage contract (test_bucket_storage.py) does not cover — the
AWS endpoint variable, AWS credentials, and how botocore's errors are classified — against
moto's server on loopback through aiobotocore (no SDK mocking)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from sender.errors import SourceError
from sender_adapters import _aws
from sender_adapters.s3 import S3Destination, S3Source, describe_s3_error
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

    async with S3Source() as source:
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
    source = S3Source(S3Source.Options(endpoint_url=moto_server.endpoint_url))

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
    ("code", "status", "retryable", "words"),
    [
        ("SlowDown", 503, True, "SlowDown"),
        ("InternalError", 500, True, "InternalError"),
        ("RequestTimeout", 400, True, "RequestTimeout"),
        ("AccessDenied", 403, False, "access denied"),
        ("InvalidAccessKeyId", 403, False, "credentials were refused"),
        ("NoSuchBucket", 404, False, "no such bucket"),
        ("InvalidArgument", 400, False, "InvalidArgument"),
    ],
)
def test_s3_errors_are_retryable_or_permanent(
    code: str, status: int, retryable: bool, words: str
) -> None:
    reason, is_retryable = describe_s3_error(_client_error(code, status), "s3://b/k")
    assert is_retryable is retryable
    assert words in reason
