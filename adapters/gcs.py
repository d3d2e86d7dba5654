"""Google Cloud Storage: batches read from ``gs://bucket/prefix/``, and chunks dropped into
another team's bucket.

Credentials are Google's application-default credentials, found in this order: a key file
named by ``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, then
the metadata server (Workload Identity on GKE, the service account of a VM or Cloud Run).
With ``STORAGE_EMULATOR_HOST`` set, or an ``endpoint`` configured, the client talks to that
endpoint with anonymous credentials (an emulator); ``anonymous = false`` keeps ADC for a
private endpoint.

google-cloud-storage is a blocking client: every call runs in this adapter's own bounded
thread pool, so the event loop never stalls. Streamed reads are one download per object
whose bytes flow back to the loop through a bounded queue (the download thread waits when
the reader falls behind), resumed by the SDK if the connection drops, pinned to the
object's generation, and checksummed (crc32c) at the end.

google's errors are translated at this boundary: a source raises ``SourceError``, a
destination ``RetryableError`` (429, 503 and read timeouts with ``push_back``, other 5xx,
connection trouble) or ``PermanentError`` (access denied, no such bucket, missing
credentials), both with the answer's HTTP ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY
from pydantic import Field

from sender.config import Duration, SourceOptions
from sender.drop import BucketDrop, DropOptions
from sender.errors import (
    AdapterClosed,
    DeliveryError,
    PermanentError,
    RetryableError,
    SourceError,
    map_errors,
)
from sender.model import ObjectInfo
from sender_adapters._bucket_source import BucketSource, split_bucket_uri
from sender_adapters._pipe import DownloadPipe, PipeCancelled

__all__ = ["GcsDestination", "GcsSource", "gcs_error", "split_gs_uri"]

T = TypeVar("T")

_CREDENTIALS_HINT = (
    "application-default credentials: GOOGLE_APPLICATION_CREDENTIALS (a key file), "
    "'gcloud auth application-default login', or Workload Identity / the metadata server"
)


def split_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/some/name`` → ``("bucket", "some/name")``; ``SourceError`` if malformed."""
    return split_bucket_uri(uri, "gs")


def gcs_error(exc: BaseException, where: str) -> DeliveryError:
    """The ``RetryableError`` or ``PermanentError`` an SDK error about ``where``
    (``gs://bucket/name``) means: a readable reason, the HTTP status, and ``push_back`` for
    429, 503 and read timeouts."""
    if isinstance(exc, api_exceptions.RetryError):
        cause = exc.cause
        if cause is None:
            return RetryableError(f"{exc} (gave up retrying)")
        last = gcs_error(cause, where)
        return RetryableError(
            f"{last.reason} (gave up retrying)",
            status=last.status,
            push_back=isinstance(last, RetryableError) and last.push_back,
        )
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return _answer_error(exc, where)
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        reason = f"no Google credentials found ({exc}); looked for {_CREDENTIALS_HINT}"
        return PermanentError(reason, payload=False)
    if isinstance(exc, auth_exceptions.RefreshError | auth_exceptions.TransportError):
        return RetryableError(f"could not get Google credentials: {exc}")
    if isinstance(exc, storage_exceptions.DataCorruption):
        return RetryableError(f"{where}: download corrupted in transit (checksum mismatch)")
    if isinstance(exc, requests.ReadTimeout | TimeoutError):
        # GCS took the request and did not answer in time: a sign of load
        detail = f" ({exc})" if str(exc) else ""
        return RetryableError(f"{where}: timed out{detail}", push_back=True)
    if isinstance(exc, requests.RequestException | ConnectionError | OSError):
        return RetryableError(f"{where}: connection error: {exc}", push_back=False)
    if isinstance(exc, storage_exceptions.InvalidResponse):
        response = exc.response
        status = response.status_code if isinstance(response, requests.Response) else None
        return RetryableError(f"{where}: unexpected answer from GCS: {exc}", status=status)
    return PermanentError(f"{where}: {type(exc).__name__}: {exc}", payload=False)


def _answer_error(exc: api_exceptions.GoogleAPICallError, where: str) -> DeliveryError:
    status = int(exc.code or 0) or None
    message = exc.message or str(exc)
    if status == 404:
        return PermanentError(f"{where}: not found ({message})", status=status)
    if status in (401, 403):
        reason = (
            f"{where}: access denied (check the bucket's IAM and the service account the "
            f"sender runs as; credentials come from {_CREDENTIALS_HINT})"
        )
        return PermanentError(reason, status=status)
    if status == 412:
        return PermanentError(f"{where}: the object changed since it was listed", status=status)
    reason = f"{where}: GCS error {status}: {message}"
    if (status or 0) >= 500 or status in (408, 429):
        return RetryableError(reason, status=status)  # push_back follows 429 and 503
    # a 400 is about the request (metadata, names), not the records; a 413 is the object
    return PermanentError(reason, status=status, payload=status == 413)


