"""A failed batch runs again under its id once its input is fixed (``"rerun": true``,
``sender send --rerun``): the source is listed and recorded anew, the chunks delivered before
the failure are not sent again, and the reconciliation counts every record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sender.app import App
from sender.config import load_config
from sender.model import BatchState, TriggerMessage
from sender.retry import set_testing
from sender.testing.receiver import Receiver
from tests.batches import write_batch


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


def config(folder: Path, url: str) -> Path:
    path = folder / "sender.toml"
    path.write_text(f"""
[daemon]
ledger = "ledger.db"

[destinations.partner]
type = "http"
url = "{url}"
concurrency = 1

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 50 }}
targets = ["partner"]
dead_letter = "dead"
on_bad_record = "fail"
""")
    return path


async def test_a_failed_batch_is_finished_under_its_id_after_its_input_is_fixed(
    tmp_path: Path, receiver: Receiver
) -> None:
    uri = write_batch(tmp_path / "in", 300)
    last = sorted(uri.glob("part-*"))[-1]
    good = last.read_bytes()
    lines = good.splitlines(keepends=True)
    last.write_bytes(b"".join(lines[:40]) + b"{corrupt\n" + b"".join(lines[40:]))
    message = TriggerMessage(batch_id="b-1", dataset="churn", uri=str(uri))

    async with App(load_config(config(tmp_path, receiver.url))) as app:
        first = await app.engine.run_batch(message)
        assert first.state is BatchState.FAILED
        assert len(receiver.unique_records()) >= 150  # chunks cut before the bad record got out

        last.write_bytes(good)  # the input is fixed
        refused = await app.engine.run_batch(message)
        assert refused.state is BatchState.FAILED
        assert "source changed" in (refused.error or "") and "--rerun" in (refused.error or "")

        rerun = await app.engine.run_batch(message.model_copy(update={"rerun": True}))
        record = await app.ledger.get_batch("b-1")

    assert rerun.state is BatchState.COMPLETE and rerun.ok
    totals = rerun.totals
    assert totals.read == 300 and totals.delivered == 300 and totals.reconciled
    assert len(receiver.unique_records()) == 300
    assert len(receiver.records()) == 300  # nothing delivered before was sent again
    assert record is not None and record.state is BatchState.COMPLETE
    assert record.objects is not None
    assert {o.size for o in record.objects if o.uri.endswith(last.name)} == {len(good)}
