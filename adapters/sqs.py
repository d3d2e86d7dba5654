"""The sqs trigger (aiobotocore): trigger messages from an Amazon SQS queue.

- Long polling (``wait``, at most 20 s), one message per receive: the daemon asks for the
  next message only when it has a free slot, so the rest wait in the queue.
- A received message is invisible for ``visibility``; the daemon extends that lease
  (``ChangeMessageVisibility``) while its batch runs, deletes the message only once the
  batch is complete in the ledger, and gives it back (visibility 0) when it stops part-way.
- Invalid messages (and failed batches), ``on_invalid``:
  ``"leave"`` (default) — left to the queue's redrive policy: made visible again at once when
  the queue has one, so it reaches the dead-letter queue after ``maxReceiveCount`` receives;
  without one it comes back every ``visibility`` (a warning says so at start).
  ``"delete"`` — deleted after the reason and the body were logged (``trigger.deleted_invalid``).
- When SQS cannot be reached the trigger keeps polling with backoff while ``connected`` is
  False (``/readyz`` answers 503).
- ``publish`` is ``SendMessage`` (a FIFO queue gets the dataset as group id and the batch id
  as deduplication id).

Credentials come from botocore's usual chain (environment, profile, instance or task role).
Config::

    [trigger]
    type = "sqs"
    queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/sender-batches"
    wait = "20s"
    visibility = "5m"
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from pydantic import Field

from sender.config import Duration, TriggerOptions
from sender.errors import AdapterClosed, TriggerError
from sender.log import get_logger
from sender.model import TriggerMessage
from sender.ports import Resource
from sender_adapters._aws import AwsClient, ClientSpec, region_in_url

__all__ = ["SqsEnvelope", "SqsTrigger"]

log = get_logger("sender_adapters.sqs")

_BACKOFF_MAX_S = 30.0


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """botocore and transport errors leave as ``TriggerError`` with the cause kept."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise TriggerError(f"sqs {what}: {error.get('Code')}: {error.get('Message')}") from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        raise TriggerError(f"sqs {what}: {str(exc) or type(exc).__name__}") from exc


class SqsEnvelope:
    """A received SQS message; settled at most once."""

    def __init__(self, trigger: SqsTrigger, raw: dict[str, Any]) -> None:
        self._trigger = trigger
        self.body: bytes = raw.get("Body", "").encode()
        self.message_id: str = raw["MessageId"]
        self.receipt_handle: str = raw["ReceiptHandle"]
        self.deliveries = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        self.settled: str | None = None

    def __repr__(self) -> str:
        return f"SqsEnvelope({self.message_id!r}, settled={self.settled!r})"

    async def _visibility(self, seconds: float) -> None:
        client = await self._trigger._client_or_open()
        with _mapped(f"change visibility of {self.message_id}"):
            await client.change_message_visibility(
                QueueUrl=self._trigger.options.queue_url,
                ReceiptHandle=self.receipt_handle,
                VisibilityTimeout=max(0, min(43200, round(seconds))),
            )

    async def _delete(self) -> None:
        client = await self._trigger._client_or_open()
        with _mapped(f"delete {self.message_id}"):
            await client.delete_message(
                QueueUrl=self._trigger.options.queue_url, ReceiptHandle=self.receipt_handle
            )

    async def ack(self) -> None:
        if self.settled is None:
            self._trigger._check_open()
            await self._delete()
            self.settled = "acked"

    async def reject(self, reason: str) -> None:
        if self.settled is not None:
            return
        trigger = self._trigger
        trigger._check_open()
        if trigger.options.on_invalid == "delete":
            # the log line is the record of what was dropped: keep the body with the reason
            log.warning(
                "trigger.deleted_invalid",
                message_id=self.message_id,
                reason=reason,
                body=self.body[:2000].decode("utf-8", "replace"),
            )
            await self._delete()
        elif trigger.redrive:
            # visible again now: the redrive policy moves it once it was received enough
            await self._visibility(0)
        self.settled = "rejected"

    async def release(self) -> None:
        if self.settled is None:
            self._trigger._check_open()
            await self._visibility(0)
            self.settled = "released"

    async def extend(self, seconds: float) -> None:
        if self.settled is None:
            await self._visibility(seconds)


