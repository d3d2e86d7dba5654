"""The http trigger: pipelines ``POST /v1/batches`` to the daemon's control server.

Inside the daemon the trigger is bound to the app's ledger (``bind``): ``publish`` — what
the control server calls for a POST — stores the message in the ledger's *inbox* and only
then does the server answer 202, so an accepted trigger survives a crash. ``messages()``
claims inbox messages with a lease (``visibility``) that the daemon extends while the batch
runs; ack/reject settle them for good, release hands them back. With a PostgreSQL ledger,
several replicas share one inbox and a message is claimed by one of them at a time.

Outside the daemon (``sender trigger``) the trigger is not bound: ``publish`` POSTs to the
daemon's control server at ``url`` (default ``http://<daemon.listen>/v1/batches``) with the
bearer ``token`` (default ``daemon.token``).

The control server also accepts the Google Pub/Sub push envelope, so a push subscription can
point at ``https://sender.example/v1/batches?token=...``. Config::

    [trigger]
    type = "http"
    token = "${file:/run/secrets/sender_trigger_token}"   # optional
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr

from sender.config import DaemonConfig, Duration, TriggerOptions
from sender.engine import default_owner
from sender.errors import AdapterClosed, ConfigError, LedgerError, MessageError, TriggerError
from sender.log import get_logger
from sender.model import TriggerMessage
from sender.ports import Inbox, InboxMessage, InboxOutcome, Ledger, Resource

__all__ = ["HttpEnvelope", "HttpTrigger"]

log = get_logger("sender_adapters.http_trigger")

_BACKOFF_MAX_S = 30.0


class HttpEnvelope:
    """A message claimed from the ledger's inbox."""

    def __init__(self, trigger: HttpTrigger, message: InboxMessage) -> None:
        self._trigger = trigger
        self.body = message.body
        self.message_id = message.message_id
        self.deliveries = message.deliveries
        self.settled: str | None = None

    def __repr__(self) -> str:
        return f"HttpEnvelope({self.message_id!r}, settled={self.settled!r})"

    async def _settle(self, outcome: InboxOutcome, reason: str | None) -> None:
        if self._trigger._closed.is_set():
            raise AdapterClosed("http trigger")
        if self.settled is not None:
            return  # settled once: a second call has nothing left to do
        try:
            await self._trigger._inbox_or_raise().settle_message(self.message_id, outcome, reason)
        except LedgerError as exc:
            raise TriggerError(f"inbox message {self.message_id}: {exc}") from exc
        self.settled = outcome

    async def ack(self) -> None:
        await self._settle("done", None)

    async def reject(self, reason: str) -> None:
        await self._settle("rejected", reason)

    async def release(self) -> None:
        await self._settle("released", None)
        self._trigger._wake.set()  # take it again without waiting for the next poll

    async def extend(self, seconds: float) -> None:
        if self.settled is not None:
            return
        inbox = self._trigger._inbox_or_raise()
        try:
            held = await inbox.extend_message(self.message_id, self._trigger.owner, seconds)
        except LedgerError as exc:
            raise TriggerError(f"inbox message {self.message_id}: {exc}") from exc
        if not held:
            raise TriggerError(f"inbox message {self.message_id}: lease lost to another owner")


