"""The shared limits contract (``SharedLimitsContract``) on the ledgers that have it,
PostgreSQL and memory; SQLite, a ledger of one replica, has not; the metered wrapper passes
the ability through exactly when its ledger has it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from sender.app import App
from sender.config import AppConfig
from sender.metered_ledger import metered
from sender.ports import SharedLimits
from sender.testing import Clock, SharedLimitsContract
from sender.testing.receiver import Receiver
from sender_adapters.memory import MemoryLedger
from sender_adapters.postgres import PostgresLedger
from sender_adapters.sqlite import SqliteLedger
from tests.test_postgres_ledger import _config, pg_dsn  # noqa: F401 (pg_dsn: a fixture)


class TestMemorySharedLimits(SharedLimitsContract):
    @pytest.fixture
    async def ledger(self, clock: Clock) -> AsyncIterator[MemoryLedger]:
        async with MemoryLedger(clock=clock) as opened:
            yield opened


class TestPostgresSharedLimits(SharedLimitsContract):
    """The replica is a second pool on the same database, as another daemon replica has."""

    @pytest.fixture
    async def ledger(self, pg_dsn: str, clock: Clock) -> AsyncIterator[PostgresLedger]:  # noqa: F811
        async with PostgresLedger.from_url(pg_dsn, clock=clock) as opened:
            conn = await asyncpg.connect(pg_dsn)
            try:
                await conn.execute("DELETE FROM destination_limits; DELETE FROM replicas")
            finally:
                await conn.close()
            yield opened

    @pytest.fixture
    async def replica(self, pg_dsn: str, clock: Clock) -> AsyncIterator[PostgresLedger]:  # noqa: F811
        async with PostgresLedger.from_url(pg_dsn, clock=clock) as opened:
            yield opened


def test_the_metered_ledger_shares_limits_exactly_when_its_ledger_does(tmp_path: Path) -> None:
    assert isinstance(metered(MemoryLedger(), on_error=lambda op: None), SharedLimits)
    sqlite = SqliteLedger(tmp_path / "ledger.db")
    assert not isinstance(sqlite, SharedLimits)
    assert not isinstance(metered(sqlite, on_error=lambda op: None), SharedLimits)


async def test_an_app_on_postgres_shares_its_limits_and_leaves_nothing_running(
    pg_dsn: str,  # noqa: F811
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
) -> None:
    config = write_config(_config(pg_dsn, receiver.url + "/scores"))
    async with App(config) as app:
        assert app.shared_limits is not None
        poller = app.shared_limits._poller
        assert app.targets["api"].stats()["limits"] == "shared"
        async with PostgresLedger(pg_dsn) as other:  # it counts as a live replica
            assert await other.heartbeat("someone-else", 60.0) >= 2
        owner = app.engine.owner

    assert poller is not None and poller.done()
    conn = await asyncpg.connect(pg_dsn)
    try:  # it left: the others' fallback share no longer counts it
        assert not await conn.fetchval("SELECT count(*) FROM replicas WHERE owner = $1", owner)
    finally:
        await conn.close()


async def test_an_app_on_sqlite_keeps_its_limits_to_itself(
    receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    config = write_config(_config("ledger.db", receiver.url + "/scores"))
    async with App(config) as app:
        assert app.shared_limits is None
        assert app.targets["api"].stats()["limits"] == "local"
