"""What the aiobotocore adapters (``s3``, the ``sqs`` trigger and destination) share.

- Clients: ``AwsClient`` is one adapter's hold on a client made from a ``ClientSpec``
  (service, region, endpoint, profile, timeouts, retries). Adapters of one event loop that
  ask for the same spec share one client (one connection pool, one credential lookup); it is
  closed once, when the last holder lets go. Every session shares one botocore data loader,
  so the service models are read once per process rather than once per adapter (~150 ms
  each), while each client still looks its credentials up afresh (a profile, a rotated
  environment are honoured). ``region_in_url`` reads the region an SQS queue URL names.
- Errors: ``aws_error`` turns a botocore or transport error into the ``RetryableError`` or
  ``PermanentError`` it means, with the answer's HTTP status, push-back for throttling and
  read timeouts, and whether the refusal is about the payload. What every AWS service
  answers alike lives here: the HTTP status and error-code rules, refused or missing
  credentials, connection trouble and timeouts. What only one service
  says (S3's ``NoSuchBucket``, SQS's ``NonExistentQueue``) stays in its adapter and comes in
  as an ``AwsService`` and the ``missing`` and ``extra`` hooks.
"""

from __future__ import annotations

import asyncio
import functools
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from sender.errors import AdapterClosed, DeliveryError, PermanentError, RetryableError

__all__ = [
    "AWS_SDK_ERRORS",
    "AwsClient",
    "AwsService",
    "ClientSpec",
    "aws_error",
    "aws_session",
    "region_in_url",
]

# -- sessions and clients ---------------------------------------------------------------------

_REGION_IN_URL = re.compile(r"://sqs[.-]([a-z0-9-]+)\.amazonaws\.com")


def region_in_url(url: str) -> str | None:
    """The region an SQS queue URL names (``https://sqs.eu-west-1.amazonaws.com/…``), else
    None (botocore then reads ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile)."""
    match = _REGION_IN_URL.search(url)
    return match.group(1) if match else None


@functools.cache
def _data_loader() -> Any:
    # the first session's loader (it honours AWS_DATA_PATH); it caches every model it reads
    return AioSession().get_component("data_loader")


def aws_session(profile: str | None = None) -> AioSession:
    """A session for ``profile`` (None: ``AWS_PROFILE``, else the default chain) that reads
    no service model again."""
    session = AioSession(profile=profile)
    session.register_component("data_loader", _data_loader())
    return session


@dataclass(frozen=True)
class ClientSpec:
    """Which client an adapter needs; adapters that need the same one share it."""

    service: str  # "s3", "sqs"
    region: str | None = None  # None: AWS_REGION, AWS_DEFAULT_REGION, the profile
    endpoint_url: str | None = None  # None: botocore reads AWS_ENDPOINT_URL(_<SERVICE>)
    profile: str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    attempts: int = 3  # botocore's own tries of each request, the first one included
    pool: int = 10  # connections kept to the service
    s3_addressing: str | None = None  # "auto", "path", "virtual"

    def config(self) -> AioConfig:
        return AioConfig(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            max_pool_connections=self.pool,
            retries={"mode": "standard", "total_max_attempts": self.attempts},
            s3={"addressing_style": self.s3_addressing} if self.s3_addressing else None,
        )


