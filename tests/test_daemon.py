"""The daemon loop: slots, duplicates, invalid messages, a failing trigger, shutdown, burst.

The trigger is ``MemoryTrigger`` (the port's fake) or the spool; the ledger, the engine and
the receiver are real. Each trigger adapter has its own end-to-end file (test_trigger_*.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sender.app import App
from sender.config import load_config
from sender.daemon import Daemon
from sender.errors import ConfigError, TriggerError
from sender.model import BatchState, TriggerMessage
from sender.service import open_daemon, serve
from sender.testing.receiver import Receiver
from sender_adapters.memory import MemoryEnvelope, MemoryTrigger
from tests.brokers import (
    DaemonProcess,
    chunk_keys,
    churn_batch,
    free_port,
    running_daemon,
    watch_logs,
    write_daemon_config,
)

SPOOL = 'type = "spool"\npath = "queue"\npoll_s = "50ms"'


@contextlib.asynccontextmanager
async def memory_daemon(config: Path, trigger: MemoryTrigger) -> AsyncIterator[Daemon]:
    """A daemon on ``trigger``, running in this loop; stopped gracefully on exit."""
    async with App(load_config(config)) as app:
        daemon = Daemon(app, trigger)
        task = asyncio.create_task(daemon.run())
        try:
            yield daemon
        finally:
            if not daemon.stopping.is_set():
                daemon.request_stop("test")
            assert await asyncio.wait_for(task, 30) == 0
            await trigger.aclose()


def outcomes(envelopes: list[MemoryEnvelope]) -> list[str]:
    return sorted((e.outcome or "").split(":")[0] for e in envelopes)


async def test_no_more_than_max_batches_run_at_once_the_rest_wait_in_the_queue(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL, max_batches=2)
    trigger = MemoryTrigger()
    for i in range(4):
        await trigger.publish(churn_batch(tmp_path, f"b-{i}"))
    receiver.slow(0.2)

    async with memory_daemon(config, trigger) as daemon, asyncio.timeout(20):
        await receiver.wait_for(lambda r: len(r.requests) >= 1)
        assert daemon.active == {"b-0", "b-1"}
        assert trigger.queued == 2  # not taken until a slot is free

        await trigger.wait_settled(4)

    assert outcomes(trigger.settled) == ["acked"] * 4
    assert len({r.idempotency_key for r in receiver.accepted}) == 8


async def test_a_duplicate_of_a_running_batch_is_not_started_twice_and_frees_its_slot(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL, max_batches=2)
    trigger = MemoryTrigger()
    first = churn_batch(tmp_path, "b-1", records=20, parts=4)
    await trigger.publish(first)
    await trigger.publish(first)  # a duplicate: joins the running batch
    await trigger.publish(churn_batch(tmp_path, "b-2"))  # still gets the second slot
    receiver.slow(0.1)

    async with memory_daemon(config, trigger) as daemon, asyncio.timeout(20):
        await receiver.wait_for(
            lambda r: len({q.headers["X-Sender-Batch"] for q in r.requests}) == 2
        )
        assert daemon.active == {"b-1", "b-2"}

        settled = await daemon.wait_settled(3)

    assert sorted((s.batch_id, s.verb) for s in settled) == [
        ("b-1", "ack"),
        ("b-1", "ack"),
        ("b-2", "ack"),
    ]
    keys = [r.idempotency_key for r in receiver.accepted]
    assert sorted(keys) == sorted(chunk_keys("b-1", 4) | chunk_keys("b-2", 2))


async def test_invalid_messages_are_rejected_with_the_reason_and_never_block_the_next(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL, max_batches=1)
    trigger = MemoryTrigger()
    trigger.put(b"\xff\xfe not even text")
    trigger.put(b'["a", "list"]')
    trigger.put(b'{"batch_id": "b-x", "dataset": "nobody-routes-this", "uri": "/tmp/x"}')
    bad_route = churn_batch(tmp_path, "b-y").model_copy(update={"routes": ("nope",)})
    trigger.put(bad_route.to_json())
    await trigger.publish(churn_batch(tmp_path, "b-good"))

    async with memory_daemon(config, trigger), asyncio.timeout(20):
        await trigger.wait_settled(5)

    reasons = [e.outcome for e in trigger.settled[:4]]
    assert reasons[0] is not None and reasons[0].startswith("rejected:not JSON")
    assert reasons[1] == "rejected:not a JSON object"
    assert reasons[2] == "rejected:no route takes dataset 'nobody-routes-this'"
    assert reasons[3] == "rejected:unknown routes ['nope']"
    assert trigger.settled[4].outcome == "acked"


async def test_a_failed_batch_is_rejected_with_its_error(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    trigger = MemoryTrigger()
    missing = TriggerMessage(batch_id="b-gone", dataset="churn", uri=str(tmp_path / "nowhere"))
    await trigger.publish(missing)

    async with memory_daemon(config, trigger), asyncio.timeout(20):
        (envelope,) = await trigger.wait_settled(1)

    assert envelope.outcome is not None and envelope.outcome.startswith("rejected:")
    assert "nowhere" in envelope.outcome


class BrokenOnceTrigger(MemoryTrigger):
    """Its first message stream fails, as a trigger whose broker is down would."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 0

    async def messages(self) -> AsyncIterator[MemoryEnvelope]:  # type: ignore[override]
        self.opened += 1
        if self.opened == 1:
            self.connected = False
            raise TriggerError("broker down")
        self.connected = True
        async for envelope in super().messages():
            yield envelope


