"""The amqp destination (aio-pika): one RabbitMQ message per chunk, on another team's exchange.

Each chunk is published with publisher confirms and ``mandatory`` set, so ``deliver`` returns
only once the broker has routed the message to at least one queue and taken responsibility
for it (persistent by default)::

    body              the payload (encoded, compressed)
    content_type      application/x-ndjson | application/json | text/csv; charset=utf-8
    content_encoding  gzip | zstd (absent for "none")
    message_id        the idempotency key: stable per (batch, route, chunk)
    headers           batch, dataset, route, chunk, records

Outcomes: a message the broker cannot route (no queue bound for the routing key) comes back
and is a ``PermanentError`` naming the exchange and routing key (``status`` 312, NO_ROUTE);
a missing exchange (404), denied access (403) are one too. A broker ``nack`` (a full queue
with ``x-overflow = reject-publish``, an internal error) and a confirm that does not come in
time are ``RetryableError`` with ``push_back``; a lost connection is one without. The
robust connection is opened on the first chunk and reconnects by itself after a broker
restart.

``declare_queue`` declares a durable queue of that name (bound to ``exchange`` with
``routing_key`` when the exchange is not the default one), for setups where the sender owns
the queue. Config::

    [destinations.scores_bus]
    type = "amqp"
    url = "amqp://sender:${AMQP_PASSWORD}@rabbitmq.internal/"
    exchange = "scores"
    routing_key = "churn.scores"
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelClosed,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ConnectionClosed,
)
from pamqp.commands import Basic
from pydantic import Field

from sender.codecs import CONTENT_TYPES
from sender.config import DestinationOptions, Duration, mask_url
from sender.errors import AdapterClosed, PermanentError, RetryableError
from sender.model import EncodedChunk, Receipt
from sender.ports import Resource

__all__ = ["AmqpDestination", "chunk_message"]

_CLOSE_TIMEOUT_S = 5.0


def chunk_message(chunk: EncodedChunk, *, persistent: bool = True) -> aio_pika.Message:
    """The AMQP message that carries ``chunk``."""
    return aio_pika.Message(
        chunk.payload,
        content_type=chunk.content_type
        or CONTENT_TYPES.get(chunk.format, "application/octet-stream"),
        content_encoding=None if chunk.codec == "none" else chunk.codec,
        message_id=chunk.idempotency_key,
        delivery_mode=(
            aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        ),
        headers={
            "batch": chunk.batch_id,
            "dataset": chunk.dataset,
            "route": chunk.route,
            "chunk": chunk.chunk_id,
            "records": chunk.records,
        },
        app_id="integration-sender",
    )


NO_ROUTE = 312  # AMQP reply code of a mandatory message no queue was bound to take
# what the channel errors aiormq raises stand for (it keeps only the reply text)
_CHANNEL_CODES: dict[type[BaseException], int] = {
    ChannelAccessRefused: 403,
    ChannelNotFoundEntity: 404,
    ChannelPreconditionFailed: 406,
}


def _reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code (312 NO_ROUTE, 404 NOT_FOUND, 320 CONNECTION_FORCED…) an error
    carries, else None."""
    if isinstance(exc, PublishError) and exc.message is not None:
        returned = exc.message.delivery  # the Basic.Return the broker sent the message back in
        return int(returned.reply_code) if isinstance(returned, Basic.Return) else None
    for kind, code in _CHANNEL_CODES.items():
        if isinstance(exc, kind):
            return code
    if isinstance(exc, ChannelClosed | ConnectionClosed) and exc.args:
        first = exc.args[0]
        return first if isinstance(first, int) else None
    return None


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


