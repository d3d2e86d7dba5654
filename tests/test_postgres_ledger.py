"""The PostgreSQL ledger against the machine's server: every ledger contract suite (with a
second replica racing the first for leases and inbox claims), plus what only a shared ledger
promises — migrations once, takeover after a replica dies, and every machine seeing the
same state.

Each test run creates its own database (``sender_test_<random>``) and drops it after; the
server is ``$SENDER_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth). Without a server the tests skip, except under CI (``$CI`` set) where they fail.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

from sender.app import App, open_ledger
from sender.config import AppConfig
from sender.errors import LedgerError
from sender.model import BatchState, ChunkState, TriggerMessage
from sender.testing import (
    Clock,
    DiffStoreContract,
    InboxContract,
    LedgerContract,
    ReplayLogContract,
    make_chunk,
    make_message,
)
from sender.testing.receiver import Receiver
from sender_adapters.postgres import MIGRATIONS, PostgresLedger
from tests.batches import write_batch

ADMIN_DSN = os.environ.get("SENDER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
_TABLES = (
    "chunks",
    "replays",
    "leases",
    "inbox",
    "diff_plans",
    "diff_plan_state",
    "diff_baseline",
    "shards",
    "batches",
)


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def create_database(prefix: str = "sender_test") -> str:
    """A new, empty database on the test server; its DSN. Skips (fails under CI) when the
    server cannot be reached."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL at {ADMIN_DSN}: {exc}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(ADMIN_DSN, name)


