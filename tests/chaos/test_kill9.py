"""Crash-safe resume: a daemon (``sender run --burst`` in a subprocess) is killed with SIGKILL
at random points and restarted until its batch is complete. Nothing is lost, the ledger is
never corrupt, and the only duplicates are chunks that were in flight at a kill, sent again
with the same key and bytes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from sender.app import open_ledger
from sender.config import AppConfig
from sender.model import BatchState
from tests.chaos.checks import audit
from tests.chaos.receiver import ChaosReceiver
from tests.chaos.scenario import config_text, http_destination, ids, make_batch

pytestmark = pytest.mark.chaos

RECORDS = 30_000  # 120 chunks of 250
KILLS = 3
BAD = {f"cust-{i:08d}" for i in (777, 12_345, 29_998)}
# faults the receiver did not act on: a duplicate can then only come from a kill
FAULTS = {"error": 0.4, "throttle": 0.2, "reset": 0.2, "partial_read": 0.2}
SENDER = Path(sys.executable).with_name("sender")


async def _accepted_keys(receiver: ChaosReceiver, batch_id: str) -> set[str | None]:
    return {
        r.idempotency_key for r in receiver.accepted if r.headers.get("X-Sender-Batch") == batch_id
    }


async def _run_or_kill(
    daemon: asyncio.subprocess.Process,
    receiver: ChaosReceiver,
    rng: random.Random,
    *,
    kill: bool,
) -> int:
    """Let the daemon run; with ``kill``, SIGKILL it after a random number of requests, at a
    random moment in between. Its exit status (-9 when killed)."""
    exited = asyncio.ensure_future(daemon.wait())
    if kill:
        target = len(receiver.requests) + rng.randint(2, 30)
        reached = asyncio.ensure_future(receiver.wait_for(lambda r: len(r.requests) >= target))
        await asyncio.wait({exited, reached}, timeout=60, return_when="FIRST_COMPLETED")
        reached.cancel()
        await asyncio.sleep(rng.uniform(0, 0.03))
        if daemon.returncode is None:
            daemon.kill()
    return await asyncio.wait_for(exited, 60)


def _integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.mark.parametrize("seed", [7, 8, 9])
async def test_a_daemon_killed_at_random_points_resumes_to_a_complete_batch(
    seed: int,
    tmp_path: Path,
    chaos_receiver: ChaosReceiver,
    chaos_config: Callable[[str], AppConfig],
) -> None:
    rng = random.Random(seed)
    config = chaos_config(
        config_text(
            http_destination("api", chaos_receiver.url, concurrency="4"),
            targets=["api"],
            daemon='listen = "127.0.0.1:0"',
            trigger='[trigger]\ntype = "spool"\npath = "queue"\npoll_s = "20ms"',
        )
    )
    assert config.path is not None
    message = make_batch(tmp_path / "batch", RECORDS, f"kill-{seed}")
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / "m-1.json").write_bytes(message.to_json())
    chaos_receiver.chaos(0.1, seed, FAULTS)
    chaos_receiver.reject_records(lambda record: record["id"] in BAD)
    ledger_path = Path(config.daemon.ledger)
    env = {**os.environ, "SENDER_LOG_FORMAT": "json"}

    in_flight_at_kills: set[str | None] = set()
    kills = runs = 0
    while not (queue / "done" / "m-1.json").exists():
        runs += 1
        assert runs <= KILLS + 3, "the batch never completed"
        log_file = await asyncio.to_thread(open, tmp_path / f"run-{runs}.log", "wb")
        with log_file as log:
            daemon = await asyncio.create_subprocess_exec(
                SENDER,
                "run",
                "--burst",
                "-c",
                str(config.path),
                env=env,
                stderr=log,
                stdout=asyncio.subprocess.DEVNULL,
            )
            try:
                returncode = await _run_or_kill(daemon, chaos_receiver, rng, kill=kills < KILLS)
            finally:
                if daemon.returncode is None:  # the test failed: leave no daemon behind
                    daemon.kill()
                    await daemon.wait()
        kills += returncode == -9
        assert returncode in (0, -9), (returncode, (tmp_path / f"run-{runs}.log").read_text())
        assert _integrity(ledger_path) == "ok"
        if returncode == -9:
            # what the receiver took but the ledger does not know: in flight at the kill
            async with open_ledger(config.daemon.ledger) as ledger:
                known = {
                    c.idempotency_key
                    for c in await ledger.chunks(message.batch_id)
                    if c.state.terminal
                }
            in_flight_at_kills |= await _accepted_keys(chaos_receiver, message.batch_id) - known

    async with open_ledger(config.daemon.ledger) as ledger:
        batch = await ledger.get_batch(message.batch_id)
        assert batch is not None and batch.state is BatchState.COMPLETE
        figures = await audit(
            "kill-9",
            seed=seed,
            ledger=ledger,
            batch_id=message.batch_id,
            expected_ids=ids(RECORDS),
            receivers={"api": chaos_receiver},
            dead_letter=tmp_path / "dead",
        )

    accepted = Counter(
        r.idempotency_key
        for r in chaos_receiver.accepted
        if r.headers.get("X-Sender-Batch") == message.batch_id
    )
    duplicated = {key for key, n in accepted.items() if n > 1}
    assert duplicated <= in_flight_at_kills, "a duplicate that was not in flight at a kill"
    assert kills == KILLS and figures.dead_lettered == len(BAD)
    figures.notes = {
        "kills": kills,
        "runs": runs,
        "chunks in flight at kills": len(in_flight_at_kills),
        "resent": len(duplicated),
        "faults": sum(chaos_receiver.faults.values()),
    }
