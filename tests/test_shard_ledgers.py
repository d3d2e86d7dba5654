"""The shards contract (``ShardsContract``) on every built-in ledger: SQLite, PostgreSQL and
memory; the metered wrapper passes the ability through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sender.metered_ledger import metered
from sender.ports import Shards
from sender.testing import Clock, ShardsContract
from sender_adapters.memory import MemoryLedger
from sender_adapters.postgres import PostgresLedger
from sender_adapters.sqlite import SqliteLedger
from tests.test_postgres_ledger import empty_database, pg_dsn  # noqa: F401 (a fixture)


class TestSqliteShards(ShardsContract):
    @pytest.fixture
    async def ledger(self, tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteLedger]:
        async with SqliteLedger(tmp_path / "ledger.db", clock=clock) as opened:
            yield opened

    @pytest.fixture
    async def replica(self, ledger: SqliteLedger, clock: Clock) -> AsyncIterator[SqliteLedger]:
        async with SqliteLedger(ledger.path, clock=clock) as opened:
            yield opened


class TestMemoryShards(ShardsContract):
    @pytest.fixture
    async def ledger(self, clock: Clock) -> AsyncIterator[MemoryLedger]:
        async with MemoryLedger(clock=clock) as opened:
            yield opened


class TestPostgresShards(ShardsContract):
    """The replica is a second pool on the same database, as another daemon replica has."""

    @pytest.fixture
    async def ledger(self, pg_dsn: str, clock: Clock) -> AsyncIterator[PostgresLedger]:  # noqa: F811
        async with PostgresLedger.from_url(pg_dsn, clock=clock) as opened:
            await empty_database(pg_dsn, migrate=False)
            yield opened

    @pytest.fixture
    async def replica(self, pg_dsn: str, clock: Clock) -> AsyncIterator[PostgresLedger]:  # noqa: F811
        async with PostgresLedger.from_url(pg_dsn, clock=clock) as opened:
            yield opened


def test_the_metered_ledger_has_shards_exactly_when_its_ledger_has() -> None:
    assert isinstance(metered(MemoryLedger(), on_error=lambda op: None), Shards)
