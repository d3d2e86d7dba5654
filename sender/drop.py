"""Bucket drops: how chunks are named and laid out in another team's bucket, and the
manifest that tells that team's pipeline a batch is complete.

A drop writes one object per chunk under a prefix template, then, once every chunk of the
route is there, a ``_MANIFEST.json`` and after it an empty ``_SUCCESS`` marker (the marker
Spark and Airflow sensors already wait for)::

    churn/b-2026-11-24/to_crm/chunk-000000.ndjson.gz
    churn/b-2026-11-24/to_crm/chunk-000001.ndjson.gz
    churn/b-2026-11-24/to_crm/_MANIFEST.json
    churn/b-2026-11-24/to_crm/_SUCCESS

Names are deterministic (the chunk id, the format, the codec), so a retry or a replay
overwrites the object it wrote before instead of adding a duplicate. ``BucketDrop`` holds the
flow that the S3 and GCS destinations share; they only supply ``put_object`` and
``object_sizes``, and translate their SDK's errors. No SDK is imported here.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from pydantic import Field, field_validator

from . import __version__
from .codecs import CODEC_EXTENSIONS, CONTENT_TYPES, EXTENSIONS
from .config import DestinationOptions
from .errors import AdapterClosed, PermanentError
from .log import get_logger
from .model import EncodedChunk, Receipt
from .ports import BatchSummary, ChunkRecord, Resource

__all__ = [
    "CONTENT_ENCODINGS",
    "MANIFEST_NAME",
    "PLACEHOLDERS",
    "SUCCESS_NAME",
    "BucketDrop",
    "DropLayout",
    "DropOptions",
    "build_manifest",
    "check_prefix",
    "chunk_meta",
    "chunk_metadata",
    "chunk_object_name",
    "object_name",
    "sidecar",
]

log = get_logger("sender.drop")

MANIFEST_NAME = "_MANIFEST.json"
SUCCESS_NAME = "_SUCCESS"
PLACEHOLDERS = frozenset({"dataset", "batch_id", "route", "chunk"})
CONTENT_ENCODINGS: Mapping[str, str | None] = {"none": None, "gzip": "gzip", "zstd": "zstd"}


def _stem(chunk_id: str, kind: str) -> str:
    head, _, tail = chunk_id.partition(".")
    number = f"{int(head):06d}" if head.isdigit() else head
    return f"{'chunk' if kind == 'data' else kind}-{number}{'.' + tail if tail else ''}"


def object_name(chunk_id: str, *, kind: str, format: str, codec: str) -> str:
    """``chunk-000007.ndjson.gz``; sub-chunks ``chunk-000007.1.0…``; bad records
    ``rejects-r0.ndjson``. Zero-padded so that a listing is in chunk order."""
    return _stem(chunk_id, kind) + EXTENSIONS[format] + CODEC_EXTENSIONS[codec]


def chunk_object_name(chunk: EncodedChunk) -> str:
    """The file or object name of ``chunk`` (see ``object_name``)."""
    return object_name(chunk.chunk_id, kind=chunk.kind, format=chunk.format, codec=chunk.codec)


def _chunk_field(chunk_id: str) -> str:
    head, _, tail = chunk_id.partition(".")
    return (f"{int(head):06d}" if head.isdigit() else head) + ("." + tail if tail else "")


def check_prefix(template: str) -> str:
    """Validate a prefix template (for an ``Options`` validator): only the known placeholders,
    relative, and ``{batch_id}`` in the batch's part, so batches never overwrite each other.
    Returns the template with a trailing ``/`` added when it has none."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (known: {known})")
    if template.startswith("/"):
        raise ValueError("must be relative to the bucket (no leading '/')")
    if "{batch_id}" not in DropLayout(template).batch_template:
        raise ValueError(
            "must contain {batch_id} (before any {chunk}): chunk names repeat in every batch, "
            "so without it one batch would overwrite another"
        )
    return template if not template or template.endswith("/") else template + "/"


