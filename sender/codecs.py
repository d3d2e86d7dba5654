"""Wire formats and codecs: a chunk's lines encoded (``ndjson``, ``json``, ``csv``) and
compressed (``none``, ``gzip``, ``zstd``) the way a target wants them."""

from __future__ import annotations

import csv
import gzip
import io
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import zstandard

from .chunker import Lines

_isal_compress: Callable[..., bytes] | None
try:  # ISA-L: standard gzip output at ~520 MB/s a core, against ~30 MB/s for zlib level 6
    from isal.igzip import compress as _isal_compress
except ImportError:  # pragma: no cover - a dependency; zlib does it, slower
    _isal_compress = None


__all__ = [
    "CODEC_EXTENSIONS",
    "CONTENT_TYPES",
    "DEFAULT_LEVELS",
    "EXTENSIONS",
    "MAX_LEVELS",
    "compress",
    "encode",
]

CONTENT_TYPES = {
    "ndjson": "application/x-ndjson",
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
}
EXTENSIONS = {"ndjson": ".ndjson", "json": ".json", "csv": ".csv"}
CODEC_EXTENSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}
# Chosen from speed and ratio measured on the bench records (1 MiB chunks, one core here):
# gzip 1 (ISA-L) ~520 MB/s at ratio 3.93 where zlib 6 gave ~30 MB/s at 4.32; zstd 1 ~510 MB/s
# at 5.48, better than zstd 3 (~300 MB/s, 4.50) on both counts. README "Compression".
DEFAULT_LEVELS = {"gzip": 1, "zstd": 1}
MAX_LEVELS = {"gzip": 9, "zstd": 19}
# gzip levels served by ISA-L (its 0-3 are its own scale; ours 1-3 map onto its 1-3); 4-9 zlib
_ISAL_LEVELS = range(1, 4)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if value is None:
        return ""
    if isinstance(value, bool):  # JSON's spelling, not Python's "True"
        return "true" if value else "false"
    return value


def _encode_csv(lines: Sequence[bytes], columns: Sequence[str] | None) -> bytes:
    records = [orjson.loads(line) for line in lines]
    if columns:
        header = list(columns)
    else:
        # pass-through records need not share keys: every key of the chunk gets a column, in
        # first-seen order, rather than dropping those the first record lacks
        header = list(dict.fromkeys(key for record in records for key in record))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        writer.writerow([_csv_cell(record.get(column)) for column in header])
    return out.getvalue().encode()


def encode(lines: Sequence[bytes], format: str, columns: Sequence[str] | None = None) -> bytes:
    """Lines in a chunk's wire format. NDJSON and JSON arrays are built without parsing:
    a valid NDJSON line holds no raw newline, so joining is enough (and a ``Lines`` buffer
    already is the NDJSON form)."""
    if isinstance(lines, Lines) and format != "csv":
        if format == "ndjson":
            return lines.data
        if format == "json":
            return b"[" + lines.data[:-1].replace(b"\n", b",") + b"]" if lines else b"[]"
    if format == "ndjson":
        return b"\n".join(lines) + b"\n" if lines else b""
    if format == "json":
        return b"[" + b",".join(lines) + b"]"
    if format == "csv":
        return _encode_csv(lines, columns)
    raise ValueError(f"unknown format {format!r}")


_local = threading.local()


def _zstd(level: int) -> zstandard.ZstdCompressor:
    # a ZstdCompressor is not thread-safe (PITFALLS.md): one per thread and level
    compressors: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("zstd", {})
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressor


def compress(data: bytes, codec: str, level: int | None = None) -> bytes:
    """``data`` compressed with ``codec`` (``none``, ``gzip``, ``zstd``). Deterministic: the
    gzip header carries no time, so a resent chunk has the same bytes as the first."""
    if codec == "none":
        return data
    if codec == "gzip":
        level = level or DEFAULT_LEVELS["gzip"]
        if _isal_compress is not None and level in _ISAL_LEVELS:
            return _isal_compress(data, level, mtime=0)
        return gzip.compress(data, compresslevel=level, mtime=0)
    if codec == "zstd":
        return _zstd(level or DEFAULT_LEVELS["zstd"]).compress(data)
    raise ValueError(f"unknown codec {codec!r}")
