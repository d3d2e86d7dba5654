"""Every built-in trigger passes the trigger contract (``sender.testing``), each on its real
queue: a spool directory, the ledger's inbox (``http``), moto's SQS, the machine's RabbitMQ,
and the in-memory fake. What only one trigger does stays in its test_trigger_*.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sender.testing import Clock, TriggerContract
from sender_adapters.amqp import AmqpTrigger
from sender_adapters.http_trigger import HttpTrigger
from sender_adapters.memory import MemoryTrigger
from sender_adapters.spool import SpoolTrigger
from sender_adapters.sqlite import SqliteLedger
from sender_adapters.sqs import SqsTrigger
from tests.brokers import AMQP_URL, SqsQueue

Lapse = Callable[[], object]


class TestSpoolTrigger(TriggerContract):
    @pytest.fixture
    def trigger(self, tmp_path: Path) -> Callable[[], SpoolTrigger]:
        options = SpoolTrigger.Options(type="spool", path=str(tmp_path / "queue"), poll_s=0.05)
        return lambda: SpoolTrigger("trigger", options)


class TestHttpTrigger(TriggerContract):
    """The inbox in a SQLite ledger whose clock the test moves (the claim's lease ends)."""

    @pytest.fixture
    def clock(self) -> Clock:
        return Clock()

    @pytest.fixture
    async def inbox(self, tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteLedger]:
        async with SqliteLedger(tmp_path / "inbox.db", clock=clock) as ledger:
            yield ledger

    @pytest.fixture
    def trigger(self, inbox: SqliteLedger) -> Callable[[], HttpTrigger]:
        options = HttpTrigger.Options.model_validate(
            {"type": "http", "visibility": "60s", "poll": "50ms"}
        )

        def make() -> HttpTrigger:
            trigger = HttpTrigger("trigger", options)
            trigger.bind(inbox, None)  # as in the daemon: POSTs land in the ledger's inbox
            return trigger

        return make

    @pytest.fixture
    def lapse(self, clock: Clock) -> Callable[[], object]:
        async def past_the_lease() -> None:
            clock.advance(61)

        return past_the_lease


class TestSqsTrigger(TriggerContract):
    """A message taken and not deleted is visible again once ``visibility`` (2 s on moto's
    own clock) has passed: the restarted trigger's long poll waits for it."""

    @pytest.fixture
    def trigger(self, sqs_queue: SqsQueue) -> Callable[[], SqsTrigger]:
        options = SqsTrigger.Options.model_validate(
            {
                "type": "sqs",
                "queue_url": sqs_queue.url,
                "endpoint_url": sqs_queue.endpoint,
                "region": "us-east-1",
                "wait": "1s",
                "visibility": "2s",
                # rejected for good at once (the redrive policy's way: test_trigger_sqs.py)
                "on_invalid": "delete",
            }
        )
        return lambda: SqsTrigger("trigger", options)


class TestAmqpTrigger(TriggerContract):
    @pytest.fixture
    def trigger(self, amqp_queue: str) -> Callable[[], AmqpTrigger]:
        options = AmqpTrigger.Options(type="amqp", url=AMQP_URL, queue=amqp_queue, prefetch=2)
        return lambda: AmqpTrigger("trigger", options)


class TestMemoryTrigger(TriggerContract):
    survives_a_close = False  # a fake: its queue goes with it

    @pytest.fixture
    def trigger(self) -> Callable[[], MemoryTrigger]:
        return MemoryTrigger
