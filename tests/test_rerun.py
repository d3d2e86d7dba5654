"""A failed batch runs again under its id once its input is fixed (``"rerun": true``,
``sender send --rerun``): the source is listed and recorded anew, the chunks delivered before
the failure are not sent again, and the reconciliation counts every record."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sender.app import App
from sender.config import load_config
from sender.model import BatchState, TriggerMessage
from sender.retry import set_testing
from sender.testing.receiver import Receiver
from tests.batches import write_batch
from tests.brokers import DaemonProcess, churn_batch, write_daemon_config
from tests.test_cli import sender as cli


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


async def fail_on_a_corrupt_part(tmp_path: Path, url: str) -> tuple[Path, Path, bytes]:
    """``sender send`` of a batch whose last part has a bad record at line 41: the config,
    that part file and its good bytes."""
    uri = write_batch(tmp_path / "in", 300)
    last = sorted(uri.glob("part-*"))[-1]
    good = last.read_bytes()
    lines = good.splitlines(keepends=True)
    last.write_bytes(b"".join(lines[:40]) + b"{corrupt\n" + b"".join(lines[40:]))
    path = config(tmp_path, url)
    code, out, err = await cli(*send_args(path))
    assert code == 1, (out, err)
    assert f"bad record at {last.name}:41" in out + err
    return path, last, good


def send_args(path: Path) -> tuple[str, ...]:
    uri = path.parent / "in"
    return ("send", str(uri), "--dataset", "churn", "--batch-id", "b-1", "-c", str(path))


async def assert_complete_with_every_record(path: Path) -> None:
    code, out, _ = await cli("status", "b-1", "-c", str(path))
    assert code == 0 and "complete" in out
    assert "read 300 = delivered 300 + dead-lettered 0 + rejected 0" in " ".join(out.split())


async def test_sender_send_rerun_finishes_a_failed_batch_from_the_shell(
    tmp_path: Path, receiver: Receiver
) -> None:
    path, last, good = await fail_on_a_corrupt_part(tmp_path, receiver.url)
    before = len(receiver.records())
    assert 0 < before < 300

    last.write_bytes(good)
    code, out, err = await cli(*send_args(path))
    assert code == 1 and "--rerun" in out + err, (out, err)
    code, out, _ = await cli("status", "b-1", "-c", str(path))
    status = " ".join(out.split())
    assert code == 0 and "read 0 =" not in status  # the refused run read nothing
    assert f"delivered {before} +" in status  # what the first run delivered still counts

    code, out, err = await cli(*send_args(path), "--rerun", "--json")
    assert code == 0, (out, err)
    outcome = orjson.loads(out)
    assert outcome["batch_id"] == "b-1" and outcome["state"] == "complete"
    assert outcome["records"]["read"] == 300 and outcome["records"]["delivered"] == 300
    assert len(receiver.unique_records()) == 300
    assert len(receiver.records()) == 300  # the chunks of the first run were not sent again
    await assert_complete_with_every_record(path)


async def test_replay_all_force_covers_the_chunks_the_failed_run_never_cut(
    tmp_path: Path, receiver: Receiver
) -> None:
    path, last, good = await fail_on_a_corrupt_part(tmp_path, receiver.url)
    first = {r["id"] for r in receiver.records()}
    assert 0 < len(first) < 300
    code, out, _ = await cli("replay", "b-1", "-c", str(path))
    assert code == 0 and "sender send --rerun" in " ".join(out.split()), out

    last.write_bytes(good)
    code, out, err = await cli("replay", "b-1", "--all", "--force", "--json", "-c", str(path))
    assert code == 0, (out, err)
    report = orjson.loads(out)
    assert report["rest"] == "complete"
    churn = report["routes"]["churn"]
    assert churn["read"] == 300 and churn["delivered"] == 300 and report["reconciled"]
    assert len(receiver.unique_records()) == 300  # every record of the batch got out
    resent = [r["id"] for r in receiver.records()]
    assert len(resent) == 300 + len(first)  # --all: the first run's chunks went again too
    await assert_complete_with_every_record(path)


async def test_a_trigger_message_with_rerun_true_finishes_the_batch_in_a_running_daemon(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(
        tmp_path, receiver=receiver.url, trigger='type = "spool"\npath = "queue"\npoll_s = "50ms"'
    )
    with config.open("a") as file:  # the last table is [routes.churn]
        file.write('on_bad_record = "fail"\n')
    message = churn_batch(tmp_path, "b-1")  # two parts of 5 records, one chunk each
    last = sorted((tmp_path / "lake" / "b-1").glob("part-*"))[-1]
    good = last.read_bytes()
    lines = good.splitlines(keepends=True)
    last.write_bytes(b"".join(lines[:2]) + b"{corrupt\n" + b"".join(lines[2:]))
    queue = tmp_path / "queue"
    queue.mkdir()

    def publish(name: str, **fields: object) -> None:
        body = message.model_dump(mode="json") | fields
        (queue / f"{name}.json").write_bytes(orjson.dumps(body))

    daemon = await DaemonProcess(config).start()
    try:
        async with asyncio.timeout(60):
            publish("1-first")
            await daemon.wait_for_event("batch.finished", batch_id="b-1", state="failed")
            last.write_bytes(good)  # the input is fixed
            publish("2-rerun", rerun=True)
            done = await daemon.wait_for_event("batch.finished", batch_id="b-1", state="complete")
        code, _ = await daemon.stop(within_s=30)
    finally:
        await daemon.kill()

    assert code == 0
    assert (done["read"], done["delivered"], done["reconciled"]) == (10, 10, True)
    assert len(receiver.unique_records()) == 10
    assert len(receiver.records()) == 10  # the chunk of the first run was not sent again
