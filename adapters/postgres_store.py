"""The PostgreSQL ledgers' store: an asyncpg connection pool, migrated at open.

``_transaction()`` is one pooled connection inside one transaction; driver errors, refused
connections and timeouts leave it as ``LedgerError`` (cause kept), and a call after
``aclose()`` raises ``AdapterClosed``. Migrations are the subclass's ``migrations`` (version
N is the first N, recorded in ``schema_migrations``), applied inside one transaction under
an advisory lock, so replicas starting together migrate once and never race; a database
newer than this code is refused.

Times come from the database server (``now()``, see ``NOW``), not from each replica, so
lease expiry does not depend on the replicas' clocks agreeing. Tests may inject ``clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from sender.config import mask_url
from sender.errors import AdapterClosed, LedgerError
from sender.ports import Resource
from sender_adapters._sql import Migration, check_version

__all__ = ["NOW", "PostgresStore", "affected"]

# pg_advisory_xact_lock key for migrations ("SENDER" in ASCII); advisory locks are per database
_MIGRATION_LOCK = 0x53454E444552

# $1 of every statement that uses it: the injected clock's time, or NULL for the server's
# transaction time
NOW = "COALESCE($1::timestamptz, now())"

_POOL_KEYS = {"pool_min_size", "pool_max_size"}


def affected(status: str) -> int:
    """Rows touched, from a command status such as ``"UPDATE 1"`` or ``"DELETE 0"``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, through orjson
    await conn.set_type_codec("jsonb", encoder=_json, decoder=orjson.loads, schema="pg_catalog")


class PostgresStore(Resource):
    """A PostgreSQL database through a pool, migrated to ``migrations`` (see module).

    ``dsn`` is a ``postgresql://`` URL. The pool opens (and the schema migrates) on
    ``open()``, ``async with``, or lazily on the first call. ``clock`` (aware UTC datetimes)
    replaces the server's clock, for tests only: replicas should share the server's.
    """

    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    # version N of the schema is migrations[:N]
    migrations: ClassVar[tuple[Migration, ...]] = ()

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 30.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max(min_size, max_size)
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._where = mask_url(dsn)

    @classmethod
    def from_url(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> Self:
        """``postgresql://user[:password]@host[:port]/db[?pool_max_size=10&...]``."""
        parts = urlsplit(url)
        if parts.scheme not in cls.schemes or not parts.hostname:
            raise LedgerError(
                f"not a PostgreSQL ledger URL: {mask_url(url)!r} "
                "(use postgresql://user@host:5432/db)"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        sizes = {k: v for k, v in query if k in _POOL_KEYS}
        rest = [(k, v) for k, v in query if k not in _POOL_KEYS]
        try:
            min_size = int(sizes.get("pool_min_size", 1))
            max_size = int(sizes.get("pool_max_size", 10))
        except ValueError:
            raise LedgerError(f"{mask_url(url)}: pool sizes must be whole numbers") from None
        if min_size < 0 or max_size < 1:
            raise LedgerError(f"{mask_url(url)}: pool_max_size must be >= 1")
        dsn = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(dsn, min_size=min_size, max_size=max_size, clock=clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where!r})"

    def _now(self) -> datetime | None:
        if self._clock is None:
            return None
        now = self._clock()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the pool and migrate the schema; a no-op when already open."""
        await self._ensure_pool()

    _on_enter = open  # async with opens the ledger

    async def aclose(self) -> None:
        """Close the pool (waiting briefly for calls under way); idempotent."""
        self._closed = True
        async with self._opening:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self.command_timeout_s)
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                pool.terminate()

    async def _ensure_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise AdapterClosed(f"ledger {self._where}")
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise AdapterClosed(f"ledger {self._where}")
            if self._pool is None:
                self._pool = await self._create_pool()
            return self._pool

    async def _create_pool(self) -> asyncpg.Pool:
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                init=_init_connection,
                timeout=self.connect_timeout_s,
                command_timeout=self.command_timeout_s,
                server_settings={"application_name": "integration-sender"},
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise LedgerError(f"cannot open ledger {self._where}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
                raise LedgerError(f"cannot migrate ledger {self._where}: {exc}") from exc
            raise
        return pool

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        # the common case, every replica at the current version, takes no lock
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            current = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            if current == len(self.migrations):
                return
        async with conn.transaction():
            # one migrator at a time; the others wait here, then find nothing left to do
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            applied = {
                r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
            }
            check_version(max(applied, default=0), self.migrations, self._where)
            for number, steps in enumerate(self.migrations, start=1):
                if number in applied:
                    continue
                for statement in steps:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside one transaction; driver errors become ``LedgerError``."""
        pool = await self._ensure_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                yield conn
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if self._closed:
                raise AdapterClosed(f"ledger {self._where}") from exc
            raise LedgerError(f"ledger {self._where}: {exc}") from exc
