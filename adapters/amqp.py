"""The amqp trigger (aio-pika): trigger messages from a RabbitMQ queue.

- The durable queue is declared when missing, with a dead-letter queue beside it
  (``<queue>.dead`` by default) through ``x-dead-letter-exchange`` (the default exchange) and
  ``x-dead-letter-routing-key``. A queue that exists is used as it is: its arguments are the
  operator's.
- Manual acks: a message is acked only once its batch is complete in the ledger; an invalid
  one (or a failed batch) is rejected without requeue, so the broker dead-letters it; a batch
  stopped part-way is nacked with requeue. ``prefetch`` bounds the unacked messages held here.
- When the broker goes away (restart, network), the trigger reconnects with backoff while
  ``connected`` is False (``/readyz`` answers 503). The broker requeues what was unacked on
  the lost connection; the daemon's ledger makes that redelivery harmless.
- ``publish`` sends a persistent message through the default exchange to the queue, with
  publisher confirms: it returns once the broker has the message.

RabbitMQ closes a channel whose delivery stays unacked past ``consumer_timeout`` (30 minutes
by default): raise it in ``rabbitmq.conf`` for batches that run longer. Config::

    [trigger]
    type = "amqp"
    url = "amqp://sender:${AMQP_PASSWORD}@rabbitmq.internal/"
    queue = "sender.batches"
    prefetch = 2
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity
from pydantic import Field

from sender.config import Duration, TriggerOptions, mask_url
from sender.errors import AdapterClosed, TriggerError
from sender.log import get_logger
from sender.model import TriggerMessage
from sender.ports import Resource

__all__ = ["AmqpEnvelope", "AmqpTrigger"]

log = get_logger("sender_adapters.amqp")

_CLOSE_TIMEOUT_S = 5.0


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """aio-pika/aiormq and socket errors leave as ``TriggerError`` with the cause kept."""
    try:
        yield
    except CONNECTION_EXCEPTIONS as exc:
        raise TriggerError(f"amqp {what}: {str(exc) or type(exc).__name__}") from exc
    except TimeoutError as exc:
        raise TriggerError(f"amqp {what}: timed out") from exc


class AmqpEnvelope:
    """A delivered message; settled at most once, on the channel it came from."""

    def __init__(self, trigger: AmqpTrigger, message: AbstractIncomingMessage) -> None:
        self._trigger = trigger
        self._message = message
        self.body: bytes = message.body
        self.message_id: str = message.message_id or f"amqp-{message.delivery_tag}"
        self.redelivered = bool(message.redelivered)
        self.settled: str | None = None

    def __repr__(self) -> str:
        return f"AmqpEnvelope({self.message_id!r}, settled={self.settled!r})"

    async def ack(self) -> None:
        if self.settled is None:
            self._trigger._check_open()
            with _mapped(f"ack {self.message_id}"):
                await self._message.ack()
            self.settled = "acked"

    async def reject(self, reason: str) -> None:
        if self.settled is None:
            self._trigger._check_open()
            # requeue=False: the broker moves it to the queue's dead-letter exchange
            with _mapped(f"reject {self.message_id}"):
                await self._message.reject(requeue=False)
            self.settled = "rejected"

    async def release(self) -> None:
        if self.settled is None:
            self._trigger._check_open()
            with _mapped(f"release {self.message_id}"):
                await self._message.nack(requeue=True)
            self.settled = "released"

    async def extend(self, seconds: float) -> None:
        return None  # an unacked delivery is ours until the connection closes


class AmqpTrigger(Resource):
    """Consumes one RabbitMQ queue (declared with its dead-letter queue when missing)."""

    class Options(TriggerOptions):
        type: Literal["amqp"] = "amqp"
        url: str = "amqp://guest:guest@127.0.0.1/"
        queue: str = Field("sender.batches", min_length=1)
        prefetch: int = Field(2, ge=1)
        dead_letter_queue: str | None = None  # default "<queue>.dead"
        declare: bool = True  # declare the queues when missing
        connect_timeout_s: Duration = Field(10.0, alias="connect_timeout", gt=0)
        reconnect_max_s: Duration = Field(30.0, alias="reconnect_max", gt=0)

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self._connections: list[AbstractConnection] = []  # consuming ones, old and current
        self._publisher: AbstractConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._publish_lock = asyncio.Lock()
        self._connected = False
        self._connected_once = False  # the last consuming connection got as far as consuming
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"AmqpTrigger({mask_url(self.options.url)!r}, queue={self.options.queue!r})"

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise AdapterClosed(f"amqp trigger {self.options.queue}")

    @property
    def dead_letter_queue(self) -> str:
        return self.options.dead_letter_queue or f"{self.options.queue}.dead"

    @property
    def connected(self) -> bool:
        return self._connected and not self._closed.is_set()

    # -- connections ---------------------------------------------------------------------

    async def _connect(self, purpose: str) -> AbstractConnection:
        with _mapped(f"connect to {mask_url(self.options.url)}"):
            connection = await aio_pika.connect(
                self.options.url,
                timeout=self.options.connect_timeout_s,
                client_properties={"connection_name": f"integration-sender {purpose}"},
            )
        try:
            if self.options.declare:
                await self._declare(connection)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    async def _declare(self, connection: AbstractConnection) -> None:
        """Declare the queue and its dead-letter queue, unless the queue exists."""
        with _mapped(f"declare {self.options.queue}"):
            channel = await connection.channel()
            try:
                await channel.declare_queue(self.options.queue, passive=True)
                return
            except ChannelNotFoundEntity:
                pass  # missing; the failed passive declare closed that channel
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            channel = await connection.channel()
            try:
                await channel.declare_queue(self.dead_letter_queue, durable=True)
                await channel.declare_queue(
                    self.options.queue,
                    durable=True,
                    arguments={
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": self.dead_letter_queue,
                    },
                )
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        log.info("amqp.declared", queue=self.options.queue, dead_letter=self.dead_letter_queue)

    # -- consuming -----------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[AmqpEnvelope]:
        self._check_open()  # closed while consuming, the stream ends; before, refused
        backoff = 0.5
        while not self._closed.is_set():
            try:
                connection = await self._connect("consumer")
            except TriggerError as exc:
                self._connected = False
                log.warning("amqp.unavailable", error=str(exc), retry_in_s=backoff)
            else:
                if self._closed.is_set():  # closed while connecting: aclose did not see it
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT_S)
                    return
                self._connections.append(connection)
                async for envelope in self._consume(connection):
                    yield envelope
                if self._closed.is_set():
                    return
                if self._connected_once:
                    backoff = 0.5  # it worked for a while: start the backoff over
                log.warning("amqp.connection_lost", queue=self.options.queue, retry_in_s=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), backoff)
            backoff = min(backoff * 2, self.options.reconnect_max_s)

    async def _consume(self, connection: AbstractConnection) -> AsyncIterator[AmqpEnvelope]:
        """Deliveries on one connection, until it is lost (or the generator is closed)."""
        lost = asyncio.Event()

        def on_close(*_: Any) -> None:
            self._connected = False
            lost.set()

        connection.close_callbacks.add(on_close)
        if connection.is_closed:
            on_close()
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        channel: AbstractChannel | None = None
        tag: str | None = None
        try:
            with _mapped(f"consume {self.options.queue}"):
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=self.options.prefetch)
                queue = await channel.get_queue(self.options.queue, ensure=False)
                tag = await queue.consume(inbox.put)
        except TriggerError as exc:
            log.warning("amqp.consume_failed", error=str(exc))
            self._connected = self._connected_once = False
            with contextlib.suppress(Exception):
                await connection.close()
            return
        self._connected = self._connected_once = not lost.is_set()
        if self._connected:
            log.info("amqp.connected", queue=self.options.queue, prefetch=self.options.prefetch)
        try:
            while not lost.is_set():
                if not inbox.empty():
                    delivery = inbox.get_nowait()
                else:
                    get = asyncio.ensure_future(inbox.get())
                    gone = asyncio.ensure_future(lost.wait())
                    try:
                        await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        gone.cancel()
                        if not get.done():
                            get.cancel()
                    if not get.done() or get.cancelled():
                        continue  # the connection was lost
                    delivery = get.result()
                yield AmqpEnvelope(self, delivery)
        finally:
            # taking no more: stop the consumer and give back what was prefetched, on this
            # still-open connection; messages of running batches are settled later
            await self._stop_consumer(channel, tag, inbox)

    async def _stop_consumer(
        self,
        channel: AbstractChannel | None,
        tag: str | None,
        inbox: asyncio.Queue[AbstractIncomingMessage],
    ) -> None:
        if channel is None or channel.is_closed:
            return
        with contextlib.suppress(Exception):
            if tag is not None:
                queue = await channel.get_queue(self.options.queue, ensure=False)
                await asyncio.wait_for(queue.cancel(tag), _CLOSE_TIMEOUT_S)
            while not inbox.empty():
                await inbox.get_nowait().nack(requeue=True)

    async def pending(self) -> int:
        """Messages ready in the queue (not counting unacked ones)."""
        channel = await self._publishing_channel()
        with _mapped(f"inspect {self.options.queue}"):
            queue = await channel.declare_queue(self.options.queue, passive=True)
        return int(queue.declaration_result.message_count or 0)

    # -- publishing ----------------------------------------------------------------------

    async def _publishing_channel(self) -> AbstractChannel:
        self._check_open()
        async with self._publish_lock:
            if self._publish_channel is None or self._publish_channel.is_closed:
                if self._publisher is not None:
                    with contextlib.suppress(Exception):
                        await self._publisher.close()
                publisher = await self._connect("publisher")
                if self._closed.is_set():  # closed while connecting: aclose did not see it
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(publisher.close(), _CLOSE_TIMEOUT_S)
                    self._check_open()
                self._publisher = publisher
                with _mapped("open a channel"):
                    self._publish_channel = await self._publisher.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
            return self._publish_channel

    async def publish(self, message: TriggerMessage) -> None:
        """Persistent, confirmed by the broker; one retry on a fresh connection."""
        for attempt in (1, 2):
            channel = await self._publishing_channel()
            try:
                with _mapped(f"publish to {self.options.queue}"):
                    await channel.default_exchange.publish(
                        aio_pika.Message(
                            message.to_json(),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=f"{message.batch_id}:{uuid.uuid4().hex[:8]}",
                        ),
                        routing_key=self.options.queue,
                        mandatory=True,
                        timeout=self.options.connect_timeout_s,
                    )
                return
            except TriggerError:
                if attempt == 2 or not channel.is_closed:
                    raise
                # the connection went stale (broker restart): try once on a new one

    async def aclose(self) -> None:
        """End a running ``messages()`` stream, close the connections; idempotent. Afterwards
        every verb (and settling a message delivered before) raises ``AdapterClosed``."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._connected = False
        # unacked deliveries go back to the queue when their connection closes
        for connection in [*self._connections, self._publisher]:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT_S)
        self._connections.clear()
        self._publisher = self._publish_channel = None
