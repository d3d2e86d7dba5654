"""Amazon S3 (and S3-compatible stores): batches read from ``s3://bucket/prefix/``, and chunks
dropped into another team's bucket.

Credentials come from the standard AWS chain, exactly as the AWS CLI finds them: the
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``), a
``profile`` (or ``AWS_PROFILE``) in ``~/.aws/config``, web identity (IRSA on EKS:
``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``), the ECS/EKS Pod Identity container
endpoint, then the EC2 instance profile. ``endpoint_url`` points at an S3-compatible store or
an emulator; without it ``AWS_ENDPOINT_URL_S3`` and ``AWS_ENDPOINT_URL`` are honoured, as the
AWS tools do.

aiobotocore is imported here only (``pip install 'integration-sender[s3]'``); its errors are
translated at this boundary: a source raises ``SourceError``, a destination
``RetryableError`` (throttling and read timeouts with ``push_back``, other 5xx, connection
trouble) or ``PermanentError`` (access denied, no such bucket, refused credentials), both
with the answer's HTTP ``status``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound
from pydantic import Field

from sender.config import Duration, SourceOptions
from sender.drop import BucketDrop, DropOptions
from sender.errors import DeliveryError, SourceError, map_errors
from sender.model import ObjectInfo
from sender_adapters._aws import (
    AWS_SDK_ERRORS,
    AwsClient,
    AwsService,
    ClientSpec,
    aws_error,
)
from sender_adapters._bucket_source import BucketSource, split_bucket_uri

__all__ = ["S3Destination", "S3Source", "s3_error", "split_s3_uri"]

_CREDENTIALS_HINT = (
    "the standard AWS chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE), or an instance role"
)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")``; ``SourceError`` if malformed."""
    return split_bucket_uri(uri, "s3")


_S3 = AwsService(
    name="S3",
    # S3's "you are sending too much": retried with push-back (SlowDown comes as a 503)
    throttling=frozenset(
        {
            "BandwidthLimitExceeded",
            "RequestLimitExceeded",
            "RequestThrottled",
            "ServiceUnavailable",
            "SlowDown",
            "Throttling",
            "ThrottlingException",
            "TooManyRequestsException",
        }
    ),
    # further codes a later attempt can get past; everything else a 4xx says is permanent
    retryable=frozenset(
        {"InternalError", "OperationAborted", "RequestTimeTooSkewed", "RequestTimeout"}
    ),
    denied=frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}),
    refused_credentials=frozenset(
        {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
    ),
    access_denied=(
        "{where}: access denied (check the bucket policy and the role the sender runs as; "
        "credentials come from " + _CREDENTIALS_HINT + ")"
    ),
    credentials_hint=_CREDENTIALS_HINT,
    permanent={
        "PreconditionFailed": "the object changed since it was listed",
        "412": "the object changed since it was listed",
    },
    payload=frozenset({"EntityTooLarge"}),  # an object over S3's size cap: a smaller one fits
)


def _missing(where: str, code: str, status: int, error: Mapping[str, Any]) -> str | None:
    if code == "NoSuchBucket":
        bucket = error.get("BucketName") or where.removeprefix("s3://").split("/", 1)[0]
        return f"no such bucket: {bucket}"
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return f"{where}: no such object"
    return None


def _extra(where: str, exc: BaseException) -> tuple[str, bool] | None:
    if isinstance(exc, ProfileNotFound):
        return f"AWS profile not found: {exc}", False
    if isinstance(exc, BotoCoreError):
        return f"{where}: {exc}", False
    return None


def s3_error(exc: BaseException, where: str) -> DeliveryError:
    """The ``RetryableError`` or ``PermanentError`` an SDK error about ``where``
    (``s3://bucket/key``) means: a readable reason, the HTTP status, and ``push_back`` for
    throttling (``SlowDown``, 503)."""
    return aws_error(exc, where, _S3, missing=_missing, extra=lambda error: _extra(where, error))


def _source_errors(where: str) -> contextlib.AbstractContextManager[None]:
    return map_errors(AWS_SDK_ERRORS, lambda exc: s3_error(exc, where), to="source")


def _delivery_errors(where: str) -> contextlib.AbstractContextManager[None]:
    return map_errors(AWS_SDK_ERRORS, lambda exc: s3_error(exc, where))


async def _read_piece(body: Any, size: int) -> bytes:
    # aiohttp hands over whatever has arrived (often 64 KiB or less): gather a whole piece
    piece = await body.read(size)
    if not piece or len(piece) == size:
        return bytes(piece)
    buffer = bytearray(piece)
    while len(buffer) < size:
        more = await body.read(size - len(buffer))
        if not more:
            break
        buffer += more
    return bytes(buffer)