class AmqpDestination(Resource):
    """Publishes each chunk as one confirmed, mandatory message to a RabbitMQ exchange."""

    formats = frozenset({"ndjson", "json", "csv"})
    codecs = frozenset({"none", "gzip", "zstd"})

    class Options(DestinationOptions):
        type: Literal["amqp"] = "amqp"
        url: str = "amqp://guest:guest@127.0.0.1/"
        exchange: str = ""  # "" is the default exchange: routing_key names the queue
        routing_key: str = Field(min_length=1)
        declare_queue: str | None = Field(None, min_length=1)
        persistent: bool = True
        connect_timeout_s: Duration = Field(10.0, alias="connect_timeout", gt=0)

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"AmqpDestination({self.name!r}, {mask_url(self.options.url)!r}, "
            f"exchange={self.options.exchange!r}, routing_key={self.options.routing_key!r})"
        )

    @property
    def _where(self) -> str:
        exchange = self.options.exchange or "(default exchange)"
        return f"{exchange} with routing key {self.options.routing_key!r}"

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """aio-pika/aiormq and socket errors leave as ``DeliveryError``s, the cause kept and
        the broker's reply code as ``status`` when it gave one."""
        try:
            yield
        except PublishError as exc:
            # returned by the broker: with mandatory set, nothing was bound to take it
            raise PermanentError(
                f"amqp: unroutable: no queue is bound to {self._where} ({exc.args[0]})",
                status=_reply_code(exc) or NO_ROUTE,
                payload=False,
            ) from exc
        except DeliveryError as exc:
            # a nack: the queue is full (x-overflow = reject-publish) or the broker is
            # struggling; either way it asks for less
            raise RetryableError(
                f"amqp: the broker refused the message ({exc})", push_back=True
            ) from exc
        except (ChannelNotFoundEntity, ChannelAccessRefused, ChannelPreconditionFailed) as exc:
            # a missing exchange, no permission, a queue declared with other arguments:
            # the same publish fails the same way until someone changes the broker
            raise PermanentError(
                f"amqp {what}: {exc}", status=_reply_code(exc), payload=False
            ) from exc
        except CONNECTION_EXCEPTIONS as exc:
            reason = f"amqp {what}: {str(exc) or type(exc).__name__}"
            raise RetryableError(reason, status=_reply_code(exc), push_back=False) from exc
        except TimeoutError as exc:
            # no confirm in time: the broker is slow to take what we send (flow control)
            raise RetryableError(f"amqp {what}: timed out", push_back=True) from exc

    async def _get_channel(self) -> AbstractChannel:
        if self._closed:
            raise AdapterClosed(f"amqp destination {self.name}")
        async with self._opening:
            if self._connection is None:
                with self._mapped(f"connect to {mask_url(self.options.url)}"):
                    self._connection = await aio_pika.connect_robust(
                        self.options.url,
                        timeout=self.options.connect_timeout_s,
                        client_properties={
                            "connection_name": f"integration-sender destination {self.name}"
                        },
                    )
            if self._channel is None or self._channel.is_closed:
                # a channel error (a missing exchange) closes the channel: open a new one
                if self._channel is not None:
                    with contextlib.suppress(Exception):
                        await self._channel.close()
                    self._channel = None
                with self._mapped("open a channel"):
                    channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    await self._declare(channel)
                self._channel = channel
            return self._channel

    async def _declare(self, channel: AbstractChannel) -> None:
        name = self.options.declare_queue
        if name is None:
            return
        with self._mapped(f"declare queue {name}"):
            queue = await channel.declare_queue(name, durable=True)
            if self.options.exchange:
                await queue.bind(self.options.exchange, routing_key=self.options.routing_key)

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        """Publish one message and wait for the broker's confirm."""
        try:
            channel = await self._get_channel()
        except RetryableError:
            await self._drop_connection()  # a failed first connect is not retried by aio-pika
            raise
        message = chunk_message(chunk, persistent=self.options.persistent)
        with self._mapped(f"publish to {self._where}"):
            exchange = (
                channel.default_exchange
                if not self.options.exchange
                else await channel.get_exchange(self.options.exchange, ensure=False)
            )
            await exchange.publish(
                message,
                routing_key=self.options.routing_key,
                mandatory=True,
                timeout=self.options.timeout_s,
            )
        where = _without_credentials(self.options.url).rstrip("/")
        exchange_name = self.options.exchange or "amq.default"
        return Receipt(
            location=f"{where}/{exchange_name}/{self.options.routing_key}#{chunk.idempotency_key}"
        )

    async def _drop_connection(self) -> None:
        async with self._opening:
            connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT_S)

    async def aclose(self) -> None:
        """Close the connection; idempotent. ``deliver`` afterwards raises ``AdapterClosed``."""
        if self._closed:
            return
        self._closed = True
        await self._drop_connection()