_SDK_ERRORS = (
    api_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    storage_exceptions.InvalidResponse,
    storage_exceptions.DataCorruption,
    requests.RequestException,
    OSError,
    TimeoutError,
)


def _source_errors(where: str) -> contextlib.AbstractContextManager[None]:
    return map_errors(_SDK_ERRORS, lambda exc: gcs_error(exc, where), to="source")


def _delivery_errors(where: str) -> contextlib.AbstractContextManager[None]:
    return map_errors(_SDK_ERRORS, lambda exc: gcs_error(exc, where))


class _Client:
    """A google-cloud-storage client used only from its own bounded thread pool; made on
    first use in that pool (finding credentials may ask the metadata server)."""

    def __init__(
        self,
        *,
        project: str | None,
        endpoint: str | None,
        anonymous: bool | None,
        workers: int,
        what: str,
    ) -> None:
        self._what = what  # as AdapterClosed names it
        self._project = project
        self._endpoint = endpoint
        self._anonymous = anonymous
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sender-gcs")
        self._client: storage.Client | None = None
        self._make_lock = threading.Lock()
        self.closed = False

    def _make(self) -> storage.Client:
        with self._make_lock:
            if self._client is None:
                kwargs: dict[str, Any] = {}
                if self._endpoint:
                    kwargs["client_options"] = {"api_endpoint": self._endpoint}
                anonymous = self._anonymous
                if anonymous is None:
                    anonymous = bool(self._endpoint or os.environ.get("STORAGE_EMULATOR_HOST"))
                if anonymous:
                    kwargs["credentials"] = AnonymousCredentials()
                # reading and writing objects needs no project: None rather than the client
                # failing when the credentials do not name one
                self._client = storage.Client(project=self._project, **kwargs)
            return self._client

    async def run(self, call: Callable[[storage.Client], T]) -> T:
        """``call(client)`` in the pool."""
        if self.closed:
            raise AdapterClosed(self._what)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: call(self._make()))

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """``job()`` in the pool; it calls ``client()`` itself (a long download)."""
        if self.closed:
            raise AdapterClosed(self._what)
        return asyncio.get_running_loop().run_in_executor(self._executor, job)

    def client(self) -> storage.Client:
        """The client, made on first use: call it in the pool only."""
        return self._make()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        client, self._client = self._client, None

        def shutdown() -> None:
            self._executor.shutdown(wait=True)
            if client is not None:
                client.close()

        await asyncio.to_thread(shutdown)


