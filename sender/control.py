"""The control server (aiohttp, on ``daemon.listen``): probes, metrics and the batch API.

- ``GET /healthz``: the loop is alive. ``GET /readyz``: ledger, trigger and dead-letter
  checks; what is wrong only for the token's holder, anyone else sees ready or not.
- ``GET /metrics``: Prometheus.
- ``POST /v1/batches``: a trigger message (or a Pub/Sub push envelope) put on the configured
  trigger. ``GET /v1/batches`` and ``/v1/batches/{id}``: what ``sender status --json`` shows.

The ``/v1`` routes need ``Authorization: Bearer <token>`` (the scheme in any case) when a
token is configured. ``POST /v1/batches`` takes the trigger's own token when it has one
(``[trigger] token`` of the ``http`` trigger) as well as the daemon's; that push token alone
may also come as a ``?token=`` query parameter (a Pub/Sub push subscription cannot send a
fixed header). With a ``StatusPage`` (``sender.statuspage``) it also serves ``GET /``,
``/batches/{id}`` and ``GET /v1/status``, which also take the page's session cookie.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .errors import MessageError, SenderError
from .log import get_logger
from .model import TriggerMessage, parse_trigger_message
from .ports import Ledger
from .serialize import batch_json, shard_json
from .shard_ports import shards_of

if TYPE_CHECKING:
    from .statuspage import StatusPage

__all__ = ["ControlServer", "unwrap_pubsub"]

log = get_logger("sender.control")

ReadinessCheck = Callable[[], Awaitable[list[str]]]


def unwrap_pubsub(body: bytes) -> bytes:
    """The trigger message inside a Pub/Sub push envelope, or ``body`` itself if it is not one:
    ``{"message": {"data": base64, "attributes": ..., "messageId": ...}, "subscription": ...}``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict) or "data" not in message:
        return body
    try:
        return base64.b64decode(message["data"], validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise MessageError(f"Pub/Sub envelope: message.data is not base64: {exc}") from exc


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _bearer(header: str) -> str:
    """The credentials of ``Authorization: Bearer <token>`` (any case of the scheme), or ""."""
    scheme, _, credentials = header.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


class ControlServer:
    def __init__(
        self,
        ledger: Ledger,
        *,
        readiness: ReadinessCheck,
        accept: Callable[[TriggerMessage], Awaitable[None]] | None = None,
        token: str | None = None,
        accept_token: str | None = None,
        registry: CollectorRegistry | None = None,
        page: StatusPage | None = None,
        notes: ReadinessCheck | None = None,
    ) -> None:
        self.ledger = ledger
        # what /readyz says beside its verdict (completion events waiting: still ready)
        self.notes = notes
        # what GET /metrics serves: the registry the daemon's Metrics was built on
        self.registry = registry if registry is not None else CollectorRegistry()
        self.readiness = readiness
        self.accept = accept
        self.token = token
        self.accept_token = accept_token  # also good for POST /v1/batches
        self.page = page
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = web.Application(middlewares=[self._auth])
        self.app.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics),
                web.get("/v1/batches", self._list_batches),
                web.get("/v1/batches/{batch_id}", self._get_batch),
                web.post("/v1/batches", self._post_batch),
            ]
        )
        if page is not None:
            self.app.add_routes(page.routes())

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/") and not self._authorized(request):
            return _json({"error": "missing or wrong bearer token"}, 401)
        response: web.StreamResponse = await handler(request)
        return response

    def _authorized(self, request: web.Request) -> bool:
        """Whether ``request`` may use a ``/v1`` route: with no token configured anyone may
        (config check allows that on loopback only, or with ``allow_anonymous``); else a
        bearer token (the scheme in any case, RFC 9110), the page's session for
        ``GET /v1/status``, or, for ``POST /v1/batches`` only, the http trigger's own push
        token, which alone may come as ``?token=`` (a Pub/Sub push subscription cannot send a
        header; the daemon's token never travels in a URL, where proxies log it)."""
        posting = request.method == "POST" and request.path == "/v1/batches"
        tokens = [t for t in (self.token, self.accept_token if posting else None) if t]
        if not tokens:
            return True
        given = _bearer(request.headers.get("Authorization", ""))
        candidates = [(given, tokens)]
        if posting and self.accept_token and "token" in request.query:
            candidates.append((request.query["token"], [self.accept_token]))
        # every token is compared, so the time taken does not tell which one matched
        matches = [
            hmac.compare_digest(offered.encode(), token.encode())
            for offered, allowed in candidates
            for token in allowed
        ]
        if any(matches):
            return True
        # the status page's session reads /v1/status (and nothing else under /v1)
        return (
            self.page is not None
            and request.method == "GET"
            and request.path == "/v1/status"
            and self.page.has_session(request)
        )

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        # aiohttp types _server as AbstractServer; a TCPSite holds the asyncio.Server that
        # loop.create_server returned, which has the bound sockets (port 0 = a free one)
        sockets = cast(asyncio.Server, site._server).sockets if site._server else []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("control.listening", host=host, port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = await self.readiness()
        # what is wrong names batches, paths and errors: only for the token's holder
        shown = not self.token or self._authorized(request)
        notes = await self.notes() if self.notes is not None and shown else []
        detail: dict[str, Any] = {"detail": notes} if notes else {}
        if not problems:
            return _json({"status": "ready", **detail})
        if not shown:
            return _json({"status": "not ready"}, 503)
        return _json({"status": "not ready", "problems": problems, **detail}, 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _list_batches(self, request: web.Request) -> web.Response:
        from .status import batch_filters

        try:
            filters = batch_filters(
                dataset=request.query.get("dataset"),
                state=request.query.get("state"),
                since=request.query.get("since"),
                limit=request.query.get("limit", "50"),
            )
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        records = await self.ledger.list_batches(**filters)
        return _json({"batches": [batch_json(r) for r in records]})

    async def _get_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        record = await self.ledger.get_batch(batch_id)
        if record is None:
            return _json({"error": f"no batch {batch_id!r}"}, 404)
        chunks = await self.ledger.chunks(batch_id)
        now = datetime.now(UTC)
        shards = [shard_json(s, chunks, now) for s in await shards_of(self.ledger, batch_id)]
        return _json(batch_json(record, chunks, shards=shards))

    async def _post_batch(self, request: web.Request) -> web.Response:
        if self.accept is None:
            return _json({"error": "this daemon takes no triggers over HTTP"}, 404)
        body = await request.read()
        try:
            message = parse_trigger_message(unwrap_pubsub(body))
        except MessageError as exc:
            log.warning("trigger.rejected", source="http", reason=str(exc))
            return _json({"error": str(exc)}, 400)
        try:
            await self.accept(message)
        except MessageError as exc:
            log.warning("trigger.rejected", source="http", reason=str(exc))
            return _json({"error": str(exc)}, 400)
        except SenderError as exc:
            log.error("trigger.accept_failed", source="http", error=str(exc))
            return _json({"error": str(exc)}, 503)
        return _json({"accepted": message.batch_id}, 202)
