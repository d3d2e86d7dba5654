"""The domain: trigger messages, source objects, chunks and their states."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import MessageError

__all__ = [
    "MAX_BATCH_ID_BYTES",
    "BadRecord",
    "BatchState",
    "ChunkState",
    "EncodedChunk",
    "ObjectInfo",
    "Receipt",
    "TriggerMessage",
    "chunk_sort_key",
    "idempotency_key",
    "parse_trigger_message",
]

Format = Literal["jsonl", "csv", "parquet"]

MAX_BATCH_ID_BYTES = 200
"""A batch id's limit in UTF-8 bytes: with the chunk and suffixes it makes file names (at most
255 bytes on ext4, XFS, APFS...) and object keys."""


class TriggerMessage(BaseModel):
    """What a pipeline publishes when a batch is ready (DESIGN.md, "Trigger message").

    Unknown keys are ignored so that pipelines can add their own; ``format`` None means
    "detect from file names"; ``routes`` None means every route whose datasets match.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    batch_id: str = Field(min_length=1, max_length=200)
    dataset: str = Field(min_length=1, max_length=200)
    uri: str = Field(min_length=1)
    format: Format | None = None
    expected_records: int | None = Field(default=None, ge=0)
    routes: tuple[str, ...] | None = None
    full: bool = False  # diff-synced routes ignore their baseline this once (a full refresh)
    # run a batch again under its id although its source changed since its first read (a
    # failed batch whose input was fixed): the objects are listed and recorded anew, and the
    # chunks already delivered or dead-lettered are not sent again
    rerun: bool = False
    # one shard of a sharded batch (``sender.shards``): set on the messages the daemon
    # publishes for a batch's shards, never by a pipeline; None is the whole batch
    shard: int | None = Field(default=None, ge=0)

    @field_validator("batch_id")
    @classmethod
    def _printable_batch_id(cls, value: str) -> str:
        # batch ids end up in headers, object names and file names
        if not value.isprintable() or "/" in value or value in {".", ".."}:
            raise ValueError("must be printable and contain no '/'")
        # file names are limited in bytes (255 on every common filesystem), not characters:
        # an id that fits in characters but not in bytes would fail only when its spool copy
        # or dead letters are written, and be retried forever
        size = len(value.encode("utf-8"))
        if size > MAX_BATCH_ID_BYTES:
            raise ValueError(
                f"is {size} bytes in UTF-8, more than the {MAX_BATCH_ID_BYTES} a batch id may have"
            )
        return value

    def to_json(self) -> bytes:
        # a whole batch's message is as a pipeline writes it: no ``shard`` key
        return orjson.dumps(
            self.model_dump(mode="json", exclude=_WHOLE if self.shard is None else None)
        )


_WHOLE = {"shard"}


def parse_trigger_message(body: bytes | str | Mapping[str, Any]) -> TriggerMessage:
    """Parse and validate a trigger message; raise ``MessageError`` with a readable reason."""
    try:
        data = body if isinstance(body, Mapping) else orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise MessageError("not a JSON object")
    try:
        return TriggerMessage.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}"
            for err in exc.errors()
        )
        raise MessageError(problems) from None


class BatchState(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"  # every chunk terminal
    INCOMPLETE = "incomplete"  # stopped part-way (shutdown, dead-letter store down); resumable
    FAILED = "failed"  # the batch could not be read, or on_bad_record = "fail" tripped


class ChunkState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"
    SKIPPED = "skipped"  # bad records dropped under on_bad_record = "skip"
    FAILED = "failed"  # every target and the dead-letter store failed; not terminal

    @property
    def terminal(self) -> bool:
        return self in (ChunkState.DELIVERED, ChunkState.DEAD_LETTERED, ChunkState.SKIPPED)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object of a batch as listed by a Source. ``version`` (etag, mtime) detects change."""

    uri: str
    size: int
    version: str = ""

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class BadRecord:
    """An input record that could not be read; kept raw with the reason and where it was."""

    raw: bytes
    reason: str
    location: str  # "part-00003.jsonl:1207"

    def to_json_line(self) -> bytes:
        return orjson.dumps(
            {
                "location": self.location,
                "reason": self.reason,
                "raw": self.raw.decode("utf-8", "backslashreplace"),
            }
        )


def chunk_sort_key(chunk_id: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order of chunk ids: "2" < "10", "7" < "7.0" < "7.1" < "8", data before "r0"."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in chunk_id.split("."))


def idempotency_key(batch_id: str, route: str, chunk_id: str) -> str:
    """Stable per (batch, route, chunk): a resend or replay carries the key it first had."""
    digest = hashlib.sha256(f"{batch_id}\x00{route}\x00{chunk_id}".encode()).hexdigest()
    return digest[:32]


@dataclass(slots=True)
class EncodedChunk:
    """A chunk ready for one target: encoded in ``format`` and compressed with ``codec``.

    ``chunk_id`` is the chunk's index as a string ("7"); sub-chunks made when a receiver
    rejects a chunk are "7.0", "7.1.0" and so on. ``kind`` is "data", or "rejects" for a
    dead-letter file of bad input records. ``context`` carries why a chunk reached the
    dead-letter store (error, attempts, targets tried) for its sidecar.
    """

    batch_id: str
    dataset: str
    route: str
    chunk_id: str
    records: int
    format: str
    codec: str
    payload: bytes
    raw_size: int
    idempotency_key: str
    kind: str = "data"
    context: Mapping[str, Any] = field(default_factory=dict)
    # the payload's media type when the format's own does not say it (a completion event is
    # application/cloudevents+json); destinations that send one (HTTP, SQS, AMQP) honour it
    content_type: str | None = None

    digest: str = ""  # sha256 of the payload, filled in by the encoder's worker thread

    @property
    def checksum(self) -> str:
        """sha256 of the payload (hex), computed once."""
        if not self.digest:
            self.digest = hashlib.sha256(self.payload).hexdigest()
        return self.digest


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a destination says after taking a chunk: where it is now."""

    location: str
    status: int | None = None
