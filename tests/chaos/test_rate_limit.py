"""A destination's rate limit holds for every chunk, and a Retry-After pauses everyone."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from sender.app import App
from sender.config import AppConfig
from tests.chaos.checks import audit
from tests.chaos.receiver import ChaosReceiver
from tests.chaos.scenario import config_text, http_destination, ids, make_batch

pytestmark = pytest.mark.chaos

RECORDS = 10_000  # 100 chunks of 100
RATE = 50.0  # requests per second
PAUSE_S = 0.3


async def test_rate_limit_and_retry_after_hold_for_every_chunk(
    tmp_path: Path, chaos_receiver: ChaosReceiver, chaos_config: Callable[[str], AppConfig]
) -> None:
    config = chaos_config(
        config_text(
            http_destination("api", chaos_receiver.url, concurrency="8", rate_limit='"50/s"'),
            targets=["api"],
            records=100,
        )
    )
    message = make_batch(tmp_path / "batch", RECORDS, "paced")
    seen = itertools.count(1)
    chaos_receiver.fail_where(lambda request: next(seen) == 60, status=429, retry_after=PAUSE_S)

    async with App(config) as app:
        await app.engine.run_batch(message)
        figures = await audit(
            "rate-limit",
            ledger=app.ledger,
            batch_id=message.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver},
            dead_letter=tmp_path / "dead",
        )
        chunks = await app.ledger.chunks(message.batch_id)
        stats = app.targets["api"].stats()

    arrivals = sorted(r.received_at for r in chaos_receiver.requests)
    assert len(arrivals) == 101  # 100 chunks, one of them twice (the 429)
    # a token bucket: never more than a second's burst plus the rate over any interval
    # (three requests of slack: client and receiver share one busy event loop)
    for i, j in itertools.combinations(range(len(arrivals)), 2):
        assert j - i + 1 <= RATE + RATE * (arrivals[j] - arrivals[i]) + 3, (i, j)
    # the 429's Retry-After held back every chunk, not only the one that was told
    told = next(r.received_at for r in chaos_receiver.requests if r.status_returned == 429)
    # (requests already on the wire when the 429 came back may land just after it)
    during = [t for t in arrivals if told + 0.12 < t < told + PAUSE_S - 0.02]
    assert during == []
    # queueing for tokens cost no attempts: one retry in all, for the 429
    assert sum(c.attempts for c in chunks) == 101
    assert stats["ratelimit_waits"] > 0 and stats["pauses"] == 1
    figures.notes = {
        "rate-limit waits": stats["ratelimit_waits"],
        "chunk-seconds waited": stats["ratelimit_waited_s"],
        "pauses": stats["pauses"],
        "requests in pause": len(during),
    }
