"""Completion events end to end: a CloudEvents receiver on loopback, batches run by the
engine, by a daemon in this loop and by a `sender run` process killed with SIGKILL, on the
SQLite and the PostgreSQL ledger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from sender import retry
from sender.app import App, open_ledger
from sender.config import AppConfig, load_config
from sender.errors import ConfigError
from sender.model import BatchState, TriggerMessage
from sender.outbox import deliver_pending
from sender.ports import Outbox
from sender.replay import Replayer, Selection
from sender.service import open_daemon
from sender.testing.receiver import Receiver
from tests.brokers import DaemonProcess, churn_batch, running_daemon, write_daemon_config
from tests.test_postgres_ledger import create_database, drop_database

SPOOL = 'type = "spool"\npath = "queue"\npoll_s = "50ms"'
REQUIRED = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data")


class CloudEventsReceiver:
    """An aiohttp server that takes structured-mode CloudEvents 1.0, and only those: a wrong
    content type or a missing attribute is a 400 (and counted in ``refused``)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []  # accepted, in order
        self.attempts: list[dict[str, Any]] = []  # everything that came, accepted or not
        self.refused: list[str] = []
        self.down = False
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Type") != "application/cloudevents+json":
            self.refused.append(f"content type {request.headers.get('Content-Type')}")
            return web.Response(status=400)
        event = orjson.loads(body)
        missing = [name for name in REQUIRED if name not in event]
        if missing or event["specversion"] != "1.0":
            self.refused.append(f"missing {missing}")
            return web.Response(status=400)
        self.attempts.append(event)
        self._arrived.set()
        if self.down:
            return web.Response(status=503)
        self.events.append(event)
        return web.Response(status=200)

    async def __aenter__(self) -> CloudEventsReceiver:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/events"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def wait_for(self, count: int, *, attempts: bool = False) -> None:
        seen = self.attempts if attempts else self.events
        async with asyncio.timeout(30):
            while len(seen) < count:
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
async def events() -> AsyncIterator[CloudEventsReceiver]:
    async with CloudEventsReceiver() as server:
        yield server


@pytest.fixture
def zero_backoff() -> Iterator[None]:
    retry.set_testing(True)
    yield
    retry.set_testing(False)


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield "ledger.db"
        return
    dsn = await create_database("sender_events")
    yield dsn
    await drop_database(dsn)


def with_events(path: Path, events_url: str, ledger: str = "ledger.db") -> Path:
    """The trigger tests' daemon config, notifying the ``events`` destination."""
    text = path.read_text().replace(
        'ledger = "ledger.db"', f'ledger = "{ledger}"\nnotify = ["events"]\nname = "test-host"'
    )
    text += f"""
[destinations.events]
type = "http"
url = "{events_url}"
retry = {{ attempts = 2, initial = "10ms", max = "20ms", budget = "1s" }}
"""
    path.write_text(text)
    return path


def config_for(
    tmp_path: Path, receiver: Receiver, events: CloudEventsReceiver, ledger: str
) -> AppConfig:
    path = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    return load_config(with_events(path, events.url, ledger))


async def run(config: AppConfig, message: TriggerMessage) -> BatchState:
    async with App(config) as app:
        outcome = await app.engine.run_batch(message)
        await deliver_pending(config, app.ledger, app.targets, owner=app.engine.owner)
    return outcome.state


async def test_every_outcome_sends_one_event_of_its_type(
    tmp_path: Path, receiver: Receiver, events: CloudEventsReceiver, ledger_url: str
) -> None:
    config = config_for(tmp_path, receiver, events, ledger_url)
    good = churn_batch(tmp_path, "b-ok")
    missing = TriggerMessage(batch_id="b-bad", dataset="churn", uri=str(tmp_path / "nowhere"))

    assert await run(config, good) is BatchState.COMPLETE
    assert await run(config, missing) is BatchState.FAILED

    completed, failed = events.events
    assert (completed["type"], completed["subject"]) == ("sender.batch.completed", "b-ok")
    assert (failed["type"], failed["subject"]) == ("sender.batch.failed", "b-bad")
    assert completed["source"] == "integration-sender/test-host"
    assert completed["datacontenttype"] == "application/json"
    data = completed["data"]
    assert (data["dataset"], data["state"], data["uri"]) == ("churn", "complete", good.uri)
    assert data["records"]["read"] == data["records"]["delivered"] == 10
    assert data["routes"]["churn"]["delivered"] == 10 and data["reconciled"]
    assert failed["data"]["error"]
    assert completed["id"] != failed["id"]
    assert events.refused == []
    # one per batch outcome, never one per chunk (this batch had two)
    assert len(receiver.accepted) == 2 and len(events.attempts) == 2


