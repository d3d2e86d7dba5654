"""A dead primary is skipped once its circuit opens, and used again after a probe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sender.app import App
from sender.circuit import CircuitState
from sender.config import AppConfig
from tests.chaos.checks import audit
from tests.chaos.receiver import ChaosReceiver
from tests.chaos.scenario import config_text, http_destination, ids, make_batch

pytestmark = pytest.mark.chaos

RECORDS = 10_000  # 40 chunks


async def test_a_dead_primary_is_skipped_once_its_circuit_opens_then_probed_back(
    tmp_path: Path,
    chaos_receiver: ChaosReceiver,
    fallback_receiver: ChaosReceiver,
    chaos_config: Callable[[str], AppConfig],
) -> None:
    config = chaos_config(
        config_text(
            http_destination(
                "api",
                chaos_receiver.url,
                concurrency="2",
                retry='{ attempts = 3, initial = "10ms", max = "20ms" }',
                circuit='{ failures = 3, reset = "500ms" }',
            ),
            http_destination("backup", fallback_receiver.url),
            targets=["api", "backup"],
        )
    )
    first = make_batch(tmp_path / "a", RECORDS, "down")
    chaos_receiver.fail_always(503)

    async with App(config) as app:
        api = app.targets["api"]
        with capture_logs() as logs:
            outcome = await app.engine.run_batch(first)
        down = await audit(
            "circuit-open",
            ledger=app.ledger,
            batch_id=first.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver, "backup": fallback_receiver},
            dead_letter=tmp_path / "dead",
        )
        # without the breaker: 40 chunks x 3 attempts; with it: until it opens, plus probes
        tried = len(chaos_receiver.requests)
        assert tried <= 20, tried
        assert down.delivered == RECORDS and outcome.fallbacks == 40
        events = [e["event"] for e in logs]
        assert "circuit.opened" in events and events.count("circuit.skip") >= 30
        assert all(e["target"] == "api" for e in logs if e["event"] == "circuit.opened")

        # the primary comes back: once the reset has passed, one probe closes the circuit
        chaos_receiver.recover()
        # the reset is a span of time: let it pass (a hair more, timers may fire early)
        await asyncio.sleep(api.circuit.retry_after() + 0.01)
        assert api.circuit.state is CircuitState.HALF_OPEN
        second = make_batch(tmp_path / "b", RECORDS, "back")
        with capture_logs() as logs:
            await app.engine.run_batch(second)
        back = await audit(
            "circuit-recovered",
            ledger=app.ledger,
            batch_id=second.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver, "backup": fallback_receiver},
            dead_letter=tmp_path / "dead",
        )

    assert api.circuit.state is CircuitState.CLOSED
    # the first chunk of the next batch was the probe, and it closed the circuit (the chunks
    # beside it skipped the primary while it was out)
    circuit_events = [e["event"] for e in logs if e["event"].startswith("circuit.")]
    assert circuit_events[0] == "circuit.probe" and "circuit.closed" in circuit_events
    assert "circuit.opened" not in circuit_events
    keys = {c.idempotency_key for c in await _chunks(config, second.batch_id, "api")}
    # the probe and everything after it went to the primary again; only the chunks already
    # in flight beside the probe (the engine keeps 2 x concurrency) went to the fallback
    assert len(keys) >= 40 - 3, len(keys)
    down.notes = {"primary requests": tried, "skips": events.count("circuit.skip")}
    back.notes = {"after recovery, chunks to primary": len(keys)}


async def _chunks(config: AppConfig, batch_id: str, target: str) -> list:  # type: ignore[type-arg]
    async with App(config) as app:
        return [c for c in await app.ledger.chunks(batch_id) if c.target == target]
