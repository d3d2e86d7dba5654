"""Real brokers for the trigger tests, and a daemon run as a real process.

- ``sqs_server`` (session): moto's SQS server on loopback; ``sqs_queue``: a fresh queue with
  a dead-letter queue (redrive after one receive) and AWS test credentials in the
  environment, both deleted afterwards.
- ``amqp_queue``: a fresh queue name on the machine's RabbitMQ (127.0.0.1:5672, guest/guest);
  the queue and its dead-letter queue are deleted afterwards.
- ``TcpProxy``: a loopback TCP proxy a test can cut and restore, to play a broker that goes
  away and comes back without touching the shared broker.
- ``DaemonProcess``: ``sender run -c FILE`` in a subprocess, whose JSON log lines a test
  awaits (``wait_for_event``) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sender.config import load_config
from sender.daemon import Daemon
from sender.model import BatchState, TriggerMessage, idempotency_key
from sender.service import open_daemon
from sender.testing.receiver import Receiver
from sender_adapters.sqlite import SqliteLedger
from tests.batches import write_batch

__all__ = [
    "AMQP_URL",
    "AWS_TEST_ENV",
    "DaemonProcess",
    "SqsQueue",
    "TcpProxy",
    "amqp_queue",
    "chunk_keys",
    "churn_batch",
    "free_port",
    "running_daemon",
    "sigterm_mid_batch_then_resume",
    "sqs_queue",
    "sqs_server",
    "take_one",
    "watch_logs",
    "write_daemon_config",
]

AMQP_URL = os.environ.get("SENDER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class LogEvents:
    """The structlog events logged in this process while watched, to await one of them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        import structlog

        self.events.append({**event_dict, "log_level": method, "at": time.monotonic()})
        if threading.get_ident() == self._thread:
            self._changed.set()
        else:  # logged from a worker thread
            self._loop.call_soon_threadsafe(self._changed.set)
        raise structlog.DropEvent

    def find(self, event: str, *, after: int = 0, **fields: Any) -> list[dict[str, Any]]:
        """The events named ``event`` with these fields, from index ``after`` on."""
        return [
            e
            for e in self.events[after:]
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event: str, *, after: int = 0, **fields: Any) -> dict[str, Any]:
        """The first such event (from index ``after`` on). Bound it with ``asyncio.timeout``."""
        while True:
            found = self.find(event, after=after, **fields)
            if found:
                return found[0]
            self._changed.clear()
            await self._changed.wait()


@contextlib.contextmanager
def watch_logs() -> Iterator[LogEvents]:
    """Collect every structlog event of this process (instead of printing it)."""
    import structlog

    watcher = LogEvents()
    saved = structlog.get_config()
    structlog.configure(processors=[watcher], cache_logger_on_first_use=False)
    try:
        yield watcher
    finally:
        structlog.configure(**saved)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def take_one(trigger: Any) -> Any:
    """The trigger's next message (its stream closed again afterwards), within 20 s."""
    stream = aiter(trigger.messages())
    try:
        async with asyncio.timeout(20):
            return await anext(stream)
    finally:
        await stream.aclose()


