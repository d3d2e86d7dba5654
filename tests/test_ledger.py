"""The ledger contract suites against the built-in ledgers on this machine (SQLite, memory),
plus what only SQLite promises."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sender.errors import AdapterClosed, LedgerError
from sender.model import BatchState, ChunkState, ObjectInfo
from sender.ports import RouteStats
from sender.testing import (
    Clock,
    DiffStoreContract,
    InboxContract,
    LedgerContract,
    ReplayLogContract,
    make_chunk,
    make_message,
)
from sender_adapters.memory import MemoryLedger
from sender_adapters.sqlite import MIGRATIONS, SqliteLedger


class TestSqliteLedger(LedgerContract, ReplayLogContract, InboxContract, DiffStoreContract):
    """Every ledger suite on a SQLite file; the replica is a second handle on the same file
    (another process on the machine, as ``sender replay`` beside the daemon)."""

    @pytest.fixture
    async def ledger(self, tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteLedger]:
        async with SqliteLedger(tmp_path / "ledger.db", clock=clock) as opened:
            yield opened

    @pytest.fixture
    async def replica(self, ledger: SqliteLedger, clock: Clock) -> AsyncIterator[SqliteLedger]:
        async with SqliteLedger(ledger.path, clock=clock) as opened:
            yield opened


class TestMemoryLedger(LedgerContract, ReplayLogContract, InboxContract, DiffStoreContract):
    """Every ledger suite on the in-memory fake the core's tests use."""

    @pytest.fixture
    async def ledger(self, clock: Clock) -> AsyncIterator[MemoryLedger]:
        async with MemoryLedger(clock=clock) as opened:
            yield opened


# -- SQLite only ---------------------------------------------------------------------------


async def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    routes = {"to_crm": RouteStats(read=3, delivered=2, dead_lettered=1, chunks=2)}
    async with SqliteLedger(path) as ledger:
        await ledger.start_batch(make_message("b-1"))
        await ledger.set_objects("b-1", [ObjectInfo("file:///lake/p-0", 10, "v1")])
        await ledger.save_chunks(
            [
                make_chunk("b-1", "0", state=ChunkState.DELIVERED, target="crm_api"),
                make_chunk("b-1", "1", state=ChunkState.DEAD_LETTERED, target="dead"),
            ]
        )
        await ledger.finish_batch("b-1", BatchState.COMPLETE, routes)
        await ledger.acquire_lease("b-1", "daemon-a", 600)
        await ledger.record_replay("b-1", "alice", {"route": "to_crm"}, {"delivered": 1})
        before_batch = await ledger.get_batch("b-1")
        before_chunks = await ledger.chunks("b-1")
        before_replays = await ledger.replays("b-1")

    async with SqliteLedger(path) as ledger:
        assert await ledger.get_batch("b-1") == before_batch
        assert await ledger.chunks("b-1") == before_chunks
        assert await ledger.replays("b-1") == before_replays
        assert not await ledger.acquire_lease("b-1", "daemon-b", 60)


async def test_the_file_is_in_wal_mode_at_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "ledger.db"  # parent folders are created
    async with SqliteLedger(path) as ledger:
        await ledger.ping()

        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        conn.close()


async def test_opening_again_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    async with SqliteLedger(path) as ledger:
        await ledger.start_batch(make_message("b-1"))
    async with SqliteLedger(path) as ledger:
        await ledger.start_batch(make_message("b-2"))
        assert len(await ledger.list_batches()) == 2


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    async with SqliteLedger(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()

    with pytest.raises(LedgerError, match="newer than this sender understands"):
        async with SqliteLedger(path):
            pass


async def test_many_concurrent_writes_do_not_corrupt_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    async with SqliteLedger(path) as ledger:
        await ledger.start_batch(make_message("b-1"))

        await asyncio.gather(
            *(
                ledger.save_chunks(
                    [make_chunk("b-1", str(i), route=route) for route in ("to_crm", "to_lake")]
                )
                for i in range(200)
            ),
            *(ledger.acquire_lease("b-1", f"owner-{i}", 60) for i in range(20)),
        )

        chunks = await ledger.chunks("b-1")
        assert len(chunks) == 400
        assert [c.chunk_id for c in chunks[:200]] == [str(i) for i in range(200)]

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_a_locked_file_does_not_block_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    async with SqliteLedger(path) as ledger:
        await ledger.start_batch(make_message("b-1"))
        # another process (say `sender replay`) holds the write lock
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        try:
            write = asyncio.create_task(ledger.save_chunks([make_chunk("b-1", "0")]))
            loop = asyncio.get_running_loop()
            started = loop.time()
            # the loop keeps its timers while the write waits (busy_timeout) for the lock
            await asyncio.sleep(0.1)
            assert loop.time() - started < 1.0
            assert not write.done()
        finally:
            other.execute("COMMIT")
            other.close()

        await write  # busy_timeout: it went through once the lock was free
        assert [c.chunk_id for c in await ledger.chunks("b-1")] == ["0"]


async def test_a_file_that_is_not_a_database_gives_a_clear_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not SQLite, just some text that happens to be long enough" * 64)

    with pytest.raises(LedgerError, match=r"cannot open ledger .*ledger\.db.*not a database") as e:
        async with SqliteLedger(path):
            pass
    assert isinstance(e.value.__cause__, sqlite3.DatabaseError)


async def test_a_path_that_cannot_be_created_gives_a_clear_ledger_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")

    ledger = SqliteLedger(blocker / "ledger.db")
    with pytest.raises(LedgerError, match=r"cannot create the folder of ledger .*a-file") as e:
        await ledger.start_batch(make_message("b-1"))  # opens lazily on first use
    assert isinstance(e.value.__cause__, OSError)
    await ledger.aclose()


async def test_the_ledger_opens_lazily_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    assert not path.exists()

    await ledger.start_batch(make_message("b-1"))

    assert path.exists()
    assert (await ledger.get_batch("b-1")).runs == 1
    await ledger.aclose()
    with pytest.raises(AdapterClosed, match="closed"):
        await ledger.open()


def test_from_url_accepts_a_path_or_a_sqlite_url(tmp_path: Path) -> None:
    assert SqliteLedger.from_url("var/ledger.db").path == "var/ledger.db"
    assert SqliteLedger.from_url(f"sqlite://{tmp_path}/l.db").path == f"{tmp_path}/l.db"
    assert SqliteLedger.from_url("sqlite:///:memory:").path == ":memory:"
    with pytest.raises(LedgerError, match="not a SQLite ledger URL"):
        SqliteLedger.from_url("postgresql://user@host/db")


async def test_an_in_memory_database_works_for_throwaway_runs() -> None:
    async with SqliteLedger.from_url("sqlite:///:memory:") as ledger:
        await ledger.start_batch(make_message("b-1"))
        assert (await ledger.get_batch("b-1")).state == BatchState.RUNNING
