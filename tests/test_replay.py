"""``sender replay``, ``sender status BATCH`` and ``sender dead-letters`` against real receivers:
what on-call does after a receiving team says "we are missing chunks"."""

from __future__ import annotations

import itertools
import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from sender.app import App
from sender.cli import amain
from sender.config import load_config
from sender.model import ChunkState
from sender.ports import ChunkRecord
from sender.replay import (
    Replayer,
    ReplayHooks,
    ReplayItem,
    ReplayReport,
    Selection,
    parse_chunk_ids,
    select_chunks,
    who_am_i,
)
from sender.testing.receiver import ReceivedRequest, Receiver
from sender_adapters.sqlite import SqliteLedger
from tests.batches import write_batch

FAST_RETRY = '{ attempts = 2, initial = "5ms", max = "10ms", budget = "5s" }'
DOWN = {"2", "7"}  # the chunks the primary refuses during the first send


@pytest.fixture
def setup(tmp_path: Path, receiver: Receiver, backup_receiver: Receiver) -> Callable[..., Path]:
    """Write a 10-chunk batch and a config (primary `api` = receiver, `backup` =
    backup_receiver, dead letters in a local folder); return the config path."""

    def make(*, fields: bool = True) -> Path:
        write_batch(tmp_path / "batch", 5000)
        projection = 'fields = { customer_id = "id", churn_score = "score" }' if fields else ""
        config = tmp_path / "sender.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [daemon]
                ledger = "ledger.db"
                lease = "30s"

                [destinations.api]
                type = "http"
                url = "{receiver.url}/scores"
                compression = "zstd"
                retry = {FAST_RETRY}

                [destinations.backup]
                type = "http"
                url = "{backup_receiver.url}/inbox"
                compression = "gzip"
                retry = {FAST_RETRY}

                [destinations.dead]
                type = "local"
                path = "dead"

                [routes.churn]
                datasets = ["churn"]
                {projection}
                chunk = {{ records = 500 }}
                targets = ["api"]
                dead_letter = "dead"
                """
            )
        )
        return config

    return make


def exists(path: str | Path | None) -> bool:
    return path is not None and Path(path).exists()


def unwrap(text: str) -> str:
    """Output with rich's line folding undone, to find a long path in it."""
    return "".join(line.strip() for line in text.splitlines())


def chunk_of(request: ReceivedRequest) -> str:
    return request.headers["X-Sender-Chunk"]


