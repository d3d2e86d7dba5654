"""What the object-store sources (``s3``, ``gcs``) share: the shape of ``list``, ``open`` and
``read_range`` over ``scheme://bucket/key`` URIs, version pinning, the read-ahead cache, and
the closed state. No SDK here: a subclass supplies the few calls its SDK makes (as
``sender.drop.BucketDrop`` does for the bucket destinations).

A batch URI names a folder (every object under ``key/``) or one object; "folder" objects a
console creates (names ending in ``/``) are not objects. Every object is read at the version
seen when it was listed (an ETag, a generation), so an object rewritten mid-batch is a
``SourceError`` rather than a silent mix of old and new bytes.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import ClassVar

from sender.errors import AdapterClosed, SourceError
from sender.model import ObjectInfo
from sender.ports import Resource
from sender_adapters._readahead import ReadAhead

__all__ = ["BucketSource", "split_bucket_uri"]


def split_bucket_uri(uri: str, scheme: str) -> tuple[str, str]:
    """``scheme://bucket/some/key`` → ``("bucket", "some/key")``; ``SourceError`` if
    malformed."""
    head = f"{scheme}://"
    if not uri.startswith(head):
        raise SourceError(f"{uri}: not a {head} URI")
    bucket, _, key = uri[len(head) :].partition("/")
    if not bucket:
        raise SourceError(f"{uri}: no bucket in the URI")
    return bucket, key


class BucketSource(ABC, Resource):
    """Lists and streams the objects of ``scheme://bucket/prefix/`` batches.

    A subclass sets ``scheme`` and ``kind`` (as ``AdapterClosed`` names it), calls
    ``super().__init__(read_size)``, and implements ``_list_prefix``, ``_stat``, ``_stream``,
    ``_fetch_range`` and ``_release``, raising ``SourceError`` (its SDK's errors translated).
    """

    scheme: ClassVar[str]  # "s3", "gs"
    kind: ClassVar[str]  # "s3", "gcs": the source's type

    def __init__(self, read_size: int) -> None:
        self._ahead = ReadAhead(self._fetch_range, read_size)
        self.closed = False

    def split(self, uri: str) -> tuple[str, str]:
        """``(bucket, key)`` of a URI of this store; ``SourceError`` if malformed."""
        return split_bucket_uri(uri, self.scheme)

    def _check_open(self) -> None:
        if self.closed:
            raise AdapterClosed(f"{self.kind} source")

    async def list(self, uri: str) -> list[ObjectInfo]:
        """Every object under the prefix, sorted; ``[that object]`` for an object's URI."""
        self._check_open()
        bucket, key = self.split(uri)
        # a key without a trailing slash is a folder when objects are under it, else an object
        prefix = key if not key or key.endswith("/") else key + "/"
        found = [o for o in await self._list_prefix(bucket, prefix) if not o.uri.endswith("/")]
        if not found and prefix != key:
            single = await self._stat(bucket, key, uri)
            found = [single] if single is not None else []
        if not found:
            raise SourceError(f"{uri}: no such object or prefix (nothing there in bucket {bucket})")
        return sorted(found, key=lambda o: o.uri)

    async def open(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
        """The object's bytes in pieces of ``read_size`` (the last one shorter), at the
        version it was listed with."""
        self._check_open()
        async with contextlib.aclosing(self._stream(obj)) as pieces:
            async for piece in pieces:
                yield piece

    async def read_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end). Small reads are served from a
        ``read_size`` block fetched ahead (Parquet reads column chunk by column chunk)."""
        self._check_open()
        return await self._ahead.read(obj, start, length)

    async def aclose(self) -> None:
        """Release the client; idempotent. Afterwards every verb raises ``AdapterClosed``."""
        if self.closed:
            return
        self.closed = True
        self._ahead.clear()
        await self._release()

    @abstractmethod
    async def _list_prefix(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (paginated), in any order."""

    @abstractmethod
    async def _stat(self, bucket: str, key: str, uri: str) -> ObjectInfo | None:
        """The one object at ``key``, None when there is none."""

    @abstractmethod
    def _stream(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
        """The object's bytes in pieces of about ``read_size``, pinned to ``obj.version``."""

    @abstractmethod
    async def _fetch_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        """Exactly the bytes ``start`` .. ``start + length - 1``, pinned to ``obj.version``."""

    @abstractmethod
    async def _release(self) -> None:
        """Close the SDK client (called once, by ``aclose``)."""
