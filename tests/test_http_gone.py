"""``410 Gone``: the receiver says the endpoint is gone for good. The destination is disabled
for the rest of the process: logged once (``destination.gone``), counted in metrics, shown
in the target's stats, and every chunk goes on to the fallback or the dead-letter store
without another request to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sender.app import App
from sender.config import load_config
from sender.metrics import Metrics
from sender.model import TriggerMessage
from sender.retry import set_testing
from sender.statushtml import destinations_table
from sender.testing.receiver import Receiver
from tests.batches import write_batch


@pytest.fixture(autouse=True)
def no_backoff() -> AsyncIterator[None]:
    set_testing(True)
    yield
    set_testing(False)


@pytest.fixture
async def retired() -> AsyncIterator[Receiver]:
    async with Receiver() as receiver:
        receiver.fail_always(410)  # everything, with this body
        yield receiver


@pytest.fixture
async def fallback() -> AsyncIterator[Receiver]:
    async with Receiver() as receiver:
        yield receiver


def config(folder: Path, primary: str, fallback: str | None) -> Path:
    targets = '["old_api", "new_api"]' if fallback else '["old_api"]'
    text = f"""
[daemon]
ledger = "ledger.db"

[destinations.old_api]
type = "http"
url = "{primary}"
concurrency = 1
retry = {{ attempts = 3 }}
"""
    if fallback:
        text += f"""
[destinations.new_api]
type = "http"
url = "{fallback}"
"""
    text += f"""
[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 100 }}
targets = {targets}
dead_letter = "dead"
"""
    path = folder / "sender.toml"
    path.write_text(text)
    return path


def batch(folder: Path, batch_id: str, records: int = 500) -> TriggerMessage:
    uri = write_batch(folder / batch_id, records)
    return TriggerMessage(batch_id=batch_id, dataset="churn", uri=str(uri))


async def test_a_410_disables_the_destination_and_chunks_go_to_the_fallback(
    tmp_path: Path, retired: Receiver, fallback: Receiver
) -> None:
    metrics = Metrics(CollectorRegistry())
    app_config = load_config(config(tmp_path, retired.url, fallback.url))
    with capture_logs() as logs:
        async with App(app_config, metrics=metrics) as app:
            await app.engine.run_batch(batch(tmp_path, "b-1"))
            await app.engine.run_batch(batch(tmp_path, "b-2"))  # still gone for a new batch
            stats = app.targets["old_api"].stats()
            page = destinations_table(
                [{**stats, "name": "old_api", "type": "http", "role": "primary", "adaptive": False}]
            )
            chunks = await app.ledger.chunks("b-1") + await app.ledger.chunks("b-2")

    assert len(retired.requests) == 1  # one 410, then never asked again
    assert len(fallback.unique_records()) == 1000
    assert {chunk.target for chunk in chunks} == {"new_api"}
    assert stats["gone"].startswith("HTTP 410")
    assert ">gone</span>" in page  # the status page says so
    gone = [line for line in logs if line["event"] == "destination.gone"]
    assert len(gone) == 1 and gone[0]["target"] == "old_api"
    assert (
        metrics.registry.get_sample_value("sender_destination_gone_total", {"target": "old_api"})
        == 1
    )


async def test_without_a_fallback_the_chunks_of_a_gone_destination_are_dead_lettered(
    tmp_path: Path, retired: Receiver
) -> None:
    async with App(load_config(config(tmp_path, retired.url, None))) as app:
        await app.engine.run_batch(batch(tmp_path, "b-1", records=300))
        chunks = await app.ledger.chunks("b-1")

    assert len(retired.requests) == 1
    assert [chunk.state.value for chunk in chunks] == ["dead_lettered"] * 3
    assert all("410" in (chunk.last_error or "") for chunk in chunks)
    assert len(list((tmp_path / "dead").rglob("*.ndjson"))) == 3


async def test_other_permanent_errors_do_not_disable_the_destination(
    tmp_path: Path, fallback: Receiver
) -> None:
    async with Receiver() as forbidden:
        forbidden.fail_always(403)
        async with App(load_config(config(tmp_path, forbidden.url, fallback.url))) as app:
            await app.engine.run_batch(batch(tmp_path, "b-1", records=300))
            assert app.targets["old_api"].stats()["gone"] is None
    assert len(forbidden.requests) == 3  # every chunk was offered
