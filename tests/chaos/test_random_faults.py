"""A receiver failing at random, in every way we know, loses nothing and gets duplicates only
as the same chunk with the same key."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from sender.app import App
from sender.config import AppConfig
from sender.model import BatchState, TriggerMessage
from tests.batches import write_batch
from tests.chaos.checks import audit
from tests.chaos.receiver import ChaosReceiver

pytestmark = pytest.mark.chaos

RECORDS = 20_000


def config_text(url: str) -> str:
    return f"""
        [daemon]
        ledger = "ledger.db"

        [destinations.api]
        type = "http"
        url = "{url}/scores"
        compression = "zstd"
        timeout = "500ms"
        concurrency = 8
        retry = {{ attempts = 12, initial = "10ms", max = "100ms", budget = "1m" }}

        [destinations.dead]
        type = "local"
        path = "dead"
        retry = {{ attempts = 2, initial = "10ms" }}

        [routes.churn]
        datasets = ["churn"]
        chunk = {{ records = 250 }}
        targets = ["api"]
        dead_letter = "dead"
        """


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_faults_lose_nothing_and_duplicate_only_by_key(
    seed: int,
    tmp_path: Path,
    chaos_receiver: ChaosReceiver,
    chaos_config: Callable[[str], AppConfig],
) -> None:
    batch = write_batch(tmp_path / "batch", RECORDS, parts=4)
    chaos_receiver.chaos(0.3, seed)
    config = chaos_config(config_text(chaos_receiver.url))
    message = TriggerMessage(batch_id=f"chaos-{seed}", dataset="churn", uri=str(batch))

    async with App(config) as app:
        outcome = await app.engine.run_batch(message)
        figures = await audit(
            "random-faults",
            seed=seed,
            ledger=app.ledger,
            batch_id=message.batch_id,
            expected_ids={f"cust-{i:08d}" for i in range(RECORDS)},
            receivers={"api": chaos_receiver},
            dead_letter=tmp_path / "dead",
        )
    resent = Counter(r.idempotency_key for r in chaos_receiver.accepted)
    figures.notes = {
        "faults served": sum(chaos_receiver.faults.values()),
        "kinds": len(chaos_receiver.faults),
        "chunks taken twice": sum(n > 1 for n in resent.values()),
    }

    assert outcome.state is BatchState.COMPLETE
    assert len(chaos_receiver.faults) >= 6, chaos_receiver.faults  # most kinds were served
    assert figures.delivered + figures.dead_lettered == RECORDS