class DropLayout:
    """Where a drop's objects go: ``template`` rendered per chunk, and the batch's own prefix
    (the template up to the folder holding ``{chunk}``, if any) for the manifest."""

    def __init__(self, template: str) -> None:
        self.template = template
        before, found, _ = template.partition("{chunk}")
        self.batch_template = before[: before.rfind("/") + 1] if found else template

    def prefix(self, *, dataset: str, batch_id: str, route: str, chunk_id: str) -> str:
        """The rendered prefix a chunk's object is written under."""
        return self.template.format(
            dataset=dataset, batch_id=batch_id, route=route, chunk=_chunk_field(chunk_id)
        )

    def batch_prefix(self, *, dataset: str, batch_id: str, route: str) -> str:
        """The folder where ``_MANIFEST.json`` and ``_SUCCESS`` go."""
        return self.batch_template.format(dataset=dataset, batch_id=batch_id, route=route)

    def key(self, chunk: EncodedChunk) -> str:
        """The full object key of ``chunk``."""
        prefix = self.prefix(
            dataset=chunk.dataset,
            batch_id=chunk.batch_id,
            route=chunk.route,
            chunk_id=chunk.chunk_id,
        )
        return prefix + chunk_object_name(chunk)


def _ascii(value: str) -> str:
    # object metadata travels in HTTP headers (x-amz-meta-*, x-goog-meta-*): US-ASCII only
    return value if value.isascii() and value.isprintable() else quote(value, safe=" ")


def chunk_metadata(chunk: EncodedChunk) -> dict[str, str]:
    """The object metadata of a chunk: enough to trace it back without the manifest."""
    return {
        "idempotency-key": chunk.idempotency_key,
        "sender-batch": _ascii(chunk.batch_id),
        "sender-dataset": _ascii(chunk.dataset),
        "sender-route": _ascii(chunk.route),
        "sender-chunk": chunk.chunk_id,
        "sender-kind": chunk.kind,
        "sender-records": str(chunk.records),
        "sha256": chunk.checksum,
    }


def sidecar(chunk: EncodedChunk, *, now: datetime | None = None) -> bytes | None:
    """The ``.meta.json`` written next to a chunk that carries a ``context`` (why it is in a
    dead-letter store: error, attempts, targets tried); None for an ordinary delivery."""
    if not chunk.context:
        return None
    return chunk_meta(chunk, now=now)


def chunk_meta(chunk: EncodedChunk, *, now: datetime | None = None) -> bytes:
    """A chunk's ``.meta.json``: what it is, its key and checksum, and its ``context``."""
    meta: dict[str, Any] = {
        "batch_id": chunk.batch_id,
        "dataset": chunk.dataset,
        "route": chunk.route,
        "chunk": chunk.chunk_id,
        "kind": chunk.kind,
        "records": chunk.records,
        "format": chunk.format,
        "codec": chunk.codec,
        "idempotency_key": chunk.idempotency_key,
        "sha256": chunk.checksum,
        "written_at": (now or datetime.now(UTC)).isoformat(),
        **chunk.context,
    }
    return orjson.dumps(meta, option=orjson.OPT_INDENT_2)


def build_manifest(
    summary: BatchSummary,
    entries: list[dict[str, Any]],
    *,
    format: str,
    codec: str,
    now: datetime | None = None,
) -> bytes:
    """``_MANIFEST.json``: the batch, and for every chunk its object name (relative to the
    manifest), records, bytes, sha256 and idempotency key, in chunk order."""
    manifest = {
        "batch_id": summary.batch_id,
        "dataset": summary.dataset,
        "route": summary.route,
        "format": format,
        "compression": codec,
        "records": sum(entry["records"] for entry in entries),
        "bytes": sum(entry["bytes"] for entry in entries),
        "chunks": entries,
        "written_at": (now or datetime.now(UTC)).isoformat(),
        "writer": f"integration-sender/{__version__}",
    }
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2)


class DropOptions(DestinationOptions):
    """Keys every bucket drop has (S3, GCS): the bucket, the object name template, and
    whether a ``_MANIFEST.json`` and ``_SUCCESS`` close each route's batch.

    ``prefix`` takes ``{dataset}``, ``{batch_id}``, ``{route}`` and ``{chunk}``; it must
    contain ``{batch_id}``, and needs ``{route}`` when several routes share the drop.
    """

    bucket: str = Field(min_length=3)
    prefix: str = "{dataset}/{batch_id}/{route}/"
    manifest: bool = True

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        return check_prefix(value)