class GcsSource(BucketSource):
    """Lists and streams the objects of ``gs://bucket/prefix/`` batches.

    Listing is paginated; reads are streamed (see the module docstring) and ranged reads
    serve Parquet. Every object is read at the generation seen when listing, so an object
    rewritten mid-batch is an error rather than a silent mix.
    """

    scheme, kind = "gs", "gcs"
    schemes = frozenset({"gs"})

    class Options(SourceOptions):
        """``[sources.<name>]`` with ``type = "gcs"``."""

        type: Literal["gcs"] = "gcs"
        project: str | None = None
        endpoint: str | None = None  # an emulator or private endpoint
        anonymous: bool | None = None  # None: anonymous with an emulator, else ADC
        workers: int = Field(4, ge=1, le=64)  # threads for the blocking client
        timeout_s: Duration = Field(60.0, alias="timeout", gt=0)
        retry_budget_s: Duration = Field(120.0, alias="retry_budget", gt=0)

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        super().__init__(self.options.read_size)
        self._client = _Client(
            project=self.options.project,
            endpoint=self.options.endpoint,
            anonymous=self.options.anonymous,
            workers=self.options.workers,
            what="gcs source",
        )
        self._retry = DEFAULT_RETRY.with_timeout(self.options.retry_budget_s)
        self._pipes: set[DownloadPipe] = set()

    async def _list_prefix(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        timeout, retry = self.options.timeout_s, self._retry

        def listing(client: storage.Client) -> list[ObjectInfo]:
            fields = "items(name,size,generation),nextPageToken"
            blobs = client.list_blobs(
                bucket, prefix=prefix, fields=fields, timeout=timeout, retry=retry
            )
            return [ObjectInfo(f"gs://{bucket}/{b.name}", b.size or 0, _gen(b)) for b in blobs]

        try:
            return await self._client.run(listing)
        except api_exceptions.NotFound as exc:
            raise SourceError(f"no such bucket: {bucket} (gs://{bucket}/{prefix})") from exc
        except _SDK_ERRORS as exc:
            raise SourceError(gcs_error(exc, f"gs://{bucket}/{prefix}").reason) from exc

    async def _stat(self, bucket: str, key: str, uri: str) -> ObjectInfo | None:
        timeout, retry = self.options.timeout_s, self._retry

        def stat(client: storage.Client) -> ObjectInfo | None:
            blob = client.bucket(bucket).get_blob(key, timeout=timeout, retry=retry)
            return ObjectInfo(uri, blob.size or 0, _gen(blob)) if blob is not None else None

        with _source_errors(uri):
            return await self._client.run(stat)

    async def _stream(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
        bucket, name = self.split(obj.uri)
        pipe = DownloadPipe(asyncio.get_running_loop(), self.options.read_size)
        timeout, retry = self.options.timeout_s, self._retry

        def download() -> None:
            try:  # whatever happens, the reader gets its end mark
                blob = self._client.client().bucket(bucket).blob(name, generation=_generation(obj))
                blob.download_to_file(pipe, raw_download=True, timeout=timeout, retry=retry)
            finally:
                pipe.finish()

        done = self._client.submit(download)
        self._pipes.add(pipe)
        try:
            while (piece := await pipe.get()) is not None:
                yield piece
            try:
                await done
            except api_exceptions.NotFound as exc:
                raise SourceError(
                    f"{obj.uri}: no such object (deleted or rewritten since it was listed)"
                ) from exc
            except _SDK_ERRORS as exc:
                raise SourceError(gcs_error(exc, obj.uri).reason) from exc
        finally:
            pipe.cancel()
            self._pipes.discard(pipe)
            with contextlib.suppress(PipeCancelled, *_SDK_ERRORS):
                await done

    async def _fetch_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        end = start + length - 1
        bucket, name = self.split(obj.uri)
        timeout, retry = self.options.timeout_s, self._retry

        def ranged(client: storage.Client) -> bytes:
            blob = client.bucket(bucket).blob(name, generation=_generation(obj))
            data: bytes = blob.download_as_bytes(
                start=start, end=end, raw_download=True, checksum=None, timeout=timeout, retry=retry
            )
            return data

        with _source_errors(obj.uri):
            return await self._client.run(ranged)

    async def _release(self) -> None:
        """Stop running downloads and the thread pool."""
        for pipe in list(self._pipes):
            pipe.cancel()
        await self._client.aclose()


def _gen(blob: storage.Blob) -> str:
    return str(blob.generation) if blob.generation is not None else ""


def _generation(obj: ObjectInfo) -> int | None:
    return int(obj.version) if obj.version.isdigit() else None


class GcsDestination(BucketDrop):
    """Drops each chunk as one object into ``bucket`` under the ``prefix`` template, then a
    ``_MANIFEST.json`` and ``_SUCCESS`` once the route's chunks are all there.

    Object names are deterministic, so a retry or a replay overwrites. Each object has its
    content type (by format), content encoding (by codec) and metadata (idempotency key,
    batch, route, chunk, records, sha256). As a dead-letter store it also writes a
    ``.meta.json`` with the error next to each chunk. The SDK does not retry uploads here:
    the target's retry policy (attempts, budget, circuit) decides.
    """

    class Options(DropOptions):
        """``[destinations.<name>]`` with ``type = "gcs"``.

        ``prefix`` takes ``{dataset}``, ``{batch_id}``, ``{route}`` and ``{chunk}``; it must
        contain ``{batch_id}``, and needs ``{route}`` when several routes share the drop.
        """

        type: Literal["gcs"] = "gcs"
        bucket: str = Field(min_length=3, max_length=222)
        project: str | None = None
        endpoint: str | None = None
        anonymous: bool | None = None

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options, "gs")
        self.options: GcsDestination.Options = options
        limit = options.max_in_flight
        self._client = _Client(
            project=options.project,
            endpoint=options.endpoint,
            anonymous=options.anonymous,
            workers=limit,
            what=f"gcs destination {name}",
        )

    async def put_object(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        content_encoding: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        bucket, timeout = self.options.bucket, self.options.timeout_s

        def upload(client: storage.Client) -> None:
            blob = client.bucket(bucket).blob(key)
            blob.content_encoding = content_encoding
            blob.metadata = dict(metadata) if metadata else None
            blob.upload_from_string(data, content_type=content_type, timeout=timeout, retry=None)

        with _delivery_errors(f"{self.bucket_uri}/{key}"):
            await self._client.run(upload)

    async def object_sizes(self, prefix: str) -> dict[str, int]:
        bucket, timeout = self.options.bucket, self.options.timeout_s

        def sizes(client: storage.Client) -> dict[str, int]:
            blobs = client.list_blobs(
                bucket,
                prefix=prefix,
                fields="items(name,size),nextPageToken",
                timeout=timeout,
                retry=None,  # the target's retry policy decides
            )
            return {blob.name: blob.size or 0 for blob in blobs}

        with _delivery_errors(f"{self.bucket_uri}/{prefix}"):
            return await self._client.run(sizes)

    async def _release(self) -> None:
        await self._client.aclose()
