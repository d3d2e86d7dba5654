"""Diff sync end to end: day 1, then day 2 with changes, new and gone keys, against real
receivers on loopback, on the SQLite and the PostgreSQL ledger."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sender.app import App
from sender.config import AppConfig, load_config
from sender.model import BatchState, TriggerMessage
from sender.replay import Replayer, Selection
from sender.testing.receiver import Receiver
from tests.test_postgres_ledger import create_database, drop_database

FAST = '{ attempts = 2, initial = "5ms", max = "10ms", budget = "2s" }'


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.db")
        return
    dsn = await create_database("sender_diff")
    yield dsn
    await drop_database(dsn)


def _config(
    tmp_path: Path, url: str, ledger: str, *, diff: str, chunk: str = "{ records = 4 }"
) -> AppConfig:
    path = tmp_path / "sender.toml"
    path.write_text(
        f"""
[daemon]
ledger = "{ledger}"

[destinations.crm]
type = "http"
url = "{url}"
compression = "gzip"
retry = {FAST}

[destinations.dead]
type = "local"
path = "dead"

[routes.scores]
datasets = ["churn"]
fields = {{ customer_id = "id", score = "score", scored_at = "at" }}
chunk = {chunk}
targets = ["crm"]
dead_letter = "dead"
diff = {diff}
"""
    )
    return load_config(path)


def _day(tmp_path: Path, name: str, records: dict[int, float], at: str = "mon") -> Path:
    folder = tmp_path / "lake" / name
    folder.mkdir(parents=True)
    lines = [json.dumps({"id": f"c{i:03d}", "score": s, "at": at}) for i, s in records.items()]
    half = len(lines) // 2
    (folder / "part-00000.json").write_text("".join(f"{x}\n" for x in lines[:half]))
    (folder / "part-00001.json").write_text("".join(f"{x}\n" for x in lines[half:]))
    (folder / "_SUCCESS").write_text("")
    return folder


async def _send(config: AppConfig, folder: Path, batch_id: str, **extra: Any) -> Any:
    message = TriggerMessage(batch_id=batch_id, dataset="churn", uri=str(folder), **extra)
    async with App(config) as app:
        return await app.engine.run_batch(message)


def _sent(receiver: Receiver) -> list[dict[str, Any]]:
    return [r for request in receiver.accepted for r in request.records]


DAY1 = {i: i / 100 for i in range(20)}
# day 2: c003 and c007 changed, c020 and c021 new, c005 and c011 gone, the rest unchanged
DAY2 = {i: s for i, s in DAY1.items() if i not in (5, 11)} | {3: 0.99, 7: 0.5, 20: 0.2, 21: 0.21}


async def test_day_two_sends_only_changed_and_new_records_and_tombstones(
    tmp_path: Path, receiver: Receiver, ledger_url: str
) -> None:
    config = _config(
        tmp_path,
        receiver.url,
        ledger_url,
        diff='{ key = "customer_id", ignore = ["scored_at"], deletes = true }',
    )
    first = await _send(config, _day(tmp_path, "d1", DAY1), "day-1")
    assert first.ok and first.totals.delivered == 20
    receiver.clear()

    second = await _send(config, _day(tmp_path, "d2", DAY2, at="tue"), "day-2")

    sent = _sent(receiver)
    records = [r for r in sent if not r.get("_deleted")]
    tombstones = [r for r in sent if r.get("_deleted")]
    assert sorted(r["customer_id"] for r in records) == ["c003", "c007", "c020", "c021"]
    assert tombstones == [
        {"customer_id": "c005", "_deleted": True},
        {"customer_id": "c011", "_deleted": True},
    ]
    in_chunk_order = [
        r
        for request in sorted(receiver.accepted, key=lambda q: int(q.headers["X-Sender-Chunk"]))
        for r in request.records
    ]
    assert in_chunk_order[-2:] == tombstones  # after the changed records
    totals = second.totals
    assert (totals.read, totals.delivered, totals.unchanged, totals.rejected) == (20, 4, 16, 0)
    assert totals.tombstones == 2
    assert totals.reconciled

    receiver.clear()
    third = await _send(config, _day(tmp_path, "d3", DAY2, at="wed"), "day-3")
    assert _sent(receiver) == [] and third.totals.unchanged == 20 and third.ok


async def test_without_deletes_gone_keys_are_not_sent(tmp_path: Path, receiver: Receiver) -> None:
    config = _config(tmp_path, receiver.url, str(tmp_path / "l.db"), diff='{ key = "customer_id" }')
    await _send(config, _day(tmp_path, "d1", DAY1), "day-1")
    receiver.clear()
    await _send(config, _day(tmp_path, "d2", {i: s for i, s in DAY1.items() if i > 2}), "day-2")
    assert _sent(receiver) == []


async def test_full_sends_everything_and_rebuilds_the_baseline(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(
        tmp_path,
        receiver.url,
        str(tmp_path / "l.db"),
        diff='{ key = "customer_id", deletes = true }',
    )
    await _send(config, _day(tmp_path, "d1", DAY1), "day-1")
    receiver.clear()
    full = await _send(config, _day(tmp_path, "d2", {0: 0.0, 1: 0.01}), "day-2", full=True)
    assert sorted(r["customer_id"] for r in _sent(receiver)) == ["c000", "c001"]
    assert full.totals.tombstones == 0  # a full refresh compares with nothing
    receiver.clear()
    # the baseline is now exactly day 2: day 3 with c002 back sends it as new, nothing gone
    await _send(config, _day(tmp_path, "d3", {0: 0.0, 1: 0.01, 2: 0.02}), "day-3")
    assert [r["customer_id"] for r in _sent(receiver)] == ["c002"]


async def test_a_duplicate_key_keeps_the_later_record_and_rejects_the_earlier(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver.url, str(tmp_path / "l.db"), diff='{ key = "customer_id" }')
    folder = tmp_path / "lake" / "dup"
    folder.mkdir(parents=True)
    (folder / "part-00000.json").write_text(
        '{"id": "a", "score": 1}\n{"id": "b", "score": 2}\n{"id": "a", "score": 3}\n{"score": 4}\n'
    )
    (folder / "_SUCCESS").write_text("")
    outcome = await _send(config, folder, "dup")
    assert sorted((r["customer_id"], r["score"]) for r in _sent(receiver)) == [("a", 3), ("b", 2)]
    assert outcome.totals.rejected == 2 and outcome.totals.reconciled
    rejects = [
        json.loads(line)
        for path in (tmp_path / "dead").rglob("rejects-*.ndjson")
        for line in path.read_text().splitlines()
    ]
    assert sorted((r["reason"], r["location"]) for r in rejects) == [
        ("duplicate key", "part-00000.json:1"),
        ("no diff key customer_id", "part-00000.json:4"),
    ]


async def test_refused_records_stay_out_of_the_baseline_and_come_back_after_a_replay(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver.url, str(tmp_path / "l.db"), diff='{ key = "customer_id" }')
    receiver.reject_records(lambda r: r.get("customer_id") == "c006")
    first = await _send(config, _day(tmp_path, "d1", DAY1), "day-1")
    assert first.totals.dead_lettered == 1 and first.totals.delivered == 19
    receiver.reject_records(None)
    receiver.clear()

    # day 2, nothing changed: the refused record was never delivered, so it is sent again
    await _send(config, _day(tmp_path, "d2", DAY1), "day-2")
    assert [r["customer_id"] for r in _sent(receiver)] == ["c006"]


async def test_a_replay_of_a_dead_lettered_diff_chunk_updates_the_baseline(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver.url, str(tmp_path / "l.db"), diff='{ key = "customer_id" }')
    receiver.reject_records(lambda r: r.get("customer_id") == "c006")
    await _send(config, _day(tmp_path, "d1", DAY1), "day-1")
    receiver.reject_records(None)
    receiver.clear()
    async with App(config) as app:
        report = await Replayer(app).run("day-1", Selection(mode="dead-lettered"))
    assert report.ok and [r["customer_id"] for r in _sent(receiver)] == ["c006"]
    receiver.clear()
    await _send(config, _day(tmp_path, "d2", DAY1), "day-2")
    assert _sent(receiver) == []


async def test_a_resumed_batch_re_creates_the_same_chunks_and_never_sends_unchanged_records(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(tmp_path, receiver.url, str(tmp_path / "l.db"), diff='{ key = "customer_id" }')
    await _send(config, _day(tmp_path, "d1", DAY1), "day-1")
    day2 = {i: (s + 1 if i % 2 else s) for i, s in DAY1.items()}  # odd ids changed
    folder = _day(tmp_path, "d2", day2)
    receiver.clear()
    receiver.fail_where(lambda request: request.headers.get("X-Sender-Chunk") == "1", 503)
    interrupted = await _send(config, folder, "day-2")
    assert interrupted.state is not BatchState.COMPLETE or interrupted.totals.dead_lettered
    first_keys = {r.idempotency_key for r in receiver.accepted}
    receiver.recover()
    receiver.clear()
    # the baseline may have moved (day 1 is complete); the frozen plan must be used
    async with App(config) as app:
        await app.engine.run_batch(
            TriggerMessage(batch_id="day-2", dataset="churn", uri=str(folder))
        )
        chunks = await app.ledger.chunks("day-2")
    ids = sorted(r["customer_id"] for r in _sent(receiver))
    assert all(int(i[1:]) % 2 for i in ids)  # only changed records, never an unchanged one
    keys = {c.idempotency_key for c in chunks if c.kind == "data"}
    assert first_keys <= keys


async def test_kill_9_during_a_diffed_batch_resumes_with_the_same_keys(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(
        tmp_path,
        receiver.url,
        str(tmp_path / "l.db"),
        diff='{ key = "customer_id" }',
        chunk="{ records = 2 }",
    )
    assert config.path is not None
    await _send(config, _day(tmp_path, "d1", DAY1), "day-1")
    day2 = {i: (s + 1 if i % 3 == 0 else s) for i, s in DAY1.items()}
    folder = _day(tmp_path, "d2", day2)
    receiver.clear()
    receiver.slow(0.3)
    command = [
        sys.executable, "-m", "sender.cli", "send", str(folder), "--dataset", "churn",
        "--batch-id", "day-2", "-q", "-c", str(config.path),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, cwd=tmp_path)
    await receiver.wait_for_requests(1)
    os.kill(process.pid, signal.SIGKILL)
    await process.wait()
    before = {r.idempotency_key for r in receiver.accepted}
    receiver.recover()
    resumed = await asyncio.create_subprocess_exec(*command, cwd=tmp_path)
    assert await resumed.wait() == 0
    changed = sorted(f"c{i:03d}" for i in day2 if i % 3 == 0)
    assert sorted({r["customer_id"] for r in _sent(receiver)}) == changed
    after = {r.idempotency_key for r in receiver.accepted}
    assert before <= after and len(after) == -(-len(changed) // 2)


def test_a_diff_key_must_be_an_output_field(tmp_path: Path) -> None:
    from sender.errors import ConfigError

    with pytest.raises(ConfigError, match=r"routes\.scores: diff: \['nope'\]"):
        _config(tmp_path, "http://127.0.0.1:9/", str(tmp_path / "l.db"), diff='{ key = "nope" }')