class BucketDrop(ABC, Resource):
    """The bucket-drop flow shared by object-store destinations.

    Subclasses call ``super().__init__(name, options, scheme)`` and implement ``put_object``,
    ``object_sizes`` and ``_release``, raising ``RetryableError`` or ``PermanentError`` (their
    SDK's errors translated). ``aclose`` is here: idempotent, and once closed ``deliver`` and
    ``finish_batch`` raise ``AdapterClosed``.
    """

    formats = frozenset(CONTENT_TYPES)
    codecs = frozenset(CONTENT_ENCODINGS)

    def __init__(self, name: str, options: DropOptions, scheme: str) -> None:
        self.name = name
        self.options = options
        self.layout = DropLayout(options.prefix)
        self.format = options.format
        self.codec = options.compression
        self.manifest = options.manifest
        self.bucket_uri = f"{scheme}://{options.bucket}"
        self.closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, bucket={self.options.bucket!r})"

    async def aclose(self) -> None:
        """Release the client; idempotent. Afterwards every verb raises ``AdapterClosed``."""
        if self.closed:
            return
        self.closed = True
        await self._release()

    def _check_open(self) -> None:
        if self.closed:
            raise AdapterClosed(f"{self.options.type} destination {self.name}")

    @abstractmethod
    async def _release(self) -> None:
        """Close the SDK client (called once, by ``aclose``)."""

    @abstractmethod
    async def put_object(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        content_encoding: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Write (or overwrite) one object."""

    @abstractmethod
    async def object_sizes(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix``: key → size in bytes."""

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        """Write ``chunk`` as one object (and its ``.meta.json`` when it carries a dead-letter
        context). The name is deterministic: a resend overwrites."""
        self._check_open()
        content_type = CONTENT_TYPES.get(chunk.format)
        if content_type is None or chunk.codec not in CONTENT_ENCODINGS:
            raise PermanentError(
                f"{self.name} cannot store format {chunk.format!r} with codec {chunk.codec!r}"
            )
        key = self.layout.key(chunk)
        await self.put_object(
            key,
            chunk.payload,
            content_type=content_type,
            content_encoding=CONTENT_ENCODINGS[chunk.codec],
            metadata=chunk_metadata(chunk),
        )
        meta = sidecar(chunk)
        if meta is not None:
            await self.put_object(key + ".meta.json", meta, content_type="application/json")
        return Receipt(location=f"{self.bucket_uri}/{key}")

    async def finish_batch(self, summary: BatchSummary) -> None:
        """Once every chunk of the route is here: ``_MANIFEST.json``, then ``_SUCCESS``.

        Writes nothing when ``manifest = false``, or when some chunks went elsewhere (another
        target, the dead-letter store): the drop is not complete, and a marker would tell the
        receiving team otherwise. Raises ``PermanentError`` if a chunk's object is missing.
        """
        self._check_open()
        fields = dict(destination=self.name, batch_id=summary.batch_id, route=summary.route)
        if not self.manifest:
            return
        if not summary.complete:
            log.warning(
                "drop.incomplete",
                reason="some chunks of the route were delivered elsewhere; no manifest or "
                "_SUCCESS is written",
                chunks_here=len(summary.chunks),
                **fields,
            )
            return
        prefix = self.layout.batch_prefix(
            dataset=summary.dataset, batch_id=summary.batch_id, route=summary.route
        )
        sizes = await self.object_sizes(prefix)
        entries = [self._entry(summary, record, prefix, sizes) for record in summary.chunks]
        body = build_manifest(summary, entries, format=self.format, codec=self.codec)
        await self.put_object(prefix + MANIFEST_NAME, body, content_type="application/json")
        await self.put_object(prefix + SUCCESS_NAME, b"", content_type="application/octet-stream")
        log.info(
            "drop.complete",
            location=f"{self.bucket_uri}/{prefix}",
            chunks=len(entries),
            records=sum(e["records"] for e in entries),
            **fields,
        )

    def _entry(
        self, summary: BatchSummary, record: ChunkRecord, prefix: str, sizes: Mapping[str, int]
    ) -> dict[str, Any]:
        # the location the chunk was written to is the truth; the name is recomputed only for
        # a record without one (the format or codec may have changed since)
        here = f"{self.bucket_uri}/"
        if record.location and record.location.startswith(here):
            key = record.location[len(here) :]
        else:
            key = self.layout.prefix(
                dataset=summary.dataset,
                batch_id=summary.batch_id,
                route=summary.route,
                chunk_id=record.chunk_id,
            ) + object_name(record.chunk_id, kind=record.kind, format=self.format, codec=self.codec)
        if key not in sizes:
            raise PermanentError(
                f"{self.name}: chunk {record.chunk_id} of batch {summary.batch_id} is missing "
                f"from {here}{key}; replay the batch to write it again"
            )
        return {
            "name": key.removeprefix(prefix),
            "chunk": record.chunk_id,
            "records": record.records,
            "bytes": sizes[key],
            "sha256": record.checksum,
            "idempotency_key": record.idempotency_key,
        }