async def test_dead_letters_then_a_replay_that_delivers_them(
    tmp_path: Path, receiver: Receiver, events: CloudEventsReceiver, ledger_url: str
) -> None:
    config = config_for(tmp_path, receiver, events, ledger_url)
    receiver.fail_always(status=503)
    assert await run(config, churn_batch(tmp_path, "b-1")) is BatchState.COMPLETE
    receiver.recover()

    async with App(config) as app:
        report = await Replayer(app).run("b-1", Selection())
        await deliver_pending(config, app.ledger, app.targets, owner=app.engine.owner)
    assert report.ok

    completed, replayed = events.events
    assert completed["type"] == "sender.batch.completed"
    assert completed["data"]["records"]["dead_lettered"] == 10
    dead = [c for c in completed["data"]["chunks"] if c["state"] == "dead_lettered"]
    assert len(dead) == 2 and all(c["location"] for c in dead)
    assert replayed["type"] == "sender.batch.replayed" and replayed["subject"] == "b-1"
    assert replayed["data"]["records"]["delivered"] == 10
    assert replayed["id"] != completed["id"]


async def test_a_redelivered_event_keeps_its_id(
    tmp_path: Path,
    receiver: Receiver,
    events: CloudEventsReceiver,
    ledger_url: str,
    zero_backoff: None,
) -> None:
    config = config_for(tmp_path, receiver, events, ledger_url)
    events.down = True
    assert await run(config, churn_batch(tmp_path, "b-1")) is BatchState.COMPLETE
    assert events.events == [] and len(events.attempts) == 2  # the retry policy's 2 attempts

    async with open_ledger(config.daemon.ledger) as ledger:
        assert isinstance(ledger, Outbox)
        (pending,) = await ledger.pending_events()
        assert pending.attempts == 1 and "503" in (pending.last_error or "")
    events.down = False
    async with App(config) as app:
        await deliver_pending(config, app.ledger, app.targets, owner=app.engine.owner)

    (event,) = events.events
    assert {a["id"] for a in events.attempts} == {event["id"]} == {pending.event_id}


async def test_events_outlast_a_receiver_outage_without_holding_up_batches(
    tmp_path: Path,
    receiver: Receiver,
    events: CloudEventsReceiver,
    ledger_url: str,
    zero_backoff: None,
) -> None:
    path = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    with_events(path, events.url, ledger_url)
    events.down = True
    async with running_daemon(path) as daemon:
        await daemon.trigger.publish(churn_batch(tmp_path, "b-1"))
        # far beyond the destination's retry budget (2 attempts a round): kept, retried
        await events.wait_for(6, attempts=True)
        await daemon.trigger.publish(churn_batch(tmp_path, "b-2"))
        await daemon.wait_settled(2)  # the next batch was not held up
        assert daemon.control is not None
        url = f"http://127.0.0.1:{daemon.control.port}/readyz"
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            ready = await r.json()
        assert r.status == 200 and ready["status"] == "ready"
        assert "events: 2 waiting (2 for events)" in ready["detail"][0]

        events.down = False
        await events.wait_for(2)

    assert sorted(e["subject"] for e in events.events) == ["b-1", "b-2"]
    assert len(receiver.accepted) == 4


async def test_a_killed_daemon_delivers_the_event_when_it_is_back(
    tmp_path: Path,
    receiver: Receiver,
    events: CloudEventsReceiver,
    ledger_url: str,
    zero_backoff: None,
) -> None:
    # the killed daemon's claim on the event lasts one lease: kept short here
    path = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL, lease="2s")
    with_events(path, events.url, ledger_url)
    async with open_daemon(load_config(path)) as daemon:  # queue the message, run nothing
        await daemon.trigger.publish(churn_batch(tmp_path, "b-1"))
    events.down = True

    process = await DaemonProcess(path).start()
    try:
        await events.wait_for(1, attempts=True)  # the batch is finished, its event not taken
    finally:
        await process.kill()  # SIGKILL
    attempted = events.attempts[0]["id"]
    events.down = False

    async with running_daemon(path):
        await events.wait_for(1)

    assert events.events[0]["id"] == attempted
    assert events.events[0]["subject"] == "b-1"


def test_notify_must_name_declared_destinations(tmp_path: Path, receiver: Receiver) -> None:
    path = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    text = path.read_text().replace(
        'ledger = "ledger.db"', 'ledger = "ledger.db"\nnotify = ["nope"]'
    )
    path.write_text(text + '\nnotify = ["gone", "dead"]\n')  # lands in [routes.churn]

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert "daemon.notify[0]: unknown destination 'nope'" in str(error.value)
    assert "routes.churn.notify[0]: unknown destination 'gone'" in str(error.value)
    assert "notify[1]" not in str(error.value)


async def test_on_a_rabbitmq_queue_the_event_is_the_message_body(
    tmp_path: Path, receiver: Receiver, amqp_queue: str
) -> None:
    from tests.test_queue_destinations import amqp_toml, read_queue

    path = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    text = path.read_text().replace(
        'ledger = "ledger.db"', 'ledger = "ledger.db"\nnotify = ["bus"]'
    )
    path.write_text(text + "\n[destinations.bus]\n" + amqp_toml(amqp_queue, declare=amqp_queue))
    config = load_config(path)

    assert await run(config, churn_batch(tmp_path, "b-1")) is BatchState.COMPLETE

    (message,) = await read_queue(amqp_queue)
    assert message.content_type == "application/cloudevents+json"
    event = orjson.loads(message.body)
    assert (event["type"], event["subject"]) == ("sender.batch.completed", "b-1")
    assert message.message_id == event["id"]