class HttpTrigger(Resource):
    """Trigger messages POSTed to the control server, queued durably in the ledger."""

    class Options(TriggerOptions):
        type: Literal["http"] = "http"
        # bearer token for POST /v1/batches; the daemon's token when not set
        token: SecretStr | None = None
        # where `sender trigger` POSTs; default http://<daemon.listen>/v1/batches
        url: str | None = None
        # lease on a claimed message; the daemon renews it while the batch runs, and a
        # crashed daemon's message is taken again once it ends
        visibility_s: Duration = Field(300.0, alias="visibility", gt=0)
        # how often the inbox is checked for messages other replicas accepted
        poll_s: Duration = Field(1.0, alias="poll", gt=0)
        timeout_s: Duration = Field(30.0, alias="timeout", gt=0)  # of a POST by `publish`

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.owner = f"{default_owner()}:{uuid.uuid4().hex[:6]}"
        self._inbox: Inbox | None = None
        self._daemon: DaemonConfig | None = None
        self._closed = asyncio.Event()
        self._wake = asyncio.Event()
        self._healthy = True

    def __repr__(self) -> str:
        return f"HttpTrigger(bound={self._inbox is not None})"

    @classmethod
    def ledger_problem(cls, ledger: type, name: str) -> str | None:
        """Asked by ``sender config check``: the inbox lives in the ledger."""
        if issubclass(ledger, Inbox):
            return None
        return f"the http trigger keeps its inbox in the ledger; ledger {name!r} has no inbox"

    def bind(self, ledger: Ledger | None, daemon: DaemonConfig | None = None) -> None:
        """Called by ``sender.daemon.open_trigger``: the daemon's ledger (None outside the
        daemon), whose inbox becomes this trigger's queue, and the daemon settings (for the
        default ``url`` and ``token``). ``ConfigError`` for a ledger without an inbox."""
        if ledger is not None and not isinstance(ledger, Inbox):
            raise ConfigError(
                f"trigger.type: the http trigger keeps its inbox in the ledger; "
                f"{ledger!r} has no inbox"
            )
        self._inbox = ledger
        self._daemon = daemon

    @property
    def accept_token(self) -> str | None:
        """The token ``POST /v1/batches`` must carry (None: the daemon's own rule)."""
        token = self.options.token
        return token.get_secret_value() if token is not None else None

    @property
    def connected(self) -> bool:
        return self._inbox is not None and self._healthy and not self._closed.is_set()

    def _inbox_or_raise(self) -> Inbox:
        if self._inbox is None:
            raise TriggerError("the http trigger is not bound to a ledger (not in the daemon)")
        return self._inbox

    # -- taking messages (in the daemon) -------------------------------------------------

    async def messages(self) -> AsyncIterator[HttpEnvelope]:
        """Claim inbox messages one at a time until closed (a running stream then ends)."""
        if self._closed.is_set():
            raise AdapterClosed("http trigger")
        inbox = self._inbox_or_raise()
        backoff = 0.5
        while not self._closed.is_set():
            self._wake.clear()
            try:
                claimed = await inbox.claim_messages(self.owner, 1, self.options.visibility_s)
            except LedgerError as exc:
                # the ledger is down: keep trying, /readyz says why meanwhile
                self._healthy = False
                log.warning("http_trigger.inbox_unavailable", error=str(exc), retry_in_s=backoff)
                await self._wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            self._healthy, backoff = True, 0.5
            if claimed:
                yield HttpEnvelope(self, claimed[0])
            else:
                await self._wait(self.options.poll_s)

    async def _wait(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass, a message is published here, or we are closed."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._wake, self._closed)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, message: TriggerMessage) -> None:
        """In the daemon: store in the inbox (durable on return); a message for a batch
        already waiting there is not queued twice. Elsewhere: POST it to the daemon."""
        if self._closed.is_set():
            raise AdapterClosed("http trigger")
        if self._inbox is None:
            await self._post(message)
            return
        try:
            # a batch's shards (sender.shards) are messages of their own, not duplicates
            key = (
                message.batch_id if message.shard is None else f"{message.batch_id}/{message.shard}"
            )
            queued = await self._inbox.enqueue_message(key, message.to_json())
        except LedgerError as exc:
            raise TriggerError(f"cannot store the trigger in the ledger: {exc}") from exc
        if queued:
            self._wake.set()
            log.info("http_trigger.accepted", batch_id=message.batch_id)
        else:
            log.info("http_trigger.duplicate_pending", batch_id=message.batch_id)

    def _url(self) -> str:
        if self.options.url:
            return self.options.url
        daemon = self._daemon or DaemonConfig.model_validate({})
        host = daemon.host
        if host in ("", "0.0.0.0", "::"):  # listening everywhere: talk to it on loopback
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{daemon.port}/v1/batches"

    def _token(self) -> str | None:
        if self.options.token is not None:
            return self.options.token.get_secret_value()
        if self._daemon is not None and self._daemon.token is not None:
            return self._daemon.token.get_secret_value()
        return None

    async def _post(self, message: TriggerMessage) -> None:
        url = self._url()
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = aiohttp.ClientTimeout(total=self.options.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, data=message.to_json(), headers=headers) as response,
            ):
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TriggerError(f"POST {url}: {str(exc) or type(exc).__name__}") from exc
        if status in (200, 201, 202):
            return
        detail = _error_detail(text)
        if status == 400:
            raise MessageError(f"the daemon refused the message: {detail}")
        raise TriggerError(f"POST {url}: HTTP {status}: {detail}")

    async def aclose(self) -> None:
        self._closed.set()


def _error_detail(text: str) -> str:
    with contextlib.suppress(orjson.JSONDecodeError):
        data: Any = orjson.loads(text)
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
    return text[:200]
