"""The local dead-letter store's ``Purgeable``: ``sender dead-letters`` asks it whether a dead
letter is still there and has it delete one; it deletes only a file it wrote itself, where
its ``.meta.json`` says, whatever location it is handed."""

from __future__ import annotations

import json
from pathlib import Path

from sender.model import EncodedChunk
from sender.ports import Purgeable
from sender_adapters.local import LocalDestination


def chunk(chunk_id: str = "7", batch_id: str = "b-1") -> EncodedChunk:
    return EncodedChunk(
        batch_id=batch_id,
        dataset="churn",
        route="churn_to_crm",
        chunk_id=chunk_id,
        records=2,
        format="ndjson",
        codec="none",
        payload=b'{"n":1}\n{"n":2}\n',
        raw_size=14,
        idempotency_key=f"{batch_id}:{chunk_id}",
        context={"error": "HTTP 503"},
    )


def store(root: Path) -> LocalDestination:
    return LocalDestination("dead", LocalDestination.Options(type="local", path=str(root)))


async def test_purge_deletes_the_dead_letter_and_its_sidecar_and_holds_says_so(
    tmp_path: Path,
) -> None:
    dead = store(tmp_path / "dead")
    assert isinstance(dead, Purgeable)
    location = (await dead.deliver(chunk())).location
    assert location is not None
    assert await dead.holds(location)

    assert await dead.purge(location) is True

    assert not await dead.holds(location)
    assert list((tmp_path / "dead").rglob("*.*")) == []
    assert await dead.purge(location) is False  # nothing left: nothing deleted


def tamper(first: Path, second: Path, elsewhere: Path) -> None:
    """``first``'s sidecar now describes ``second`` (a file moved by hand), and a copy of both
    lies in another folder."""
    meta = json.loads(second.with_name(second.name + ".meta.json").read_bytes())
    first.with_name(first.name + ".meta.json").write_text(json.dumps(meta))
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(first.read_bytes())
    elsewhere.with_name(elsewhere.name + ".meta.json").write_text(json.dumps(meta))


def all_exist(*paths: Path) -> bool:
    return all(path.exists() for path in paths)


async def test_purge_deletes_nothing_the_store_did_not_write_there(tmp_path: Path) -> None:
    dead = store(tmp_path / "dead")
    first = Path(str((await dead.deliver(chunk("7"))).location))
    second = Path(str((await dead.deliver(chunk("8"))).location))
    elsewhere = tmp_path / "elsewhere" / first.name
    tamper(first, second, elsewhere)

    assert await dead.purge(str(first)) is False
    assert await dead.purge(str(elsewhere)) is False  # another store's folder
    assert await dead.purge(str(tmp_path / "dead" / "no-such-file")) is False

    assert all_exist(first, second, elsewhere)