class SqsTrigger(Resource):
    """Long-polls one SQS queue for trigger messages."""

    class Options(TriggerOptions):
        type: Literal["sqs"] = "sqs"
        queue_url: str
        region: str | None = None  # default: from queue_url, then the AWS environment
        endpoint_url: str | None = None  # an SQS-compatible endpoint (LocalStack, moto)
        wait_s: Duration = Field(20.0, alias="wait", ge=0, le=20)
        visibility_s: Duration = Field(300.0, alias="visibility", ge=0, le=43200)
        on_invalid: Literal["leave", "delete"] = "leave"

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.redrive = False  # the queue has a redrive policy (known once connected)
        self._client = AwsClient(
            ClientSpec(
                "sqs",
                region=options.region or region_in_url(options.queue_url),
                endpoint_url=options.endpoint_url,
                connect_timeout_s=5.0,
                # a long poll holds the connection for `wait`: read for longer than that
                read_timeout_s=options.wait_s + 15,
                attempts=3,
            ),
            what=f"sqs trigger {options.queue_url}",
        )
        self._connected = False
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"SqsTrigger({self.options.queue_url!r})"

    @property
    def connected(self) -> bool:
        return self._connected and not self._closed.is_set()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise AdapterClosed(f"sqs trigger {self.options.queue_url}")

    async def _client_or_open(self) -> Any:
        self._check_open()
        with _mapped("connect"):
            return await self._client.get()

    async def _check_queue(self, client: Any) -> None:
        with _mapped("get queue attributes"):
            reply = await client.get_queue_attributes(
                QueueUrl=self.options.queue_url, AttributeNames=["RedrivePolicy"]
            )
        self.redrive = "RedrivePolicy" in reply.get("Attributes", {})
        if not self.redrive and self.options.on_invalid == "leave":
            log.warning(
                "sqs.no_redrive_policy",
                queue_url=self.options.queue_url,
                hint="invalid messages come back every visibility timeout: give the queue "
                "a redrive policy, or set on_invalid = 'delete'",
            )

    async def messages(self) -> AsyncIterator[SqsEnvelope]:
        self._check_open()  # closed while polling, the stream ends; closed before, refused
        backoff = 0.5
        checked = False
        while not self._closed.is_set():
            try:
                client = await self._client_or_open()
                if not checked:
                    await self._check_queue(client)
                    checked = True
                    self._set_connected(True)
                with _mapped("receive"):
                    reply = await client.receive_message(
                        QueueUrl=self.options.queue_url,
                        MaxNumberOfMessages=1,
                        WaitTimeSeconds=round(self.options.wait_s),
                        VisibilityTimeout=round(self.options.visibility_s),
                        MessageSystemAttributeNames=["ApproximateReceiveCount"],
                    )
            except (TriggerError, AdapterClosed) as exc:
                if self._closed.is_set():
                    return
                if self._connected or backoff == 0.5:
                    log.warning("sqs.unavailable", error=str(exc), retry_in_s=backoff)
                self._set_connected(False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            self._set_connected(True)
            backoff = 0.5
            for raw in reply.get("Messages", []):
                yield SqsEnvelope(self, raw)

    def _set_connected(self, connected: bool) -> None:
        if connected and not self._connected:
            log.info("sqs.connected", queue_url=self.options.queue_url)
        self._connected = connected

    async def pending(self) -> int:
        """Messages visible in the queue now (approximate, as SQS counts)."""
        client = await self._client_or_open()
        with _mapped("get queue attributes"):
            reply = await client.get_queue_attributes(
                QueueUrl=self.options.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )
        return int(reply["Attributes"].get("ApproximateNumberOfMessages", 0))

    async def publish(self, message: TriggerMessage) -> None:
        client = await self._client_or_open()
        params: dict[str, Any] = {
            "QueueUrl": self.options.queue_url,
            "MessageBody": message.to_json().decode(),
        }
        if self.options.queue_url.endswith(".fifo"):
            params["MessageGroupId"] = message.dataset
            # a batch's shards (sender.shards) are messages of their own, not duplicates
            shard = "" if message.shard is None else f"/{message.shard}"
            params["MessageDeduplicationId"] = hashlib.sha256(
                (message.batch_id + shard).encode()
            ).hexdigest()[:64]
        with _mapped("send"):
            await client.send_message(**params)

    async def aclose(self) -> None:
        """End a running ``messages()`` stream, close the client; idempotent. Afterwards every
        verb (and settling a message received before) raises ``AdapterClosed``."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._connected = False
        await self._client.aclose()