class _Shared:
    """The clients of one event loop, with how many adapters hold each."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.clients: dict[ClientSpec, tuple[Any, Any]] = {}  # spec → (context, client)
        self.holders: dict[ClientSpec, int] = {}

    async def acquire(self, spec: ClientSpec) -> Any:
        async with self.lock:
            if spec not in self.clients:
                context = aws_session(spec.profile).create_client(
                    spec.service,
                    region_name=spec.region,
                    endpoint_url=spec.endpoint_url,
                    config=spec.config(),
                )
                self.clients[spec] = (context, await context.__aenter__())
                self.holders[spec] = 0
            self.holders[spec] += 1
            return self.clients[spec][1]

    async def release(self, spec: ClientSpec) -> None:
        async with self.lock:
            self.holders[spec] -= 1
            if self.holders[spec] > 0:
                return
            del self.holders[spec]
            context, _ = self.clients.pop(spec)
        await context.__aexit__(None, None, None)


# clients belong to the loop they were made in: one cache per loop, gone with the loop
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared] = weakref.WeakKeyDictionary()


def _shared() -> _Shared:
    loop = asyncio.get_running_loop()
    shared = _SHARED.get(loop)
    if shared is None:
        shared = _SHARED[loop] = _Shared()
    return shared


def open_clients() -> int:
    """How many clients are open in the running loop (for tests: nothing is left open)."""
    shared = _SHARED.get(asyncio.get_running_loop())
    return len(shared.clients) if shared is not None else 0


class AwsClient:
    """One adapter's hold on the client for ``spec``: taken on the first ``get()`` (inside
    the running loop), let go by ``aclose()`` (idempotent). ``get()`` raises the SDK's own
    errors (no credentials, no region), for the adapter to translate, and ``AdapterClosed``
    (naming ``what``) once closed."""

    def __init__(self, spec: ClientSpec, *, what: str) -> None:
        self.spec = spec
        self._what = what
        self._client: Any = None
        self._shared: _Shared | None = None
        self.closed = False

    async def get(self) -> Any:
        if self.closed:
            raise AdapterClosed(self._what)
        if self._client is None:
            shared = _shared()
            client = await shared.acquire(self.spec)
            if self._client is not None or self.closed:  # another get() won, or closed since
                await shared.release(self.spec)
                if self.closed:
                    raise AdapterClosed(self._what)
            else:
                self._client, self._shared = client, shared
        return self._client

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        shared, self._shared, self._client = self._shared, None, None
        if shared is not None:
            await shared.release(self.spec)


# -- errors -----------------------------------------------------------------------------------

# what an aiobotocore call can raise: the errors ``aws_error`` reads
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

    ``throttling`` are the codes that say "you are sending too much" (retried, with
    ``push_back``); ``retryable`` further codes a later attempt can get past; ``payload``
    the codes that refuse the message or object itself (too large, invalid content), so
    that splitting the chunk can help. ``access_denied`` is a template with ``{where}``,
    ``{code}`` and ``{message}``; ``permanent`` maps further codes to a reason (after
    ``"{where}: "``) that no retry can change; ``credentials_hint``, when set, says where
    credentials were looked for.
    """

    name: str  # as in "S3 error SlowDown: ..."
    throttling: frozenset[str]
    retryable: frozenset[str]
    denied: frozenset[str]
    refused_credentials: frozenset[str]
    access_denied: str
    credentials_hint: str = ""
    permanent: Mapping[str, str] = field(default_factory=dict)
    payload: frozenset[str] = frozenset()


def _answer_error(
    exc: ClientError, where: str, service: AwsService, missing: Missing | None
) -> DeliveryError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) or None
    if missing is not None and (reason := missing(where, code, status or 0, error)) is not None:
        return PermanentError(reason, status=status, payload=False)
    refused = service.refused_credentials
    if code in service.denied or (status == 403 and code not in refused):
        reason = service.access_denied.format(where=where, code=code, message=message)
        return PermanentError(reason, status=status, payload=False)
    if code in refused:
        reason = f"{where}: the AWS credentials were refused ({code}: {message})"
        return PermanentError(reason, status=status, payload=False)
    if code in service.permanent:
        return PermanentError(f"{where}: {service.permanent[code]}", status=status, payload=False)
    detail = f"{code}: {message}" if message else code or f"HTTP {status}"
    reason = f"{where}: {service.name} error {detail}"
    throttled = code in service.throttling or status in (429, 503)
    if throttled or code in service.retryable or (status or 0) >= 500 or status == 408:
        return RetryableError(reason, status=status, push_back=throttled)
    return PermanentError(reason, status=status, payload=code in service.payload)


def aws_error(
    exc: BaseException,
    where: str,
    service: AwsService,
    *,
    missing: Missing | None = None,
    extra: Extra | None = None,
) -> DeliveryError:
    """The ``RetryableError`` or ``PermanentError`` an SDK or transport error about
    ``where`` means, with a readable reason and the answer's HTTP status when there was one.

    Throttling (the service's throttling codes, 429, 503) is retryable and ``push_back``, and
    so is a read timeout; other 5xx, 408, the service's retryable codes, connection trouble
    and failing to fetch credentials are retryable; the rest is permanent, ``payload`` only
    for the service's payload codes (a 400 from S3 or SQS is rarely about the records)."""
    if isinstance(exc, ClientError):
        return _answer_error(exc, where, service, missing)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        hint = f"; looked in {service.credentials_hint}" if service.credentials_hint else ""
        return PermanentError(f"no usable AWS credentials found ({exc}){hint}", payload=False)
    if isinstance(exc, CredentialRetrievalError):
        return RetryableError(f"could not get AWS credentials: {exc}", push_back=False)
    if isinstance(exc, ReadTimeoutError | TimeoutError):
        # the service took the request and did not answer in time: a sign of load
        detail = f" ({exc})" if str(exc) else ""
        return RetryableError(f"{where}: timed out{detail}", push_back=True)
    if isinstance(exc, ConnectionError | HTTPClientError | aiohttp.ClientError | OSError):
        return RetryableError(f"{where}: connection error: {exc}", push_back=False)
    if extra is not None and (described := extra(exc)) is not None:
        reason, retryable = described
        return RetryableError(reason) if retryable else PermanentError(reason, payload=False)
    return PermanentError(f"{where}: {type(exc).__name__}: {exc}", payload=False)