class S3Source(BucketSource):
    """Lists and streams the objects of ``s3://bucket/prefix/`` batches.

    Listing is paginated (any number of objects); reads are streamed in ``read_size`` pieces
    and pinned to the ETag seen when listing, so an object rewritten mid-batch is an error
    rather than a silent mix. botocore retries throttling and transient errors itself.
    """

    scheme = kind = "s3"
    schemes = frozenset({"s3"})

    class Options(SourceOptions):
        """``[sources.<name>]`` with ``type = "s3"``."""

        type: Literal["s3"] = "s3"
        endpoint_url: str | None = None  # S3-compatible stores, emulators
        region: str | None = None
        profile: str | None = None
        addressing_style: Literal["auto", "path", "virtual"] = "auto"
        timeout_s: Duration = Field(60.0, alias="timeout", gt=0)
        attempts: int = Field(5, ge=1)  # botocore's own retries of each request

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        super().__init__(self.options.read_size)
        self._client = AwsClient(
            ClientSpec(
                "s3",
                region=self.options.region,
                endpoint_url=self.options.endpoint_url,
                profile=self.options.profile,
                connect_timeout_s=min(10.0, self.options.timeout_s),
                read_timeout_s=self.options.timeout_s,
                attempts=self.options.attempts,
                s3_addressing=self.options.addressing_style,
            ),
            what="s3 source",
        )

    async def _list_prefix(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        where = f"s3://{bucket}/{prefix}"
        client = await self._client_for(where)
        found: list[ObjectInfo] = []
        with _source_errors(where):
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    uri, etag = f"s3://{bucket}/{item['Key']}", str(item.get("ETag", ""))
                    found.append(ObjectInfo(uri, int(item["Size"]), etag.strip('"')))
        return found

    async def _stat(self, bucket: str, key: str, uri: str) -> ObjectInfo | None:
        client = await self._client_for(uri)
        try:
            head: dict[str, Any] = await client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return None
            raise SourceError(s3_error(exc, uri).reason) from exc
        except AWS_SDK_ERRORS as exc:
            raise SourceError(s3_error(exc, uri).reason) from exc
        return ObjectInfo(uri, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))

    async def _stream(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
        bucket, key = self.split(obj.uri)
        client = await self._client_for(obj.uri)
        size = self.options.read_size
        with _source_errors(obj.uri):
            response = await client.get_object(Bucket=bucket, Key=key, **_if_match(obj))
        body = response["Body"]
        try:
            while True:
                with _source_errors(obj.uri):
                    piece = await _read_piece(body, size)
                if not piece:
                    return
                yield piece
        finally:
            body.close()

    async def _fetch_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        end = start + length - 1
        bucket, key = self.split(obj.uri)
        client = await self._client_for(obj.uri)
        with _source_errors(obj.uri):
            response = await client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={start}-{end}", **_if_match(obj)
            )
            async with response["Body"] as body:
                return bytes(await body.read())

    async def _client_for(self, where: str) -> Any:
        with _source_errors(where):
            return await self._client.get()

    async def _release(self) -> None:
        await self._client.aclose()


def _if_match(obj: ObjectInfo) -> dict[str, str]:
    return {"IfMatch": f'"{obj.version}"'} if obj.version else {}


class S3Destination(BucketDrop):
    """Drops each chunk as one object into ``bucket`` under the ``prefix`` template, then a
    ``_MANIFEST.json`` and ``_SUCCESS`` once the route's chunks are all there.

    Object names are deterministic, so a retry or a replay overwrites. Each object has its
    ``Content-Type`` (by format), ``Content-Encoding`` (by codec) and metadata (idempotency
    key, batch, route, chunk, records, sha256). As a dead-letter store it also writes a
    ``.meta.json`` with the error next to each chunk. botocore does not retry here: the
    target's retry policy (attempts, budget, circuit) decides.
    """

    class Options(DropOptions):
        """``[destinations.<name>]`` with ``type = "s3"``.

        ``prefix`` takes ``{dataset}``, ``{batch_id}``, ``{route}`` and ``{chunk}``; it must
        contain ``{batch_id}``, and needs ``{route}`` when several routes share the drop.
        ``acl = "bucket-owner-full-control"`` is what a cross-account drop usually needs.
        """

        type: Literal["s3"] = "s3"
        bucket: str = Field(min_length=3, max_length=63)
        endpoint_url: str | None = None
        region: str | None = None
        profile: str | None = None
        addressing_style: Literal["auto", "path", "virtual"] = "auto"
        acl: str | None = None
        server_side_encryption: Literal["AES256", "aws:kms", "aws:kms:dsse"] | None = None
        kms_key_id: str | None = None

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options, "s3")
        self.options: S3Destination.Options = options
        self._client = AwsClient(
            ClientSpec(
                "s3",
                region=options.region,
                endpoint_url=options.endpoint_url,
                profile=options.profile,
                connect_timeout_s=min(10.0, options.timeout_s),
                read_timeout_s=options.timeout_s,
                attempts=1,  # the target's retry policy retries (with its budget)
                pool=options.max_in_flight,
                s3_addressing=options.addressing_style,
            ),
            what=f"s3 destination {name}",
        )
        extra: dict[str, str] = {}
        if options.acl:
            extra["ACL"] = options.acl
        if options.server_side_encryption:
            extra["ServerSideEncryption"] = options.server_side_encryption
        if options.kms_key_id:
            extra["SSEKMSKeyId"] = options.kms_key_id
        self._extra = extra

    async def put_object(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        content_encoding: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        where = f"{self.bucket_uri}/{key}"
        with _delivery_errors(where):
            client = await self._client.get()
            kwargs: dict[str, Any] = dict(self._extra)
            if content_encoding:
                kwargs["ContentEncoding"] = content_encoding
            await client.put_object(
                Bucket=self.options.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=dict(metadata or {}),
                **kwargs,
            )

    async def object_sizes(self, prefix: str) -> dict[str, int]:
        sizes: dict[str, int] = {}
        with _delivery_errors(f"{self.bucket_uri}/{prefix}"):
            client = await self._client.get()
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.options.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    sizes[item["Key"]] = int(item["Size"])
        return sizes

    async def _release(self) -> None:
        await self._client.aclose()