async def sender(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this event loop (the receivers keep serving); exit code and output."""
    capsys.readouterr()
    code = await amain(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def send_with_primary_down_for(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    receiver: Receiver,
    down: set[str],
    *,
    dead_letters: bool | None = None,
) -> dict[str, ReceivedRequest]:
    """First send with the primary refusing ``down``; the last request offered per chunk."""
    receiver.fail_where(lambda request: request.headers.get("X-Sender-Chunk") in down)
    batch = config.parent / "batch"
    code, _, _ = await sender(
        capsys, "send", str(batch), "--dataset", "churn", "--batch-id", "b-1", "-c", str(config)
    )
    assert code == (1 if (bool(down) if dead_letters is None else dead_letters) else 0)
    offered = {chunk_of(r): r for r in receiver.requests}
    receiver.recover()
    receiver.clear()
    return offered


async def chunks_in_ledger(config: Path) -> list[ChunkRecord]:
    async with SqliteLedger(config.parent / "ledger.db") as ledger:
        return await ledger.chunks("b-1")


async def test_replay_delivers_exactly_the_dead_lettered_chunks_with_their_first_keys_and_bytes(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    offered = await send_with_primary_down_for(capsys, config, receiver, DOWN)
    before = await chunks_in_ledger(config)
    assert {c.chunk_id for c in before if c.state is ChunkState.DEAD_LETTERED} == DOWN

    code, out, _ = await sender(capsys, "replay", "b-1", "--dead-lettered", "-c", str(config))

    assert code == 0, out
    assert sorted(chunk_of(r) for r in receiver.requests) == sorted(DOWN)  # nothing else
    for request in receiver.requests:
        first = offered[chunk_of(request)]
        assert request.idempotency_key == first.idempotency_key
        assert request.body_raw == first.body_raw  # the very bytes the dead primary was offered
        assert request.headers["Content-Encoding"] == "zstd"
    after = await chunks_in_ledger(config)
    assert all(c.state is ChunkState.DELIVERED and c.target == "api" for c in after)
    dead = [c for c in before if c.chunk_id in DOWN]
    assert all(exists(c.location) for c in dead)  # dead letters are kept
    async with SqliteLedger(config.parent / "ledger.db") as ledger:
        record = await ledger.get_batch("b-1")
        (replay,) = await ledger.replays("b-1")
    assert record is not None
    stats = record.routes["churn"]
    assert (stats.read, stats.delivered, stats.dead_lettered) == (5000, 5000, 0)
    assert stats.reconciled
    assert replay["selectors"]["mode"] == "dead-lettered"
    assert replay["outcome"]["result"] == "delivered"
    assert replay["who"] == who_am_i()  # $USER@hostname
    assert "delivered 2 of 2 chunks" in out
    assert "read 5,000 = delivered 5,000 + dead-lettered 0 + rejected 0" in out


async def test_dry_run_sends_nothing_and_says_what_would_go(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, DOWN)

    code, out, _ = await sender(capsys, "replay", "b-1", "--dry-run", "--json", "-c", str(config))

    assert code == 0
    assert receiver.requests == []
    report = orjson.loads(out)
    assert report["result"] == "dry run"
    assert [(c["chunk"], c["records"], c["target"], c["state"]) for c in report["chunks"]] == [
        ("2", 500, "api", "would send"),
        ("7", 500, "api", "would send"),
    ]
    assert all(c["bytes"] > 0 for c in report["chunks"])
    after = await chunks_in_ledger(config)
    assert {c.chunk_id for c in after if c.state is ChunkState.DEAD_LETTERED} == DOWN


async def test_to_sends_to_the_other_destination_with_the_same_keys(
    capsys: pytest.CaptureFixture[str],
    setup: Callable[..., Path],
    receiver: Receiver,
    backup_receiver: Receiver,
) -> None:
    config = setup()
    offered = await send_with_primary_down_for(capsys, config, receiver, DOWN)

    code, out, _ = await sender(capsys, "replay", "b-1", "--to", "backup", "-c", str(config))

    assert code == 0, out
    assert receiver.requests == []
    received = {chunk_of(r): r for r in backup_receiver.requests}
    assert set(received) == DOWN
    for chunk, request in received.items():
        assert request.idempotency_key == offered[chunk].idempotency_key
        assert request.headers["Content-Encoding"] == "gzip"  # the backup's own codec
        assert len(request.records) == 500
    after = {c.chunk_id: c for c in await chunks_in_ledger(config)}
    assert {after[c].target for c in DOWN} == {"backup"}


async def test_replay_refuses_while_another_owner_holds_the_batch(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, DOWN)
    async with SqliteLedger(config.parent / "ledger.db") as ledger:
        assert await ledger.acquire_lease("b-1", "daemon-7:4242", 60)

        code, _, err = await sender(capsys, "replay", "b-1", "-c", str(config))
        dry_code, dry_out, _ = await sender(capsys, "replay", "b-1", "--dry-run", "-c", str(config))

        replays = await ledger.replays("b-1")
    assert dry_code == 0 and "daemon-7:4242 holds the batch now" in dry_out
    assert code == 1
    assert "being sent by daemon-7:4242" in err
    assert "--wait" in err
    assert receiver.requests == []
    assert [r["outcome"]["result"] for r in replays] == ["refused", "dry run"]


async def test_replay_waits_for_a_lease_that_is_let_go(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, DOWN)
    async with SqliteLedger(config.parent / "ledger.db") as ledger:
        assert await ledger.acquire_lease("b-1", "daemon-7:4242", 0.5)  # expires on its own

    code, _, err = await sender(capsys, "replay", "b-1", "--wait", "20s", "-c", str(config))

    assert code == 0
    assert "waiting up to 20s" in err
    assert sorted(chunk_of(r) for r in receiver.requests) == sorted(DOWN)


async def test_changed_source_is_refused_without_force(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    offered = await send_with_primary_down_for(capsys, config, receiver, DOWN)
    part = config.parent / "batch" / "part-00001-c000.json"
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))  # a rewrite

    code, _, err = await sender(capsys, "replay", "b-1", "-c", str(config))

    assert code == 1
    assert "source changed" in err and "part-00001-c000.json" in err and "--force" in err
    assert receiver.requests == []

    code, out, _ = await sender(capsys, "replay", "b-1", "--force", "-c", str(config))

    assert code == 0, out
    assert {chunk_of(r): r.body_raw for r in receiver.requests} == {
        c: offered[c].body_raw for c in DOWN
    }


async def test_replay_reads_the_dead_letter_store_when_the_source_is_gone(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    offered = await send_with_primary_down_for(capsys, config, receiver, DOWN)
    shutil.rmtree(config.parent / "batch")

    code, out, _ = await sender(capsys, "replay", "b-1", "--json", "-c", str(config))

    assert code == 0, out
    report = orjson.loads(out)
    assert {c["origin"] for c in report["chunks"]} == {"stored copy"}
    assert report["source"].startswith("gone")
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        first = offered[chunk_of(request)]
        assert request.body_raw == first.body_raw  # ndjson file → the primary's zstd bytes
        assert request.idempotency_key == first.idempotency_key


async def test_chunks_selector_resends_only_those_chunks(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup(fields=False)  # the pass-through fast path
    first = await send_with_primary_down_for(capsys, config, receiver, set())

    code, out, _ = await sender(capsys, "replay", "b-1", "--chunks", "3,7-9", "-c", str(config))

    assert code == 0, out
    assert sorted(chunk_of(r) for r in receiver.requests) == ["3", "7", "8", "9"]
    for request in receiver.requests:
        assert request.body_raw == first[chunk_of(request)].body_raw
        assert request.idempotency_key == first[chunk_of(request)].idempotency_key


async def test_rate_spaces_the_requests(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, set())

    code, _, _ = await sender(
        capsys, "replay", "b-1", "--chunks", "0-3", "--rate", "5/s", "-c", str(config)
    )

    assert code == 0
    times = sorted(r.received_at for r in receiver.requests)
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.15  # 5/s: one every 0.2 s, loosely


async def test_replay_that_fails_again_exits_1_and_keeps_the_chunk_dead_lettered(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, DOWN)
    receiver.fail_where(lambda request: request.headers.get("X-Sender-Chunk") == "7")

    code, out, _ = await sender(capsys, "replay", "b-1", "-c", str(config))

    assert code == 1
    assert "delivered 1 of 2 chunks" in out
    states = {c.chunk_id: c.state for c in await chunks_in_ledger(config)}
    assert states["2"] is ChunkState.DELIVERED and states["7"] is ChunkState.DEAD_LETTERED
    async with SqliteLedger(config.parent / "ledger.db") as ledger:
        record = await ledger.get_batch("b-1")
    assert record is not None
    assert (record.routes["churn"].delivered, record.routes["churn"].dead_lettered) == (4500, 500)


async def test_dead_letters_lists_reasons_and_purge_deletes_only_delivered_ones(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, DOWN)
    code, out, _ = await sender(capsys, "dead-letters", "--json", "-c", str(config))
    assert code == 0
    listed = orjson.loads(out)["dead_letters"]
    assert [(e["chunk"], e["state"]) for e in listed] == [
        ("2", "dead-lettered"),
        ("7", "dead-lettered"),
    ]
    assert all("HTTP 503" in e["reason"] and exists(e["location"]) for e in listed)
    files = {e["chunk"]: Path(e["location"]) for e in listed}
    receiver.fail_where(lambda request: request.headers.get("X-Sender-Chunk") == "7")
    await sender(capsys, "replay", "b-1", "-c", str(config))

    code, out, _ = await sender(
        capsys, "dead-letters", "--batch", "b-1", "--purge", "-c", str(config)
    )

    assert code == 0
    assert "deleted: chunk 2 of churn" in out and "chunk 7" not in out
    assert not exists(files["2"])
    assert not exists(files["2"].with_name(files["2"].name + ".meta.json"))
    assert exists(files["7"])  # not delivered: never deleted
    code, out, _ = await sender(capsys, "dead-letters", "--batch", "b-1", "-c", str(config))
    assert "chunk 7" in out and "chunk 2" not in out


async def test_status_of_a_batch_shows_chunks_dead_letters_replays_in_80_columns(
    capsys: pytest.CaptureFixture[str],
    setup: Callable[..., Path],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, DOWN)
    chunks = await chunks_in_ledger(config)

    code, out, _ = await sender(capsys, "status", "b-1", "-c", str(config))

    assert code == 0
    assert max(map(len, out.splitlines())) <= 80
    assert "dead-lettered" in out
    assert "read 5,000 = delivered 4,000 + dead-lettered 1,000 + rejected 0" in out
    assert all(c.idempotency_key in out for c in chunks)  # whole keys, for grepping their logs
    assert "would send 2 dead-lettered chunks" in out
    dead = next(c for c in chunks if c.chunk_id == "2")
    assert dead.location is not None and dead.location in unwrap(out)

    _, before, _ = await sender(capsys, "status", "b-1", "--json", "-c", str(config))
    await sender(capsys, "replay", "b-1", "-c", str(config))
    code, out, _ = await sender(capsys, "status", "b-1", "-c", str(config))

    assert max(map(len, out.splitlines())) <= 80
    assert "replays" in out and "--dead-lettered" in out and "delivered 2/2" in out
    code, out, _ = await sender(capsys, "status", "b-1", "--json", "-c", str(config))
    data = orjson.loads(out)
    assert data["reconciliation"]["churn"]["reconciled"] is True
    assert data["records"]["dead_lettered"] == 0
    assert data["replays"][0]["outcome"]["delivered"] == 2
    assert data["duration_s"] == orjson.loads(before)["duration_s"]  # the run's, not the replay's
    assert {d["chunk"] for d in data["dead_letters"]} == DOWN


async def test_unknown_chunks_and_targets_are_usage_errors(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, DOWN)

    code, _, err = await sender(capsys, "replay", "b-1", "--chunks", "12", "-c", str(config))
    assert code == 2 and "no chunk 12" in err
    code, _, err = await sender(capsys, "replay", "b-1", "--to", "nowhere", "-c", str(config))
    assert code == 2 and "no destination 'nowhere'" in err
    code, _, err = await sender(capsys, "replay", "b-1", "--to", "dead", "-c", str(config))
    assert code == 2 and "dead-letter store" in err
    code, _, err = await sender(capsys, "replay", "b-1", "--chunks", "9-3", "-c", str(config))
    assert code == 2 and "--chunks" in err
    code, _, err = await sender(capsys, "replay", "nope", "-c", str(config))
    assert code == 2 and "no batch 'nope'" in err
    assert receiver.requests == []


def test_chunk_ids_are_parsed_from_lists_and_ranges() -> None:
    assert parse_chunk_ids("3,7-9") == ("3", "7", "8", "9")
    assert parse_chunk_ids(" 3 , 3, 07.1 ") == ("3", "7.1")
    for bad in ("", "a", "9-3", "1-", "3,,x"):
        with pytest.raises(ValueError):
            parse_chunk_ids(bad)


def test_selection_picks_data_chunks_and_the_pieces_of_a_split_chunk() -> None:
    def chunk(chunk_id: str, state: ChunkState, kind: str = "data") -> ChunkRecord:
        return ChunkRecord("b", "r", chunk_id, state, kind=kind)

    chunks = [
        chunk("1", ChunkState.DELIVERED),
        chunk("7.0", ChunkState.DELIVERED),
        chunk("7.1", ChunkState.DEAD_LETTERED),
        chunk("10", ChunkState.DEAD_LETTERED),
        chunk("r0", ChunkState.DEAD_LETTERED, kind="rejects"),
    ]
    pick = lambda s: [c.chunk_id for c in select_chunks(chunks, s)]  # noqa: E731
    assert pick(Selection()) == ["7.1", "10"]
    assert pick(Selection(mode="all")) == ["1", "7.0", "7.1", "10"]
    assert pick(Selection(mode="chunks", chunks=("7",))) == ["7.0", "7.1"]
    assert pick(Selection(mode="all", routes=("other",))) == []


async def test_a_dead_lettered_piece_of_a_split_chunk_is_replayed_as_that_piece(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    poison = "cust-00001234"  # in chunk 2: the receiver refuses it until it is fixed
    receiver.reject_records(lambda record: record.get("customer_id") == poison)
    offered = await send_with_primary_down_for(capsys, config, receiver, set(), dead_letters=True)
    (piece,) = [c for c in await chunks_in_ledger(config) if c.state is ChunkState.DEAD_LETTERED]
    assert piece.chunk_id.startswith("2.") and piece.records == 1

    code, out, _ = await sender(capsys, "replay", "b-1", "--json", "-c", str(config))

    assert code == 0, out
    (request,) = receiver.requests
    assert chunk_of(request) == piece.chunk_id
    assert request.body_raw == offered[piece.chunk_id].body_raw
    assert request.idempotency_key == piece.idempotency_key
    assert request.records == [
        {"customer_id": poison, "churn_score": request.records[0]["churn_score"]}
    ]
    assert orjson.loads(out)["chunks"][0]["origin"] == "source"
    code, out, _ = await sender(
        capsys, "replay", "b-1", "--all", "--dry-run", "--json", "-c", str(config)
    )
    ids = [c["chunk"] for c in orjson.loads(out)["chunks"]]
    assert "2" not in ids and piece.chunk_id in ids  # the split chunk goes as its pieces
    assert sum(c["records"] for c in orjson.loads(out)["chunks"]) == 5000


class _RaisingMetrics(ReplayHooks):
    """A metrics hook with a bug: it raises whatever it is told."""

    def __init__(self) -> None:
        self.calls = 0

    def _boom(self) -> None:
        self.calls += 1
        raise KeyError("label")

    def waiting(self, holder: str, wait_s: float) -> None:
        self._boom()

    def started(self, report: ReplayReport) -> None:
        self._boom()

    def chunk_done(self, item: ReplayItem) -> None:
        self._boom()


async def test_a_hook_that_raises_never_changes_a_replay(
    capsys: pytest.CaptureFixture[str], setup: Callable[..., Path], receiver: Receiver
) -> None:
    config = setup()
    await send_with_primary_down_for(capsys, config, receiver, DOWN)
    hooks = _RaisingMetrics()

    with capture_logs() as logs:
        async with App(load_config(config)) as app:
            report = await Replayer(app, hooks=hooks).run("b-1", Selection())

    assert report.ok and sorted(i.chunk_id for i in report.delivered) == sorted(DOWN)
    assert sorted(chunk_of(r) for r in receiver.requests) == sorted(DOWN)
    assert hooks.calls == 3  # started, and one per chunk
    failed = sorted(e["method"] for e in logs if e["event"] == "hook.failed")
    assert failed == ["chunk_done", "started"]  # once per kind, not once per chunk
    after = await chunks_in_ledger(config)
    assert all(c.state is ChunkState.DELIVERED for c in after)
