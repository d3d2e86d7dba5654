"""A chunk's stored copy, for a replay whose source is gone or changed: its dead-letter file
(or a file a ``local`` destination holds), read back through the source that serves its
location, checked against the ledger (sha256, record count), decompressed and decoded back to
the exact NDJSON lines the chunk was cut from. Encoding and compression are deterministic,
so the bytes the replay sends are those first sent.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import zstandard

from ..chunker import RawChunk
from ..codecs import encode
from ..config import AppConfig
from ..errors import ConfigError, SourceError
from ..ports import ChunkRecord, Source

__all__ = ["Unavailable", "read_stored_copy", "stored_file"]


class Unavailable(Exception):
    """A chunk's payload cannot be had (no stored copy, undecodable, not what was sent)."""


async def read_stored_copy(
    config: AppConfig,
    source_for: Callable[[str], Awaitable[Source]],
    before: ChunkRecord,
    dead_letter: str | None,
) -> RawChunk:
    """The lines of chunk ``before`` from its stored copy (its ``dead_letter`` file, else
    the file the holding destination wrote), checked against the ledger. ``Unavailable``
    says why it cannot be had."""
    location = dead_letter or before.location
    if not location:
        raise Unavailable("no stored copy and the source cannot be read")
    payload, meta = await _read(source_for, location)
    holder = config.destinations.get(before.target or "")
    fmt = meta.get("format") or (holder.options.format if holder else "ndjson")
    codec = meta.get("codec") or (holder.options.compression if holder else "none")
    expected = meta.get("sha256") or (before.checksum if location == before.location else None)
    if expected and hashlib.sha256(payload).hexdigest() != expected:
        raise Unavailable(f"stored copy {location} is corrupt (sha256 differs)")
    try:
        lines = _decode_lines(_decompress(payload, codec), fmt)
    except ValueError as exc:
        raise Unavailable(f"stored copy {location}: {exc}") from None
    raw = RawChunk(before.chunk_id, lines, sum(len(line) + 1 for line in lines))
    if raw.records != before.records:
        raise Unavailable(
            f"stored copy {location} holds {raw.records} records, the ledger {before.records}"
        )
    return raw


async def _read(
    source_for: Callable[[str], Awaitable[Source]], location: str
) -> tuple[bytes, dict[str, Any]]:
    try:
        source = await source_for(location)
        listed = await source.list(location)
        if not listed:
            raise Unavailable(f"stored copy {location} is gone")
        payload = b"".join([piece async for piece in source.open(listed[0])])
    except (SourceError, ConfigError) as exc:
        raise Unavailable(f"stored copy {location} cannot be read: {exc}") from None
    meta: dict[str, Any] = {}
    sidecar = location + ".meta.json"
    with contextlib.suppress(SourceError, ValueError):
        listed = await source.list(sidecar)
        if listed:
            body = b"".join([piece async for piece in source.open(listed[0])])
            meta = orjson.loads(body)
    return payload, meta


def _decompress(payload: bytes, codec: str) -> bytes:
    try:
        if codec == "none":
            return payload
        if codec == "gzip":
            return gzip.decompress(payload)
        if codec == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(payload), read_across_frames=True
            )
            with reader:
                return reader.read()
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise ValueError(f"cannot decompress ({codec}): {exc}") from exc
    raise ValueError(f"unknown codec {codec!r}")


def _decode_lines(body: bytes, fmt: str) -> list[bytes]:
    """The NDJSON lines a payload was encoded from — exactly, or ``ValueError``."""
    if fmt == "ndjson":
        if body and not body.endswith(b"\n"):
            raise ValueError("not NDJSON as the sender writes it (no final newline)")
        return body[:-1].split(b"\n") if body else []
    if fmt == "json":
        try:
            records = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not a JSON array: {exc}") from None
        if not isinstance(records, list):
            raise ValueError("not a JSON array")
        lines = [orjson.dumps(r) for r in records]
        # the array was built by joining the lines unparsed: it is only recovered exactly
        # when they were written the way orjson writes them (true after a projection)
        if encode(lines, "json") != body:
            raise ValueError("its JSON array cannot be split back into the exact records sent")
        return lines
    raise ValueError(f"a {fmt} payload cannot be turned back into the records first sent")


def stored_file(location: str) -> Path | None:
    """The local file behind a location, or None for a URL or an object in a bucket."""
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if "://" in location:
        return None
    return Path(location)
