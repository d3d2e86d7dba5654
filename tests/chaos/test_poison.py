"""Poison records: a chunk the receiver refuses is halved down to the records it refuses;
the good ones are delivered, the bad ones dead-lettered with the receiver's answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from sender.app import App
from sender.config import AppConfig
from sender.engine import SPLIT_TARGET
from sender.model import BatchState, ChunkState, idempotency_key
from tests.chaos.checks import audit, dead_letter_records
from tests.chaos.receiver import ChaosReceiver
from tests.chaos.scenario import config_text, http_destination, ids, make_batch

pytestmark = pytest.mark.chaos

RECORDS = 20_000  # 40 chunks of 500
BAD = {f"cust-{i:08d}" for i in (13, 977, 978, 4242, 9000, 15555, 19999)}


def poison_config(url: str, **route: str) -> str:
    extra = "\n".join(f"{k} = {v}" for k, v in route.items())
    return config_text(
        http_destination("api", url, concurrency="4"), targets=["api"], records=500, route=extra
    )


async def test_poison_records_are_isolated_and_only_they_are_dead_lettered(
    tmp_path: Path, chaos_receiver: ChaosReceiver, chaos_config: Callable[[str], AppConfig]
) -> None:
    config = chaos_config(poison_config(chaos_receiver.url))
    message = make_batch(tmp_path / "batch", RECORDS, "poison")
    chaos_receiver.reject_records(lambda record: record["id"] in BAD)

    async with App(config) as app:
        outcome = await app.engine.run_batch(message)
        figures = await audit(
            "poison-records",
            ledger=app.ledger,
            batch_id=message.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver},
            dead_letter=tmp_path / "dead",
        )
        chunks = await app.ledger.chunks(message.batch_id)

    assert outcome.state is BatchState.COMPLETE
    stats = outcome.routes["churn"]
    assert (stats.delivered, stats.dead_lettered, stats.chunks) == (RECORDS - len(BAD), 7, 40)
    assert {r["id"] for r in chaos_receiver.unique_records()} == ids(RECORDS) - BAD
    # only the bad records, one per dead-letter file, with the receiver's answer
    assert sorted(r["id"] for r in dead_letter_records(tmp_path / "dead")) == sorted(BAD)
    metas = [orjson.loads(p.read_bytes()) for p in (tmp_path / "dead").rglob("*.meta.json")]
    assert all("HTTP 422" in m["error"] and "rejected records" in m["error"] for m in metas)
    assert all(m["records"] == 1 and m["chunk"].count(".") >= 8 for m in metas)
    # pieces: deterministic ids, their own keys, each accepted once; split chunks marked
    split = [c for c in chunks if c.target == SPLIT_TARGET]
    assert {c.chunk_id for c in split if "." not in c.chunk_id} == {"0", "1", "8", "18", "31", "39"}
    assert all(
        c.state is ChunkState.DELIVERED and "HTTP 422" in (c.last_error or "") for c in split
    )
    for chunk in chunks:
        assert chunk.idempotency_key == idempotency_key("poison", "churn", chunk.chunk_id)
    accepted = Counter(r.idempotency_key for r in chaos_receiver.accepted)
    assert max(accepted.values()) == 1
    assert {"0.0", "0.1"} <= {c.chunk_id for c in chunks}
    figures.notes = {
        "chunks split": sum("." not in c.chunk_id for c in split),
        "pieces": sum(c.target != SPLIT_TARGET and "." in c.chunk_id for c in chunks),
        "422s": sum(r.status_returned == 422 for r in chaos_receiver.requests),
    }


async def test_without_split_on_reject_the_whole_chunk_is_dead_lettered(
    tmp_path: Path, chaos_receiver: ChaosReceiver, chaos_config: Callable[[str], AppConfig]
) -> None:
    config = chaos_config(poison_config(chaos_receiver.url, split_on_reject="false"))
    message = make_batch(tmp_path / "batch", 2000, "whole")
    chaos_receiver.reject_records(lambda record: record["id"] == "cust-00000600")

    async with App(config) as app:
        outcome = await app.engine.run_batch(message)

    stats = outcome.routes["churn"]
    assert (stats.delivered, stats.dead_lettered) == (1500, 500)
    assert len(chaos_receiver.requests) == 4


async def test_a_split_interrupted_by_a_dead_letter_outage_resumes_without_resending(
    tmp_path: Path, chaos_receiver: ChaosReceiver, chaos_config: Callable[[str], AppConfig]
) -> None:
    config = chaos_config(poison_config(chaos_receiver.url))
    message = make_batch(tmp_path / "batch", RECORDS, "poison-resume")
    chaos_receiver.reject_records(lambda record: record["id"] in BAD)
    (tmp_path / "dead").write_text("the dead-letter store is down")

    async with App(config) as app:
        first = await app.engine.run_batch(message)
        halfway = await app.ledger.chunks(message.batch_id)
    assert first.state is BatchState.INCOMPLETE
    assert any(c.target == SPLIT_TARGET and c.state is ChunkState.PENDING for c in halfway)
    assert any(c.state is ChunkState.FAILED and "." in c.chunk_id for c in halfway)
    sent_before = len(chaos_receiver.accepted)

    (tmp_path / "dead").unlink()
    async with App(config) as app:
        second = await app.engine.run_batch(message)
        figures = await audit(
            "poison-resume",
            ledger=app.ledger,
            batch_id=message.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver},
            dead_letter=tmp_path / "dead",
        )

    assert second.state is BatchState.COMPLETE
    assert second.routes["churn"].dead_lettered == len(BAD)
    accepted = Counter(r.idempotency_key for r in chaos_receiver.accepted)
    done_before = {c.idempotency_key for c in halfway if c.state.terminal}
    again = {key for key, n in accepted.items() if n > 1}
    # nothing the ledger had as done went again (a piece whose answer came back just as the
    # outage stopped the batch may: it was in flight, and goes again with its key)
    assert not again & done_before
    figures.notes = {
        "accepted before the outage": sent_before,
        "after": len(chaos_receiver.accepted) - sent_before,
    }