# -- SQS on moto ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqs_server() -> Iterator[str]:
    """moto's server (SQS) on loopback, for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@functools.cache
def _aws_session() -> Any:
    from aiobotocore.session import get_session

    return get_session()  # one for the whole run: a new one loads the service models again


class SqsQueue:
    """A test queue and its dead-letter queue, with a client to look into them."""

    def __init__(self, client: Any, endpoint: str, url: str, dead_url: str, dead_arn: str) -> None:
        self.client = client
        self.endpoint = endpoint
        self.url = url
        self.dead_url = dead_url
        self.dead_arn = dead_arn

    def trigger(self, endpoint: str | None = None, **options: str) -> str:
        """The ``[trigger]`` TOML for this queue (through ``endpoint`` if given)."""
        lines = {
            "type": "sqs",
            "queue_url": self.url,
            "endpoint_url": endpoint or self.endpoint,
            "region": "us-east-1",
            "wait": "1s",
            "visibility": "30s",
            **options,
        }
        return "\n".join(f'{key} = "{value}"' for key, value in lines.items())

    async def set_max_receive_count(self, count: int) -> None:
        policy = {"deadLetterTargetArn": self.dead_arn, "maxReceiveCount": count}
        await self.client.set_queue_attributes(
            QueueUrl=self.url, Attributes={"RedrivePolicy": orjson.dumps(policy).decode()}
        )

    async def receive_once(self) -> list[dict[str, Any]]:
        """One receive without waiting (it also makes moto apply the redrive policy)."""
        reply = await self.client.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=0
        )
        messages: list[dict[str, Any]] = reply.get("Messages", [])
        return messages

    async def send(self, body: bytes | str) -> str:
        text = body.decode() if isinstance(body, bytes) else body
        reply = await self.client.send_message(QueueUrl=self.url, MessageBody=text)
        return str(reply["MessageId"])

    async def counts(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) messages of the queue (or of ``url``)."""
        reply = await self.client.get_queue_attributes(
            QueueUrl=url or self.url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )
        attributes = reply["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    async def dead_bodies(self) -> list[str]:
        reply = await self.client.receive_message(
            QueueUrl=self.dead_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        return [m["Body"] for m in reply.get("Messages", [])]


@pytest.fixture
async def sqs_queue(sqs_server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SqsQueue]:
    """A fresh queue whose redrive policy moves a message to ``<name>-dead`` after five
    receives (``set_max_receive_count`` changes that); deleted afterwards."""
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    name = f"sender-test-{uuid.uuid4().hex[:10]}"
    async with _aws_session().create_client(
        "sqs", region_name="us-east-1", endpoint_url=sqs_server
    ) as client:
        dead = await client.create_queue(QueueName=f"{name}-dead")
        dead_arn = (
            await client.get_queue_attributes(
                QueueUrl=dead["QueueUrl"], AttributeNames=["QueueArn"]
            )
        )["Attributes"]["QueueArn"]
        redrive = orjson.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": 5})
        queue = await client.create_queue(
            QueueName=name, Attributes={"RedrivePolicy": redrive.decode()}
        )
        try:
            yield SqsQueue(client, sqs_server, queue["QueueUrl"], dead["QueueUrl"], dead_arn)
        finally:
            for url in (queue["QueueUrl"], dead["QueueUrl"]):
                with contextlib.suppress(Exception):
                    await client.delete_queue(QueueUrl=url)


# -- RabbitMQ ------------------------------------------------------------------------------


@pytest.fixture
async def amqp_queue() -> AsyncIterator[str]:
    """A unique queue name on the machine's RabbitMQ; the queue and ``<name>.dead`` are
    deleted afterwards (the trigger declares them)."""
    import aio_pika

    name = f"sender-test-{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        connection = await aio_pika.connect(AMQP_URL, timeout=10)
        async with connection:
            for queue in (name, f"{name}.dead"):
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
                with contextlib.suppress(Exception):
                    await channel.close()


# -- a proxy to cut -----------------------------------------------------------------------


class TcpProxy:
    """Forwards a loopback port to ``target``; ``cut()`` drops every connection and stops
    listening (the broker is "gone"), ``restore()`` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._pipes.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.close()
            self._pipes.discard(sink)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def restore(self) -> None:
        await self.start()

    async def aclose(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- a daemon process ----------------------------------------------------------------------


class DaemonProcess:
    """``sender run -c config`` in a subprocess; its JSON log lines are kept as dicts."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {}), "SENDER_LOG_FORMAT": "json"}
        self.events: list[dict[str, Any]] = []
        self.returncode: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> DaemonProcess:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sender.cli",
            "run",
            "-c",
            str(self.config),
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        async for line in self._process.stderr:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                event = {"event": "<text>", "text": line.decode(errors="replace")}
            self.events.append(event if isinstance(event, dict) else {"event": event})
            self._changed.set()
        self._changed.set()

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for_event(self, event: str, **fields: Any) -> dict[str, Any]:
        """The first log line with this event name and fields; fails if the process ends
        first. Bound it with ``asyncio.timeout``."""
        while True:
            found = self.find(event, **fields)
            if found:
                return found[0]
            if self._reader is not None and self._reader.done():
                raise AssertionError(f"daemon exited before {event} {fields}: {self.tail()}")
            self._changed.clear()
            await self._changed.wait()

    def tail(self, n: int = 15) -> str:
        return "\n".join(orjson.dumps(e).decode() for e in self.events[-n:])

    def send_signal(self, sig: int) -> None:
        assert self._process is not None
        self._process.send_signal(sig)

    async def stop(self, within_s: float = 30.0) -> tuple[int, float]:
        """SIGTERM, then wait at most ``within_s``: (exit code, seconds it took)."""
        assert self._process is not None
        started = time.monotonic()
        self._process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self._process.wait(), within_s)
        if self._reader is not None:
            await self._reader
        self.returncode = code
        return code, time.monotonic() - started

    async def kill(self) -> None:
        """Clean-up: kill the process if it still runs."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


# -- a daemon configured for the trigger tests --------------------------------------------

_CONFIG = """\
[daemon]
ledger = "ledger.db"
listen = "{listen}"
max_batches = {max_batches}
shutdown_grace = "{grace}"
lease = "{lease}"

[trigger]
{trigger}

[destinations.api]
type = "http"
url = "{receiver}/scores"
compression = "gzip"
concurrency = 1
retry = {{ attempts = 3, initial = "10ms", max = "50ms", budget = "5s" }}

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 5 }}
targets = ["api"]
dead_letter = "dead"
"""


def write_daemon_config(
    folder: Path,
    *,
    receiver: str,
    trigger: str,
    listen: str = "127.0.0.1:0",
    max_batches: int = 2,
    grace: str = "10s",
    lease: str = "60s",
) -> Path:
    """``folder/sender.toml``: one route ``churn`` (chunks of 5 records) to ``receiver`` with
    concurrency 1 (so a slow receiver keeps a batch in flight), a local dead-letter folder,
    the SQLite ledger ``folder/ledger.db`` and ``trigger`` (TOML lines of ``[trigger]``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sender.toml"
    path.write_text(
        _CONFIG.format(
            listen=listen,
            max_batches=max_batches,
            grace=grace,
            lease=lease,
            trigger=textwrap.dedent(trigger).strip(),
            receiver=receiver,
        )
    )
    return path


def churn_batch(folder: Path, batch_id: str, records: int = 10, parts: int = 2) -> TriggerMessage:
    """Write a churn batch of ``records`` (5 per part: one chunk per part) and return its
    trigger message."""
    uri = write_batch(folder / "lake" / batch_id, records, parts=parts)
    return TriggerMessage(batch_id=batch_id, dataset="churn", uri=str(uri))


def chunk_keys(batch_id: str, chunks: int) -> set[str]:
    return {idempotency_key(batch_id, "churn", str(i)) for i in range(chunks)}


@contextlib.asynccontextmanager
async def running_daemon(config_path: Path) -> AsyncIterator[Daemon]:
    """The daemon of ``config_path`` running in this event loop; stopped gracefully on exit."""
    config = load_config(config_path)
    async with open_daemon(config) as daemon:
        task = asyncio.create_task(daemon.run())
        try:
            yield daemon
        finally:
            if not daemon.stopping.is_set():
                daemon.request_stop("test")
            assert await asyncio.wait_for(task, 30) == 0


async def sigterm_mid_batch_then_resume(
    folder: Path,
    receiver: Receiver,
    *,
    trigger: str | Callable[[str], str],
    publish: Callable[[TriggerMessage, DaemonProcess], Awaitable[None]],
    given_back: Callable[[], Awaitable[None]],
    acked: Callable[[], Awaitable[None]],
    env: dict[str, str] | None = None,
) -> None:
    """The shutdown scenario every trigger must pass, with real ``sender run`` processes.

    A 6-chunk batch is published (``publish``, once the first daemon's control server
    listens) and taken while the receiver answers slowly; SIGTERM mid-batch must end the
    daemon with 0 within the grace period, having recorded the chunks it finished and given
    the message back (``given_back`` checks the broker). A second daemon must then send only
    the chunks not delivered yet, and ack the message (``acked`` checks the broker).
    ``trigger`` is the ``[trigger]`` TOML, or a function of the daemon's ``listen`` giving it.
    """
    grace_s = 10.0
    listen = f"127.0.0.1:{free_port()}"
    config = write_daemon_config(
        folder,
        receiver=receiver.url,
        trigger=trigger if isinstance(trigger, str) else trigger(listen),
        listen=listen,
        grace=f"{grace_s:g}s",
    )
    message = churn_batch(folder, "b-term", records=30, parts=6)
    all_keys = chunk_keys("b-term", 6)
    receiver.slow(0.4)

    first = await DaemonProcess(config, env).start()
    publishing: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(30):
            await first.wait_for_event("control.listening")
            # not awaited before the batch starts: a slow publisher (the CLI's exit) must not
            # let the batch run to its end before the signal
            publishing = asyncio.create_task(publish(message, first))
            await receiver.wait_for(lambda r: len(r.requests) >= 1)
        code, took = await first.stop(within_s=grace_s + 10)
        await publishing
    finally:
        if publishing is not None and not publishing.done():
            publishing.cancel()
        await first.kill()
    assert code == 0, first.tail()
    assert took < grace_s, f"took {took:.1f}s to stop"
    assert first.find("trigger.released", batch_id="b-term"), first.tail()
    sent_first = {r.idempotency_key for r in receiver.accepted}
    # stopped mid-batch; the chunks in flight finished
    assert 0 < len(sent_first) < 6, (sorted(sent_first), first.tail(30))

    async with SqliteLedger(folder / "ledger.db") as ledger:
        record = await ledger.get_batch("b-term")
        delivered = {c.idempotency_key for c in await ledger.chunks("b-term")}
    assert record is not None and record.state is BatchState.INCOMPLETE
    assert delivered == sent_first  # every chunk the receiver took is recorded
    await given_back()

    receiver.slow(0)
    seen = len(receiver.requests)
    second = await DaemonProcess(config, env).start()
    try:
        async with asyncio.timeout(30):
            await second.wait_for_event("trigger.acked", batch_id="b-term")
        code, _ = await second.stop()
    finally:
        await second.kill()
    assert code == 0, second.tail()
    sent_second = [r.idempotency_key for r in receiver.requests[seen:]]
    assert set(sent_second).isdisjoint(sent_first)  # nothing delivered is sent again
    assert len(sent_second) == len(set(sent_second))
    assert sent_first | set(sent_second) == all_keys
    await acked()