async def drop_database(dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """One database for the whole test run, dropped at the end."""
    dsn = asyncio.run(create_database())
    yield dsn
    asyncio.run(drop_database(dsn))


@pytest.fixture
async def fresh_dsn() -> AsyncIterator[str]:
    """A database of its own for one test (migrations, racing replicas)."""
    dsn = await create_database()
    yield dsn
    await drop_database(dsn)


async def empty_database(dsn: str, *, migrate: bool = True) -> None:
    """Migrate the database if needed, then delete every row (DELETE: on tables this small it
    is far quicker than TRUNCATE)."""
    if migrate:
        async with PostgresLedger(dsn):
            pass
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("; ".join(f"DELETE FROM {table}" for table in _TABLES))
    finally:
        await conn.close()


class TestPostgresLedger(LedgerContract, ReplayLogContract, InboxContract, DiffStoreContract):
    """Every ledger suite on PostgresLedger; the replica is a second pool on the same
    database, as another replica of the daemon has."""

    @pytest.fixture
    async def ledger(self, pg_dsn: str, clock: Clock) -> AsyncIterator[PostgresLedger]:
        async with PostgresLedger.from_url(pg_dsn, clock=clock) as opened:
            await empty_database(pg_dsn, migrate=False)
            yield opened

    @pytest.fixture
    async def replica(self, pg_dsn: str, clock: Clock) -> AsyncIterator[PostgresLedger]:
        async with PostgresLedger.from_url(pg_dsn, clock=clock) as opened:
            yield opened


# -- migrations -----------------------------------------------------------------------------


async def test_replicas_starting_together_migrate_the_schema_once(fresh_dsn: str) -> None:
    replicas = [PostgresLedger(fresh_dsn) for _ in range(6)]

    await asyncio.gather(*(replica.open() for replica in replicas))
    try:
        conn = await asyncpg.connect(fresh_dsn)
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        await conn.close()
        assert sorted(versions) == list(range(1, len(MIGRATIONS) + 1))
        await replicas[0].start_batch(make_message("b-1"))
        assert (await replicas[-1].get_batch("b-1")) is not None
    finally:
        await asyncio.gather(*(replica.aclose() for replica in replicas))


async def test_opening_again_keeps_the_data_and_applies_nothing(fresh_dsn: str) -> None:
    async with PostgresLedger(fresh_dsn) as first:
        await first.start_batch(make_message("b-1"))
        await first.save_chunks([make_chunk("b-1", "0", state=ChunkState.DELIVERED)])

    async with PostgresLedger(fresh_dsn) as again:
        assert [c.chunk_id for c in await again.chunks("b-1")] == ["0"]

    conn = await asyncpg.connect(fresh_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)
    finally:
        await conn.close()


async def test_a_schema_newer_than_this_code_is_refused(fresh_dsn: str) -> None:
    async with PostgresLedger(fresh_dsn):
        pass
    conn = await asyncpg.connect(fresh_dsn)
    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", len(MIGRATIONS) + 1)
    await conn.close()

    with pytest.raises(LedgerError, match="upgrade integration-sender"):
        await PostgresLedger(fresh_dsn).open()


# -- replicas ---------------------------------------------------------------------------------


async def test_a_dead_replicas_batch_is_taken_over_once_its_lease_expires(pg_dsn: str) -> None:
    clock = Clock()  # one clock for both, like the database server's
    dead = PostgresLedger(pg_dsn, clock=clock)
    async with PostgresLedger(pg_dsn, clock=clock) as survivor:
        await empty_database(pg_dsn)
        await dead.start_batch(make_message("b-1"))
        assert await dead.acquire_lease("b-1", "replica-a", 30)
        await dead.save_chunks([make_chunk("b-1", "0", state=ChunkState.DELIVERED)])
        await dead.aclose()  # killed: the lease is never released

        clock.advance(29)
        assert not await survivor.acquire_lease("b-1", "replica-b", 30)
        clock.advance(2)
        taken_at = clock()
        assert await survivor.acquire_lease("b-1", "replica-b", 30)

        resumed = await survivor.start_batch(make_message("b-1"))
        assert resumed.runs == 2
        assert resumed.lease_owner == "replica-b"
        assert (
            taken_at + timedelta(seconds=30)
            <= resumed.lease_expires
            <= clock() + timedelta(seconds=30)
        )
        assert [c.state for c in await survivor.chunks("b-1")] == [ChunkState.DELIVERED]


# -- connection and URL -----------------------------------------------------------------------


def test_from_url_takes_postgres_urls_and_pool_sizes() -> None:
    ledger = PostgresLedger.from_url(
        "postgres://sender:s3cret-pass@db.internal:5432/sender?pool_max_size=4&search_path=x"
    )

    assert (ledger.min_size, ledger.max_size) == (1, 4)
    assert "pool_max_size" not in ledger.dsn and "search_path=x" in ledger.dsn
    assert "s3cret-pass" not in repr(ledger)
    with pytest.raises(LedgerError):
        PostgresLedger.from_url("mysql://db/sender")
    with pytest.raises(LedgerError):
        PostgresLedger.from_url("postgresql://db/sender?pool_max_size=many")


def test_the_composition_root_picks_postgres_for_postgresql_urls() -> None:
    assert isinstance(open_ledger("postgresql://sender@db/sender"), PostgresLedger)
    assert isinstance(open_ledger("postgres://sender@db/sender"), PostgresLedger)


async def test_an_unreachable_server_is_a_ledger_error(closed_port_url: str) -> None:
    port = urlsplit(closed_port_url).port
    ledger = PostgresLedger(f"postgresql://postgres@127.0.0.1:{port}/nope")

    with pytest.raises(LedgerError, match="cannot open ledger"):
        await ledger.ping()
    await ledger.aclose()


async def test_a_ledger_opens_lazily_on_first_use(pg_dsn: str) -> None:
    ledger = PostgresLedger(pg_dsn)
    try:
        await ledger.ping()
        assert await ledger.get_batch("nobody") is None
    finally:
        await ledger.aclose()


# -- the whole engine on PostgreSQL ----------------------------------------------------------


def _config(pg_dsn: str, url: str) -> str:
    return f"""
        [daemon]
        ledger = "{pg_dsn}"

        [destinations.api]
        type = "http"
        url = "{url}"
        retry = {{ attempts = 2, initial = "5ms", max = "10ms", budget = "5s" }}

        [destinations.dead]
        type = "local"
        path = "dead"

        [routes.churn]
        datasets = ["churn"]
        chunk = {{ records = 500 }}
        targets = ["api"]
        dead_letter = "dead"
        """


async def test_a_batch_runs_once_on_the_postgres_ledger(
    pg_dsn: str,
    tmp_path: Path,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
) -> None:
    await empty_database(pg_dsn)
    config = write_config(_config(pg_dsn, receiver.url + "/scores"))
    batch = write_batch(tmp_path / "batch", 2000)
    message = TriggerMessage(batch_id="pg-1", dataset="churn", uri=str(batch))
    async with App(config) as app:
        outcome = await app.engine.run_batch(message)
        again = await app.engine.run_batch(message)
        chunks = await app.ledger.chunks("pg-1")

    assert outcome.state is BatchState.COMPLETE and outcome.totals.delivered == 2000
    assert again.already_complete
    assert len(receiver.accepted) == 4  # the second run sent nothing
    assert [c.state for c in chunks] == [ChunkState.DELIVERED] * 4
    assert len({c.idempotency_key for c in chunks}) == 4


def test_sender_status_on_another_process_reads_the_shared_ledger(
    pg_dsn: str, tmp_path: Path
) -> None:
    async def write() -> None:
        await empty_database(pg_dsn)
        async with PostgresLedger(pg_dsn) as ledger:
            await ledger.start_batch(make_message("shared-1"))
            await ledger.save_chunks([make_chunk("shared-1", "0", state=ChunkState.DELIVERED)])
            await ledger.finish_batch("shared-1", BatchState.COMPLETE, {})

    asyncio.run(write())
    config = tmp_path / "sender.toml"
    config.write_text(f'[daemon]\nledger = "{pg_dsn}"\n')
    sender = Path(sys.executable).with_name("sender")

    done = subprocess.run(
        [str(sender), "status", "shared-1", "--json", "-c", str(config)],
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr.decode()
    shown: Any = orjson.loads(done.stdout)
    assert shown["batch_id"] == "shared-1"
    assert shown["state"] == "complete"
