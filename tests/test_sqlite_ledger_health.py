"""``ping`` (what ``/readyz`` asks) tells the truth about a SQLite ledger file: deleted,
replaced by another file, corrupt, or its last write failed, the ledger is not healthy, and
a deleted file is not recreated behind the daemon's back (a restart would then find no record
of the batches sent, and send them again). A ledger lost or replaced while the daemon was down
is told from a first start by its marker, ``<ledger>.id``, and refused."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sender.errors import LedgerError, LedgerLost
from sender.model import BatchState
from sender.testing.ledger_suite import make_message
from sender.testing.receiver import Receiver
from sender_adapters.sqlite import SqliteLedger
from tests.batches import write_batch
from tests.test_cli import sender, write_config


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


async def test_a_ledger_deleted_while_closed_is_refused_not_taken_for_a_first_start(
    tmp_path: Path, ledger: SqliteLedger
) -> None:
    await ledger.finish_batch("b-1", BatchState.COMPLETE, {})
    await ledger.aclose()
    marker = tmp_path / "ledger.db.id"
    assert marker.exists()  # written when the ledger was created
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    with pytest.raises(LedgerLost, match="is gone") as refused:
        async with SqliteLedger(tmp_path / "ledger.db"):
            pass
    assert f"delete {marker}" in str(refused.value)
    assert not (tmp_path / "ledger.db").exists()  # no empty ledger was created

    marker.unlink()  # a fresh start, on purpose
    async with SqliteLedger(tmp_path / "ledger.db") as fresh:
        assert await fresh.get_batch("b-1") is None
        await fresh.ping()
    assert marker.exists()


async def test_a_ledger_replaced_while_closed_is_refused(
    tmp_path: Path, ledger: SqliteLedger
) -> None:
    await ledger.aclose()
    async with SqliteLedger(tmp_path / "other" / "ledger.db") as other:
        await other.ping()
    for name in ("ledger.db-wal", "ledger.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    os.replace(tmp_path / "other" / "ledger.db", tmp_path / "ledger.db")

    with pytest.raises(LedgerLost, match="was replaced"):
        async with SqliteLedger(tmp_path / "ledger.db"):
            pass

    plain = sqlite3.connect(tmp_path / "ledger.db")  # a file made by hand: no ledger id
    plain.execute("DROP TABLE ledger_identity")
    plain.close()
    with pytest.raises(LedgerLost, match="has no ledger id"):
        async with SqliteLedger(tmp_path / "ledger.db"):
            pass


async def test_a_ledger_without_a_marker_gets_one_and_is_then_checked(tmp_path: Path) -> None:
    # a ledger from before markers: opened as it is, and marked for the next start
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        await ledger.start_batch(make_message("b-1"))
    (tmp_path / "ledger.db.id").unlink()
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        assert await ledger.get_batch("b-1") is not None
    assert (tmp_path / "ledger.db.id").exists()
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        assert await ledger.get_batch("b-1") is not None


async def test_after_the_ledger_is_lost_a_complete_batch_is_not_sent_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    batch = write_batch(tmp_path / "batch", 1000)
    config = write_config(tmp_path, receiver.url)
    send = ("send", str(batch), "--dataset", "churn", "--batch-id", "b-1", "-c", str(config))
    code, out, err = await sender(*send)
    assert code == 0, (out, err)
    assert len(receiver.records()) == 1000
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)  # lost while the daemon was down

    # the upstream triggers the batch again; the daemon is started again
    trigger = ("trigger", str(batch), "--dataset", "churn", "--batch-id", "b-1")
    assert (await sender(*trigger, "-c", str(config)))[0] == 0
    code, out, err = await sender("run", "--burst", "-c", str(config))
    assert code == 2, (out, err)
    assert f"ledger {tmp_path / 'ledger.db'} is gone" in " ".join(err.split())
    assert f"delete {tmp_path / 'ledger.db.id'}" in " ".join(err.split())
    code, out, err = await sender(*send)
    assert code == 2 and "is gone" in err, (out, err)
    assert len(receiver.records()) == 1000  # nothing was sent again

    (tmp_path / "ledger.db.id").unlink()  # starting afresh, on purpose
    code, out, err = await sender("run", "--burst", "-c", str(config))
    assert code == 0, (out, err)
    assert len(receiver.records()) == 2000
