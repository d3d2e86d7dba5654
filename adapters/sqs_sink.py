"""The sqs destination (aiobotocore): one SQS message per chunk, on another team's queue.

SQS message bodies are text, so a compressed payload travels base64-encoded; the message
attributes say how to get the records back::

    content-type        application/x-ndjson | application/json | text/csv; charset=utf-8
    content-encoding    gzip | zstd (absent for "none")
    transfer-encoding   base64 (absent when the body is the payload itself)
    idempotency-key     stable per (batch, route, chunk): a resend carries the same key
    batch, dataset, route, chunk, records

A FIFO queue (``queue_url`` ending in ``.fifo``) gets the idempotency key as
``MessageDeduplicationId`` (SQS drops a resend within its 5-minute window) and the batch as
``MessageGroupId`` (a batch's chunks stay in order).

SQS caps a message (body and attributes) at ``max_message_size``: 256 KiB by default, what
a queue had before 2025 (a queue's ``MaximumMessageSize`` may now be up to 1 MiB: raise the
option to match). A larger chunk is refused with ``PermanentError`` before any request; the
engine then halves the chunk until the pieces fit, so delivery degrades to smaller messages
rather than failing. Lower the route's ``chunk.bytes`` to avoid the detour.

Errors: throttling, 5xx and connection trouble are ``RetryableError`` (throttling and a
read timeout with ``push_back``); a missing queue, denied access, refused credentials and
other 4xx answers are ``PermanentError``. Both carry the answer's HTTP ``status``.
Credentials come from botocore's usual chain (environment, profile, web identity, instance or
task role). Config::

    [destinations.scores_queue]
    type = "sqs"
    queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/crm-scores"
    compression = "gzip"
    chunk = ...  # (on the route) keep chunk.bytes small: SQS messages are small
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from sender.codecs import CONTENT_TYPES
from sender.config import DestinationOptions, Size
from sender.errors import DeliveryError, PermanentError, map_errors
from sender.model import EncodedChunk, Receipt
from sender.ports import Resource
from sender_adapters._aws import (
    AWS_SDK_ERRORS,
    AwsClient,
    AwsService,
    ClientSpec,
    aws_error,
    region_in_url,
)

__all__ = ["SQS_MESSAGE_CAP", "SqsDestination", "message_request", "sqs_error"]

SQS_MESSAGE_CAP = 256 * 1024  # the classic SendMessage cap (body + attributes)
_SQS_MAX_CAP = 1024 * 1024  # what a queue's MaximumMessageSize can be raised to

# the characters SQS accepts in a message body; anything else must travel as base64
_SQS_TEXT = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")
# MessageGroupId: 1-128 characters of a-z, A-Z, 0-9 and ASCII punctuation
_GROUP_ID = re.compile(r"^[!-~]{1,128}$")

_MISSING_QUEUE = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
_SQS = AwsService(
    name="SQS",
    # SQS's "you are sending too much" (most come as HTTP 400): retried with push-back
    throttling=frozenset(
        {
            "ThrottlingException",
            "Throttling",
            "RequestThrottled",
            "KmsThrottled",
            "KMS.ThrottlingException",
            "ServiceUnavailable",
            "TooManyRequestsException",
        }
    ),
    retryable=frozenset(
        {"InternalError", "InternalFailure", "RequestTimeout", "RequestTimeoutException"}
    ),
    denied=frozenset({"AccessDenied", "AccessDeniedException", "KMS.AccessDeniedException"}),
    refused_credentials=frozenset(
        {
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "UnrecognizedClientException",
            "ExpiredToken",
            "InvalidSecurity",
            "MissingAuthenticationToken",
        }
    ),
    access_denied=(
        "{where}: access denied ({code}: {message}); the sender's role needs "
        "sqs:SendMessage on the queue (and kms:GenerateDataKey for an encrypted one)"
    ),
    # characters SQS refuses in the body: splitting the chunk isolates the records at fault
    payload=frozenset({"InvalidMessageContents"}),
)


def _missing(queue_url: str, code: str, status: int, error: Mapping[str, Any]) -> str | None:
    if code in _MISSING_QUEUE:
        return f"{queue_url}: no such queue (check queue_url and the region)"
    return None


def sqs_error(exc: BaseException, queue_url: str) -> DeliveryError:
    """The ``RetryableError`` or ``PermanentError`` an SDK or transport error sending to
    ``queue_url`` means: a readable reason, the HTTP status, and ``push_back`` for
    throttling."""
    return aws_error(exc, queue_url, _SQS, missing=_missing)


def _delivery_errors(queue_url: str) -> contextlib.AbstractContextManager[None]:
    return map_errors(AWS_SDK_ERRORS, lambda exc: sqs_error(exc, queue_url))


def _attribute(value: str | int) -> dict[str, str]:
    if isinstance(value, int):
        return {"DataType": "Number", "StringValue": str(value)}
    return {"DataType": "String", "StringValue": value}


def _attributes_size(attributes: dict[str, dict[str, str]]) -> int:
    # SQS counts each attribute's name, data type and value against the message cap
    return sum(
        len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode())
        for name, a in attributes.items()
    )


def _group_id(batch_id: str) -> str:
    if _GROUP_ID.match(batch_id):
        return batch_id
    # a batch id with spaces or non-ASCII: a stable stand-in SQS accepts
    return "batch-" + hashlib.sha256(batch_id.encode()).hexdigest()[:48]


def message_request(chunk: EncodedChunk, queue_url: str) -> tuple[dict[str, Any], int]:
    """The ``SendMessage`` parameters for ``chunk`` and its size on the wire (body plus
    attributes, as SQS counts it)."""
    body: str | None = None
    if chunk.codec == "none":
        try:
            text = chunk.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and _SQS_TEXT.match(text):
            body = text
    attributes = {
        "content-type": _attribute(
            chunk.content_type or CONTENT_TYPES.get(chunk.format, "application/octet-stream")
        ),
        "idempotency-key": _attribute(chunk.idempotency_key),
        "batch": _attribute(chunk.batch_id),
        "dataset": _attribute(chunk.dataset),
        "route": _attribute(chunk.route),
        "chunk": _attribute(chunk.chunk_id),
        "records": _attribute(chunk.records),
    }
    if chunk.codec != "none":
        attributes["content-encoding"] = _attribute(chunk.codec)
    if body is None:
        # compressed bytes, or text SQS would refuse (raw control characters in a CSV)
        body = base64.b64encode(chunk.payload).decode("ascii")
        attributes["transfer-encoding"] = _attribute("base64")
    params: dict[str, Any] = {
        "QueueUrl": queue_url,
        "MessageBody": body,
        "MessageAttributes": attributes,
    }
    if queue_url.endswith(".fifo"):
        params["MessageDeduplicationId"] = chunk.idempotency_key
        params["MessageGroupId"] = _group_id(chunk.batch_id)
    return params, len(body.encode()) + _attributes_size(attributes)


class SqsDestination(Resource):
    """Sends each chunk as one message to an SQS queue (standard or FIFO)."""

    formats = frozenset({"ndjson", "json", "csv"})
    codecs = frozenset({"none", "gzip", "zstd"})

    class Options(DestinationOptions):
        type: Literal["sqs"] = "sqs"
        queue_url: str = Field(min_length=1)
        region: str | None = None  # default: from queue_url, then the AWS environment
        endpoint_url: str | None = None  # an SQS-compatible endpoint (LocalStack, moto)
        compression: Literal["none", "gzip", "zstd"] = "gzip"
        max_message_size: Size = Field(SQS_MESSAGE_CAP, ge=1024, le=_SQS_MAX_CAP)

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self._client = AwsClient(
            ClientSpec(
                "sqs",
                region=options.region or region_in_url(options.queue_url),
                endpoint_url=options.endpoint_url,
                connect_timeout_s=min(10.0, options.timeout_s),
                read_timeout_s=options.timeout_s,
                attempts=1,  # the target's retry policy retries (with its budget)
                pool=options.max_in_flight,
            ),
            what=f"sqs destination {name}",
        )

    def __repr__(self) -> str:
        return f"SqsDestination({self.name!r}, {self.options.queue_url!r})"

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        """Send one message; ``PermanentError`` when the chunk is over the message cap."""
        queue_url = self.options.queue_url
        params, size = message_request(chunk, queue_url)
        cap = self.options.max_message_size
        if size > cap:
            raise PermanentError(
                f"chunk {chunk.chunk_id} is {size / 1024:.0f} KiB on the wire, SQS takes "
                f"{cap // 1024} KiB: lower the route's chunk.bytes",
                payload=True,  # halving the chunk makes it fit
            )
        with _delivery_errors(queue_url):
            client = await self._client.get()
            reply = await client.send_message(**params)
        return Receipt(location=f"{queue_url}#{reply['MessageId']}")

    async def aclose(self) -> None:
        """Let go of the client; idempotent. ``deliver`` afterwards raises ``AdapterClosed``."""
        await self._client.aclose()
