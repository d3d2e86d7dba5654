"""The spool trigger: a directory where each ``*.json`` file is one trigger message.

The embedded default, for a single machine and for the demo. A message is claimed by an
atomic rename into ``processing/``; acked ones move to ``done/``, rejected ones to
``rejected/`` with a ``.reason.txt`` beside them, released ones back to the queue. Files left
in ``processing/`` by a crash go back to the queue at start, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from sender.config import Duration, LocalPath, TriggerOptions
from sender.errors import AdapterClosed, TriggerError
from sender.log import get_logger
from sender.model import TriggerMessage
from sender.ports import Resource

__all__ = ["SpoolEnvelope", "SpoolTrigger"]

log = get_logger("sender_adapters.spool")

MAX_MESSAGE_BYTES = 1024 * 1024
"""A trigger message is a few hundred bytes: a larger file is rejected unread past this."""


def _read_message(path: Path) -> bytes | None:
    """The file's bytes, None past ``MAX_MESSAGE_BYTES``. Opened without blocking and
    checked to be a regular file, in case a FIFO took the name since it was listed."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(0, "not a regular file")
        body = file.read(MAX_MESSAGE_BYTES + 1)
    return None if len(body) > MAX_MESSAGE_BYTES else body


class SpoolEnvelope:
    """A claimed message file."""

    def __init__(self, trigger: SpoolTrigger, path: Path, body: bytes) -> None:
        self._trigger = trigger
        self.path = path
        self.body = body
        self.message_id = path.name
        self.settled = False

    async def _move(self, folder: str) -> Path:
        self._trigger._check_open()
        target = self._trigger.root / folder / self.path.name
        await asyncio.to_thread(os.replace, self.path, target)
        self.settled = True
        return target

    async def ack(self) -> None:
        await self._move("done")

    async def reject(self, reason: str) -> None:
        target = await self._move("rejected")
        await asyncio.to_thread(
            target.with_name(target.name + ".reason.txt").write_text, reason + "\n"
        )

    async def release(self) -> None:
        await self._move("")

    async def extend(self, seconds: float) -> None:
        return None  # a claimed file is ours until we move it


class SpoolTrigger(Resource):
    """Polls a directory for ``*.json`` trigger messages, oldest first."""

    # its messages are files written on this machine: they may name any URI (LocalQueue)
    local_queue: ClassVar[Literal[True]] = True

    class Options(TriggerOptions):
        type: Literal["spool"] = "spool"
        path: LocalPath = Field("var/queue", validate_default=True)  # beside the config
        poll_s: Duration = 0.5

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.root = Path(options.path)
        self._closed = asyncio.Event()
        self._prepared = False
        self._ignored: set[str] = set()  # non-regular files already logged

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise AdapterClosed(f"spool trigger {self.root}")

    def _prepare(self) -> None:
        try:
            for folder in ("processing", "done", "rejected"):
                (self.root / folder).mkdir(parents=True, exist_ok=True)
            for orphan in sorted((self.root / "processing").glob("*.json")):
                # claimed by a process that died: back to the queue
                os.replace(orphan, self.root / orphan.name)
                log.info("spool.requeued", file=orphan.name)
        except OSError as exc:
            raise TriggerError(f"spool {self.root}: {exc.strerror}") from exc
        self._prepared = True

    @property
    def connected(self) -> bool:
        return not self._closed.is_set() and self.root.is_dir() and os.access(self.root, os.W_OK)

    def _pending(self) -> list[Path]:
        found: list[tuple[int, str, Path]] = []
        for path in self.root.glob("*.json"):
            if path.name.startswith("."):
                continue
            try:
                info = path.stat()
            except OSError:
                continue  # claimed or removed meanwhile
            if not stat.S_ISREG(info.st_mode):
                # a FIFO would block the reader for good (and SIGTERM with it), a directory
                # or a device is no message: left where it is, said once
                if path.name not in self._ignored:
                    self._ignored.add(path.name)
                    log.warning("spool.ignored", file=path.name, reason="not a regular file")
                continue
            found.append((info.st_mtime_ns, path.name, path))
        return [path for _, _, path in sorted(found)]

    def _claim(self) -> SpoolEnvelope | None:
        for path in self._pending():
            claimed = self.root / "processing" / path.name
            try:
                os.replace(path, claimed)  # atomic: only one claimer wins
            except FileNotFoundError:
                continue
            try:
                body = _read_message(claimed)
            except OSError as exc:
                log.warning("spool.unreadable", file=path.name, error=exc.strerror)
                continue
            if body is None:
                reason = f"larger than {MAX_MESSAGE_BYTES // 1024} KiB: not a trigger message"
                rejected = self.root / "rejected" / path.name
                os.replace(claimed, rejected)
                rejected.with_name(rejected.name + ".reason.txt").write_text(reason + "\n")
                log.warning("spool.rejected", file=path.name, reason=reason)
                continue
            return SpoolEnvelope(self, claimed, body)
        return None

    async def messages(self) -> AsyncIterator[SpoolEnvelope]:
        self._check_open()  # closed while waiting, the stream ends; closed before, refused
        if not self._prepared:
            await asyncio.to_thread(self._prepare)
        while not self._closed.is_set():
            try:
                envelope = await asyncio.to_thread(self._claim)
            except OSError as exc:
                raise TriggerError(f"spool {self.root}: {exc.strerror}") from exc
            if envelope is not None:
                yield envelope
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self.options.poll_s)

    async def pending(self) -> int:
        """Messages waiting (not yet claimed)."""
        self._check_open()
        return len(await asyncio.to_thread(self._pending)) if self.root.is_dir() else 0

    async def publish(self, message: TriggerMessage) -> None:
        def write() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            name = f"{time.time_ns()}-{message.batch_id}-{uuid.uuid4().hex[:6]}.json"
            tmp = self.root / f".{name}.tmp"
            tmp.write_bytes(message.to_json())
            os.replace(tmp, self.root / name)

        self._check_open()
        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise TriggerError(f"spool {self.root}: {exc.strerror}") from exc

    async def aclose(self) -> None:
        """End a running ``messages()`` stream and refuse further use; idempotent."""
        self._closed.set()
