"""``ping`` (what ``/readyz`` asks) tells the truth about a SQLite ledger file: deleted,
replaced by another file, corrupt, or its last write failed, the ledger is not healthy, and
a deleted file is not recreated behind the daemon's back (a restart would then find no record
of the batches sent, and send them again)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sender.errors import LedgerError
from sender.model import BatchState
from sender.testing.ledger_suite import make_message
from sender_adapters.sqlite import SqliteLedger


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        await ledger.start_batch(make_message("b-1"))
        await ledger.ping()  # healthy to begin with
        yield ledger


async def test_a_deleted_ledger_file_is_unhealthy_and_never_recreated(
    tmp_path: Path, ledger: SqliteLedger
) -> None:
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    with pytest.raises(LedgerError, match="the file is gone"):
        await ledger.ping()
    with pytest.raises(LedgerError, match="the file is gone"):
        await ledger.finish_batch("b-1", BatchState.COMPLETE, {})
    assert not (tmp_path / "ledger.db").exists()


async def test_a_replaced_ledger_file_is_unhealthy(tmp_path: Path, ledger: SqliteLedger) -> None:
    async with SqliteLedger(tmp_path / "other.db") as other:
        await other.ping()
    os.replace(tmp_path / "other.db", tmp_path / "ledger.db")

    with pytest.raises(LedgerError, match="the file was replaced"):
        await ledger.ping()
    with pytest.raises(LedgerError, match="the file was replaced"):
        await ledger.get_batch("b-1")


async def test_a_ledger_file_corrupted_in_place_is_unhealthy(
    tmp_path: Path, ledger: SqliteLedger
) -> None:
    path = tmp_path / "ledger.db"
    size = path.stat().st_size
    with path.open("r+b") as file:  # same inode, garbage over every page
        file.write(b"not a database, overwritten by mistake ".ljust(size, b"!"))
    (tmp_path / "ledger.db-wal").write_bytes(b"")

    with pytest.raises(LedgerError):
        await ledger.ping()


async def test_a_failed_write_makes_it_unhealthy_until_a_write_succeeds(
    tmp_path: Path, ledger: SqliteLedger
) -> None:
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock (5 s timeout)
    try:
        with pytest.raises(LedgerError, match="locked"):
            await ledger.finish_batch("b-1", BatchState.COMPLETE, {})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with pytest.raises(LedgerError, match="the last write failed"):
        await ledger.ping()

    await ledger.finish_batch("b-1", BatchState.COMPLETE, {})
    await ledger.ping()
