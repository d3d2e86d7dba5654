"""Adaptive concurrency finds what a receiver can take, and backs off when it pushes back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sender.app import App
from sender.config import AppConfig
from tests.chaos.checks import audit
from tests.chaos.receiver import ChaosReceiver
from tests.chaos.scenario import config_text, http_destination, ids, make_batch

pytestmark = pytest.mark.chaos

RECORDS = 20_000  # 200 chunks of 100
CAPACITY = 6  # requests the receiver takes at once; more get 503


async def test_adaptive_concurrency_settles_below_what_the_receiver_refuses(
    tmp_path: Path, chaos_receiver: ChaosReceiver, chaos_config: Callable[[str], AppConfig]
) -> None:
    config = chaos_config(
        config_text(
            http_destination(
                "api",
                chaos_receiver.url,
                concurrency='"adaptive"',
                max_concurrency="32",
                retry='{ attempts = 10, initial = "5ms", max = "50ms" }',
            ),
            targets=["api"],
            records=100,
        )
    )
    message = make_batch(tmp_path / "batch", RECORDS, "adaptive")
    chaos_receiver.latency(0.02)
    chaos_receiver.fail_where(lambda request: chaos_receiver.in_flight > CAPACITY, status=503)

    async with App(config) as app:
        api = app.targets["api"]
        with capture_logs() as logs:
            await app.engine.run_batch(message)
        figures = await audit(
            "adaptive-concurrency",
            ledger=app.ledger,
            batch_id=message.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver},
            dead_letter=tmp_path / "dead",
        )
        assert api.aimd is not None
        changes = dict(api.aimd.changes)

    refused = sum(r.status_returned == 503 for r in chaos_receiver.requests)
    cuts = [e for e in logs if e["event"] == "concurrency.changed" and e["reason"]]
    # it grew past one, was pushed back, and never came near the ceiling of 32
    assert changes.get("up", 0) >= 3 and changes.get("down", 0) >= 1, changes
    assert chaos_receiver.max_in_flight <= 2 * CAPACITY
    assert refused <= 0.15 * len(chaos_receiver.requests), refused
    assert figures.dead_lettered == 0
    figures.notes = {
        "503s": refused,
        "max in flight": chaos_receiver.max_in_flight,
        "limit raised": changes.get("up", 0),
        "limit cut": changes.get("down", 0),
        "cut events logged": sum(e["reason"] == "push-back" for e in cuts),
    }
