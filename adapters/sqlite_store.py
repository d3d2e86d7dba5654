"""The SQLite ledgers' store: one file in WAL mode, driven from one worker thread.

``sqlite3`` blocks, so every call runs on a dedicated single-thread executor: the event loop
never waits on the disk, and the one thread serializes access to the one connection (no
"database is locked" between our own tasks). ``_call(fn, write=)`` runs ``fn(conn)`` as one
transaction; writes take ``BEGIN IMMEDIATE`` so a second process (``sender replay`` next to
the daemon) waits up to ``busy_timeout`` instead of failing half-way. The schema is migrated
at open from the subclass's ``migrations``, its version kept in ``PRAGMA user_version``; a
file's identity is checked against its marker (``sqlite_identity``) before it is used.

Every ``sqlite3`` or filesystem error leaves as ``LedgerError`` with the original as its
cause; a call after ``aclose()`` raises ``AdapterClosed``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Self, TypeVar
from urllib.parse import urlsplit

from sender.errors import AdapterClosed, LedgerError
from sender.ports import Resource
from sender_adapters._sql import Migration, check_version
from sender_adapters.sqlite_identity import check_marker, claim_identity

__all__ = ["SqliteStore", "dt", "ts", "utcnow"]

_T = TypeVar("_T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def ts(value: datetime) -> str:
    """A stored time. Fixed width (always microseconds, always +00:00) so that text order is
    time order, which the created_at index and the `since` filter rely on."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def dt(value: str | None) -> datetime | None:
    """A stored time read back."""
    return None if value is None else datetime.fromisoformat(value)


class SqliteStore(Resource):
    """A SQLite file with its worker thread, migrated to ``migrations`` (see module).

    ``path`` is a file path (parent folders are created) or ``":memory:"``. The file opens on
    ``open()``, ``async with``, or lazily on the first call. ``clock`` returns the current
    time as an aware UTC datetime; tests inject one to move time without sleeping.
    """

    # version N of the schema is migrations[:N]
    migrations: ClassVar[tuple[Migration, ...]] = ()

    def __init__(self, path: str | Path, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.path = str(path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # One thread: sqlite3 connections are not shared across threads, and one writer at a
        # time is what SQLite does anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-ledger")
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._write_failed: str | None = None  # why the last write failed, until one works

    @classmethod
    def from_url(cls, url: str, *, clock: Callable[[], datetime] = utcnow) -> Self:
        """A plain path, or ``sqlite:///abs/path`` (``sqlite:///:memory:`` for a throwaway)."""
        if "://" not in url:
            return cls(url, clock=clock)
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path:
            raise LedgerError(f"not a SQLite ledger URL: {url!r} (use sqlite:///abs/path)")
        path = parts.path
        if path == "/:memory:":
            return cls(":memory:", clock=clock)
        return cls("/" + path.lstrip("/"), clock=clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def _now(self) -> datetime:
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the file and migrate the schema; a no-op when already open."""
        await self._call(lambda conn: None)

    _on_enter = open  # async with opens the ledger

    async def aclose(self) -> None:
        """Close the file; idempotent. Calls already queued finish first."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_connection)
        finally:
            self._executor.shutdown(wait=False)

    def _close_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        # Runs on the worker thread.
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(
                    f"cannot create the folder of ledger {self.path}: {exc.strerror or exc}"
                ) from exc
            check_marker(self.path)  # a ledger lost while we were down is not a first start
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if self.path != ":memory:" and str(mode).lower() != "wal":
                raise LedgerError(f"cannot open ledger {self.path}: WAL mode refused ({mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            if self.path != ":memory:":
                try:
                    claim_identity(conn, self.path, self._now())
                except OSError as exc:
                    raise LedgerError(
                        f"cannot write the marker of ledger {self.path}: {exc.strerror or exc}"
                    ) from exc
                info = os.stat(self.path)
                self._identity = (info.st_dev, info.st_ino)
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = self.migrations
        if conn.execute("PRAGMA user_version").fetchone()[0] == len(migrations):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            check_version(version, migrations, self.path)
            for number, steps in enumerate(migrations[version:], start=version + 1):
                for statement in steps:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- plumbing ------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        if self._closed:
            raise AdapterClosed(f"ledger {self.path}")
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._transaction, fn, write)
        except sqlite3.Error as exc:  # not a LedgerError of the logic (an unknown batch)
            error = LedgerError(f"ledger {self.path}: {exc}")
            if write:
                self._write_failed = str(error)
            raise error from exc
        except RuntimeError as exc:  # the executor was shut down under a queued call
            if self._closed:
                raise AdapterClosed(f"ledger {self.path}") from exc
            raise
        if write:
            self._write_failed = None
        return result

    def _check_file(self) -> None:
        """``LedgerError`` when the file opened is no longer at its path (deleted, or replaced
        by another file): writes would go to a file nobody reads, and a restart would find
        no record of the batches sent. It is never recreated behind the daemon's back."""
        if self._identity is None:
            return
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise LedgerError(
                f"ledger {self.path}: the file is gone (deleted since it was opened)"
            ) from None
        except OSError as exc:
            raise LedgerError(f"ledger {self.path}: {exc.strerror}") from exc
        if (info.st_dev, info.st_ino) != self._identity:
            raise LedgerError(f"ledger {self.path}: the file was replaced since it was opened")

    def _check_health(self, conn: sqlite3.Connection) -> None:
        """The schema is readable and at the version this code migrated it to: a corrupt
        file fails here ("file is not a database", "malformed"), cheaply. Read through a
        fresh read-only connection: the ledger's own caches pages, and would not see a file
        overwritten behind its back."""
        if self.path != ":memory:":
            fresh = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=ro", uri=True)
            try:
                return self._check_schema(fresh)
            finally:
                fresh.close()
        self._check_schema(conn)

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if version != len(self.migrations):
            raise LedgerError(
                f"ledger {self.path}: schema version {version}, expected {len(self.migrations)}"
            )

    async def check_health(self) -> None:
        """Raise ``LedgerError`` unless the file is the one opened, readable, at its schema,
        and the last write did not fail (what ``ping`` and ``/readyz`` ask)."""
        await self._call(self._check_health)
        if self._write_failed is not None:
            raise LedgerError(f"the last write failed: {self._write_failed}")

    def _transaction(self, fn: Callable[[sqlite3.Connection], _T], write: bool) -> _T:
        # Runs on the worker thread: one transaction per public method.
        if self._conn is None:
            self._conn = self._connect()
        self._check_file()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result
