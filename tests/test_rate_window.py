"""A destination's ``rate_limit`` holds over every window of a second or more, from the very
first request: a real receiver counts what arrives, per sliding window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from sender.model import EncodedChunk
from sender.targets import Target
from sender.testing.receiver import Receiver
from sender_adapters.http import HttpDestination

RATE = 30.0  # requests per second
REQUESTS = 75  # two and a half seconds' worth


def most_in_window(arrivals: Sequence[float], window_s: float) -> int:
    """The most requests that arrived within any ``window_s`` (half-open) window."""
    times = sorted(arrivals)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def chunk(number: int) -> EncodedChunk:
    return EncodedChunk(
        batch_id="b-1",
        dataset="churn",
        route="churn",
        chunk_id=str(number),
        records=1,
        format="ndjson",
        codec="none",
        payload=b'{"id": %d}\n' % number,
        raw_size=12,
        idempotency_key=f"key-{number}",
    )


@pytest.fixture
async def api(receiver: Receiver) -> AsyncIterator[Target]:
    options = HttpDestination.Options(
        type="http", url=f"{receiver.url}/scores", rate_limit="30/s", concurrency=8
    )
    async with HttpDestination("api", options) as destination:
        yield Target("api", destination, options)


async def test_no_window_of_a_second_or_more_sees_more_than_the_limit(
    api: Target, receiver: Receiver
) -> None:
    await asyncio.gather(*(api.send(chunk(n)) for n in range(REQUESTS)))

    arrivals = [r.received_at for r in receiver.requests]
    assert len(arrivals) == REQUESTS
    # the first second too: no bucket saved up a second's worth before the first request
    assert most_in_window(arrivals, 1.0) <= RATE * 1.1
    assert most_in_window(arrivals, 2.0) <= 2 * RATE * 1.1
    # and the limit is a rate, not a ceiling far below it
    assert max(arrivals) - min(arrivals) < 1.5 * REQUESTS / RATE


def test_the_window_count_counts_what_a_receiver_would() -> None:
    assert most_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert most_in_window([], 1.0) == 0
