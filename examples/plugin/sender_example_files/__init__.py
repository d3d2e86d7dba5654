"""``type = "example_files"``: each chunk becomes one file under ``path``, named by its
idempotency key. A resend of the same bytes succeeds; other bytes under a key already
written are refused for good, since a file once delivered is never silently changed."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Literal

from sender.config import DestinationOptions, LocalPath
from sender.errors import AdapterClosed, PermanentError, RetryableError
from sender.model import EncodedChunk, Receipt
from sender.ports import Resource

__all__ = ["ExampleFilesDestination"]


class ExampleFilesDestination(Resource):
    formats = frozenset({"ndjson", "json", "csv"})  # bytes are bytes: it takes every one
    codecs = frozenset({"none", "gzip", "zstd"})

    class Options(DestinationOptions):
        type: Literal["example_files"] = "example_files"
        path: LocalPath  # required; a relative path is taken beside the config file

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.root = Path(options.path)
        self._closed = False

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        if self._closed:
            raise AdapterClosed(f"destination {self.name}")
        try:
            path = await asyncio.to_thread(self._write, chunk)
        except OSError as exc:  # a full or unmounted disk may come back: try again later
            raise RetryableError(f"{self.name}: cannot write in {self.root}: {exc}") from exc
        return Receipt(location=str(path))

    def _write(self, chunk: EncodedChunk) -> Path:
        path = self.root / chunk.idempotency_key
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{chunk.idempotency_key}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(chunk.payload)
        try:
            os.link(tmp, path)  # atomic, and never replaces: the first write of a key wins
        except FileExistsError:
            if path.read_bytes() != chunk.payload:
                # not about the records (payload=False): split pieces would get new keys
                raise PermanentError(
                    f"{self.name}: {path} holds other bytes for key {chunk.idempotency_key}",
                    payload=False,
                ) from None
        finally:
            tmp.unlink()
        return path

    async def aclose(self) -> None:
        self._closed = True