async def test_a_failing_trigger_is_reopened_with_backoff_and_not_ready_meanwhile(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    trigger = BrokenOnceTrigger()

    with watch_logs() as logs:
        async with memory_daemon(config, trigger) as daemon, asyncio.timeout(20):
            await logs.wait_for("trigger.failed")
            problems = await daemon.readiness()
            assert "trigger: broker down" in problems
            assert any("not connected" in p for p in problems)

            await trigger.publish(churn_batch(tmp_path, "b-1"))
            await trigger.wait_settled(1)
            assert await daemon.readiness() == []

    assert trigger.opened == 2
    assert outcomes(trigger.settled) == ["acked"]


async def test_stop_lets_chunks_in_flight_finish_records_them_and_releases_the_message(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    trigger = MemoryTrigger()
    await trigger.publish(churn_batch(tmp_path, "b-1", records=30, parts=6))
    receiver.slow(0.2)

    async with App(load_config(config)) as app, asyncio.timeout(20):
        daemon = Daemon(app, trigger)
        run = asyncio.create_task(daemon.run())
        await receiver.wait_for(lambda r: len(r.requests) >= 1)

        daemon.request_stop("SIGTERM")
        assert "draining: shutting down" in await daemon.readiness()
        assert await run == 0

        record = await app.ledger.get_batch("b-1")
        recorded = {c.idempotency_key for c in await app.ledger.chunks("b-1")}

    assert [e.outcome for e in trigger.settled] == ["released"]
    assert record is not None and record.state is BatchState.INCOMPLETE
    sent = {r.idempotency_key for r in receiver.accepted}
    assert 0 < len(sent) < 6
    assert recorded == sent  # every chunk that reached the receiver is in the ledger


async def test_when_the_grace_period_ends_the_batch_is_cut_short_and_released(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL, grace="200ms")
    trigger = MemoryTrigger()
    await trigger.publish(churn_batch(tmp_path, "b-1"))
    receiver.slow(30)  # a receiver that hangs

    async with App(load_config(config)) as app, asyncio.timeout(20):
        daemon = Daemon(app, trigger)
        run = asyncio.create_task(daemon.run())
        await receiver.wait_for(lambda r: len(r.requests) >= 1)

        started = time.monotonic()
        daemon.request_stop("SIGTERM")
        assert await run == 0
        took = time.monotonic() - started
        record = await app.ledger.get_batch("b-1")

    assert took < 2
    assert [e.outcome for e in trigger.settled] == ["released"]
    assert record is not None and record.state is BatchState.INCOMPLETE
    assert record.error == "interrupted"


async def test_a_second_stop_request_cuts_the_grace_period_short_and_returns_1(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL, grace="60s")
    trigger = MemoryTrigger()
    await trigger.publish(churn_batch(tmp_path, "b-1"))
    receiver.slow(30)  # a receiver that hangs

    async with App(load_config(config)) as app, asyncio.timeout(20):
        daemon = Daemon(app, trigger)
        run = asyncio.create_task(daemon.run(handle_signals=False))
        await receiver.wait_for(lambda r: len(r.requests) >= 1)

        daemon.request_stop("SIGTERM")
        daemon.request_stop("SIGTERM")
        assert await run == 1  # and the process it runs in goes on
        record = await app.ledger.get_batch("b-1")

    assert [e.outcome for e in trigger.settled] == ["released"]
    assert record is not None and record.state is BatchState.INCOMPLETE


async def test_with_handle_signals_false_the_host_keeps_its_signal_handlers(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    trigger = MemoryTrigger()
    host_got_sigterm = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, host_got_sigterm.set)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        async with App(load_config(config)) as app, asyncio.timeout(20):
            daemon = Daemon(app, trigger)
            run = asyncio.create_task(daemon.run(handle_signals=False))
            await trigger.publish(churn_batch(tmp_path, "b-1"))
            await trigger.wait_settled(1)  # running, and serving

            assert {sig: signal.getsignal(sig) for sig in before} == before
            os.kill(os.getpid(), signal.SIGTERM)
            await host_got_sigterm.wait()
            assert not daemon.stopping.is_set()  # the signal was the host's, not the daemon's

            daemon.request_stop("host")  # the host decides when the daemon stops
            assert await run == 0
            assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def test_burst_with_a_trigger_that_cannot_count_its_queue_is_refused(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    async with App(load_config(config)) as app:
        with pytest.raises(ConfigError, match=r"^trigger.type: .* sender run --burst needs"):
            Daemon(app, MemoryTrigger(), burst=True)  # MemoryTrigger has no pending()


async def test_burst_mode_returns_once_the_queue_is_empty(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    loaded = load_config(config)
    async with open_daemon(loaded) as daemon:
        await daemon.trigger.publish(churn_batch(tmp_path, "b-1"))
        await daemon.trigger.publish(churn_batch(tmp_path, "b-2"))

    async with asyncio.timeout(20):
        assert await serve(loaded, burst=True) == 0

    assert len({r.idempotency_key for r in receiver.accepted}) == 4
    assert len(list((tmp_path / "queue" / "done").glob("*.json"))) == 2


async def test_a_message_posted_to_the_control_server_goes_on_the_configured_trigger(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    message = churn_batch(tmp_path, "b-1")

    async with running_daemon(config) as daemon, asyncio.timeout(20):
        assert daemon.control is not None
        url = f"http://127.0.0.1:{daemon.control.port}/v1/batches"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=message.to_json()) as r,
        ):
            assert r.status == 202
        (settled,) = await daemon.wait_settled(1)

    assert (settled.batch_id, settled.verb) == ("b-1", "ack")
    assert len(list((tmp_path / "queue" / "done").glob("*.json"))) == 1


async def test_a_second_signal_exits_at_once(tmp_path: Path, receiver: Receiver) -> None:
    config = write_daemon_config(
        tmp_path, receiver=receiver.url, trigger=SPOOL, listen=f"127.0.0.1:{free_port()}"
    )
    async with open_daemon(load_config(config)) as daemon:
        await daemon.trigger.publish(churn_batch(tmp_path, "b-1"))
    receiver.slow(30)

    process = await DaemonProcess(config).start()
    try:
        async with asyncio.timeout(20):
            await receiver.wait_for(lambda r: len(r.requests) >= 1)
            process.send_signal(signal.SIGTERM)
            await process.wait_for_event("daemon.stopping")
            code, took = await process.stop()
    finally:
        await process.kill()
    assert code == 1
    assert took < 5
    assert process.find("daemon.forced_exit")
