"""A dead route never drops data: with every target down, chunks go to the dead-letter
store; with that down too, the batch stops unacked and the daemon reports not ready."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from sender.app import App
from sender.config import AppConfig
from sender.model import BatchState
from sender.service import open_daemon
from tests.chaos.checks import audit
from tests.chaos.receiver import ChaosReceiver
from tests.chaos.scenario import config_text, http_destination, ids, make_batch

pytestmark = pytest.mark.chaos

RECORDS = 5_000  # 20 chunks


async def test_with_every_target_down_everything_is_dead_lettered(
    tmp_path: Path,
    chaos_receiver: ChaosReceiver,
    closed_port_url: str,
    chaos_config: Callable[[str], AppConfig],
) -> None:
    config = chaos_config(
        config_text(
            http_destination("api", chaos_receiver.url, circuit='{ failures = 2, reset = "1m" }'),
            http_destination("backup", closed_port_url, circuit='{ failures = 2, reset = "1m" }'),
            targets=["api", "backup"],
        )
    )
    message = make_batch(tmp_path / "batch", RECORDS, "dead-route")
    chaos_receiver.fail_always(500)

    async with App(config) as app:
        outcome = await app.engine.run_batch(message)
        figures = await audit(
            "dead-route",
            ledger=app.ledger,
            batch_id=message.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver},
            dead_letter=tmp_path / "dead",
        )
        circuits = {name: t.circuit.state.value for name, t in app.targets.items()}

    assert outcome.state is BatchState.COMPLETE and not outcome.ok
    assert figures.dead_lettered == RECORDS
    assert circuits["api"] == circuits["backup"] == "open"
    # both circuits opened with the first chunks (those in flight then: 2 x concurrency);
    # every later chunk went straight to the store without a request
    offered = {r.idempotency_key for r in chaos_receiver.requests}
    assert len(offered) <= 8 + 1, len(offered)
    figures.notes = {
        "chunks offered to the dead primary": len(offered),
        "of": outcome.routes["churn"].chunks,
    }


async def test_an_unwritable_dead_letter_store_keeps_the_batch_unacked_and_not_ready(
    tmp_path: Path, chaos_receiver: ChaosReceiver, chaos_config: Callable[[str], AppConfig]
) -> None:
    config = chaos_config(
        config_text(
            http_destination("api", chaos_receiver.url),
            targets=["api"],
            daemon='listen = "127.0.0.1:0"\nshutdown_grace = "2s"',
            trigger='[trigger]\ntype = "spool"\npath = "queue"\npoll_s = "20ms"',
        )
    )
    message = make_batch(tmp_path / "batch", RECORDS, "dead-letter-down")
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / "m-1.json").write_bytes(message.to_json())
    chaos_receiver.fail_always(503)
    (tmp_path / "dead").write_text("the dead-letter volume is gone")

    async with open_daemon(config) as daemon, aiohttp.ClientSession() as http:
        assert daemon.control is not None
        readyz = f"http://127.0.0.1:{daemon.control.port}/readyz"
        running = asyncio.create_task(daemon.run())
        try:
            settled = await asyncio.wait_for(daemon.wait_settled(1), 30)
            assert [s.verb for s in settled] == ["release"]  # given back, never acked
            async with http.get(readyz) as response:
                not_ready = (response.status, orjson.loads(await response.read()))
            assert not list((queue / "done").glob("*.json"))
            async with App(config) as app:
                record = await app.ledger.get_batch(message.batch_id)
                chunks = await app.ledger.chunks(message.batch_id)
            # the released message may already be taken again (state running): what matters
            # is that nothing was marked stored that is not
            assert record is not None and record.state is not BatchState.COMPLETE
            assert record.state in (BatchState.INCOMPLETE, BatchState.RUNNING)
            assert chunks and not any(c.state.terminal for c in chunks)

            (tmp_path / "dead").unlink()  # the volume is back: a next run completes
            # (a run that started while the store was still down is given back once more)
            for count in range(2, 6):
                settled = await asyncio.wait_for(daemon.wait_settled(count), 30)
                if settled[-1].verb == "ack":
                    break
            verbs = [s.verb for s in settled]
            assert verbs[-1] == "ack" and set(verbs[:-1]) == {"release"}
            async with http.get(readyz) as response:
                ready = response.status
        finally:
            daemon.request_stop("test")
            await running
        figures = await audit(
            "dead-letter-down",
            ledger=daemon.app.ledger,
            batch_id=message.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver},
            dead_letter=tmp_path / "dead",
        )

    assert not_ready[0] == 503
    assert any("incomplete" in p and "dead-letter" in p for p in not_ready[1]["problems"])
    assert ready == 200
    assert (queue / "done" / "m-1.json").exists()
    assert figures.dead_lettered == RECORDS
    figures.notes = {"/readyz while the store was down": not_ready[0], "after": ready}
