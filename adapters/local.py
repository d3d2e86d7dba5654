"""Local disk: batches in a folder (or one file), and chunks written as readable files.

``LocalDestination`` is the default dead-letter store: each chunk is a payload file plus a
``.meta.json`` sidecar (batch, route, chunk, records, idempotency key, checksum, and why it is
there), which on-call can read, and ``sender replay`` can send again byte for byte;
``sender dead-letters --purge`` deletes those delivered since through ``purge``.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import orjson

from sender.config import DestinationOptions, LocalPath, SourceOptions
from sender.drop import chunk_meta, chunk_object_name, object_name
from sender.errors import AdapterClosed, RetryableError, SourceError
from sender.model import EncodedChunk, ObjectInfo, Receipt
from sender.ports import Resource

__all__ = ["LocalDestination", "LocalSource", "chunk_file_name"]


def _path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")) if uri.startswith("file://") else Path(uri)


def _version(stat: os.stat_result) -> str:
    return f"{stat.st_mtime_ns}-{stat.st_size}"


class LocalSource(Resource):
    """Reads ``/path``, ``file:///path`` or a single file from the local filesystem."""

    schemes = frozenset({"", "file"})

    class Options(SourceOptions):
        type: Literal["local"] = "local"

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise AdapterClosed("local source")

    async def list(self, uri: str) -> list[ObjectInfo]:
        self._check_open()
        return await asyncio.to_thread(self._list, uri)

    def _list(self, uri: str) -> list[ObjectInfo]:
        root = _path(uri)
        try:
            if root.is_file():
                return [ObjectInfo(uri, root.stat().st_size, _version(root.stat()))]
            if not root.is_dir():
                raise SourceError(f"{uri}: no such file or directory")
            found = []
            base = uri.rstrip("/")
            for folder, dirs, files in os.walk(root, onerror=_raise):
                dirs.sort()
                for name in files:
                    path = Path(folder) / name
                    try:
                        stat = path.stat()
                    except OSError as exc:
                        raise SourceError(_unreadable(uri, path, exc)) from exc
                    relative = path.relative_to(root).as_posix()
                    found.append(ObjectInfo(f"{base}/{relative}", stat.st_size, _version(stat)))
        except PermissionError as exc:
            raise SourceError(f"{uri}: permission denied ({exc.filename})") from exc
        except OSError as exc:
            raise SourceError(f"{uri}: cannot list: {exc.strerror}") from exc
        return sorted(found, key=lambda o: o.uri)

    def local_path(self, obj: ObjectInfo) -> str:
        """The file behind an object: readers open it directly instead of streaming."""
        return str(_path(obj.uri))

    async def open(self, obj: ObjectInfo) -> AsyncIterator[bytes]:
        """The file's bytes, checked to be the file that was listed: a file replaced or
        rewritten since the listing, or while it is read, is a ``SourceError`` naming it (the
        batch fails rather than being marked complete with records never sent or torn)."""
        self._check_open()
        size = self.options.read_size
        try:
            file = await asyncio.to_thread(open, _path(obj.uri), "rb")
        except OSError as exc:
            raise SourceError(f"{obj.uri}: cannot open: {exc.strerror}") from exc
        try:
            _same_as_listed(obj, os.fstat(file.fileno()), "since it was listed")
            read = 0
            while piece := await asyncio.to_thread(file.read, size):
                read += len(piece)
                yield piece
            # the descriptor sees an in-place rewrite (mtime, size); a rename over the path
            # leaves it on the file that was listed, which is then read whole and unchanged
            after = os.fstat(file.fileno())
            _same_as_listed(obj, after, "while it was read")
            if read != obj.size:
                raise SourceError(
                    f"{obj.uri}: changed while it was read: {read} bytes read, "
                    f"{obj.size} listed; run the batch again once the file is final"
                )
        except OSError as exc:
            raise SourceError(f"{obj.uri}: read failed: {exc.strerror}") from exc
        finally:
            file.close()

    async def read_range(self, obj: ObjectInfo, start: int, length: int) -> bytes:
        def pread() -> bytes:
            with open(_path(obj.uri), "rb") as file:
                return os.pread(file.fileno(), length, start)

        self._check_open()
        try:
            return await asyncio.to_thread(pread)
        except OSError as exc:
            raise SourceError(f"{obj.uri}: read failed: {exc.strerror}") from exc

    async def aclose(self) -> None:
        """Refuse further use; idempotent (nothing is held open between calls)."""
        self._closed = True


