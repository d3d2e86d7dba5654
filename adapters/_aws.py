"""Helpers shared by the aiobotocore adapters (``s3``, ``sqs`` destination): how a botocore
or transport error reads, and whether a later attempt may get past it.

What every AWS service answers alike lives here: the HTTP status and error-code rules,
refused or missing credentials, connection trouble and timeouts. What only one service says
(S3's ``NoSuchBucket``, SQS's ``NonExistentQueue``) stays in its adapter and comes in as an
``AwsService`` and the ``missing`` and ``extra`` hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

__all__ = ["AWS_SDK_ERRORS", "AwsService", "describe_aws_error"]

# what an aiobotocore call can raise: the errors ``describe_aws_error`` reads
AWS_SDK_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)

# (where, code, HTTP status, the reply's "Error" mapping) → a reason when the error says the
# bucket, object or queue does not exist, else None
Missing = Callable[[str, str, int, Mapping[str, Any]], "str | None"]
# the adapter's last word on an error none of the shared rules named, else None
Extra = Callable[[BaseException], "tuple[str, bool] | None"]


@dataclass(frozen=True)
class AwsService:
    """What one AWS service's errors mean.

    ``access_denied`` is a template with ``{where}``, ``{code}`` and ``{message}``;
    ``permanent`` maps further codes to a reason (after ``"{where}: "``) that no retry can
    change; ``credentials_hint``, when set, says where credentials were looked for.
    """

    name: str  # as in "S3 error SlowDown: ..."
    retryable: frozenset[str]
    denied: frozenset[str]
    refused_credentials: frozenset[str]
    access_denied: str
    credentials_hint: str = ""
    permanent: Mapping[str, str] = field(default_factory=dict)


def describe_aws_error(
    exc: BaseException,
    where: str,
    service: AwsService,
    *,
    missing: Missing | None = None,
    extra: Extra | None = None,
) -> tuple[str, bool]:
    """A readable reason for an SDK or transport error about ``where``, and whether a later
    attempt may succeed: throttling, 5xx, 408, 429, connection trouble, timeouts and failing
    to fetch credentials are worth retrying; the rest is not."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if missing is not None and (reason := missing(where, code, status, error)) is not None:
            return reason, False
        refused = service.refused_credentials
        if code in service.denied or (status == 403 and code not in refused):
            return service.access_denied.format(where=where, code=code, message=message), False
        if code in refused:
            return f"{where}: the AWS credentials were refused ({code}: {message})", False
        if code in service.permanent:
            return f"{where}: {service.permanent[code]}", False
        retryable = code in service.retryable or status >= 500 or status in (408, 429)
        detail = f"{code}: {message}" if message else code or f"HTTP {status}"
        return f"{where}: {service.name} error {detail}", retryable
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        hint = f"; looked in {service.credentials_hint}" if service.credentials_hint else ""
        return f"no usable AWS credentials found ({exc}){hint}", False
    if isinstance(exc, CredentialRetrievalError):
        return f"could not get AWS credentials: {exc}", True
    if isinstance(exc, ConnectionError | HTTPClientError | aiohttp.ClientError | OSError):
        return f"{where}: connection error: {exc}", True
    if isinstance(exc, TimeoutError):
        return f"{where}: timed out", True
    if extra is not None and (described := extra(exc)) is not None:
        return described
    return f"{where}: {type(exc).__name__}: {exc}", False