def _same_as_listed(obj: ObjectInfo, stat: os.stat_result, when: str) -> None:
    if obj.version and _version(stat) != obj.version:
        raise SourceError(
            f"{obj.uri}: changed {when} (size {obj.size} -> {stat.st_size}, or its "
            "modification time); run the batch again once the file is final"
        )


def _unreadable(uri: str, path: Path, exc: OSError) -> str:
    """Why a listed entry cannot be read, naming it: a dangling symlink or a loop says so."""
    if path.is_symlink():
        target = os.readlink(path)
        if exc.errno == errno.ELOOP:
            return f"{uri}: {path}: a symlink loop (-> {target})"
        return f"{uri}: {path}: a dangling symlink (-> {target}: {exc.strerror})"
    return f"{uri}: {path}: {exc.strerror}"


def _raise(exc: OSError) -> None:
    raise exc


# the name chunks had before bucket drops shared it (sender.drop)
chunk_file_name = chunk_object_name


class LocalDestination(Resource):
    """Writes each chunk as a file under ``path/prefix`` with a ``.meta.json`` sidecar.

    Writes are atomic (temporary file, then rename), and names are deterministic, so a resend
    overwrites instead of duplicating.
    """

    formats = frozenset({"ndjson", "json", "csv"})
    codecs = frozenset({"none", "gzip", "zstd"})
    schemes = frozenset({"file"})  # can be the default dead-letter folder (by its ``path``)

    class Options(DestinationOptions):
        type: Literal["local"] = "local"
        path: LocalPath
        prefix: str = "{dataset}/{batch_id}/{route}/"
        compression: Literal["none", "gzip", "zstd"] = "none"

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.root = Path(options.path)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise AdapterClosed(f"local destination {self.name}")

    def folder(self, batch_id: str, dataset: str, route: str) -> Path:
        prefix = self.options.prefix.format(dataset=dataset, batch_id=batch_id, route=route)
        return self.root / prefix

    async def check(self) -> None:
        """Raise ``RetryableError`` unless chunks can be written here now (``/readyz``)."""

        def probe() -> str | None:
            folder = self.root
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent  # the first existing ancestor must let us create it
            if not folder.is_dir():
                return f"{folder} is not a folder"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"{folder} is not writable"
            return None

        self._check_open()
        problem = await asyncio.to_thread(probe)
        if problem:
            raise RetryableError(problem)

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        self._check_open()
        try:
            path = await asyncio.to_thread(self._write, chunk)
        except OSError as exc:
            raise RetryableError(f"cannot write to {self.root}: {exc.strerror}") from exc
        return Receipt(location=str(path))

    def _write(self, chunk: EncodedChunk) -> Path:
        folder = self.folder(chunk.batch_id, chunk.dataset, chunk.route)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / chunk_object_name(chunk)
        _atomic_write(path, chunk.payload)
        _atomic_write(path.with_name(path.name + ".meta.json"), chunk_meta(chunk))
        return path

    async def holds(self, location: str) -> bool:
        """Whether the chunk file ``deliver`` wrote at ``location`` is still there."""
        return await asyncio.to_thread(self._written_here, location) is not None

    async def purge(self, location: str) -> bool:
        """Delete the chunk file at ``location`` and its ``.meta.json``; False, deleting
        nothing, unless its sidecar says this store wrote that very file (whatever the
        ledger says, nothing else is ever deleted)."""

        def delete() -> bool:
            path = self._written_here(location)
            if path is None:
                return False
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".meta.json").unlink(missing_ok=True)
            return True

        return await asyncio.to_thread(delete)

    def _written_here(self, location: str) -> Path | None:
        path = _path(location)
        try:
            meta = orjson.loads(path.with_name(path.name + ".meta.json").read_bytes())
            name = object_name(
                meta["chunk"], kind=meta["kind"], format=meta["format"], codec=meta["codec"]
            )
            expected = self.folder(meta["batch_id"], meta["dataset"], meta["route"]) / name
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        same = os.path.abspath(expected) == os.path.abspath(path) and path.is_file()
        return path if same else None

    async def aclose(self) -> None:
        """Refuse further use; idempotent (files are closed after every write)."""
        self._closed = True


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
